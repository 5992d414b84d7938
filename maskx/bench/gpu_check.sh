#!/usr/bin/env bash
# maskx GPU check: run from anywhere on a CUDA machine with PyTorch + torchvision (no install).
# Prints the card, the versions and a table last; JSON goes to $OUT/gpu_check.json when $OUT is
# set. The script has its own 420 s budget; `timeout` is the backstop at 8 minutes.
# Usage: bash maskx/bench/gpu_check.sh [--quick] [--device cpu] [--budget-s S] [--only infer,train]
set -u
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-python3}"
command -v nvidia-smi >/dev/null 2>&1 \
  && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" exec timeout -k 10 480 "$PYTHON" maskx/bench/gpu_check.py "$@"
