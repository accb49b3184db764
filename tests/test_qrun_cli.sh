#!/bin/sh
# qrun as a user runs it, on tiny converted models: help, usage errors
# (exit 2), bad models and prompts (exit 1), tokenize, json, greedy
# determinism, seeds, -n, stop strings, truncation, chat, -v.
# Needs QRUN, QCONVERT and QRUN_TEST_DATA (set by meson).
set -u
fails=0
pass=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ok() { pass=$((pass + 1)); }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }

# expect NAME WANT_RC NEEDLE -- command...: exit status and a word of output
expect() {
    name=$1 want=$2 needle=$3
    shift 4
    "$@" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    if [ "$rc" -ne "$want" ]; then
        bad "$name: exit $rc, want $want"; cat "$tmp/err"; return
    fi
    if [ -n "$needle" ] && ! grep -qF -- "$needle" "$tmp/out" "$tmp/err"; then
        bad "$name: output does not mention '$needle'"; cat "$tmp/out" "$tmp/err"; return
    fi
    ok
}

M="$tmp/llama.qbin"
F="$tmp/falcon.qbin"
"$QCONVERT" "$QRUN_TEST_DATA/tiny/llama-gqa-llama3" -o "$M" --quant nf4 --quiet >/dev/null || { echo "convert failed"; exit 1; }
"$QCONVERT" "$QRUN_TEST_DATA/tiny/falcon-7b-style" -o "$F" --quant int8 --quiet >/dev/null || { echo "convert failed"; exit 1; }

expect help 0 "usage: qrun" -- "$QRUN" --help
for flag in --model --prompt --file --chat --system --parse-special --no-special --truncate \
    --n-predict --temp --top-k --top-p --min-p --repeat-penalty --repeat-last-n --seed --stop \
    --n-sequences --ignore-eos --ctx-size --batch-size --threads --backend --gpu-layers \
    --kv-type --no-verify --tokenize --json --verbose --help --version; do
    grep -qF -- "$flag" "$tmp/out" || bad "help does not document $flag"
done
expect version 0 "qrun 0." -- "$QRUN" --version
expect no-model 2 "missing -m" -- "$QRUN" -p hi
expect no-prompt 2 "give a prompt" -- "$QRUN" -m "$M"
expect bad-flag 2 "unknown option '--frob'" -- "$QRUN" -m "$M" -p hi --frob
expect bad-number 2 "bad --temp 'warm'" -- "$QRUN" -m "$M" -p hi --temp warm
expect bad-topp 2 "bad --top-p '2'" -- "$QRUN" -m "$M" -p hi --top-p 2
expect bad-backend 2 "unknown --backend 'tpu'" -- "$QRUN" -m "$M" -p hi --backend tpu
expect missing-value 2 "needs a value" -- "$QRUN" -m "$M" -p
expect missing-model 1 "$tmp/nope.qbin" -- "$QRUN" -m "$tmp/nope.qbin" -p hi
head -c 5000 "$M" >"$tmp/cut.qbin"
expect corrupt-model 1 "cut.qbin" -- "$QRUN" -m "$tmp/cut.qbin" -p hi

expect tokenize 0 "[" -- "$QRUN" -m "$M" -p "Hello world" --tokenize
tok=$(cat "$tmp/out")
expect json 0 '"prompt_ids"' -- "$QRUN" -m "$M" -p "Hello world" -n 6 --temp 0 --json
python3 - "$tmp/out" "$tok" <<'PY' && ok || bad "json: not valid or prompt ids differ from --tokenize"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["prompt_ids"] == json.loads(sys.argv[2]), (d["prompt_ids"], sys.argv[2])
assert len(d["generated_ids"]) == 6 and d["stop_reason"] == "length", d
PY

# Greedy output is deterministic; a seed reproduces a sampled one.
"$QRUN" -m "$M" -p "Once upon" -n 12 --temp 0 >"$tmp/g1" 2>/dev/null
"$QRUN" -m "$M" -p "Once upon" -n 12 --temp 0 >"$tmp/g2" 2>/dev/null
cmp -s "$tmp/g1" "$tmp/g2" && [ -s "$tmp/g1" ] && ok || bad "greedy output differs between runs"
"$QRUN" -m "$F" -p "abc" -n 12 --temp 1.5 --seed 7 --json >"$tmp/s1" 2>/dev/null
"$QRUN" -m "$F" -p "abc" -n 12 --temp 1.5 --seed 7 --json >"$tmp/s2" 2>/dev/null
python3 - "$tmp/s1" "$tmp/s2" <<'PY' && ok || bad "same seed, different tokens"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
assert a["generated_ids"] == b["generated_ids"] and len(a["generated_ids"]) == 12
PY

# -n limits tokens; a stop string taken from greedy output stops before it.
"$QRUN" -m "$M" -p "Once upon" -n 24 --temp 0 --json >"$tmp/full" 2>/dev/null
stop=$(python3 -c "import json,sys; t=json.load(open(sys.argv[1]))['text']; print(t[len(t)//2:len(t)//2+3] if len(t) >= 6 else '')" "$tmp/full")
if [ -n "$stop" ]; then
    "$QRUN" -m "$M" -p "Once upon" -n 24 --temp 0 --json --stop "$stop" >"$tmp/stopped" 2>/dev/null
    python3 - "$tmp/full" "$tmp/stopped" "$stop" <<'PY' && ok || bad "stop string"
