#!/usr/bin/env python3
"""Reference perplexity from Hugging Face transformers for qeval (tests/data/ppl/).

Usage: python3 tools/make_ppl_fixture.py [OUT.json] [--smollm2 DIR] [--text FILE]
       (defaults: tests/data/ppl/smollm2-135m-instruct-f16.json,
        models-cache/smollm2-135m-instruct, tests/data/eval/pride-and-prejudice-ch1-6.txt)

Runs SmolLM2-135M-Instruct as the f16 .qbin holds it (the bf16 checkpoint's parameters rounded to
float16, then computed in float32 on the CPU, eager attention, one thread) over the bundled text,
cut into exactly the windows qeval uses, and writes per window the sum of the negative
log-likelihoods (natural log, accumulated in float64) of the tokens it scores.

Tokens: tokenizer.json through the `tokenizers` library with add_special_tokens=True (what
`AutoTokenizer(text)` gives; for SmolLM2 no BOS is added), checked against transformers'
AutoTokenizer, then cut to the first max_tokens.  `ids_fnv1a64` is qeval's fingerprint of them
(64-bit FNV-1a over the ids as 4-byte little-endian integers), so a test can tell that qrun's
tokenizer produced the same ids.

Windows (qeval's plan, tools/qeval/windows.c): starts 0, stride, 2*stride, ... each window holds
tokens [begin, min(begin + ctx, n)) at positions 0.., and scores the targets [first, end) where
first = max(previous window's end, begin + 1); the last window is the one that reaches the last
token.  Every token but the first is scored exactly once.

Each entry of "runs" is one (ctx, stride, max_tokens) setting: the first is what the test
(tests/test_qeval.c) runs, the second the docs/quality.md setting.  Needs torch, transformers 5.x,
tokenizers.  Deterministic on one machine (one thread).
"""

import argparse
import hashlib
import json
import math
import os
import sys
import warnings

import torch

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# (name, ctx, stride, max_tokens); max_tokens None = the whole text
RUNS = [
    ("test", 256, 128, 1024),
    ("docs", 512, 384, 4096),
]


def fnv1a64(ids):
    h = 0xcbf29ce484222325
    for i in ids:
        for b in int(i).to_bytes(4, "little", signed=True):
            h ^= b
            h = (h * 0x100000001b3) & 0xffffffffffffffff
    return "%016x" % h


def plan_windows(n, ctx, stride):
    assert 2 <= ctx <= n and 1 <= stride < ctx
    out, prev_end, begin = [], 0, 0
    while True:
        end = min(begin + ctx, n)
        first = max(prev_end, begin + 1)
        out.append((begin, first, end))
        if end == n:
            return out
        prev_end = end
        begin += stride


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_f16_model(smol_dir):
    from transformers import AutoModelForCausalLM
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mb = AutoModelForCausalLM.from_pretrained(smol_dir, dtype=torch.bfloat16,
                                                  attn_implementation="eager")
    m = mb.to(torch.float32).eval()
    # Round the parameters only (what the f16 .qbin holds); buffers such as
    # the rotary inv_freq stay float32, as qrun computes them.
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.to(torch.float16).to(torch.float32))
    for p in m.parameters():
        assert torch.isfinite(p).all(), "bf16 -> f16 overflow"
    return m


def window_nll(model, ids, begin, first, end):
    x = torch.tensor([ids[begin:end]], dtype=torch.long)
    with torch.no_grad():
        logits = model(input_ids=x).logits[0]
    # row j (position begin + j) predicts token begin + j + 1
    rows = logits[first - 1 - begin:end - 1 - begin].double()
    logp = torch.log_softmax(rows, dim=-1)
    tgt = torch.tensor(ids[first:end], dtype=torch.long)
    return float(-logp.gather(1, tgt[:, None]).sum())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?",
                    default=os.path.join(REPO, "tests", "data", "ppl",
                                         "smollm2-135m-instruct-f16.json"))
    ap.add_argument("--smollm2", default=os.path.join(REPO, "models-cache",
                                                      "smollm2-135m-instruct"))
    ap.add_argument("--text", default=os.path.join(REPO, "tests", "data", "eval",
                                                   "pride-and-prejudice-ch1-6.txt"))
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    import tokenizers
    import transformers
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    with open(args.text, encoding="utf-8", newline="") as f:
        text = f.read()
    tok = Tokenizer.from_file(os.path.join(args.smollm2, "tokenizer.json"))
    ids_all = tok.encode(text, add_special_tokens=True).ids
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf_ids = AutoTokenizer.from_pretrained(args.smollm2)(text)["input_ids"]
    assert hf_ids == ids_all, "tokenizers and AutoTokenizer disagree"
    model = load_f16_model(args.smollm2)

    out = {
        "generator": "tools/make_ppl_fixture.py",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__},
        "model": "SmolLM2-135M-Instruct as the f16 .qbin holds it: bf16 parameters rounded to "
                 "float16, computed in float32 (eager attention, 1 CPU thread)",
        "checkpoint": os.path.relpath(args.smollm2, REPO),
        "model_safetensors_sha256": file_sha256(os.path.join(args.smollm2, "model.safetensors")),
        "tokenizer_json_sha256": file_sha256(os.path.join(args.smollm2, "tokenizer.json")),
        "text": os.path.relpath(args.text, REPO),
        "text_sha256": file_sha256(args.text),
        "text_bytes": len(text.encode("utf-8")),
        "tokenization": "tokenizer.json, add_special_tokens=True (no BOS for SmolLM2)",
        "n_tokens_text": len(ids_all),
        "nll": "natural log; nll_sum = -sum log softmax(logits)[target] in float64",
        "runs": [],
    }
    for name, ctx, stride, max_tokens in RUNS:
        ids = ids_all[:max_tokens] if max_tokens else ids_all
        wins = plan_windows(len(ids), ctx, stride)
        run = {"name": name, "ctx": ctx, "stride": stride, "max_tokens": max_tokens,
               "n_tokens": len(ids), "ids_fnv1a64": fnv1a64(ids), "windows": []}
        total, count = 0.0, 0
        for w, (begin, first, end) in enumerate(wins):
            s = window_nll(model, ids, begin, first, end)
            run["windows"].append({"begin": begin, "first": first, "end": end,
                                   "n_scored": end - first, "nll_sum": s})
            total += s
            count += end - first
            print("%s: window %d/%d ppl %.4f" % (name, w + 1, len(wins),
                                                 math.exp(s / (end - first))), flush=True)
        assert count == len(ids) - 1
        run.update({"n_scored": count, "nll_sum": total, "ppl": math.exp(total / count)})
        print("%s: ctx %d stride %d, %d tokens: ppl %.6f" % (name, ctx, stride, len(ids),
                                                            run["ppl"]), flush=True)
        out["runs"].append(run)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
