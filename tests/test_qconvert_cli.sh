#!/bin/sh
# qconvert as a user runs it: help, usage errors (exit 2), failures (exit 1)
# with a message naming the problem and no output file, and a successful run
# with its summary. Needs QCONVERT and QRUN_TEST_DATA (set by meson).
set -u
fails=0
pass=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tiny="$QRUN_TEST_DATA/tiny"

expect() { # expect NAME WANT_RC NEEDLE -- command...
    name=$1 want=$2 needle=$3
    shift 4
    "$@" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    if [ "$rc" -ne "$want" ]; then
        echo "FAIL $name: exit $rc, want $want"; cat "$tmp/err"; fails=$((fails + 1)); return
    fi
    if [ -n "$needle" ] && ! grep -qF -- "$needle" "$tmp/out" "$tmp/err"; then
        echo "FAIL $name: output does not mention '$needle'"; cat "$tmp/out" "$tmp/err"
        fails=$((fails + 1)); return
    fi
    pass=$((pass + 1))
}

no_output() { # no_output NAME: nothing left in $tmp/o
    if [ -n "$(ls -A "$tmp/o")" ]; then
        echo "FAIL $1: left files: $(ls -A "$tmp/o")"; fails=$((fails + 1))
    else
        pass=$((pass + 1))
    fi
}

mkdir -p "$tmp/o"
expect help 0 "--double-quant" -- "$QCONVERT" --help
for flag in --quant --blocksize --compute-dtype --int8-threshold --output; do
    grep -qF -- "$flag" "$tmp/out" || { echo "FAIL help does not document $flag"; fails=$((fails + 1)); }
done
expect version 0 "qconvert 0." -- "$QCONVERT" --version
expect no-args 2 "missing HF_DIR" -- "$QCONVERT"
expect no-output 2 "missing -o" -- "$QCONVERT" "$tiny/llama-mha"
expect bad-flag 2 "unknown option '--frobnicate'" -- "$QCONVERT" --frobnicate
expect bad-quant 2 "unknown quantization 'q3'" -- "$QCONVERT" "$tiny/llama-mha" -o "$tmp/o/x.qbin" --quant q3
expect bad-blocksize 1 "blocksize 100" -- "$QCONVERT" "$tiny/llama-mha" -o "$tmp/o/x.qbin" --blocksize 100
expect dq-int8 2 "--double-quant needs" -- "$QCONVERT" "$tiny/llama-mha" -o "$tmp/o/x.qbin" --quant int8 --double-quant
expect bad-dtype 2 "unknown compute dtype 'f8'" -- "$QCONVERT" "$tiny/llama-mha" -o "$tmp/o/x.qbin" --compute-dtype f8
no_output usage-errors

expect missing-dir 1 "$tmp/nope" -- "$QCONVERT" "$tmp/nope" -o "$tmp/o/x.qbin"
mkdir -p "$tmp/gpt2"
printf '{"architectures":["GPT2LMHeadModel"],"model_type":"gpt2"}' >"$tmp/gpt2/config.json"
expect unknown-arch 1 "GPT2LMHeadModel" -- "$QCONVERT" "$tmp/gpt2" -o "$tmp/o/x.qbin"
mkdir -p "$tmp/noweights"
cp "$tiny/llama-mha/config.json" "$tmp/noweights/"
expect no-weights 1 "safetensors" -- "$QCONVERT" "$tmp/noweights" -o "$tmp/o/x.qbin"
cp -r "$tiny/llama-mha-sharded" "$tmp/sharded"
shard=$(ls "$tmp/sharded" | grep -m1 'model-0000.*safetensors')
rm "$tmp/sharded/$shard"
expect missing-shard 1 "$shard" -- "$QCONVERT" "$tmp/sharded" -o "$tmp/o/x.qbin"
no_output failures

expect convert 0 "bits per parameter" -- "$QCONVERT" "$tiny/llama-mha" -o "$tmp/o/m.qbin" --quant nf4 --double-quant
[ -s "$tmp/o/m.qbin" ] && [ "$(ls -A "$tmp/o")" = "m.qbin" ] && pass=$((pass + 1)) ||
    { echo "FAIL convert: output missing or temporary file left"; fails=$((fails + 1)); }
grep -q "peak RAM" "$tmp/out" && pass=$((pass + 1)) || { echo "FAIL summary lacks peak RAM"; fails=$((fails + 1)); }
# Not a terminal: progress comes as plain lines, one per tensor.
grep -q '^\[1/' "$tmp/err" && pass=$((pass + 1)) || { echo "FAIL no progress lines"; fails=$((fails + 1)); }

echo "$pass passed, $fails failed"
[ "$fails" -eq 0 ]
