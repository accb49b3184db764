#!/bin/sh
# qbench as a user runs it, on the CPU with the tiny test shapes: help and
# docs, usage errors (exit 2), bad models (exit 1), the JSON report (checked
# with grep: tests need no Python), the weight bytes per token against
# numbers worked out by hand, the temporary model removed at exit, -o
# keeping it, and -m measuring a kept file.
# Needs QBENCH and QRUN_TEST_DATA (set by meson).
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
        bad "$name: exit $rc, want $want"; cat "$tmp/out" "$tmp/err"; return
    fi
    if [ -n "$needle" ] && ! grep -qF -- "$needle" "$tmp/out" "$tmp/err"; then
        bad "$name: output does not mention '$needle'"; cat "$tmp/out" "$tmp/err"; return
    fi
    ok
}

# small and quick: a 16 MiB bandwidth probe, one timed repetition
FAST="--backend cpu -t 2 -p 8 -n 4 -r 1 --bw-mib 16 --bw-reps 2"

expect help 0 "usage: qbench" -- "$QBENCH" --help
for flag in --model --shape --quant --double-quant --blocksize --int8-threshold \
    --compute-dtype --output --seed --n-prompt --n-gen --gen-context --reps --warmup \
    --batch-size --bw-reps --bw-mib --backend --gpu-layers --threads --kv-type --no-verify \
    --json --help --version llama-2-7b llama-2-13b llama-2-70b falcon-7b falcon-40b; do
    grep -qF -- "$flag" "$tmp/out" || bad "help does not document $flag"
done
doc="$QRUN_TEST_DATA/../../docs/perf.md"
if [ -f "$doc" ]; then
    for flag in $(grep -o -- '--[a-z][a-z0-9-]*' "$tmp/out" | sort -u); do
        grep -qF -- "$flag" "$doc" || bad "docs/perf.md does not document $flag"
    done
fi
expect version 0 "qbench 0." -- "$QBENCH" --version

# usage errors: exit 2 with a message naming the problem
expect no-model 2 "give a model" -- "$QBENCH"
expect both 2 "only one of -m and --shape" -- "$QBENCH" -m x.qbin --shape tiny-llama
expect bad-shape 2 "unknown --shape 'llama-3-8b'" -- "$QBENCH" --shape llama-3-8b
grep -qF "falcon-40b" "$tmp/err" && grep -qF "tiny-llama" "$tmp/err" && ok ||
    bad "unknown shape: the message does not list the shapes"
expect bad-quant 2 "unknown --quant 'q3'" -- "$QBENCH" --shape tiny-llama --quant q3
expect bad-quant-f32 2 "unknown --quant 'f32'" -- "$QBENCH" --shape tiny-llama --quant f32
expect dq-int8 2 "--double-quant needs --quant nf4 or fp4, not int8" -- \
    "$QBENCH" --shape tiny-llama --quant int8 --double-quant
expect bad-blocksize 2 "bad --blocksize '100'" -- "$QBENCH" --shape tiny-llama --blocksize 100
expect nothing 2 "nothing to measure" -- "$QBENCH" --shape tiny-llama -p 0 -n 0
expect bad-reps 2 "bad --reps '0'" -- "$QBENCH" --shape tiny-llama -r 0
expect bad-threshold 2 "bad --int8-threshold '-1'" -- "$QBENCH" --shape tiny-llama --int8-threshold -1
expect bad-backend 2 "unknown --backend 'tpu'" -- "$QBENCH" --shape tiny-llama --backend tpu
expect bad-flag 2 "unknown option '--frob'" -- "$QBENCH" --shape tiny-llama --frob
expect missing-value 2 "needs a value" -- "$QBENCH" --shape
expect synth-flag-with-m 2 "--quant only applies to --shape" -- "$QBENCH" -m x.qbin --quant nf4

# bad models: exit 1 naming the file
expect missing-model 1 "$tmp/nope.qbin" -- "$QBENCH" -m "$tmp/nope.qbin" $FAST
printf 'not a model at all, just some text that is long enough' >"$tmp/junk.qbin"
expect corrupt-model 1 "junk.qbin" -- "$QBENCH" -m "$tmp/junk.qbin" $FAST

# json_num FILE KEY: the number after "KEY": (its last occurrence)
json_num() { sed -n "s/.*\"$2\":\(-\{0,1\}[0-9][0-9.e+-]*\).*/\1/p" "$1" | head -n 1; }
# balanced braces and brackets, one line, an object
json_shape_ok() {
    [ "$(wc -l <"$1")" -eq 1 ] && head -c 1 "$1" | grep -q '{' &&
        [ "$(tr -cd '{' <"$1" | wc -c)" -eq "$(tr -cd '}' <"$1" | wc -c)" ] &&
        [ "$(tr -cd '[' <"$1" | wc -c)" -eq "$(tr -cd ']' <"$1" | wc -c)" ]
}
positive() { [ -n "$1" ] && awk -v v="$1" 'BEGIN { exit !(v > 0) }'; }

