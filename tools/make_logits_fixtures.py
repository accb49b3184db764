#!/usr/bin/env python3
"""Reference logits from Hugging Face transformers for qrun's CPU engine tests.

Usage: python3 tools/make_logits_fixtures.py [OUTDIR] [--tiny DIR] [--smollm2 DIR]
                                                [--no-smollm2] [--check-only]
       (defaults: OUTDIR tests/data/logits, --tiny tests/data/tiny,
        --smollm2 models-cache/smollm2-135m-instruct)

Writes OUTDIR/<variant>.safetensors for every tiny checkpoint (tests/data/tiny/*, except the
sharded copy of llama-mha), OUTDIR/smollm2-135m-instruct.safetensors and OUTDIR/index.json, which
lists every tensor with its meaning.  Prompts are given as token ids, so the fixtures do not depend
on qrun's tokenizer (SmolLM2's prompts are also stored as text).

What is recorded (details in index.json and tools/README.md):
  * f32 (transformers, eager attention): logits of every prompt position (vocab <= 1000; the last
    4 positions of one prompt for llama-mha), 16 greedy tokens from model.generate (KV cache, no
    EOS stop) with the logits of every step, and the top-1/top-2 gap of every step;
  * the model loaded in float16 and in bfloat16: logits at the last prompt position;
  * quantized references (nf4, nf4 + double quant, fp4, LLM.int8 with threshold 6 and 0): the
    weights qconvert stores (every tensor rounded to qconvert's default compute dtype, linear
    weights quantized with the numerics of src/quant.c = bitsandbytes' CUDA rules with an exact
    division), dequantized to f32 without further rounding and run in f32; LLM.int8 runs
    bitsandbytes' Linear8bitLt forward (fp16 activations, outlier columns, fp16 output);
  * SmolLM2-135M-Instruct (when present): 5 prompts, last-position f32 logits and 32 greedy tokens
    with the weights rounded to f16 (the "f16 file") and as bf16 (the "bf16 file").

Before writing anything the numpy quantizer is checked against the committed bitsandbytes
fixtures (tests/data/bnb): codes, absmax, double-quant statistics, LLM.int8 weights, activations
and Linear8bitLt outputs.  --check-only runs just those checks.

Deterministic: one CPU thread, fixed prompts; running it twice gives byte-identical files (on the
same machine and library versions).  Needs torch, transformers 5.x, tokenizers, safetensors, numpy.
"""

import argparse
import copy
import hashlib
import json
import math
import os
import struct
import sys
import warnings

import numpy as np
import torch
import torch.nn as nn

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

N_GEN_TINY = 16
N_GEN_SMOL = 32
SMOL_BF16_LOGITS = 2      # SmolLM2 bf16-file logits for the first 2 prompts only (size)
GAP_MIN = 1e-3            # a greedy step whose top-1/top-2 gap is below this is a near-tie
MHA_VOCAB_SLICE = 4096    # llama-mha quantized / f16 / bf16 logits: vocab ids [0, 4096) only

# ---------------------------------------------------------------------------------------------
# bitsandbytes numerics in numpy (bnb-format.md sections 1-3 and 5; the same rules as src/quant.c)
# ---------------------------------------------------------------------------------------------


def f32_from_bits(bits):
    return np.array(bits, dtype=np.uint32).view(np.float32)


NF4_LUT = f32_from_bits([0xbf800000, 0xbf3239b1, 0xbf066b30, 0xbeca32a0, 0xbe91a24d, 0xbe3d353f,
                         0xbdba7871, 0x00000000, 0x3da2faff, 0x3e24cae3, 0x3e7c04dd, 0x3ead033a,
                         0x3ee1a4b8, 0x3f1007ab, 0x3f3913b3, 0x3f800000])
# code order; code 8 is -0.0 as in the CUDA kernels
FP4_LUT = f32_from_bits([0x00000000, 0x3baaaaab, 0x3f2aaaab, 0x3f800000, 0x3eaaaaab, 0x3f000000,
                         0x3e2aaaab, 0x3e800000, 0x80000000, 0xbbaaaaab, 0xbf2aaaab, 0xbf800000,
                         0xbeaaaaab, 0xbf000000, 0xbe2aaaab, 0xbe800000])
NF4_THR = f32_from_bits([0xbf591cd9, 0xbf1c5270, 0xbeeb8480, 0xbeadea76, 0xbe703cec, 0xbe0d38bc,
                         0xbd3a7871, 0x3d22faff, 0x3df64863, 0x3e5067e0, 0x3e9582d4, 0x3ec753f9,
                         0x3f006d03, 0x3f248daf, 0x3f5c89d9])
FP4_THR = f32_from_bits([0x3b2aaab9, 0x3db00000, 0x3e555555, 0x3e955555, 0x3ed55556, 0x3f155550,
                         0x3f555555])
INV127 = f32_from_bits([0x3c010204])[0]        # f32(1/127)
INT8_MM_C = f32_from_bits([0x38820610])[0]     # f32(1/16129), CUDA kdequant_mm_int32_fp16


def codes_4bit(s, kind):
    """Codes of scaled values s (float32 array); strict '>' against the CUDA literals."""
    if kind == "nf4":
        return (s[..., None] > NF4_THR).sum(-1).astype(np.uint8)
    a = np.abs(s)
    r = (a[..., None] > FP4_THR).sum(-1).astype(np.uint8)
    bits = r ^ ((r & 2) << 1)
    return (bits | ((s < 0).astype(np.uint8) << 3)).astype(np.uint8)


