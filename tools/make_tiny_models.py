#!/usr/bin/env python3
"""Create tiny, randomly initialised Hugging Face checkpoints used as qrun test fixtures.

Usage: python3 tools/make_tiny_models.py [OUTDIR]        (default OUTDIR: tests/data/tiny)

Every variant lives in OUTDIR/<variant>/ with config.json, model.safetensors (or shards plus
model.safetensors.index.json), generation_config.json and a tokenizer.  Weights are drawn from a
fixed-seed torch.Generator with a larger spread than transformers' default initialisation (so
logits are not degenerate and some quantisation blocks hold outliers).  Running the script twice
gives byte-identical files.  After writing, every checkpoint is reloaded with transformers and
compared with the in-memory model; a summary table is printed.

Needs: torch, transformers (5.x), tokenizers, safetensors, numpy.
Llama-2 SentencePiece tokenizer source: ../shared/data/llama2-tokenizer.model (beside the
repository) or --spm PATH.
"""

import argparse
import hashlib
import json
import os
import shutil
import sys

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

SPM_DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                           "llama2-tokenizer.model")

# Built-in training text for the small BPE tokenizers (written for this project).
CORPUS = """\
The little lighthouse stood at the end of the pier, and every evening its keeper climbed the
ninety-nine steps to light the lamp. Ships passing in the night would see the beam turning slowly,
once every twelve seconds, and they would know where the rocks were hidden.
In 1887 the harbour held 312 fishing boats; by 1925 only 48 were left, and the keeper wrote the
numbers in a blue notebook: 3.14, 2.718, 1,000,000 and 65536 were his favourite figures.
"Where are you going?" asked the child. "To the market," said her mother, "we need bread, milk,
cheese and a few apples." They walked along the river, past the mill and the old stone bridge.
It's a beautiful day, isn't it? We'll see what the weather does tomorrow; they've said it'd rain.
Machine learning models read text as tokens. A tokenizer splits words into pieces, and each piece
has an identifier. Quantization stores the weights with fewer bits: four bits, five bits or eight.
def add(a, b):
    return a + b

for i in range(10):
    print(i * i, end=", ")
if (x >= 0 && y <= 100) { total += x * y; }  // C code with operators: -> ++ -- == != <<= >>=
Email: keeper@lighthouse.example, phone +44 20 7946 0958, price $12.50 or 11,99 EUR.
Café, naïve, résumé, Zürich, São Paulo, Kraków, and the Greek letters α β γ δ; 東京 and 北京.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs!
    Indented lines, tabs\tand multiple   spaces   appear in source files and poems alike.
Once upon a time there was a small robot who wanted to learn how to paint the sea. Every morning it
mixed blue and green and white, and every evening it looked at the canvas and said: not yet.
"""

# Llama-3 pre-tokenizer split pattern (contractions, letters, 1-3 digit groups, punctuation,
# newlines, whitespace).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

FALCON_SPECIALS = [">>TITLE<<", ">>ABSTRACT<<", ">>INTRODUCTION<<", ">>SUMMARY<<", ">>COMMENT<<",
                   ">>ANSWER<<", ">>QUESTION<<", ">>DOMAIN<<", ">>PREFIX<<", ">>SUFFIX<<",
                   ">>MIDDLE<<", "<|endoftext|>"]  # <|endoftext|> = 11 as in the real Falcon vocab


# ----------------------------------------------------------------------------------------------
# tokenizers

def train_bpe(pre_tokenizer, vocab_size, specials_first, specials_last):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials_first),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    lines = CORPUS.split("\n")
    tok.train_from_iterator([line + "\n" for line in lines] * 3, trainer=trainer)
    if specials_last:
        tok.add_special_tokens(list(specials_last))
    tok.decoder = decoders.ByteLevel()
    return tok


def finish_tokenizer_json(tok, post_processor, ignore_merges=False):
    """Serialise a trained tokenizer with a given post_processor JSON object."""
    obj = json.loads(tok.to_str())
    obj["post_processor"] = post_processor
    obj["model"]["ignore_merges"] = ignore_merges
    for a in obj["added_tokens"]:
        a["normalized"] = False
    return obj


BYTELEVEL_POST = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                  "use_regex": True}


