#!/bin/bash
# Regenerate tests/data/bnb/ from the real bitsandbytes CUDA kernels.
#
# Needs: a CUDA GPU, nvcc, cmake, python3 with torch and safetensors, and a
# bitsandbytes source tree in $BNB_SRC (default .bnb-src, ignored by git; it
# is never part of this repository). On this project's device machine:
#
#   here:   git -C <bitsandbytes checkout> archive HEAD | tar -x -C .bnb-src
#           python3 tools/extract_real_weights.py SmolLM2-135M-Instruct.Q4_1.gguf .deps/real_weights.safetensors
#   device: bash tools/gpu-fixtures.sh [OUTDIR]      (carry .bnb-src and .deps)
#
# The library is built for sm_90 unless it is already present in the tree.
set -euo pipefail
cd "$(dirname "$0")/.."
BNB_SRC=${BNB_SRC:-.bnb-src}
OUTDIR=${1:-tests/data/bnb}
REAL=${REAL:-.deps/real_weights.safetensors}
ARCH=${BNB_ARCH:-90}

if ! ls "$BNB_SRC"/bitsandbytes/libbitsandbytes_cuda*.so >/dev/null 2>&1; then
    cmake -S "$BNB_SRC" -B /tmp/bnb-build -DCOMPUTE_BACKEND=cuda -DCOMPUTE_CAPABILITY="$ARCH" \
        -DCMAKE_BUILD_TYPE=Release >/tmp/bnb-cmake.log
    cmake --build /tmp/bnb-build -j"$(nproc)" >/tmp/bnb-build.log
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
real_arg=()
[ -f "$REAL" ] && real_arg=(--real "$REAL")
PYTHONPATH="$BNB_SRC${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 \
    python3 tools/bnb_fixtures.py --out "$OUTDIR" "${real_arg[@]}"