def quantize_4bit(x, kind, bs=64):
    """x: float32 array (any shape), flattened row-major.  Returns (codes[n] uint8,
    packed[(n+1)//2] uint8, absmax[nb] float32).  s = x / absmax with an exact IEEE division."""
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    n = x.size
    nb = (n + bs - 1) // bs
    xp = np.zeros(nb * bs, np.float32)
    xp[:n] = x
    xb = xp.reshape(nb, bs)
    absmax = np.abs(xb).max(axis=1).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (xb / absmax[:, None]).astype(np.float32)   # 0/0 = NaN -> code 0 (all-zero block)
    codes_all = codes_4bit(s, kind).reshape(-1)           # padding elements are 0 -> code of 0.0
    codes = codes_all[:n]
    cp = codes_all[:n + (n & 1)]
    packed = ((cp[0::2] << 4) | cp[1::2]).astype(np.uint8)
    return codes, packed, absmax


def dequantize_4bit(codes, absmax, kind, bs=64):
    lut = NF4_LUT if kind == "nf4" else FP4_LUT
    blk = np.arange(codes.size) // bs
    return (lut[codes] * absmax[blk]).astype(np.float32)   # one f32 multiply


def dq_offset(absmax):
    # sequential float64 sum (as src/quant.c), divided, rounded to f32
    return np.float32(np.cumsum(absmax.astype(np.float64))[-1] / absmax.size)