def tok_llama3():
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|eot_id|>"]
    tok = train_bpe(pre, 500, [], specials)  # specials at the end of the vocab, as in Llama 3
    bos = tok.token_to_id("<|begin_of_text|>")
    post = {"type": "Sequence", "processors": [
        BYTELEVEL_POST,
        {"type": "TemplateProcessing",
         "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}}],
         "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                  {"Sequence": {"id": "A", "type_id": 0}},
                  {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                  {"Sequence": {"id": "B", "type_id": 1}}],
         "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [bos],
                                                  "tokens": ["<|begin_of_text|>"]}}},
    ]}
    obj = finish_tokenizer_json(tok, post, ignore_merges=True)
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
           "eos_token": "<|end_of_text|>", "clean_up_tokenization_spaces": False,
           "model_input_names": ["input_ids", "attention_mask"], "model_max_length": 2048}
    return obj, cfg, bos, tok.token_to_id("<|end_of_text|>")


def tok_gpt2():
    """GPT-2 style: ByteLevel with the GPT-2 regex, <|endoftext|> as the last id, no BOS added."""
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok = train_bpe(pre, 450, [], ["<|endoftext|>"])
    obj = finish_tokenizer_json(tok, BYTELEVEL_POST)
    cfg = {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>",
           "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "add_prefix_space": False,
           "add_bos_token": False, "model_max_length": 1024}
    eot = tok.token_to_id("<|endoftext|>")
    return obj, cfg, eot, eot


def tok_smollm():
    """SmolLM2 style: Digits(individual) + ByteLevel(GPT-2 regex), special tokens at ids 0..2."""
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tok = train_bpe(pre, 420, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], [])
    obj = finish_tokenizer_json(tok, BYTELEVEL_POST)
    cfg = {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|im_start|>",
           "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>", "add_prefix_space": False,
           "model_max_length": 2048}
    return obj, cfg, 1, 2


def tok_falcon():
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Punctuation(behavior="contiguous"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        pre_tokenizers.Digits(individual_digits=False),
        pre_tokenizers.Split(Regex("[0-9][0-9][0-9]"), behavior="isolated", invert=False),
    ])
    tok = train_bpe(pre, 480, FALCON_SPECIALS, [])
    obj = finish_tokenizer_json(tok, None)
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
           "add_prefix_space": False, "model_input_names": ["input_ids", "attention_mask"],
           "model_max_length": 2048}
    eot = tok.token_to_id("<|endoftext|>")
    assert eot == 11
    return obj, cfg, eot, eot


def tok_llama2_spm(spm_path):
    cfg = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
           "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
           "legacy": True, "clean_up_tokenization_spaces": False,
           "sp_model_kwargs": {}, "model_max_length": 4096}
    return spm_path, cfg, 1, 2


# ----------------------------------------------------------------------------------------------
# weights