# A synthetic tiny Llama (nf4): the temporary model lives in $TMPDIR and is
# gone afterwards.
mkdir "$tmp/t"
expect tiny-llama 0 '"prefill":{"tokens":8' -- env TMPDIR="$tmp/t" "$QBENCH" --shape tiny-llama $FAST --json
J="$tmp/llama.json"
cp "$tmp/out" "$J"
json_shape_ok "$J" && ok || bad "tiny-llama: the output is not one JSON object"
[ -z "$(ls -A "$tmp/t")" ] && ok || bad "the temporary model was not removed: $(ls -A "$tmp/t")"
for key in '"synthetic":true' '"shape":"tiny-llama"' '"weights":"nf4"' '"blocksize":64' \
    '"double_quant":false' '"compute_dtype":"f16"' '"name":"cpu"' '"gpu":null' \
    '"decode":{"tokens":4,"context_before":16,"reps":1' '"checksums_verified":true'; do
    grep -qF -- "$key" "$J" || bad "tiny-llama json lacks $key"
done
# tiny-llama nf4, worked out by hand (blocksize 64: 4.5 bits per weight):
#   linear: 2 layers x (q 256x256 + k,v 128x256 + o 256x256 + gate,up,down 688x256)
#           = 1449984 weights -> 724992 code bytes + 22656 blocks x 4 = 815616
#   lm_head 1000 x 256 f16 = 512000; norms 5 x 256 f16 = 2560; embedding row 512
[ "$(json_num "$J" total)" = 1330688 ] && ok || bad "tiny-llama: bytes per token $(json_num "$J" total), want 1330688"
[ "$(json_num "$J" linear)" = 815616 ] && ok || bad "tiny-llama: linear bytes $(json_num "$J" linear), want 815616"
[ "$(json_num "$J" n_params)" = 1963264 ] && ok || bad "tiny-llama: n_params $(json_num "$J" n_params), want 1963264"
for key in median floor_tokens_per_s load_seconds fraction_of_floor weights_bytes_per_s \
    generation_seconds host_peak_rss_bytes; do
    positive "$(json_num "$J" "$key")" && ok || bad "tiny-llama: $key is '$(json_num "$J" "$key")'"
done
grep -q '"seconds":\[[0-9.e-]*\]' "$J" && ok || bad "tiny-llama: one repetition should give one time"

# tiny-falcon int8 kept with -o, then measured with -m as a table.
# Bytes by hand, per layer: int8 codes of qkv 448x320, dense 320x320,
# h_to_4h 1280x320, 4h_to_h 320x1280 = 1064960, SCB 2368 rows x 4, bf16
# biases 2368 x 2: 1079168. Norms: 2 layers x ln_attn, ln_mlp (weight +
# bias, 320 bf16 each) + ln_f = 6400. Tied lm_head 1001 x 320 x 2 = 640640.
# Total 2 x 1079168 + 6400 + 640640 = 2805376.
F="$tmp/falcon.qbin"
expect tiny-falcon-keep 0 '"weights":"int8"' -- "$QBENCH" --shape tiny-falcon --quant int8 -o "$F" $FAST --json
[ "$(json_num "$tmp/out" total)" = 2805376 ] && ok || bad "tiny-falcon: bytes per token $(json_num "$tmp/out" total), want 2805376"
grep -qF '"int8_threshold":6' "$tmp/out" && ok || bad "tiny-falcon: int8 threshold missing"
[ -s "$F" ] && ok || bad "-o did not keep $F"
expect measure-file 0 "tg4 @16" -- "$QBENCH" -m "$F" $FAST
for word in "pp8" "% of floor" "floor" "CPU read" "int8" "load"; do
    grep -qF -- "$word" "$tmp/out" || bad "table lacks '$word'"
done

# double quantization and another block size load and run
expect tiny-dq 0 '"double_quant":true' -- "$QBENCH" --shape tiny-falcon --quant fp4 --double-quant \
    --blocksize 128 $FAST --json
expect tiny-bf16 0 '"weights":"bf16"' -- "$QBENCH" --shape tiny-llama --quant bf16 $FAST -n 0 --json
grep -qF '"decode":null' "$tmp/out" && ok || bad "-n 0 should leave out the decode test"

echo "$pass passed, $fails failed"
[ "$fails" -eq 0 ]
