#!/bin/bash
# Run qbench over shapes and quantizations and print the rows of the table
# in docs/perf.md ("qbench results"), plus the JSON lines in $OUT or /tmp.
#
#   bash tools/qbench-table.sh [-b BUILD_DIR] [-r REPS] [-s "SHAPES"] [-q "QUANTS"] [-- QBENCH OPTIONS]
#
# Defaults: build-gpucheck (tools/gpu-check.sh's build), 3 repetitions,
# shapes "llama-2-7b falcon-7b", quantizations "nf4 nf4+dq int8 f16".
# Synthetic models are written to $TMPDIR (set it to /dev/shm for speed).
# Needs python3 for the table.
set -uo pipefail
cd "$(dirname "$0")/.."
B=build-gpucheck
REPS=3
SHAPES="llama-2-7b falcon-7b"
QUANTS="nf4 nf4+dq int8 f16"
while [ $# -gt 0 ]; do
    case "$1" in
    -b) B="$2"; shift ;;
    -r) REPS="$2"; shift ;;
    -s) SHAPES="$2"; shift ;;
    -q) QUANTS="$2"; shift ;;
    --) shift; break ;;
    *) echo "qbench-table: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
LOG=${OUT:-/tmp}/qbench.jsonl
: >"$LOG"
status=0
for sh in $SHAPES; do
    for q in $QUANTS; do
        args=(--shape "$sh" -q "${q%+dq}" -r "$REPS" --json)
        [ "$q" != "${q%+dq}" ] && args+=(--double-quant)
        if ! "$B/qbench" "${args[@]}" "$@" >>"$LOG" 2>"${LOG%.jsonl}.err"; then
            echo "qbench-table: qbench ${args[*]} failed:" >&2
            tail -3 "${LOG%.jsonl}.err" >&2
            status=1
        fi
    done
done
python3 - "$LOG" <<'PY'
import json, sys
print("| shape | weights | pp tok/s | tg tok/s (min–max) | GB/token | floor tok/s | % of floor | VRAM GiB after load / peak | load s |")
print("|---|---|---|---|---|---|---|---|---|")
for line in open(sys.argv[1]):
    d = json.loads(line)
    m, mem = d["model"], (d.get("memory") or {}).get("gpu") or {}
    q = m["weights"] + (" + dq" if m.get("double_quant") else "")
    pre, dec = d.get("prefill") or {}, d.get("decode") or {}
    pp = f'{pre["tokens_per_s"]["median"]:.0f}' if pre else "-"
    if dec:
        t = dec["tokens_per_s"]
        tg = f'{t["median"]:.1f} ({t["min"]:.1f}–{t["max"]:.1f})'
        frac = f'{100 * dec["fraction_of_floor"]:.1f}%'
    else:
        tg = frac = "-"
    vram = (f'{mem["after_load_bytes"] / 2**30:.2f} / {mem["peak_bytes"] / 2**30:.2f}'
            if mem else "-")
    print(f'| {m.get("shape") or m["path"]} | {q} | {pp} | {tg} | '
          f'{d["weights_bytes_per_token"]["total"] / 1e9:.2f} | {d["floor_tokens_per_s"]:.0f} | '
          f'{frac} | {vram} | {d["load_seconds"]:.2f} |')
PY
exit $status