import json, sys
full = json.load(open(sys.argv[1]))["text"]
d = json.load(open(sys.argv[2]))
stop = sys.argv[3]
assert d["stop_reason"] == "stop_string", d
assert stop not in d["text"] and full.startswith(d["text"]) and full[len(d["text"]):].startswith(stop)
PY
else
    bad "stop: greedy text too short to pick a stop string"
fi

# Prompt longer than the context; truncation; invalid UTF-8.
long="one two three four five six seven eight nine ten eleven twelve thirteen"
expect too-long 1 "context holds 8" -- "$QRUN" -m "$M" -p "$long" -c 8 -n 2
expect truncate 0 "" -- "$QRUN" -m "$M" -p "$long" -c 8 -n 2 --truncate
expect bad-utf8 1 "UTF-8" -- "$QRUN" -m "$M" -p "$(printf 'ab\377cd')" -n 2
printf 'Hello from a file' >"$tmp/prompt.txt"
expect file-prompt 0 "" -- "$QRUN" -m "$M" -f "$tmp/prompt.txt" -n 3 --temp 0
expect missing-file 1 "nope.txt" -- "$QRUN" -m "$M" -f "$tmp/nope.txt"
expect sequences 0 "sequence 2" -- "$QRUN" -m "$F" -p "abc" -n 4 --n-sequences 2 --seed 1

# Chat: two turns on stdin, then /exit.
printf 'hi\nhow are you\n/exit\n' | "$QRUN" -m "$M" --chat -n 5 --temp 0 >"$tmp/chat" 2>"$tmp/chat.err"
[ $? -eq 0 ] && [ "$(grep -c '' "$tmp/chat")" -ge 2 ] && ok || { bad "chat"; cat "$tmp/chat.err"; }

expect verbose 0 "tok/s" -- "$QRUN" -m "$M" -p "hi" -n 3 --temp 0 -v
# --backend cuda: works where the CUDA engine is built and a GPU is there,
# otherwise a clear error (exit 1), never a crash.
"$QRUN" -m "$M" -p "hi" -n 3 --temp 0 --backend cuda >"$tmp/out" 2>"$tmp/err"
rc=$?
if [ "$rc" -eq 0 ] || { [ "$rc" -eq 1 ] && grep -qi "cuda\|gpu" "$tmp/err"; }; then ok; else
    bad "cuda-backend: exit $rc"; cat "$tmp/err"; fi

# Prompt from standard input; several sequences in one JSON object; chat
# ending at end of input; falcon greedy is deterministic too.
printf 'Hello from stdin' | "$QRUN" -m "$M" -f - -n 3 --temp 0 --json >"$tmp/stdin.json" 2>/dev/null
"$QRUN" -m "$M" -p 'Hello from stdin' -n 3 --temp 0 --json >"$tmp/arg.json" 2>/dev/null
python3 - "$tmp/stdin.json" "$tmp/arg.json" <<'PY' && ok || bad "-f - differs from -p"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
assert a["prompt_ids"] == b["prompt_ids"] and a["generated_ids"] == b["generated_ids"]
PY
"$QRUN" -m "$F" -p "abc" -n 4 --n-sequences 3 --seed 5 --json >"$tmp/seqs" 2>/dev/null
python3 - "$tmp/seqs" <<'PY' && ok || bad "--n-sequences --json"
import json, sys
d = json.load(open(sys.argv[1]))
assert len(d["sequences"]) == 3 and all(len(s["generated_ids"]) <= 4 for s in d["sequences"]), d
assert d["timings"]["generated_tokens"] == sum(len(s["generated_ids"]) for s in d["sequences"]), d
PY
printf 'hi\n' | "$QRUN" -m "$F" --chat -n 4 --temp 0 --system "Be brief." >"$tmp/chat2" 2>"$tmp/chat2.err"
[ $? -eq 0 ] && ok || { bad "chat to end of input"; cat "$tmp/chat2.err"; }
"$QRUN" -m "$F" -p "xyz" -n 10 --temp 0 >"$tmp/fg1" 2>/dev/null
"$QRUN" -m "$F" -p "xyz" -n 10 --temp 0 >"$tmp/fg2" 2>/dev/null
cmp -s "$tmp/fg1" "$tmp/fg2" && ok || bad "falcon greedy output differs between runs"
expect chat-json 2 "--chat" -- "$QRUN" -m "$M" --chat --json
expect two-inputs 2 "only one" -- "$QRUN" -m "$M" -p hi -f "$tmp/prompt.txt"
expect bad-n 2 "bad --n-predict" -- "$QRUN" -m "$M" -p hi -n -2
expect bad-seed 2 "bad --seed" -- "$QRUN" -m "$M" -p hi --seed -1
expect bad-gpu-layers 2 "bad --gpu-layers" -- "$QRUN" -m "$M" -p hi --gpu-layers many

echo "$pass passed, $fails failed"
[ "$fails" -eq 0 ]
