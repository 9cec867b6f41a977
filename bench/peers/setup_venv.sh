#!/usr/bin/env bash
# Creates the peers' Python environment for bench/peers/*.py and the fixture scripts in
# tests/reference (PyTorch, transformers, ONNX Runtime, numpy), outside the repository:
#   VENV=$HOME/.cache/lmc-peers/venv bash bench/peers/setup_venv.sh
# The default torch wheel from PyPI pulls CUDA libraries (about 3 GB); the benchmarks still
# measure its CPU build. Never part of the test command.
set -eu
VENV=${VENV:-$HOME/.cache/lmc-peers/venv}
HERE=$(cd "$(dirname "$0")" && pwd)
python3 -m venv "$VENV"
"$VENV/bin/pip" install --upgrade pip
"$VENV/bin/pip" install -r "$HERE/requirements.txt"
"$VENV/bin/python" -c "import torch, transformers, onnxruntime; print(torch.__version__, transformers.__version__, onnxruntime.__version__)"
