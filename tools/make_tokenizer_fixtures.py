#!/usr/bin/env python3
"""Reference token ids for tests/test_tokenizer_ref.c (tests/data/tokenizer/).

Run from the repository root:

    python3 tools/make_tokenizer_fixtures.py            # build tokenizers + write expected ids
    python3 tools/make_tokenizer_fixtures.py --no-build # only re-derive the *.expected.json files

Needs: sentencepiece, tokenizers (0.23.x). No transformers, no network.

Steps:
1. Builds two byte-level BPE tokenizer.json files with the `tokenizers` library, configured like the
   real Falcon and Llama-3 tokenizer.json files (normalizer, pre-tokenizer, decoder, post-processor,
   special tokens, `ignore_merges`, merges written as "a b" strings) but with their own small
   vocabularies (8000 ids), trained with BpeTrainer on local text: /usr/share/common-licenses/*,
   the top-level *.py files of the Python standard library and pydoc_data/topics.py, and the corpus.
   They are NOT the real Falcon / Llama-3 vocabularies, which cannot be had offline.
2. Copies SmolLM2-135M-Instruct's real tokenizer.json (models-cache/, see fetch_smollm2.py).
3. For every tokenizer and every string of tests/data/tokenizer/corpus.json, records the reference
   ids and decodes into tests/data/tokenizer/<name>.expected.json.

What the recorded fields mean (the flags are tokenizer.h's):
  ids           flags 0: no special tokens added, special-token text NOT recognised.
                  sentencepiece: SentencePieceProcessor.encode(text).
                  bpe: Tokenizer with encode_special_tokens = True (transformers'
                       split_special_tokens=True), encode(text, add_special_tokens=False).
  ids_add       TOK_ADD_SPECIAL:  sentencepiece: [bos] + ids (LlamaTokenizer add_bos_token).
                  bpe: encode_special_tokens = True, encode(text, add_special_tokens=True)
                       (the post_processor's template, e.g. <|begin_of_text|>).
  ids_parse     TOK_PARSE_SPECIAL: special-token text in the input becomes its id.
                  bpe: the `tokenizers` default, encode(text, add_special_tokens=False): every
                       added token whose content occurs in the text is matched (all added tokens of
                       these files are special; lstrip/rstrip/single_word are all false).
                  sentencepiece (sentencepiece itself never parses control symbols): the text is
                       cut at occurrences of the texts of the control and unknown pieces
                       ("<unk>", "<s>", "</s>"), leftmost first, longest at a position; each
                       non-empty piece of text between them is encoded with
                       SentencePieceProcessor.encode (so each gets its own dummy-prefix space, like
                       transformers' LlamaTokenizer with legacy=true); the matched texts become
                       their ids. (transformers 5's converted LlamaTokenizer differs from
                       sentencepiece even on plain text, so it is not the reference.)
  ids_parse_add TOK_PARSE_SPECIAL | TOK_ADD_SPECIAL (sentencepiece: [bos] + ids_parse).
  decode_plain  reference decode of `ids` (flags 0).
  decode        reference decode of `ids_parse_add`, flags 0
                  (sentencepiece: SentencePieceProcessor.decode, which drops control pieces and
                  writes <unk> as " \u2047 "; bpe: Tokenizer.decode(skip_special_tokens=False)).
  decode_skip   reference decode of `ids_parse_add` with TOK_SKIP_SPECIAL
                  (sentencepiece: decode of the ids without control/unknown ids;
                  bpe: Tokenizer.decode(skip_special_tokens=True)).
  slices        [start, end, text]: decode (flags 0) of ids_parse_add[start:end], chosen where the
                slice cuts a UTF-8 sequence so the reference writes U+FFFD.
To keep the files small a field equal to its default is left out: ids_add, ids_parse default to
ids; ids_parse_add to ids_add; decode_plain to text; decode to decode_plain; decode_skip to decode;
slices to []. Strings that contain U+0000 are written as {"hex": "..."} (UTF-8 bytes), since C JSON
strings cannot hold NUL.
"""
import argparse
import glob
import hashlib
import json
import os
import shutil
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
DATA = os.path.join(ROOT, "tests", "data")
OUTDIR = os.path.join(DATA, "tokenizer")
PYLIB = "/root/.pyenv/versions/3.11.7/lib/python3.11"

FALCON_SPECIALS = [">>TITLE<<", ">>ABSTRACT<<", ">>INTRODUCTION<<", ">>SUMMARY<<", ">>COMMENT<<",
                   ">>ANSWER<<", ">>QUESTION<<", ">>DOMAIN<<", ">>PREFIX<<", ">>SUFFIX<<",
                   ">>MIDDLE<<", "<|endoftext|>"]  # ids 0..11, <|endoftext|> = 11 as in Falcon
# Llama 3.1's first special tokens, in order, after the trained vocabulary.
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                   "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>",
                   "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
