#!/usr/bin/env python3
"""Write bitsandbytes reference fixtures for qrun's quantization tests.

Runs the real bitsandbytes CUDA kernels (quantize_4bit, dequantize_4bit,
int8_vectorwise_quant, Linear8bitLt) and saves what they produce:

  OUT/cases.json         one entry per case: parameters and tensor names
  OUT/bnb4.safetensors   4-bit cases: packed codes, absmax, nested absmax
                         statistics, dequantized samples, the dynamic map
  OUT/bnb8.safetensors   LLM.int8 cases: CB/SCB of weights, CA/SCA/outlier
                         columns of activations, Linear8bitLt outputs

Inputs are not stored for the generated cases: they come from a counter-based
generator (below) that tests/bnb_inputs.c reproduces bit for bit in C, so a
million-element case costs only its codes. Real weight matrices (--real) are
stored with their inputs.

Needs a CUDA GPU, torch and a bitsandbytes build (the device machine has no
bitsandbytes: tools/gpu-fixtures.sh builds one from source). Regenerate with

    tools/gpu-fixtures.sh        (on the device machine; see tools/README.md)
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

DEV = "cuda"

import bitsandbytes as bnb
import bitsandbytes.functional as F
from safetensors.torch import save_file, load_file

# ---------------------------------------------------------------------------
# Input generator, reproduced exactly by tests/bnb_inputs.c.
#   mix(z)       = splitmix64 finalizer
#   r(key, i)    = mix(key + (i + 1) * 0x9E3779B97F4A7C15)      (mod 2^64)
#   u_k          = (r(8*seed + k, i) >> 40) * 2^-24,  k = 0..3   (exact)
#   g            = u0 + u1 + u2 + u3 - 2                          (f64, exact)
#   e            = r(8*seed + 4, i)
#   scale        = 2^-((e >> 60) & 7), times 8 when e % 61 == 0  (outliers)
#   x            = f32(g * scale)       then RNE to f16/bf16 for those dtypes
#   elements [zero_begin, zero_end) are set to 0
# ---------------------------------------------------------------------------
M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix(z):
    z = z.copy()
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


def rstream(key, n):
    i = np.arange(1, n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return mix(np.uint64(key) + i * GOLDEN)


def gen_values(seed, n, dtype, zero_begin=0, zero_end=0):
    with np.errstate(over="ignore"):
        base = np.uint64(seed) * np.uint64(8)
        g = np.zeros(n, dtype=np.float64)
        for k in range(4):
            u = (rstream(base + np.uint64(k), n) >> np.uint64(40)).astype(np.float64) * 2.0**-24
            g += u
        g -= 2.0
        e = rstream(base + np.uint64(4), n)
    shift = ((e >> np.uint64(60)) & np.uint64(7)).astype(np.int64)
    scale = np.ldexp(1.0, -shift)
    scale = np.where(e % np.uint64(61) == 0, scale * 8.0, scale)
    x = torch.from_numpy((g * scale).astype(np.float32))
    x[zero_begin:zero_end] = 0
    return x.to(dtype)


DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}

# ---------------------------------------------------------------------------
# 4-bit cases: (name, seed, shape, dtype, blocksize, zero range, sample size)
# "sample" is how many leading elements of the dequantized output are stored
# (all for small cases); the dequantization rule is per element, and 8192
# elements cover every code many times.
# ---------------------------------------------------------------------------
FOUR_BIT = [
    # Straddling rows: K = 40 with blocks of 64.
    ("straddle_3x40_f16_bs64", 11, [3, 40], "f16", 64, (0, 0)),
    ("odd_5_f32_bs64", 12, [5], "f32", 64, (0, 0)),
    ("rows_33x100_f16_bs32", 13, [33, 100], "f16", 32, (64, 96)),
    ("rows_17x129_bf16_bs128", 14, [17, 129], "bf16", 128, (128, 256)),
    ("rows_31x257_f32_bs256", 15, [31, 257], "f32", 256, (0, 0)),
    ("rows_9x1000_f16_bs512", 16, [9, 1000], "f16", 512, (512, 1024)),
    ("rows_7x3001_bf16_bs1024", 17, [7, 3001], "bf16", 1024, (0, 0)),
    ("rows_3x5000_f32_bs2048", 18, [3, 5000], "f32", 2048, (0, 2048)),
    ("rows_2x9000_f16_bs4096", 19, [2, 9000], "f16", 4096, (0, 0)),
    ("zero_blocks_130x64_f16_bs64", 20, [130, 64], "f16", 64, (64, 320)),
    # Large cases for statistics (codes only; inputs regenerated in C).
    ("big_f32_bs64", 21, [512, 512], "f32", 64, (0, 0)),
    ("big_f16_bs64", 22, [512, 512], "f16", 64, (0, 0)),
    ("big_bf16_bs64", 23, [512, 512], "bf16", 64, (0, 0)),
]
SAMPLE = 8192


def quant4(x, qtype, blocksize, nested):
    packed, qs = F.quantize_4bit(x, blocksize=blocksize, compress_statistics=nested, quant_type=qtype)
    return packed, qs


def four_bit_case(name, x, qtype, blocksize, tensors, meta):
    key = f"{name}.{qtype}"
    packed, qs = quant4(x, qtype, blocksize, nested=False)
    packed_n, qs_n = quant4(x, qtype, blocksize, nested=True)
    torch.cuda.synchronize() if DEV == "cuda" else None
    assert torch.equal(packed, packed_n), "bitsandbytes: nested codes differ from plain codes"
    n = x.numel()
    tensors[key + ".packed"] = packed.flatten().cpu()
    tensors[key + ".absmax"] = qs.absmax.float().cpu()
    tensors[key + ".qabsmax"] = qs_n.absmax.cpu()
    tensors[key + ".absmax2"] = qs_n.state2.absmax.float().cpu()
    tensors[key + ".offset"] = qs_n.offset.reshape(1).float().cpu()
    # Reconstructed absmax as bitsandbytes' dequantize_4bit computes it.
    absmax_dq = F.dequantize_blockwise(qs_n.absmax, qs_n.state2) + qs_n.offset
    tensors[key + ".absmax_dq"] = absmax_dq.float().cpu()
    deq = F.dequantize_4bit(packed, qs).flatten()
    deq_n = F.dequantize_4bit(packed_n, qs_n).flatten()
    k = min(n, SAMPLE)
    tensors[key + ".deq"] = deq[:k].cpu()
    tensors[key + ".deq_nested"] = deq_n[:k].cpu()
    meta["nested_map"] = qs_n.state2.code.float().cpu()
    return key


def int8_weight_case(name, w, tensors):
    # Int8Params quantizes the fp16 copy of the weight, row-wise, threshold 0.
    cb, scb, _ = F.int8_vectorwise_quant(w.to(torch.float16).to(DEV))
    tensors[name + ".cb"] = cb.cpu()
    tensors[name + ".scb"] = scb.float().cpu()


def int8_act_case(name, x, threshold, tensors):
    ca, sca, cols = F.int8_vectorwise_quant(x.to(DEV), threshold=threshold)
    tensors[name + ".ca"] = ca.cpu()
    tensors[name + ".sca"] = sca.float().cpu()
    cols = cols if cols is not None else torch.zeros(0, dtype=torch.int64)
    tensors[name + ".outlier_cols"] = cols.to(torch.int32).cpu().reshape(-1)


def linear8_case(name, w, b, x, threshold, tensors):
    lin = bnb.nn.Linear8bitLt(w.shape[1], w.shape[0], bias=True, has_fp16_weights=False,
                              threshold=threshold)
    lin.weight = bnb.nn.Int8Params(w.clone(), requires_grad=False, has_fp16_weights=False)
    lin.bias = torch.nn.Parameter(b.clone(), requires_grad=False)
    lin = lin.to(DEV)
    with torch.no_grad():
        y = lin(x.to(DEV))
    tensors[name + ".y"] = y.cpu()


def plant_outliers(x, seed):
    """Put exact and near-threshold magnitudes into a few columns."""
    g = torch.Generator().manual_seed(seed)
    m, k = x.shape
    cols = torch.randperm(k, generator=g)[:5].tolist()
    vals = [6.0, -6.5, 5.99609375, 5.999, 20.0]  # 5.999 rounds to 6.0 in fp16
    for c, v in zip(cols, vals):
        x[int(torch.randint(0, m, (1,), generator=g)), c] = v
    return x


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--real", help="safetensors file with real weight matrices to add as cases")
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="check the script on the CPU backend (its numbers are not the reference)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    global DEV
    if args.cpu_dry_run:
        DEV = "cpu"
    else:
        assert torch.cuda.is_available(), "needs a CUDA GPU"

    t4, t8, meta = {}, {}, {}
    cases = {"generator": "tests/bnb_inputs.c", "bitsandbytes": bnb.__version__,
             "torch": torch.__version__, "gpu": torch.cuda.get_device_name() if DEV == "cuda" else "cpu",
             "four_bit": [], "int8_weights": [], "int8_acts": [], "linear8": []}

    for name, seed, shape, dt, bs, (z0, z1) in FOUR_BIT:
        n = int(np.prod(shape))
        x = gen_values(seed, n, DTYPES[dt], z0, z1).reshape(shape).to(DEV)
        entry = {"name": name, "seed": seed, "shape": shape, "dtype": dt, "blocksize": bs,
                 "zero": [z0, z1], "input": None, "keys": []}
        for qtype in ("nf4", "fp4"):
            entry["keys"].append(four_bit_case(name, x, qtype, bs, t4, meta))
        cases["four_bit"].append(entry)

    if args.real:
        real = load_file(args.real)
        for tname in sorted(real):
            w = real[tname].to(DEV)
            name = "real_" + tname.replace(".", "_")
            t4[name + ".input"] = real[tname]
            entry = {"name": name, "seed": None, "shape": list(w.shape), "dtype":
                     {torch.bfloat16: "bf16", torch.float16: "f16", torch.float32: "f32"}[w.dtype],
                     "blocksize": 64, "zero": [0, 0], "input": name + ".input", "keys": [],
                     "source": tname}
            for qtype in ("nf4", "fp4"):
                entry["keys"].append(four_bit_case(name, w, qtype, 64, t4, meta))
            cases["four_bit"].append(entry)
            int8_weight_case(name, w, t8)
            cases["int8_weights"].append({"name": name, "seed": None, "shape": list(w.shape),
                                          "dtype": entry["dtype"], "input": "bnb4:" + name + ".input",
                                          "zero_row": None})
    t4["dynamic_map"] = meta["nested_map"]

    # LLM.int8 weights: odd K, an all-zero row, outlier rows; fp16 and bf16 sources.
    for name, seed, (n_, k_), dt, zero_row in [
        ("w8_37x515_f16", 31, (37, 515), "f16", 5),
        ("w8_64x1024_bf16", 32, (64, 1024), "bf16", None),
        ("w8_300x256_f32", 33, (300, 256), "f32", 0),
    ]:
        w = gen_values(seed, n_ * k_, DTYPES[dt]).reshape(n_, k_)
        if zero_row is not None:
            w[zero_row] = 0
        int8_weight_case(name, w, t8)
        cases["int8_weights"].append({"name": name, "seed": seed, "shape": [n_, k_], "dtype": dt,
                                      "input": None, "zero_row": zero_row})

    # Activations with planted outliers (stored: they are small), tau 6 and 0.
    for name, seed, (m_, k_) in [("a8_4x515", 41, (4, 515)), ("a8_1x1024", 42, (1, 1024)),
                                 ("a8_7x256", 43, (7, 256))]:
        x = plant_outliers(gen_values(seed, m_ * k_, torch.float16).reshape(m_, k_) * 2, seed)
        t8[name + ".input"] = x.clone()
        for tau in (6.0, 0.0):
            key = f"{name}.t{int(tau)}"
            int8_act_case(key, x, tau, t8)
            cases["int8_acts"].append({"name": key, "input": name + ".input", "threshold": tau})

    # Linear8bitLt forward, fp16 and bf16 models.
    for name, wname, aname, dt in [("lin8_f16", "w8_37x515_f16", "a8_4x515", torch.float16),
                                   ("lin8_bf16", "w8_37x515_f16", "a8_4x515", torch.bfloat16)]:
        w = gen_values(31, 37 * 515, torch.float16).reshape(37, 515)
        w[5] = 0
        w = w.to(dt)
        b = (gen_values(34, 37, torch.float32) * 4).to(dt)
        x = t8[aname + ".input"].to(dt)
        t8[name + ".bias"] = b.clone()
        t8[name + ".x"] = x.clone()
        t8[name + ".w"] = w.clone()
        for tau in (6.0, 0.0):
            key = f"{name}.t{int(tau)}"
            linear8_case(key, w, b, x, tau, t8)
            cases["linear8"].append({"name": key, "weight": name + ".w", "bias": name + ".bias",
                                     "input": name + ".x", "threshold": tau,
                                     "dtype": "f16" if dt == torch.float16 else "bf16"})

    save_file({k: v.contiguous() for k, v in t4.items()}, os.path.join(args.out, "bnb4.safetensors"))
    save_file({k: v.contiguous() for k, v in t8.items()}, os.path.join(args.out, "bnb8.safetensors"))
    with open(os.path.join(args.out, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1)
    total = sum(os.path.getsize(os.path.join(args.out, p)) for p in os.listdir(args.out))
    print(f"bnb fixtures: {len(cases['four_bit'])} 4-bit cases, {len(cases['int8_weights'])} int8 "
          f"weights, {len(cases['int8_acts'])} activation cases, {len(cases['linear8'])} linear8; "
          f"{total / 1e6:.2f} MB in {args.out}")


if __name__ == "__main__":
    sys.exit(main())
