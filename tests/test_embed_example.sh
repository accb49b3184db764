#!/bin/sh
# The embedding example (examples/embed.c, built against the shared library
# and qrun.h only) on a converted tiny model: two sessions generate, and a
# long generation is cancelled from another thread.
# Env: EMBED_EXAMPLE, QCONVERT, QRUN_TEST_DATA (set by meson).
set -u
pass=0
fail=0
ok() { pass=$((pass + 1)); echo "ok: $1"; }
bad() { fail=$((fail + 1)); echo "FAIL: $1"; }

src="${QRUN_TEST_DATA:-tests/data}/tiny/llama-gqa-llama3"
if [ ! -f "$src/config.json" ]; then
    echo "skipping: $src absent"
    exit 77
fi
for v in EMBED_EXAMPLE QCONVERT; do
    eval "p=\${$v:-}"
    if [ -z "$p" ] || [ ! -x "$p" ]; then
        echo "$v is not set to an executable"
        exit 1
    fi
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qrun-embed-XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT INT TERM

if "$QCONVERT" "$src" -o "$tmp/tiny.qbin" -q nf4 --quiet >"$tmp/convert.log" 2>&1; then
    ok "convert"
else
    bad "convert"; cat "$tmp/convert.log"
    echo "$pass passed, $fail failed"
    exit 1
fi

"$EMBED_EXAMPLE" "$tmp/tiny.qbin" "Once upon a time" >"$tmp/out.txt" 2>"$tmp/err.txt"
rc=$?
if [ $rc -eq 0 ]; then ok "exit status 0"; else bad "exit status $rc"; fi
grep -q '^session 1: ' "$tmp/out.txt" && ok "session 1 output" || bad "session 1 output"
grep -q '^session 2: ' "$tmp/out.txt" && ok "session 2 output" || bad "session 2 output"
grep -q '^session 1: [1-9][0-9]* tokens' "$tmp/out.txt" && ok "session 1 generated tokens" \
    || bad "session 1 generated tokens"
grep -q '^long generation cancelled after [0-9]* tokens' "$tmp/out.txt" && ok "cancelled" \
    || bad "cancelled"
grep -q '^ok$' "$tmp/out.txt" && ok "final ok" || bad "final ok"

# Usage and load errors.
"$EMBED_EXAMPLE" >/dev/null 2>&1
[ $? -eq 2 ] && ok "usage exit 2" || bad "usage exit 2"
"$EMBED_EXAMPLE" "$tmp/missing.qbin" >/dev/null 2>"$tmp/err2.txt"
if [ $? -eq 1 ] && grep -q 'missing.qbin' "$tmp/err2.txt"; then ok "missing model"; else
    bad "missing model"; fi

if [ $fail -ne 0 ]; then
    echo "--- stdout"; cat "$tmp/out.txt"; echo "--- stderr"; cat "$tmp/err.txt"
fi
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