def dq_quantize(absmax, dmap, offset=None, bs2=256):
    """Double quantization: returns (qabsmax uint8, absmax2 float32, offset float32)."""
    if offset is None:
        offset = dq_offset(absmax)
    offset = np.float32(offset)
    c = (absmax - offset).astype(np.float32)
    nb = c.size
    ng = (nb + bs2 - 1) // bs2
    cp = np.zeros(ng * bs2, np.float32)
    cp[:nb] = c
    a2 = np.abs(cp.reshape(ng, bs2)).max(axis=1).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (c / a2[np.arange(nb) // bs2]).astype(np.float32)
    mids = ((dmap[:-1] + dmap[1:]).astype(np.float32) * np.float32(0.5)).astype(np.float32)
    k = np.searchsorted(mids, s, side="left")            # number of midpoints strictly below s
    tie = (k < 255) & ((k & 1) == 1) & (s == mids[np.minimum(k, 254)])
    k = np.where(tie, k + 1, k)
    k = np.where(np.isnan(s), 0, k)
    return k.astype(np.uint8), a2, offset


def dq_dequantize(q, a2, offset, dmap, bs2=256):
    prod = (dmap[q] * a2[np.arange(q.size) // bs2]).astype(np.float32)
    return (prod + np.float32(offset)).astype(np.float32)   # two roundings, no FMA


def int8_quantize_rows(w16):
    """w16: weight values already rounded to f16 (held in float32), [N, K].  Returns CB int8 [N,K],
    SCB float32 [N]; scale = f32(127 / SCB) exactly, CB = round_half_even(f32(w * scale))."""
    w = np.asarray(w16, np.float32)
    scb = np.abs(w).max(axis=1).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = (np.float32(127.0) / scb).astype(np.float32)
        p = (w * scale[:, None]).astype(np.float32)
    p = np.where(np.isnan(p), np.float32(0), p)
    cb = np.clip(np.rint(p), -128, 127).astype(np.int8)
    return cb, scb


def int8_dequantize_rows(cb, scb):
    p = (cb.astype(np.float32) * scb[:, None]).astype(np.float32)
    return (p * INV127).astype(np.float32)


def int8_quantize_acts(a16, threshold):
    """a16: activations as an f16 torch tensor [M, K].  Returns (CA int8 [M,K], SCA f32 [M],
    outlier column indices).  Outlier elements (|x| >= threshold, threshold > 0) are ignored by the
    row absmax; their whole columns are zeroed in CA."""
    x = a16.float().numpy()
    ax = np.abs(x)
    if threshold > 0:
        out_el = ax >= threshold
        cols = np.nonzero(out_el.any(axis=0))[0]
        sca = np.where(out_el, np.float32(0), ax).max(axis=1).astype(np.float32)
    else:
        cols = np.zeros(0, np.int64)
        sca = ax.max(axis=1).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = (np.float32(127.0) / sca).astype(np.float32)
        p = (x * scale[:, None]).astype(np.float32)
    p = np.where(np.isnan(p), np.float32(0), p)
    ca = np.clip(np.rint(p), -128, 127).astype(np.int8)
    if cols.size:
        ca[:, cols] = 0
    return ca, sca, cols


def int8_linear_forward(x, cb, scb, bias, threshold):
    """bitsandbytes Linear8bitLt inference forward (MatMul8bitLt + int8_mixed_scaled_mm with the
    CUDA int8_mm_dequant), CPU re-implementation with exact divisions.  x: any float dtype."""
    dt = x.dtype
    shape = x.shape
    a = x.reshape(-1, shape[-1])
    ca, sca, cols = int8_quantize_acts(a.to(torch.float16), threshold)
    acc = ca.astype(np.int64) @ cb.astype(np.int64).T                      # exact
    p = (acc.astype(np.float32) * sca[:, None]).astype(np.float32)
    p = (p * scb[None, :]).astype(np.float32)
    if bias is not None and bias.dtype == torch.float16:
        # fused: fmaf(p, C, bias) then fp16
        y = (p.astype(np.float64) * np.float64(INT8_MM_C)
             + bias.double().numpy()[None, :]).astype(np.float32)
        y16 = torch.from_numpy(y).to(torch.float16)
    else:
        y16 = torch.from_numpy((p * INT8_MM_C).astype(np.float32)).to(torch.float16)
        if bias is not None:
            y16.add_(bias)                  # in fp16 storage (computed in f32, rounded to fp16)
    y = y16.to(dt)
    if cols.size:
        cols_t = torch.from_numpy(cols.astype(np.int64))
        sub_b = torch.from_numpy(int8_dequantize_rows(cb[:, cols], scb)).to(dt)
        y = y.addmm(a[:, cols_t], sub_b.t())
    return y.reshape(*shape[:-1], cb.shape[0])


class Int8Linear(nn.Module):
    def __init__(self, cb, scb, bias, threshold):
        super().__init__()
        self.cb, self.scb, self.threshold = cb, scb, float(threshold)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(),
                                                           requires_grad=False)

    def forward(self, x):
        return int8_linear_forward(x, self.cb, self.scb, self.bias, self.threshold)


# ---------------------------------------------------------------------------------------------
# cross-check against the committed bitsandbytes fixtures
# ---------------------------------------------------------------------------------------------

def near_thr(s, kind, ulps=1):
    """True where the scaled value s is within `ulps` f32 ulps of a decision threshold."""
    def ordinal(v):
        i = np.asarray(v, np.float32).view(np.int32).astype(np.int64)
        return np.where(i < 0, -(i & 0x7fffffff), i)
    if kind == "nf4":
        o = ordinal(s)[..., None] - ordinal(NF4_THR)
        return (np.abs(o) <= ulps).any(-1)
    o = ordinal(np.abs(s))[..., None] - ordinal(FP4_THR)
    sub = (s != 0) & (np.abs(s) < np.finfo(np.float32).tiny)
    return (np.abs(o) <= ulps).any(-1) | sub


def check_against_bnb(bnb_dir, dmap_c):
    from safetensors.torch import load_file
    b4 = load_file(os.path.join(bnb_dir, "bnb4.safetensors"))
    b8 = load_file(os.path.join(bnb_dir, "bnb8.safetensors"))
    report = {}
    dmap = b4["dynamic_map"].numpy()
    assert np.array_equal(dmap.view(np.uint32), dmap_c.view(np.uint32)), \
        "bnb4 dynamic_map differs from src/quant.c's quant_dynamic_map"
    h = hashlib.sha256(dmap.astype("<f4").tobytes()).hexdigest()
    report["dynamic_map_sha256"] = h
    for case in ("real_blk_0_attn_k", "real_blk_5_attn_output"):
        x = b4[case + ".input"].float().numpy().reshape(-1)
        for kind in ("nf4", "fp4"):
            k = "%s.%s" % (case, kind)
            codes, packed, absmax = quantize_4bit(x, kind)
            ref_packed = b4[k + ".packed"].numpy()
            assert np.array_equal(absmax.view(np.uint32), b4[k + ".absmax"].numpy().view(np.uint32))
            ref_codes = np.empty(codes.size, np.uint8)
            ref_codes[0::2] = ref_packed >> 4
            ref_codes[1::2] = ref_packed & 15
            bad = np.nonzero(codes != ref_codes)[0]
            s = (x / absmax[np.arange(x.size) // 64]).astype(np.float32)
            unexplained = int((~near_thr(s[bad], kind, 1)).sum())
            assert unexplained == 0, "%s: %d code mismatches not at a 1-ulp tie" % (k, unexplained)
            # dequantization (bf16 output) of the first 8192 elements
            deq = torch.from_numpy(dequantize_4bit(ref_codes, b4[k + ".absmax"].numpy(), kind))
            assert torch.equal(deq[:8192].to(torch.bfloat16).view(torch.int16),
                               b4[k + ".deq"].view(torch.int16))
            # double quantization with bnb's own offset (its CUDA mean), and with ours
            off_ref = b4[k + ".offset"].numpy()[0]
            q, a2, _ = dq_quantize(b4[k + ".absmax"].numpy(), dmap, offset=off_ref)
            assert np.array_equal(a2.view(np.uint32), b4[k + ".absmax2"].numpy().view(np.uint32))
            q_bad = int((q != b4[k + ".qabsmax"].numpy()).sum())
            assert q_bad == 0, "%s: %d qabsmax mismatches" % (k, q_bad)
            adq = dq_dequantize(b4[k + ".qabsmax"].numpy(), b4[k + ".absmax2"].numpy(), off_ref,
                                dmap)
            assert np.array_equal(adq.view(np.uint32), b4[k + ".absmax_dq"].numpy().view(np.uint32))
            our_off = dq_offset(absmax)
            report[k] = {"code_mismatches_at_1ulp_ties": int(bad.size), "elements": int(x.size),
                         "absmax": "exact", "qabsmax_absmax2_absmax_dq": "exact",
                         "offset_ulps_vs_cuda_mean": int(abs(int(np.float32(our_off).view(np.int32))
                                                             - int(np.float32(off_ref).view(np.int32))))}
    # LLM.int8 weights
    for case in ("real_blk_0_attn_k", "real_blk_5_attn_output"):
        w16 = b4[case + ".input"].to(torch.float16).float().numpy()
        cb, scb = int8_quantize_rows(w16)
        assert np.array_equal(scb.view(np.uint32), b8[case + ".scb"].numpy().view(np.uint32))
        d = np.abs(cb.astype(np.int32) - b8[case + ".cb"].numpy().astype(np.int32))
        assert d.max() <= 1
        # a mismatch must sit at a rounding tie: w * f32(127/SCB) within 2 ulp of n + 0.5
        r, c = np.nonzero(d)
        v = (w16[r, c] * (np.float32(127.0) / scb[r]).astype(np.float32)).astype(np.float32)
        half = (np.floor(v) + np.float32(0.5)).astype(np.float32)
        ulp = np.spacing(np.abs(half)).astype(np.float32)
        assert (np.abs(v - half) <= 2 * ulp).all(), case + ": int8 mismatch away from a tie"
        report[case + ".int8"] = {"cb_off_by_one": int((d != 0).sum()), "elements": int(d.size)}
    # activations
    for case, thr in (("a8_4x515", 6.0), ("a8_4x515", 0.0), ("a8_1x1024", 6.0),
                      ("a8_1x1024", 0.0), ("a8_7x256", 6.0), ("a8_7x256", 0.0)):
        k = "%s.t%d" % (case, int(thr))
        ca, sca, cols = int8_quantize_acts(b8[case + ".input"], thr)
        assert np.array_equal(sca.view(np.uint32), b8[k + ".sca"].numpy().view(np.uint32)), k
        assert np.array_equal(cols, b8[k + ".outlier_cols"].numpy().astype(np.int64)), k
        d = np.abs(ca.astype(np.int32) - b8[k + ".ca"].numpy().astype(np.int32))
        assert d.max() <= 1, k
        report[k] = {"ca_off_by_one": int((d != 0).sum()), "outlier_cols": int(cols.size)}
    # Linear8bitLt outputs (f16 and bf16 models)
    for case in ("lin8_f16", "lin8_bf16"):
        w, bias, x = b8[case + ".w"], b8[case + ".bias"], b8[case + ".x"]
        cb, scb = int8_quantize_rows(w.to(torch.float16).float().numpy())
        for thr in (6.0, 0.0):
            y = int8_linear_forward(x, cb, scb, bias, thr)
            ref = b8["%s.t%d.y" % (case, int(thr))]
            diff = (y.float() - ref.float()).abs()
            rel = float(diff.max() / ref.float().abs().max())
            assert rel < 2e-2, (case, thr, rel)
            report["%s.t%d" % (case, int(thr))] = {
                "bitwise_equal": int((y.view(torch.int16) == ref.view(torch.int16)).sum()),
                "outputs": int(ref.numel()), "max_rel_diff": rel}
    return report


def dynamic_map_from_quant_c():
    """quant_dynamic_map parsed from src/quant.c (hex-float literals)."""
    import re
    src = open(os.path.join(REPO, "src", "quant.c")).read()
    body = src[src.index("const float quant_dynamic_map[256]"):]
    body = body[body.index("{") + 1:body.index("};")]
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    vals = [float.fromhex(t.strip().rstrip("f")) if "0x" in t else float(t.strip().rstrip("f"))
            for t in body.split(",") if t.strip()]
    assert len(vals) == 256
    return np.array(vals, np.float32)


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------

def splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


def prompt_ids(seed, n, lo, hi, bos=None):
    ids = [lo + splitmix64(seed * 1_000_003 + i) % (hi - lo) for i in range(n)]
    if bos is not None:
        ids[0] = bos
    return ids


# Per variant: id range of ordinary tokens [lo, hi), BOS put at the start of prompt 0, prompt
# lengths, which prompts get all-position logits and generation logits, the dtype qconvert
# stores by default (compute dtype: the checkpoint's f16/bf16; f16 for float32 checkpoints).
TINY = {
    "llama-mha": dict(lo=3, hi=32000, bos=1, lengths=[12, 20], qbin="float16",
                      # vocab 32000 (128 KB a row): logits of the last 4 positions of p0 only
                      logit_positions={0: 4, 1: 0}, gen_logits=[],
                      quant_prompts={0: "last"}, vocab_slice=MHA_VOCAB_SLICE),
    # p2: 64 tokens, so the llama3-rescaled low frequencies turn noticeably; logits of its
    # last 16 positions (48..63) and of all its 16 generated steps (positions 64..79)
    "llama-gqa-llama3": dict(lo=0, hi=500, bos=500, lengths=[5, 13, 64], qbin="bfloat16",
                             logit_positions={2: 16}, gen_logits=[0, 2]),
    "llama-tied-linear": dict(lo=0, hi=450, bos=None, lengths=[5, 13, 24], qbin="float16",
                              gen_logits=[0]),
    "llama-dynamic-bias": dict(lo=3, hi=420, bos=1, lengths=[5, 24, 40], qbin="float16",
                               gen_logits=[1, 2], recompute=[1, 2]),
    "falcon-7b-style": dict(lo=12, hi=480, bos=None, lengths=[5, 13, 24], qbin="bfloat16",
                            gen_logits=[0]),
    "falcon-40b-style": dict(lo=12, hi=480, bos=None, lengths=[5, 13, 24], qbin="float16",
                             gen_logits=[0]),
    "falcon-rw-style": dict(lo=0, hi=450, bos=None, lengths=[5, 13, 24], qbin="float16",
                            gen_logits=[0]),
}
QUANT_MODES = ["nf4", "nf4_dq", "fp4", "int8_t6", "int8_t0"]
TORCH_DT = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_tiny(tiny_dir, variant, dtype):
    from transformers import AutoModelForCausalLM, FalconConfig, FalconForCausalLM
    d = os.path.join(tiny_dir, variant)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if variant == "falcon-rw-style":
            # sdpa, not eager: transformers' eager Falcon attention adds the
            # ALiBi bias twice (to the scores and again through the mask that
            # already holds alibi/sqrt(D)); sdpa adds it once, as the original
            # model does.
            cfg = FalconConfig.from_json_file(os.path.join(d, "config.hf.json"))
            cfg._attn_implementation = "sdpa"
            m = FalconForCausalLM.from_pretrained(d, config=cfg, dtype=dtype,
                                                  attn_implementation="sdpa")
        else:
            m = AutoModelForCausalLM.from_pretrained(d, dtype=dtype, attn_implementation="eager")
    m.eval()
    return m


def no_eos_config(model, n):
    from transformers import GenerationConfig
    return GenerationConfig(max_new_tokens=n, do_sample=False, use_cache=True, num_beams=1,
                            eos_token_id=None, bos_token_id=None, pad_token_id=0,
                            temperature=None, top_p=None, top_k=None,
                            output_logits=True, return_dict_in_generate=True)


def greedy_generate(model, ids, n):
    """model.generate (KV cache, greedy, no EOS).  Returns (new ids, step logits [n, V] f32)."""
    inp = torch.tensor([ids], dtype=torch.long)
    gc = no_eos_config(model, n)
    # generate() fills unset fields from model.generation_config (its eos_token_id would stop
    # the continuation), so the model's own config is replaced as well.
    saved = model.generation_config
    model.generation_config = copy.deepcopy(gc)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = model.generate(inp, attention_mask=torch.ones_like(inp), generation_config=gc)
    finally:
        model.generation_config = saved
    new = out.sequences[0, len(ids):].tolist()
    logits = torch.stack([l[0] for l in out.logits]).float()
    assert len(new) == n and logits.shape[0] == n
    assert logits.argmax(-1).tolist() == new, "generate's tokens are not the argmax of its logits"
    return new, logits


def forward_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids], dtype=torch.long)).logits[0]


def top_gap(logits):
    t = torch.topk(logits.float(), 2, dim=-1).values
    return (t[..., 0] - t[..., 1]).float()


def rel_err(a, b):
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max())


def quantize_model(base, qbin_dtype, mode):
    """Copy of an f32 model holding what qconvert stores: every parameter rounded to qbin_dtype;
    every nn.Linear except lm_head quantized (4-bit: dequantized f32 weights; int8: Int8Linear)."""
    m = copy.deepcopy(base)
    qdt = TORCH_DT[qbin_dtype]
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.to(qdt).to(torch.float32))
    targets = [(n, mod) for n, mod in m.named_modules()
               if isinstance(mod, nn.Linear) and n != "lm_head"]
    stats = {"linears": len(targets), "zero_blocks": 0, "outlier_free": True}
    for name, mod in targets:
        w = mod.weight.detach().float().numpy()
        if mode.startswith("int8"):
            cb, scb = int8_quantize_rows(torch.from_numpy(w).to(torch.float16).float().numpy())
            new = Int8Linear(cb, scb, mod.bias, 6.0 if mode == "int8_t6" else 0.0)
            parent = m.get_submodule(name.rsplit(".", 1)[0]) if "." in name else m
            setattr(parent, name.rsplit(".", 1)[-1], new)
            continue
        kind = "fp4" if mode.startswith("fp4") else "nf4"
        codes, _, absmax = quantize_4bit(w, kind)
        stats["zero_blocks"] += int((absmax == 0).sum())
        if mode.endswith("_dq"):
            q, a2, off = dq_quantize(absmax, DMAP)
            absmax = dq_dequantize(q, a2, off, DMAP)
        deq = dequantize_4bit(codes, absmax, kind).reshape(w.shape)
        with torch.no_grad():
            mod.weight.copy_(torch.from_numpy(deq))
    return m


