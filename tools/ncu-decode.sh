#!/bin/bash
# Where one decode token's GPU time goes: Nsight Compute times every kernel
# of a short qbench run (four decode tokens after a 16-token context, graphs
# off so each kernel is its own launch); the decode launches repeat with the
# token's period, and the last period is summed per kernel name, largest
# first, with its count per token.
#
#   bash tools/ncu-decode.sh BUILD_DIR [qbench options, e.g. --shape llama-2-7b -q nf4]
#
# Needs ncu (Nsight Compute) and python3. --clock-control none keeps the
# boost clocks qbench itself runs at. Kernel durations exclude the gaps
# between launches; compare their total with qbench's ms/token for those.
set -euo pipefail
B=$1
shift
LOG=${OUT:-/tmp}/ncu-decode.csv
QRUN_CUDA_GRAPHS=0 ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
    "$B/qbench" "$@" -p 0 -n 4 -r 1 --warmup 0 --bw-reps 1 --bw-mib 64 \
    >"$LOG" 2>"${LOG%.csv}.err" || { tail -20 "${LOG%.csv}.err"; exit 1; }
python3 - "$LOG" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
hdr = rows[0]; rows = rows[1:]
ki, vi, ii = hdr.index("Kernel Name"), hdr.index("Metric Value"), hdr.index("ID")
def short(n):  # "void <unnamed>::gemv_fast<6, 1, 1, 0>(...)" -> "gemv_fast"
    for p in ("(anonymous namespace)::", "<unnamed>::", "void "):
        n = n.replace(p, "")
    return n.split("(")[0].split("<")[0]
seq = [(short(r[ki]), float(r[vi].replace(",", ""))) for r in rows]
# one token: the smallest period P with which the last launches repeat
names = [n for n, _ in seq]
P = next((p for p in range(1, len(seq) // 2 + 1) if names[-p:] == names[-2 * p:-p]), len(seq))
tok = seq[-P:]
tot = collections.OrderedDict()
for name, ns in tok:
    c, t = tot.get(name, (0, 0.0))
    tot[name] = (c + 1, t + ns)
all_ns = sum(t for _, t in tot.values())
print(f"{len(tok)} kernels, {all_ns / 1e3:.1f} us of kernel time per token")
for name, (c, t) in sorted(tot.items(), key=lambda kv: -kv[1][1]):
    print(f"{t / 1e3:10.1f} us {100 * t / all_ns:5.1f}% {c:5d}x  {name[:90]}")
PY