def init_weights(model, seed, std=0.5, outlier_frac=0.01, outlier_scale=8.0):
    """Deterministic, deliberately wide initialisation (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied parameters appear once
            shape = p.shape
            if name.endswith(".bias"):
                if "norm" in name or "ln_" in name:
                    v = 0.2 * torch.randn(shape, generator=g)
                else:
                    v = 0.3 * torch.randn(shape, generator=g)
            elif "norm" in name or "ln_" in name:  # RMSNorm / LayerNorm gains: around 1
                v = 1.0 + 0.25 * torch.randn(shape, generator=g)
            elif "embed" in name or "word_embeddings" in name:
                v = 0.6 * std * torch.randn(shape, generator=g)  # keeps tied logits moderate
            else:  # linear weights with a few outliers
                v = (0.6 if name.startswith("lm_head") else 1.0) * std * torch.randn(shape, generator=g)
                mask = torch.rand(shape, generator=g) < outlier_frac
                v = torch.where(mask, v * outlier_scale, v)
            p.copy_(v.to(p.dtype))


def plant_zero_block(model, param_name, block_index, block=64):
    with torch.no_grad():
        p = dict(model.named_parameters())[param_name]
        flat = p.view(-1)
        assert flat.numel() >= (block_index + 1) * block
        flat[block_index * block:(block_index + 1) * block] = 0


# ----------------------------------------------------------------------------------------------
# variants

def llama_config(**kw):
    from transformers import LlamaConfig
    base = dict(num_hidden_layers=2, rms_norm_eps=1e-5, tie_word_embeddings=False,
                max_position_embeddings=128)
    base.update(kw)
    return LlamaConfig(**base)


def falcon_config(**kw):
    from transformers import FalconConfig
    base = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, layer_norm_epsilon=1e-5,
                max_position_embeddings=256)
    base.update(kw)
    return FalconConfig(**base)


def to_old_llama_form(cfg):
    """transformers-5 config dict -> the pre-5 form (top-level rope_theta/rope_scaling, torch_dtype)."""
    rp = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rp.pop("rope_theta")
    kind = rp.pop("rope_type")
    if kind == "default":
        cfg["rope_scaling"] = None
    else:
        cfg["rope_scaling"] = {"type": kind, **rp}
    cfg["torch_dtype"] = cfg.pop("dtype")
    if cfg.get("head_dim") == cfg["hidden_size"] // cfg["num_attention_heads"]:
        del cfg["head_dim"]  # pre-5 Llama configs leave the default head_dim out
    return cfg


def to_rw_form(cfg, vocab_size):
    """FalconConfig dict -> the old RWForCausalLM config (falcon-rw-1b style keys)."""
    return {
        "architectures": ["RWForCausalLM"],
        "model_type": "RefinedWebModel",
        "alibi": cfg["alibi"],
        "apply_residual_connection_post_layernorm": False,
        "attention_dropout": 0.0,
        "bias": cfg["bias"],
        "bos_token_id": cfg["bos_token_id"],
        "eos_token_id": cfg["eos_token_id"],
        "hidden_dropout": 0.0,
        "initializer_range": cfg["initializer_range"],
        "layer_norm_epsilon": cfg["layer_norm_epsilon"],
        "multi_query": cfg["multi_query"],
        "n_embed": cfg["hidden_size"],
        "n_head": cfg["num_attention_heads"],
        "n_layer": cfg["num_hidden_layers"],
        "parallel_attn": cfg["parallel_attn"],
        "torch_dtype": cfg["dtype"],
        "use_cache": True,
        "vocab_size": vocab_size,
    }


VARIANTS = [
    # name, seed, tokenizer, dtype
    ("llama-mha", 101, "spm", torch.float16),
    ("llama-gqa-llama3", 102, "llama3", torch.bfloat16),
    ("llama-tied-linear", 103, "gpt2", torch.float32),
    ("llama-dynamic-bias", 104, "smollm", torch.float16),
    ("falcon-7b-style", 105, "falcon", torch.bfloat16),
    ("falcon-40b-style", 106, "falcon", torch.float16),
    ("falcon-rw-style", 107, "gpt2", torch.float32),
]


def make_config(name, vocab, bos, eos, dtype):
    if name == "llama-mha":
        return llama_config(vocab_size=vocab, hidden_size=8, num_attention_heads=2,
                            intermediate_size=40, bos_token_id=bos, eos_token_id=eos, dtype=dtype,
                            rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    if name == "llama-gqa-llama3":
        # head_dim 8 has 4 rotary frequencies (wavelengths ~6.3, 167, 4.4e3, 1.2e5 positions at
        # theta 5e5); original_max_position_embeddings 256 with low 1 / high 4 puts one in each
        # llama3 region (kept < 64, interpolated 64..256, divided by factor > 256).
        return llama_config(vocab_size=vocab, hidden_size=32, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=8, intermediate_size=64,
                            max_position_embeddings=2048, bos_token_id=bos, eos_token_id=eos,
                            dtype=dtype,
                            rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0,
                                             "factor": 8.0, "low_freq_factor": 1.0,
                                             "high_freq_factor": 4.0,
                                             "original_max_position_embeddings": 256})
    if name == "llama-tied-linear":
        return llama_config(vocab_size=vocab, hidden_size=32, num_attention_heads=4,
                            intermediate_size=48, tie_word_embeddings=True,
                            max_position_embeddings=64, bos_token_id=bos, eos_token_id=eos,
                            dtype=dtype,
                            rope_parameters={"rope_type": "linear", "factor": 2.0,
                                             "rope_theta": 10000.0})
    if name == "llama-dynamic-bias":
        return llama_config(vocab_size=vocab, hidden_size=24, num_attention_heads=3, head_dim=16,
                            intermediate_size=40, attention_bias=True, mlp_bias=True,
                            max_position_embeddings=32, bos_token_id=bos, eos_token_id=eos,
                            pad_token_id=eos, dtype=dtype,
                            rope_parameters={"rope_type": "dynamic", "factor": 2.0,
                                             "rope_theta": 10000.0})
    if name == "falcon-7b-style":
        return falcon_config(vocab_size=vocab, multi_query=True, parallel_attn=True,
                             new_decoder_architecture=False, bias=False, alibi=False,
                             bos_token_id=bos, eos_token_id=eos, dtype=dtype,
                             rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    if name == "falcon-40b-style":
        return falcon_config(vocab_size=vocab, new_decoder_architecture=True, num_kv_heads=2,
                             num_ln_in_parallel_attn=2, parallel_attn=True, bias=False,
                             alibi=False, tie_word_embeddings=False, bos_token_id=bos,
                             eos_token_id=eos, dtype=dtype,
                             rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    if name == "falcon-rw-style":
        return falcon_config(vocab_size=vocab, alibi=True, bias=True, parallel_attn=False,
                             multi_query=False, new_decoder_architecture=False,
                             bos_token_id=bos, eos_token_id=eos, dtype=dtype)
    raise KeyError(name)


def dump_json(path, obj, sort_keys=True):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=sort_keys, ensure_ascii=False)
        f.write("\n")


def build_variant(name, seed, tokkind, dtype, outdir, spm_path):
    from transformers import AutoModelForCausalLM, GenerationConfig

    d = os.path.join(outdir, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)

    if tokkind == "spm":
        tok_obj, tok_cfg, bos, eos = tok_llama2_spm(spm_path)
        vocab = 32000
    else:
        tok_obj, tok_cfg, bos, eos = {"llama3": tok_llama3, "gpt2": tok_gpt2,
                                      "smollm": tok_smollm, "falcon": tok_falcon}[tokkind]()
        vocab = len(tok_obj["model"]["vocab"]) + sum(
            1 for a in tok_obj["added_tokens"] if a["content"] not in tok_obj["model"]["vocab"])
    model_vocab = vocab
    if name == "falcon-rw-style":
        # like falcon-rw-1b (50304 rows for a 50257-token tokenizer): pad the embedding to a
        # multiple of 64; ids >= the tokenizer size never come out of the tokenizer.
        model_vocab = (vocab + 63) // 64 * 64

    config = make_config(name, model_vocab, bos, eos, dtype)
    torch.manual_seed(seed)
    # built directly in the target dtype: model.to(dtype) would also cast the float32 rotary
    # inv_freq buffers, which from_pretrained keeps in float32
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    init_weights(model, seed)
    if name == "llama-mha":
        # one all-zero 64-element block (flat elements 64..127 of a [8, 40] weight)
        plant_zero_block(model, "model.layers.0.mlp.down_proj.weight", 1)
    model.eval()
    model.save_pretrained(d)
    if not os.path.exists(os.path.join(d, "generation_config.json")):
        GenerationConfig(bos_token_id=bos, eos_token_id=eos).save_pretrained(d)

    cfg_path = os.path.join(d, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    if name in ("llama-mha", "llama-tied-linear"):
        dump_json(cfg_path, to_old_llama_form(cfg))
    elif name == "falcon-rw-style":
        os.rename(cfg_path, os.path.join(d, "config.hf.json"))
        dump_json(cfg_path, to_rw_form(cfg, model_vocab))

    if tokkind == "spm":
        shutil.copyfile(tok_obj, os.path.join(d, "tokenizer.model"))
    else:
        dump_json(os.path.join(d, "tokenizer.json"), tok_obj, sort_keys=False)
    dump_json(os.path.join(d, "tokenizer_config.json"), tok_cfg)

    extra = []
    if name == "llama-mha":
        # the same tensors, sharded
        sd = os.path.join(outdir, "llama-mha-sharded")
        if os.path.isdir(sd):
            shutil.rmtree(sd)
        model.save_pretrained(sd, max_shard_size="6KB")
        for f in os.listdir(d):
            if not f.startswith("model."):
                shutil.copyfile(os.path.join(d, f), os.path.join(sd, f))
        extra.append(("llama-mha-sharded", sd))
    for vname, vd in [(name, d)] + extra:
        for f in os.listdir(vd):
            os.chmod(os.path.join(vd, f), 0o644)  # save_pretrained writes some files 0600
    return model, [(name, d)] + extra


# ----------------------------------------------------------------------------------------------
# verification

def load_state(d):
    from safetensors.torch import load_file
    idx = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        assert len(files) >= 3, files
        out = {}
        for fn in files:
            out.update(load_file(os.path.join(d, fn)))
        return out, len(files)
    return load_file(os.path.join(d, "model.safetensors")), 1


def verify(name, d, ref_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer, FalconConfig, FalconForCausalLM

    if name == "falcon-rw-style":
        cfg = FalconConfig.from_json_file(os.path.join(d, "config.hf.json"))
        model = FalconForCausalLM.from_pretrained(d, config=cfg, dtype=ref_model.dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(d, dtype=ref_model.dtype)
    model.eval()
    # the reloaded config must describe the same model (old-form configs included)
    for key in ("rope_parameters", "tie_word_embeddings", "num_key_value_heads", "head_dim",
                "num_kv_heads", "alibi", "new_decoder_architecture", "multi_query"):
        a, b = getattr(ref_model.config, key, None), getattr(model.config, key, None)
        if key == "rope_parameters" and b is not None:  # old "type" key kept next to rope_type
            b = {k: v for k, v in b.items() if not (k == "type" and v == b.get("rope_type"))}
        if a != b:
            raise SystemExit(f"{name}: reloaded config {key} {b!r} != {a!r}")
    text = "The keeper wrote 1887 numbers, isn't it? Café 東京!"
    if os.path.exists(os.path.join(d, "tokenizer.model")):
        # transformers 5 converts tokenizer.model through protobuf, which may be missing: check the
        # SentencePiece file with sentencepiece itself (BOS added as LlamaTokenizer does).
        import sentencepiece
        sp = sentencepiece.SentencePieceProcessor(model_file=os.path.join(d, "tokenizer.model"))
        enc = [sp.bos_id()] + sp.encode(text)
        dec = sp.decode(enc[1:])
        ntok = sp.get_piece_size()
        assert (sp.bos_id(), sp.eos_id(), ntok) == (1, 2, 32000)
    else:
        tok = AutoTokenizer.from_pretrained(d)
        enc = tok(text)["input_ids"]
        dec = tok.decode(enc, skip_special_tokens=True)
        ntok = len(tok)
    if dec.strip() != text:
        raise SystemExit(f"{name}: tokenizer round trip {dec!r} != {text!r}")
    n = 40 if name == "llama-dynamic-bias" else 12  # dynamic: beyond max_position_embeddings 32
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, ntok, (2, n), generator=g)
    with torch.no_grad():
        logits = model(ids).logits.float()
        ref = ref_model(ids).logits.float()
    if not torch.isfinite(logits).all():
        raise SystemExit(f"{name}: non-finite logits")
    if not torch.equal(logits, ref):
        raise SystemExit(f"{name}: reloaded logits differ from the in-memory model "
                         f"(max {float((logits - ref).abs().max())})")
    p = logits.softmax(-1)
    entropy = float(-(p * p.clamp_min(1e-30).log()).sum(-1).mean())
    distinct = len(set(logits.argmax(-1).flatten().tolist()))
    return enc, entropy, float(logits.std()), distinct


def sha_dir(d):
    h = hashlib.sha256()
    for f in sorted(os.listdir(d)):
        h.update(f.encode())
        with open(os.path.join(d, f), "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()[:16]


def main():
    ap = argparse.ArgumentParser(description="create tiny random HF checkpoints for qrun tests")
    ap.add_argument("outdir", nargs="?", default="tests/data/tiny")
    ap.add_argument("--spm", default=SPM_DEFAULT, help="Llama-2 tokenizer.model to copy")
    args = ap.parse_args()
    if not os.path.exists(args.spm):
        sys.exit(f"{args.spm} not found (pass --spm PATH to a Llama-2 tokenizer.model)")
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    os.makedirs(args.outdir, exist_ok=True)

    rows = []
    for name, seed, tokkind, dtype in VARIANTS:
        model, dirs = build_variant(name, seed, tokkind, dtype, args.outdir, args.spm)
        for vname, d in dirs:
            enc, ent, std, distinct = verify(vname, d, model)
            state, nfiles = load_state(d)
            rows.append((vname, d, state, nfiles, enc, ent, std, distinct))

    # the sharded copy must hold bit-identical tensors
    a = next(r[2] for r in rows if r[0] == "llama-mha")
    b = next(r[2] for r in rows if r[0] == "llama-mha-sharded")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "shards differ"

    print(f"{'variant':20} {'params':>8} {'bytes':>9} {'files':>5} {'dtype':>9} "
          f"{'H(nats)':>7} {'std':>5} {'argmax':>6}  sha256(dir)[:16]  tokens")
    total = 0
    for vname, d, state, nfiles, enc, ent, std, distinct in rows:
        params = sum(t.numel() for t in state.values())
        nbytes = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        total += nbytes
        dtype = str(next(iter(state.values())).dtype).replace("torch.", "")
        print(f"{vname:20} {params:8d} {nbytes:9d} {nfiles:5d} {dtype:>9} {ent:7.2f} {std:5.2f} "
              f"{distinct:6d}  {sha_dir(d)}  {enc[:8]}")
    print(f"total bytes: {total}")
    print("all variants reload with transformers, logits finite and identical to the in-memory models")


if __name__ == "__main__":
    main()