def run_tiny(tiny_dir, variant, spec, tensors, meta):
    cfg_v = json.load(open(os.path.join(tiny_dir, variant, "config.json")))
    base = load_tiny(tiny_dir, variant, torch.float32)
    V = base.config.vocab_size
    small = V <= 1000
    prompts = [prompt_ids(1000 * (list(TINY).index(variant) + 1) + i, n, spec["lo"], spec["hi"],
                          spec["bos"] if i == 0 else None)
               for i, n in enumerate(spec["lengths"])]
    vm = {"class": type(base).__name__, "vocab_size": V, "source_dtype":
          cfg_v.get("dtype") or cfg_v.get("torch_dtype"), "qbin_dtype": spec["qbin"],
          "prompts": [], "f16_vs_f32_max_rel": {}, "bf16_vs_f32_max_rel": {}, "quant": {}}
    fresh = lambda: copy.deepcopy(base)   # rotary state (dynamic rope) is per model object
    m16 = load_tiny(tiny_dir, variant, torch.float16)
    mb16 = load_tiny(tiny_dir, variant, torch.bfloat16)
    vs = spec.get("vocab_slice")
    for i, ids in enumerate(prompts):
        P = "p%d." % i
        T = len(ids)
        tensors[P + "ids"] = torch.tensor(ids, dtype=torch.int32)
        full = forward_logits(fresh(), ids).float()
        which = spec.get("logit_positions", {}).get(i, "all")   # "all" or the last k positions
        pos = list(range(T)) if which == "all" else list(range(T - which, T))
        if pos:
            tensors[P + "logits"] = full[pos].contiguous()
            tensors[P + "logits_pos"] = torch.tensor(pos, dtype=torch.int32)
        # greedy generation with the KV cache
        gen, glog = greedy_generate(fresh(), ids, N_GEN_TINY)
        tensors[P + "gen_ids"] = torch.tensor(gen, dtype=torch.int32)
        tensors[P + "gen_gap"] = top_gap(glog)
        if i in spec.get("gen_logits", []):
            tensors[P + "gen_logits"] = glog.contiguous()
        # full recomputation of every step (fresh model per prefix)
        seq = ids + gen
        rec = torch.stack([forward_logits(fresh(), seq[:T + t])[-1].float()
                           for t in range(N_GEN_TINY)])
        rec_ids, cur = [], list(ids)
        rec_full = []
        for t in range(N_GEN_TINY):        # greedy with full recomputation at every step
            lg = forward_logits(fresh(), cur)[-1].float()
            rec_full.append(lg)
            nxt = int(lg.argmax())
            rec_ids.append(nxt)
            cur.append(nxt)
        pm = {"ids_len": T, "logits_positions": pos, "gen_logits": i in spec.get("gen_logits", []),
              "min_gen_gap": float(tensors[P + "gen_gap"].min()),
              "cache_vs_recompute_max_rel": rel_err(glog, rec),
              "recompute_greedy_equals_cached": rec_ids == gen}
        if i in spec.get("recompute", []):
            tensors[P + "gen_ids_recompute"] = torch.tensor(rec_ids, dtype=torch.int32)
            tensors[P + "gen_logits_recompute"] = torch.stack(rec_full).contiguous()
        # f16 / bf16 models: last position
        l16 = forward_logits(copy.deepcopy(m16), ids)[-1]
        lb16 = forward_logits(copy.deepcopy(mb16), ids)[-1]
        assert l16.dtype == torch.float16 and lb16.dtype == torch.bfloat16
        assert torch.isfinite(l16).all() and torch.isfinite(lb16).all()
        sl = slice(0, vs) if vs else slice(None)
        tensors[P + "f16.logits_last"] = l16[sl].contiguous()
        tensors[P + "bf16.logits_last"] = lb16[sl].contiguous()
        vm["f16_vs_f32_max_rel"]["p%d" % i] = rel_err(l16.float(), full[-1])
        vm["bf16_vs_f32_max_rel"]["p%d" % i] = rel_err(lb16.float(), full[-1])
        vm["prompts"].append(pm)
    # quantized references
    qprompts = spec.get("quant_prompts", {0: "all", len(prompts) - 1: "last"})
    for mode in QUANT_MODES:
        qm = quantize_model(base, spec["qbin"], mode)
        info = {}
        for i, which in sorted(qprompts.items()):
            ids = prompts[i]
            T = len(ids)
            lg = forward_logits(copy.deepcopy(qm), ids).float()
            assert torch.isfinite(lg).all()
            pos = list(range(T)) if which == "all" else [T - 1]
            sl = slice(0, vs) if vs else slice(None)
            tensors["p%d.%s.logits" % (i, mode)] = lg[pos][:, sl].contiguous()
            tensors["p%d.%s.logits_pos" % (i, mode)] = torch.tensor(pos, dtype=torch.int32)
            f32_last = forward_logits(fresh(), ids)[-1].float()
            info["p%d" % i] = {"positions": which, "vs_f32_max_rel_last": rel_err(lg[-1], f32_last)}
        vm["quant"][mode] = info
    return vm


