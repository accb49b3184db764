#!/usr/bin/env python3
"""Fixtures for tests/test_cpu_ops.c, computed by the actual transformers
modules (rotary embeddings of every rope type, RMSNorm, Falcon's LayerNorm and
ALiBi builder, and whole Llama / Falcon attention layers) on fixed random
inputs. Each file holds the inputs and the outputs, a few KB.

Regenerate (torch 2.x, transformers 5.x, safetensors; CPU only):
    python3 tools/make_ops_fixtures.py tests/data/ops
"""
import math
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import FalconConfig, FalconForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.models.falcon.modeling_falcon import build_alibi_tensor
from transformers.models.llama.modeling_llama import (
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)

# qrope_type codes of src/cpu/ops.h
ROPE_CODES = {"default": 1, "linear": 2, "dynamic": 3, "llama3": 4}


def meta():
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def rope_params_tensor(rp, head_dim, max_pos):
    # [type, theta, factor, low_freq_factor, high_freq_factor, original_max, max_pos, head_dim]
    return torch.tensor(
        [
            ROPE_CODES[rp["rope_type"]],
            rp["rope_theta"],
            rp.get("factor", 0.0),
            rp.get("low_freq_factor", 0.0),
            rp.get("high_freq_factor", 0.0),
            rp.get("original_max_position_embeddings", 0),
            max_pos,
            head_dim,
        ],
        dtype=torch.float64,
    )


def rope_case(out, name, rp, head_dim, max_pos, heads, calls, gen):
    """calls: list of position lists, each one forward call of a fresh module
    (HF's dynamic state starts from construction each time)."""
    cfg = LlamaConfig(
        hidden_size=head_dim * heads,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=head_dim,
        max_position_embeddings=max_pos,
        rope_parameters=dict(rp),
        vocab_size=16,
        num_hidden_layers=1,
        intermediate_size=8,
    )
    t = {"params": rope_params_tensor(rp, head_dim, max_pos)}
    t["inv_freq_init"] = LlamaRotaryEmbedding(cfg).inv_freq.clone()
    for c, positions in enumerate(calls):
        pos = torch.tensor([positions], dtype=torch.long)
        n = len(positions)
        q = torch.randn(1, heads, n, head_dim, generator=gen)
        for dt, tag in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
            emb = LlamaRotaryEmbedding(cfg)
            x = q.to(dt)
            cos, sin = emb(x, pos)
            qr, _ = apply_rotary_pos_emb(x, x, cos, sin)
            # stored [tokens, heads * head_dim] as qrun lays activations out
            t[f"c{c}_x_{tag}"] = x[0].transpose(0, 1).reshape(n, heads * head_dim).contiguous()
            t[f"c{c}_out_{tag}"] = qr[0].transpose(0, 1).reshape(n, heads * head_dim).contiguous()
            t[f"c{c}_cos_{tag}"] = cos[0].contiguous()
            t[f"c{c}_sin_{tag}"] = sin[0].contiguous()
            if tag == "f32":
                t[f"c{c}_inv_freq"] = emb.inv_freq.clone()
        t[f"c{c}_pos"] = torch.tensor(positions, dtype=torch.int32)
    t["n_calls"] = torch.tensor([len(calls)], dtype=torch.int32)
    # dynamic: the inverse frequencies for many sequence lengths, each from
    # HF's own dynamic_rope_update (one forward whose max position is L - 1)
    if rp["rope_type"] == "dynamic":
        lens = list(range(max_pos - 3, max_pos + 40)) + [3 * max_pos + 7, 50 * max_pos + 1]
        rows = []
        for L in lens:
            emb = LlamaRotaryEmbedding(cfg)
            emb(torch.zeros(1, 1, 1, head_dim), torch.tensor([[L - 1]]))
            rows.append(emb.inv_freq.clone())
        t["dyn_lens"] = torch.tensor(lens, dtype=torch.int32)
        t["dyn_inv_freq"] = torch.stack(rows)
    save_file(t, os.path.join(out, name), metadata=meta())


def norms(out, gen):
    t = {}
    n, dim = 5, 77
    x = torch.randn(n, dim, generator=gen) * 3 + 0.5
    w = torch.randn(dim, generator=gen)
    b = torch.randn(dim, generator=gen)
    for dt, tag in ((torch.float32, "f32"), (torch.bfloat16, "bf16"), (torch.float16, "f16")):
        rms = LlamaRMSNorm(dim, eps=1e-5).to(dt)
        with torch.no_grad():
            rms.weight.copy_(w.to(dt))
        xi = x.to(dt)
        t[f"x_{tag}"] = xi
        t[f"w_{tag}"] = w.to(dt)
        t[f"b_{tag}"] = b.to(dt)
        with torch.no_grad():
            t[f"rms_{tag}"] = rms(xi)
        # FalconDecoderLayer's norms are torch.nn.LayerNorm
        ln = torch.nn.LayerNorm(dim, eps=1e-5).to(dt)
        with torch.no_grad():
            ln.weight.copy_(w.to(dt))
            ln.bias.copy_(b.to(dt))
            t[f"ln_{tag}"] = ln(xi)
    save_file(t, os.path.join(out, "norms.safetensors"), metadata=meta())


