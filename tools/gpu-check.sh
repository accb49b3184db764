#!/bin/bash
# Build qrun with CUDA on the GPU machine and run the GPU test suite, then
# compute-sanitizer memcheck over the GPU tests. One call does everything, so
# a lease is spent on work rather than on start-ups.
#
#   bash tools/gpu-check.sh [--tests "gpu_matmul gpu_ops"] [--no-memcheck]
#                           [--build DIR] [--all] [--build-only]
#
# --tests   only these meson tests (default: the whole "gpu" suite)
# --all     also run the CPU suites (unit, model) in the same build
# --build-only  configure and build, run nothing (a later call runs the tests)
# Needs nvcc, meson, ninja and pkg-config. cJSON, the PCRE2 headers and Check
# are taken from .gpu-debs/ (Debian packages, see docs/gpu.md) when the
# system lacks them. Logs go to $OUT (or /tmp/gpu-check) and a summary is
# printed last.
set -uo pipefail
cd "$(dirname "$0")/.."
TESTS=""
MEMCHECK=1
ALL=0
BUILD_ONLY=0
BUILD=build-gpucheck
while [ $# -gt 0 ]; do
    case "$1" in
    --tests) TESTS="$2"; shift ;;
    --no-memcheck) MEMCHECK=0 ;;
    --all) ALL=1 ;;
    --build-only) BUILD_ONLY=1 ;;
    --build) BUILD="$2"; shift ;;
    *) echo "gpu-check: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
LOG=${OUT:-/tmp/gpu-check}
mkdir -p "$LOG"
export PATH="$PATH:/opt/torch/.venv/bin:/usr/local/cuda/bin"

if ! pkg-config --exists libcjson check 2>/dev/null && [ -d .gpu-debs ]; then
    mkdir -p /tmp/deps
    for f in .gpu-debs/*.deb; do dpkg -x "$f" /tmp/deps; done
    export PKG_CONFIG_SYSROOT_DIR=/tmp/deps
    export PKG_CONFIG_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu/pkgconfig:/tmp/deps/usr/share/pkgconfig
    export LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu${LIBRARY_PATH:+:$LIBRARY_PATH}
fi

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$LOG/gpu.txt"
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?') $(date -u +%FT%TZ)" | tee -a "$LOG/gpu.txt"

t0=$(date +%s)
if [ ! -f "$BUILD/build.ninja" ]; then
    meson setup "$BUILD" -Dcuda=enabled -Dgpu_archs=90 -Dbuildtype=release >"$LOG/setup.log" 2>&1 ||
        { cat "$LOG/setup.log"; echo "gpu-check: meson setup failed"; exit 1; }
fi
if ! ninja -C "$BUILD" >"$LOG/build.log" 2>&1; then
    grep -E "error|Error" -A3 "$LOG/build.log" | head -60
    echo "gpu-check: build failed"
    exit 1
fi
grep -i "warning" "$LOG/build.log" | head -20
echo "build: $(( $(date +%s) - t0 )) s"
[ $BUILD_ONLY = 1 ] && exit 0

status=0
if [ -n "$TESTS" ]; then
    meson test -C "$BUILD" --print-errorlogs $TESTS >"$LOG/test.log" 2>&1 || status=1
else
    meson test -C "$BUILD" --print-errorlogs --suite gpu >"$LOG/test.log" 2>&1 || status=1
fi
if [ $ALL = 1 ]; then
    meson test -C "$BUILD" --print-errorlogs --suite unit --suite model >"$LOG/test-cpu.log" 2>&1 ||
        status=1
    tail -12 "$LOG/test-cpu.log"
fi
grep -E "^ *[0-9]+/[0-9]+ " "$LOG/test.log"
grep -E -B2 -A25 "FAIL|Assertion|Error" "$LOG/test.log" | head -120

if [ $MEMCHECK = 1 ] && command -v compute-sanitizer >/dev/null; then
    names=$TESTS
    [ -z "$names" ] && names=$(ls "$BUILD"/tests/test_gpu_* | xargs -n1 basename | sed 's/^test_//')
    for n in $names; do
        exe="$BUILD/tests/test_$n"
        [ -x "$exe" ] || continue
        # CK_FORK=no: the sanitizer follows one process; QRUN_TEST_QUICK: smaller sizes
        if QRUN_TEST_DATA=tests/data QCONVERT="$BUILD/qconvert" QRUN_TEST_QUICK=1 CK_FORK=no \
            compute-sanitizer --tool memcheck --error-exitcode 9 --leak-check full "$exe" \
            >"$LOG/memcheck-$n.log" 2>&1; then
            echo "memcheck $n: clean"
        else
            rc=$?
            if [ $rc = 77 ]; then echo "memcheck $n: skipped"; else
                echo "memcheck $n: FAILED (rc $rc)"; grep -m20 -E "=====" "$LOG/memcheck-$n.log"; status=1
            fi
        fi
    done
fi
echo "gpu-check: $( [ $status = 0 ] && echo PASS || echo FAIL )"
exit $status