# ---------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct
# ---------------------------------------------------------------------------------------------

SMOL_CANDIDATES = [
    ("plain", "The capital of France is"),
    ("plain", "Once upon a time, there was a little robot who"),
    ("chat", "What is the tallest mountain in the world?"),
    ("plain", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"),
    ("plain", "The three primary colors are red, yellow and"),
    ("plain", "Water boils at 100 degrees Celsius, which is"),
    ("chat", "Write a haiku about the sea."),
    ("plain", "In 1969, Neil Armstrong became the first person to"),
    ("plain", "The quick brown fox jumps over the lazy dog. The quick brown fox"),
    ("plain", "A list of fruits: apple, banana, cherry,"),
    ("chat", "Give me three tips for learning a new language."),
]


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_smollm2(smol_dir, tensors):
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = Tokenizer.from_file(os.path.join(smol_dir, "tokenizer.json"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf_tok = AutoTokenizer.from_pretrained(smol_dir)
        mb = AutoModelForCausalLM.from_pretrained(smol_dir, dtype=torch.bfloat16,
                                                  attn_implementation="eager")
    m_bf16 = copy.deepcopy(mb).to(torch.float32).eval()
    # Round the parameters only: .to(torch.float16) would also round buffers
    # such as the rotary inv_freq, which an f16 .qbin does not hold.
    m_f16 = copy.deepcopy(mb).to(torch.float32).eval()
    with torch.no_grad():
        for prm in m_f16.parameters():
            prm.copy_(prm.to(torch.float16).to(torch.float32))
    del mb
    for p in m_f16.parameters():
        assert torch.isfinite(p).all(), "bf16 -> f16 overflow"
    meta = {"checkpoint": os.path.relpath(smol_dir, REPO),
            "model_safetensors_sha256": file_sha256(os.path.join(smol_dir, "model.safetensors")),
            "tokenizer_json_sha256": file_sha256(os.path.join(smol_dir, "tokenizer.json")),
            "vocab_size": m_f16.config.vocab_size, "prompts": [], "rejected": []}
    chosen = 0
    for kind, text in SMOL_CANDIDATES:
        if chosen == 5:
            break
        if kind == "chat":
            text = hf_tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                              add_generation_prompt=True)
        ids = tok.encode(text, add_special_tokens=False).ids
        res = {}
        for name, m in (("f16", m_f16), ("bf16", m_bf16)):
            last = forward_logits(m, ids)[-1].float()
            gen, glog = greedy_generate(m, ids, N_GEN_SMOL)
            gap = top_gap(glog)
            # recomputation: one forward over prompt + generated tokens
            rec = forward_logits(m, ids + gen[:-1])[len(ids) - 1:].float()
            res[name] = dict(last=last, gen=gen, gap=gap, cache_vs_recompute=rel_err(glog, rec),
                             gap_last=float(top_gap(last)))
        min_gap = min(float(res["f16"]["gap"].min()), float(res["bf16"]["gap"].min()))
        entry = {"kind": kind, "text": text, "n_ids": len(ids), "min_gen_gap_f16":
                 float(res["f16"]["gap"].min()), "min_gen_gap_bf16": float(res["bf16"]["gap"].min())}
        if min_gap < GAP_MIN:
            entry["reason"] = "near-tie: a greedy step has top-1/top-2 gap < %g" % GAP_MIN
            meta["rejected"].append(entry)
            continue
        P = "p%d." % chosen
        tensors[P + "ids"] = torch.tensor(ids, dtype=torch.int32)
        for name in ("f16", "bf16"):
            r = res[name]
            if name == "f16" or chosen < SMOL_BF16_LOGITS:
                tensors[P + name + ".logits_last"] = r["last"].contiguous()
            tensors[P + name + ".gen_ids"] = torch.tensor(r["gen"], dtype=torch.int32)
            tensors[P + name + ".gen_gap"] = r["gap"].contiguous()
            entry[name] = {"cache_vs_recompute_max_rel": r["cache_vs_recompute"],
                           "continuation": tok.decode(r["gen"], skip_special_tokens=False)}
        entry["f16_vs_bf16_last_max_rel"] = rel_err(res["f16"]["last"], res["bf16"]["last"])
        entry["gen_f16_equals_gen_bf16"] = res["f16"]["gen"] == res["bf16"]["gen"]
        meta["prompts"].append(entry)
        chosen += 1
    assert chosen == 5, "not enough SmolLM2 prompts without near-ties"
    assert any(p["kind"] == "chat" for p in meta["prompts"])
    return meta


# ---------------------------------------------------------------------------------------------

def describe(name):
    d = {
        "ids": "prompt token ids",
        "logits": "f32 logits (transformers, model loaded in float32, eager attention) at the "
                  "positions in logits_pos; row r = prediction after ids[0..pos[r]]",
        "logits_pos": "prompt positions of the rows of the matching logits tensor",
        "gen_ids": "greedy continuation from model.generate (KV cache, do_sample=False, no EOS stop)",
        "gen_logits": "logits of every generate step (row t predicts gen_ids[t]); KV-cache path",
        "gen_gap": "top-1 minus top-2 logit at every greedy step",
        "gen_ids_recompute": "greedy continuation recomputing the full prefix at every step "
                             "(fresh model: dynamic rope base chosen for the current length)",
        "gen_logits_recompute": "logits of every step of gen_ids_recompute, full recomputation",
        "f16.logits_last": "logits at the last prompt position, model loaded in float16 "
                           "(weights rounded to f16, computed in f16 by torch on the CPU)",
        "bf16.logits_last": "logits at the last prompt position, model loaded in bfloat16",
    }
    for mode in QUANT_MODES:
        d[mode + ".logits"] = ("f32 logits with the %s weights qconvert stores, dequantized to f32 "
                               "(no further rounding), computed in f32" % mode)
        d[mode + ".logits_pos"] = "prompt positions of the rows of %s.logits" % mode
    key = name.split(".", 1)[1]
    return d.get(key, "")


def save(path, tensors, metadata):
    from safetensors.torch import save_file
    save_file({k: tensors[k] for k in sorted(tensors)}, path, metadata=metadata)
    os.chmod(path, 0o644)


def tensor_index(tensors):
    return {k: {"dtype": str(tensors[k].dtype).replace("torch.", ""),
                "shape": list(tensors[k].shape), "meaning": describe(k)} for k in sorted(tensors)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outdir", nargs="?", default=os.path.join(REPO, "tests", "data", "logits"))
    ap.add_argument("--tiny", default=os.path.join(REPO, "tests", "data", "tiny"))
    ap.add_argument("--bnb", default=os.path.join(REPO, "tests", "data", "bnb"))
    ap.add_argument("--smollm2", default=os.path.join(REPO, "models-cache",
                                                      "smollm2-135m-instruct"))
    ap.add_argument("--no-smollm2", action="store_true", help="skip SmolLM2 (keeps no file)")
    ap.add_argument("--check-only", action="store_true",
                    help="only check the quantizer against tests/data/bnb")
    args = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(1)
    import transformers
    import tokenizers
    import safetensors

    global DMAP
    dmap_c = dynamic_map_from_quant_c()
    bnb_report = check_against_bnb(args.bnb, dmap_c)
    DMAP = dmap_c
    print("bitsandbytes cross-check passed:")
    for k, v in bnb_report.items():
        print("  %-34s %s" % (k, v))
    if args.check_only:
        return 0

    os.makedirs(args.outdir, exist_ok=True)
    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "tokenizers": tokenizers.__version__, "safetensors": safetensors.__version__,
                "numpy": np.__version__}
    index = {
        "generator": "tools/make_logits_fixtures.py",
        "versions": versions,
        "conventions": {
            "prompt_prefix": "tensor names are p<i>.<what>; p<i>.ids are the prompt ids",
            "relative_error": "max |engine - ref| over the stored logits / max |ref|",
            "generation": "model.generate(do_sample=False, use_cache=True, eos_token_id=None) "
                          "with output_logits; the stored tokens are the argmax of the stored "
                          "step logits",
            "threads": "torch.set_num_threads(1)",
            "quant": ("weights as qconvert stores them with default options (blocksize 64, "
                      "compute dtype = qbin_dtype): every tensor rounded to qbin_dtype; nn.Linear "
                      "weights except lm_head quantized from those values (nf4/fp4: s = x / absmax "
                      "exact division, CUDA threshold literals with strict '>'; double quant: "
                      "offset = sequential f64 mean rounded to f32, signed dynamic map of "
                      "src/quant.c, nearest entry ties to even, absmax = f32(f32(m*a2)+offset); "
                      "int8: f16 copy, SCB row absmax, CB = rne(w * f32(127/SCB))); 4-bit weights "
                      "dequantized as f32(LUT[code]*absmax) and used in f32 without further "
                      "rounding; int8 layers run bitsandbytes' Linear8bitLt forward with f32 "
                      "input: activations cast to f16, outlier columns (|x| >= threshold) taken "
                      "out, CA = rne(x * f32(127/SCA)), exact int32 product, "
                      "y = f16(f32(f32(acc*SCA)*SCB) * f32(1/16129)), bias added in f16 storage, "
                      "then to f32 and + X[:,O] @ (f32(f32(CB*SCB)*f32(1/127)))[:,O]^T in f32"),
            "quant_modes": {"nf4": "--quant nf4", "nf4_dq": "--quant nf4 --double-quant",
                            "fp4": "--quant fp4", "int8_t6": "--quant int8 (threshold 6.0)",
                            "int8_t0": "--quant int8 --int8-threshold 0"},
            "vocab_slice": ("llama-mha's f16/bf16/quantized logits keep vocab ids [0, %d) only "
                            "(size); its f32 logits are full" % MHA_VOCAB_SLICE),
        },
        "bnb_crosscheck": bnb_report,
        "variants": {},
    }
    for variant, spec in TINY.items():
        print("tiny:", variant, flush=True)
        tensors = {}
        vm = run_tiny(args.tiny, variant, spec, tensors, index)
        fname = variant + ".safetensors"
        vm["file"] = fname
        vm["checkpoint"] = os.path.relpath(os.path.join(args.tiny, variant), REPO)
        if spec.get("vocab_slice"):
            vm["vocab_slice"] = [0, spec["vocab_slice"]]
        vm["tensors"] = tensor_index(tensors)
        save(os.path.join(args.outdir, fname), tensors, {"variant": variant})
        index["variants"][variant] = vm
    if not args.no_smollm2:
        print("smollm2", flush=True)
        tensors = {}
        sm = run_smollm2(args.smollm2, tensors)
        sm["file"] = "smollm2-135m-instruct.safetensors"
        sm["note"] = ("f16: bf16 weights rounded to f16 then run in f32 (what the f16 qbin holds); "
                      "bf16: bf16 weights run in f32.  Ids from tokenizer.json with the tokenizers "
                      "library, no special tokens added; chat prompts rendered with the "
                      "tokenizer_config.json chat template (add_generation_prompt=True).")
        smol_meaning = {
            "ids": "prompt token ids (tokenizer.json, no special tokens added)",
            "logits_last": "f32 logits at the last prompt position",
            "gen_ids": "32 greedy tokens from model.generate (KV cache, no EOS stop), in f32",
            "gen_gap": "top-1 minus top-2 logit at every greedy step"}
        sm["tensors"] = {}
        for k, v in sorted(tensors.items()):
            parts = k.split(".")
            what = smol_meaning[parts[-1]]
            if len(parts) == 3:
                what += (" (f16 file: weights rounded bf16 -> f16, run in f32)" if parts[1] == "f16"
                         else " (bf16 file: bf16 weights run in f32)")
            sm["tensors"][k] = {"dtype": str(v.dtype).replace("torch.", ""),
                                "shape": list(v.shape), "meaning": what}
        save(os.path.join(args.outdir, sm["file"]), tensors, {"variant": "smollm2-135m-instruct"})
        index["smollm2"] = sm
    with open(os.path.join(args.outdir, "index.json"), "w") as f:
        json.dump(index, f, indent=1, sort_keys=False)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(args.outdir, n)) for n in os.listdir(args.outdir))
    print("wrote %s (%.2f MB)" % (args.outdir, total / 1e6))
    return 0


DMAP = None

if __name__ == "__main__":
    sys.exit(main())