def alibi(out):
    t = {}
    L = 600  # past 256, where bf16 can no longer hold every key position
    # a few column ranges keep the file small
    cols = list(range(0, 40)) + list(range(250, 270)) + list(range(590, 600))
    t["cols"] = torch.tensor(cols, dtype=torch.int32)
    for h in (71, 32, 12, 5, 1):
        m = torch.ones(1, L, dtype=torch.long)
        a32 = build_alibi_tensor(m, h, torch.float32).reshape(h, L)
        # the tensor is built in bf16 whatever the model dtype, so the f32
        # and bf16 results hold the same values
        assert torch.equal(a32, build_alibi_tensor(m, h, torch.bfloat16).reshape(h, L).float())
        t[f"alibi_{h}"] = a32[:, cols].contiguous()
    save_file(t, os.path.join(out, "alibi.safetensors"), metadata=meta())


class Capture:
    """Forward hooks recording a module's input or output per call."""

    def __init__(self):
        self.rec = {}

    def out(self, key):
        def hook(mod, args, result):
            self.rec.setdefault(key, []).append(result.detach().clone())

        return hook

    def inp(self, key):
        def hook(mod, args, result):
            self.rec.setdefault(key, []).append(args[0].detach().clone())

        return hook


def llama_attention(out, gen):
    # GQA 6/2 heads, head_dim 16, dynamic NTK with a short max_position so the
    # second call (positions 12..20) runs past it; HF's default attention (sdpa)
    torch.manual_seed(1234)
    rp = {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=96, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=6, num_key_value_heads=2, head_dim=16, max_position_embeddings=16,
        rope_parameters=rp,
    )
    model = LlamaForCausalLM(cfg).eval()
    att = model.model.layers[0].self_attn
    cap = Capture()
    att.q_proj.register_forward_hook(cap.out("q"))
    att.k_proj.register_forward_hook(cap.out("k"))
    att.v_proj.register_forward_hook(cap.out("v"))
    att.o_proj.register_forward_hook(cap.inp("o"))
    ids = torch.randint(0, 64, (1, 21), generator=gen)
    with torch.no_grad():
        r = model(ids[:, :12], use_cache=True)
        model(ids[:, 12:], past_key_values=r.past_key_values, use_cache=True)
    t = {"params": rope_params_tensor(rp, 16, 16),
         "dims": torch.tensor([6, 2, 16, 12, 9], dtype=torch.int32)}  # Hq Hkv D n0 n1
    for c in range(2):
        for k in ("q", "k", "v", "o"):
            t[f"c{c}_{k}"] = cap.rec[k][c][0].contiguous()
    save_file(t, os.path.join(out, "llama_attn.safetensors"), metadata=meta())


def falcon_attention(out, gen, name, **kw):
    torch.manual_seed(4321)
    cfg = FalconConfig(vocab_size=64, hidden_size=80, num_hidden_layers=1, num_attention_heads=5,
                       **kw)
    model = FalconForCausalLM(cfg).eval()
    att = model.transformer.h[0].self_attention
    cap = Capture()
    att.query_key_value.register_forward_hook(cap.out("qkv"))
    att.dense.register_forward_hook(cap.inp("o"))
    ids = torch.randint(0, 64, (1, 19), generator=gen)
    with torch.no_grad():
        model(ids)
    t = {"qkv": cap.rec["qkv"][0][0].contiguous(), "o": cap.rec["o"][0][0].contiguous(),
         "dims": torch.tensor([5, 16, 19], dtype=torch.int32)}  # heads D n
    save_file(t, os.path.join(out, name), metadata={**meta(), "impl": cfg._attn_implementation})


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/data/ops"
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(20240611)
    rope_case(out, "rope_default.safetensors", {"rope_type": "default", "rope_theta": 10000.0},
              64, 2048, 3, [[0, 1, 2, 7, 100, 2047, 5000, 123456]], gen)
    rope_case(out, "rope_linear.safetensors",
              {"rope_type": "linear", "rope_theta": 500000.0, "factor": 4.0},
              48, 4096, 2, [[0, 3, 999, 4095, 16000]], gen)
    rope_case(out, "rope_dynamic.safetensors",
              {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 3.0},
              64, 64, 2, [[0, 5, 63], [60, 61, 62, 63, 64, 65, 66, 70], [150, 151], [1000]], gen)
    rope_case(out, "rope_llama3.safetensors",
              {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192},
              128, 131072, 1, [[0, 1, 8191, 8192, 70000]], gen)
    rope_case(out, "rope_llama3_small.safetensors",
              {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0,
               "low_freq_factor": 1.0, "high_freq_factor": 8.0,
               "original_max_position_embeddings": 256},
              64, 1024, 2, [[0, 17, 255, 256, 900]], gen)
    norms(out, gen)
    alibi(out)
    llama_attention(out, gen)
    # falcon-rw style: MHA, ALiBi, sequential block
    falcon_attention(out, gen, "falcon_alibi_attn.safetensors", alibi=True,
                     new_decoder_architecture=False, multi_query=False, parallel_attn=False,
                     bias=False)
    # falcon-7b style: multi-query, rotary
    falcon_attention(out, gen, "falcon_mqa_attn.safetensors", alibi=False,
                     new_decoder_architecture=False, multi_query=True, parallel_attn=True,
                     bias=False)


if __name__ == "__main__":
    main()
