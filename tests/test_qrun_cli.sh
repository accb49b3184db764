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
doc="$QRUN_TEST_DATA/../../docs/cli.md"
if [ -f "$doc" ]; then
    for flag in $(grep -o -- '--[a-z][a-z-]*' "$tmp/out" | sort -u); do
        grep -qF -- "$flag" "$doc" || bad "docs/cli.md does not document $flag"
    done
fi
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

# json_ids FILE KEY: the raw value of a top-level array of ids ("[1,2]").
json_ids() { sed -n "s/.*\"$2\":\(\[[0-9,]*\]\).*/\1/p" "$1"; }
count_ids() { tr -cd ',' <<EOF_IDS | wc -c
$1
EOF_IDS
}

expect tokenize 0 "[" -- "$QRUN" -m "$M" -p "Hello world" --tokenize
tok=$(cat "$tmp/out")
expect json 0 '"stop_reason":"length"' -- "$QRUN" -m "$M" -p "Hello world" -n 6 --temp 0 --json
[ "$(json_ids "$tmp/out" prompt_ids)" = "$tok" ] && ok || bad "json prompt ids differ from --tokenize"
gen=$(json_ids "$tmp/out" generated_ids)
[ -n "$gen" ] && [ "$(count_ids "$gen")" -eq 5 ] && ok || bad "json: -n 6 gave '$gen'"

# Greedy output is deterministic; a seed reproduces a sampled one.
"$QRUN" -m "$M" -p "Once upon" -n 12 --temp 0 >"$tmp/g1" 2>/dev/null
"$QRUN" -m "$M" -p "Once upon" -n 12 --temp 0 >"$tmp/g2" 2>/dev/null
cmp -s "$tmp/g1" "$tmp/g2" && [ -s "$tmp/g1" ] && ok || bad "greedy output differs between runs"
"$QRUN" -m "$F" -p "abc" -n 12 --temp 1.5 --seed 7 --json >"$tmp/s1" 2>/dev/null
"$QRUN" -m "$F" -p "abc" -n 12 --temp 1.5 --seed 7 --json >"$tmp/s2" 2>/dev/null
a=$(json_ids "$tmp/s1" generated_ids)
[ -n "$a" ] && [ "$a" = "$(json_ids "$tmp/s2" generated_ids)" ] && [ "$(count_ids "$a")" -eq 11 ] &&
    ok || bad "same seed, different tokens"

# A stop string taken from the middle of the greedy output: the output stops
# right before it, and what was printed is a prefix of the full output.
"$QRUN" -m "$M" -p "Once upon" -n 24 --temp 0 --ignore-eos >"$tmp/full" 2>/dev/null
size=$(wc -c <"$tmp/full")
if [ "$size" -ge 12 ]; then
    half=$((size / 2))
    stop=$(head -c $((half + 3)) "$tmp/full" | tail -c 3)
    "$QRUN" -m "$M" -p "Once upon" -n 24 --temp 0 --ignore-eos --stop "$stop" >"$tmp/stopped" 2>/dev/null
    got=$(($(wc -c <"$tmp/stopped") - 1)) # without the final newline
    head -c "$got" "$tmp/stopped" >"$tmp/stopped.text"
    head -c "$got" "$tmp/full" >"$tmp/full.prefix"
    if cmp -s "$tmp/stopped.text" "$tmp/full.prefix" && [ "$got" -le "$half" ] &&
        ! grep -qF -- "$stop" "$tmp/stopped.text"; then ok; else bad "stop string '$stop'"; fi
else
    bad "stop: greedy text too short to pick a stop string"
fi

# Prompt longer than the context; truncation; invalid UTF-8.
long="one two three four five six seven eight nine ten eleven twelve thirteen"
expect too-long 1 "context holds 8" -- "$QRUN" -m "$M" -p "$long" -c 8 -n 2
expect truncate 0 "" -- "$QRUN" -m "$M" -p "$long" -c 8 -n 2 --truncate
"$QRUN" -m "$M" -p "$long" --tokenize >"$tmp/long.tok" 2>/dev/null
"$QRUN" -m "$M" -p "$long" -c 8 -n 2 --truncate --json >"$tmp/long.json" 2>/dev/null
# The kept prompt: the first id (BOS) and then the end of the full prompt.
full=$(tr -d '[]\n' <"$tmp/long.tok" | tr ',' ' ')
kept=$(json_ids "$tmp/long.json" prompt_ids | tr -d '[]' | tr ',' ' ')
set -- $kept
nk=$#
first_kept=$1
shift
rest_kept="$*"
set -- $full
nf=$#
first_full=$1
shift $((nf - nk + 1))
if [ "$nk" -gt 1 ] && [ "$nk" -lt 8 ] && [ "$first_kept" = "$first_full" ] && [ "$rest_kept" = "$*" ]; then
    ok
else
    bad "--truncate keeps BOS and the prompt's end (full: $full; kept: $kept)"
fi
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
[ -n "$(json_ids "$tmp/arg.json" generated_ids)" ] &&
    [ "$(json_ids "$tmp/stdin.json" prompt_ids)" = "$(json_ids "$tmp/arg.json" prompt_ids)" ] &&
    [ "$(json_ids "$tmp/stdin.json" generated_ids)" = "$(json_ids "$tmp/arg.json" generated_ids)" ] &&
    ok || bad "-f - differs from -p"
"$QRUN" -m "$F" -p "abc" -n 4 --n-sequences 3 --seed 5 --json >"$tmp/seqs" 2>/dev/null
# Three sequences of at most 4 ids each, their total equal to the reported count.
seqs=$(sed 's/.*"sequences":\[\(.*\)\].*/\1/' "$tmp/seqs" | grep -o '"generated_ids":\[[0-9,]*\]')
total=0
nseq=0
fine=1
for g in $seqs; do
    ids=$(printf '%s' "$g" | sed 's/.*\[\(.*\)\]/\1/')
    n=$(printf '%s' "$ids" | tr ',' '\n' | grep -c .)
    [ "$n" -le 4 ] || fine=0
    total=$((total + n))
    nseq=$((nseq + 1))
done
reported=$(sed -n 's/.*"generated_tokens":\([0-9]*\).*/\1/p' "$tmp/seqs")
[ "$fine" -eq 1 ] && [ "$nseq" -eq 3 ] && [ "$total" = "$reported" ] && ok ||
    bad "--n-sequences --json: $nseq sequences, $total ids, reported $reported"
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