VOCAB_SIZE = 8000

# name, path relative to tests/data, kind
TOKENIZERS = [
    ("llama2-spm", "tiny/llama-mha/tokenizer.model", "sentencepiece"),
    ("smollm2", "tokenizer/smollm2-tokenizer.json", "bpe"),
    ("falcon-style", "tokenizer/falcon-style-tokenizer.json", "bpe"),
    ("llama3-style", "tokenizer/llama3-style-tokenizer.json", "bpe"),
    ("gpt2-tiny", "tiny/llama-tied-linear/tokenizer.json", "bpe"),
]


def load_corpus():
    with open(os.path.join(OUTDIR, "corpus.json"), encoding="utf-8") as f:
        corpus = json.load(f)
    assert isinstance(corpus, list) and all(isinstance(s, str) for s in corpus)
    return corpus


# ----------------------------------------------------------------------------------------------
# building the Falcon-style and Llama-3-style tokenizers

def training_texts(corpus):
    files = sorted(glob.glob("/usr/share/common-licenses/*"))
    files += sorted(glob.glob(os.path.join(PYLIB, "*.py")))
    files.append(os.path.join(PYLIB, "pydoc_data", "topics.py"))
    lines = []
    h = hashlib.sha256()
    for p in files:
        if not os.path.isfile(p):
            continue
        with open(p, "rb") as f:
            data = f.read()
        h.update(os.path.basename(p).encode() + b"\0" + data)
        lines.extend(data.decode("utf-8", errors="replace").splitlines(keepends=True))
    for s in corpus:
        lines.append(s)
    print(f"training text: {len(files)} files, {sum(len(x) for x in lines)} chars, "
          f"sha256 {h.hexdigest()[:16]}", file=sys.stderr)
    return lines


def train(pre_tokenizer, corpus, specials_first, specials_last):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=list(specials_first),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(training_texts(corpus), trainer=trainer)
    if specials_last:
        tok.add_special_tokens(list(specials_last))
    tok.decoder = decoders.ByteLevel()
    obj = json.loads(tok.to_str())
    for a in obj["added_tokens"]:
        a["normalized"] = False
    # the real files write merges as "a b" strings (byte-level tokens never hold a space)
    obj["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m
                              for m in obj["model"]["merges"]]
    return obj


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)
        f.write("\n")


def build_falcon(corpus):
    from tokenizers import Regex, pre_tokenizers
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Punctuation(behavior="contiguous"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        pre_tokenizers.Digits(individual_digits=False),
        pre_tokenizers.Split(Regex("[0-9][0-9][0-9]"), behavior="isolated", invert=False),
    ])
    obj = train(pre, corpus, FALCON_SPECIALS, [])
    obj["normalizer"] = None
    obj["post_processor"] = None
    obj["model"]["ignore_merges"] = False
    assert [a["id"] for a in obj["added_tokens"]] == list(range(12))
    write_json(os.path.join(OUTDIR, "falcon-style-tokenizer.json"), obj)


def build_llama3(corpus):
    from tokenizers import Regex, pre_tokenizers
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    obj = train(pre, corpus, [], LLAMA3_SPECIALS)
    bos = next(a["id"] for a in obj["added_tokens"] if a["content"] == "<|begin_of_text|>")
    obj["normalizer"] = None
    obj["model"]["ignore_merges"] = True
    obj["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
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
    write_json(os.path.join(OUTDIR, "llama3-style-tokenizer.json"), obj)


# ----------------------------------------------------------------------------------------------
# reference ids

def jstr(s):
    """A JSON value for a string; NUL-containing strings as {"hex": UTF-8 bytes}."""
    if "\0" in s:
        return {"hex": s.encode("utf-8").hex()}
    return s


DEFAULTS = [("ids_add", "ids"), ("ids_parse", "ids"), ("ids_parse_add", "ids_add"),
            ("decode_plain", "text"), ("decode", "decode_plain"), ("decode_skip", "decode")]


def compact(case):
    """Leave out fields equal to their default (see the module docstring)."""
    full = dict(case)
    out = dict(case)
    for field, default in DEFAULTS:
        if full[field] == full[default]:
            del out[field]
    if not out["slices"]:
        del out["slices"]
    return out


def fffd_slices(ids, dec):
    """Up to 3 (start, end) slices of ids whose reference decode holds U+FFFD."""
    out = []
    n = len(ids)
    cands = [(0, k) for k in range(1, n)] + [(k, n) for k in range(1, n)]
    cands += [(k, k + 1) for k in range(n)]
    for a, b in cands:
        if "\ufffd" in dec(ids[a:b]):
            out.append((a, b))
            if len(out) == 3:
                break
    return out


def spm_cases(path, corpus):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=path)
    specials = {}
    for i in range(sp.get_piece_size()):
        if sp.is_control(i) or sp.is_unknown(i):
            specials[sp.id_to_piece(i)] = i
    spec_ids = set(specials.values())
    bos = sp.bos_id()
    by_len = sorted(specials, key=len, reverse=True)

    def parse(text):
        ids, i, start = [], 0, 0
        while i < len(text):
            m = next((s for s in by_len if text.startswith(s, i)), None)
            if m is None:
                i += 1
                continue
            if i > start:
                ids += sp.encode(text[start:i])
            ids.append(specials[m])
            i += len(m)
            start = i
        if start < len(text):
            ids += sp.encode(text[start:])
        return ids

    def dec(ids):
        return sp.decode(list(ids))

    cases = []
    for text in corpus:
        ids = sp.encode(text)
        ip = parse(text)
        ipa = [bos] + ip
        cases.append({
            "text": jstr(text), "ids": ids, "ids_add": [bos] + ids, "ids_parse": ip,
            "ids_parse_add": ipa, "decode_plain": jstr(dec(ids)), "decode": jstr(dec(ipa)),
            "decode_skip": jstr(dec([i for i in ipa if i not in spec_ids])),
            "slices": [[a, b, jstr(dec(ipa[a:b]))] for a, b in fffd_slices(ipa, dec)],
        })
    meta = {"bos": bos, "eos": sp.eos_id(), "unk": sp.unk_id(),
            "special_texts": sorted(specials, key=lambda s: specials[s])}
    return cases, meta


def bpe_cases(path, corpus):
    from tokenizers import Tokenizer
    parse_tok = Tokenizer.from_file(path)
    plain_tok = Tokenizer.from_file(path)
    plain_tok.encode_special_tokens = True
    assert not parse_tok.encode_special_tokens

    def dec(ids, skip=False):
        return parse_tok.decode(list(ids), skip_special_tokens=skip)

    cases = []
    for text in corpus:
        ids = plain_tok.encode(text, add_special_tokens=False).ids
        ida = plain_tok.encode(text, add_special_tokens=True).ids
        ip = parse_tok.encode(text, add_special_tokens=False).ids
        ipa = parse_tok.encode(text, add_special_tokens=True).ids
        cases.append({
            "text": jstr(text), "ids": ids, "ids_add": ida, "ids_parse": ip, "ids_parse_add": ipa,
            "decode_plain": jstr(dec(ids)), "decode": jstr(dec(ipa)),
            "decode_skip": jstr(dec(ipa, True)),
            "slices": [[a, b, jstr(dec(ipa[a:b]))] for a, b in fffd_slices(ipa, dec)],
        })
    with open(path, encoding="utf-8") as f:
        obj = json.load(f)
    meta = {"added_tokens": [[a["id"], a["content"], a["special"]] for a in obj["added_tokens"]]}
    return cases, meta


def write_expected(name, rel, kind, cases, meta):
    import tokenizers
    import sentencepiece
    with open(os.path.join(DATA, rel), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    path = os.path.join(OUTDIR, f"{name}.expected.json")
    head = {
        "tokenizer": rel, "kind": kind, "sha256": digest,
        "generator": "tools/make_tokenizer_fixtures.py",
        "versions": {"sentencepiece": sentencepiece.__version__,
                     "tokenizers": tokenizers.__version__},
        "meta": meta,
    }
    # one case per line: small diffs, easy to read
    with open(path, "w", encoding="utf-8") as f:
        f.write("{\n")
        for k, v in head.items():
            f.write(f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)},\n")
        f.write('  "cases": [\n')
        f.write(",\n".join("    " + json.dumps(compact(c), ensure_ascii=False,
                                                separators=(",", ":"))
                           for c in cases))
        f.write("\n  ]\n}\n")
    print(f"{path}: {len(cases)} cases, {os.path.getsize(path)} bytes", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--no-build", action="store_true",
                    help="keep the committed tokenizer files; only write *.expected.json")
    ap.add_argument("--smollm2", default=os.path.join(ROOT, "models-cache",
                                                      "smollm2-135m-instruct", "tokenizer.json"),
                    help="SmolLM2-135M-Instruct tokenizer.json to copy")
    args = ap.parse_args()
    corpus = load_corpus()
    if not args.no_build:
        build_falcon(corpus)
        build_llama3(corpus)
        dst = os.path.join(OUTDIR, "smollm2-tokenizer.json")
        if os.path.abspath(args.smollm2) != os.path.abspath(dst):
            shutil.copyfile(args.smollm2, dst)
    for name, rel, kind in TOKENIZERS:
        path = os.path.join(DATA, rel)
        if kind == "sentencepiece":
            cases, meta = spm_cases(path, corpus)
        else:
            cases, meta = bpe_cases(path, corpus)
        write_expected(name, rel, kind, cases, meta)


if __name__ == "__main__":
    main()
