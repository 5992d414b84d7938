#!/bin/sh
# One-shot builder of the demo model, run by the compose stack's `model-builder` service in the
# trainer image before the worker starts: synthetic data -> tiny training -> ONNX export into the
# model folder, unless that folder already holds a model (a mounted model of the user's, or one
# built by an earlier `docker compose up`), in which case it exits at once.
#
# Settings (environment): MASKX_MODELS_DIR (default /models), MASKX_MODEL_FILE (model.onnx),
# MASKX_DEMO_IMAGES (training images, 1200), MASKX_DEMO_VAL_IMAGES (validation images, 200),
# MASKX_DEMO_MAX_ITER (training steps, 600): the same recipe as `make demo-model`.
set -eu

models="${MASKX_MODELS_DIR:-/models}"
file="${MASKX_MODEL_FILE:-model.onnx}"
images="${MASKX_DEMO_IMAGES:-1200}"
max_iter="${MASKX_DEMO_MAX_ITER:-600}"

if [ -f "$models/$file" ]; then
    echo "model-builder: $models/$file exists; nothing to build"
    exit 0
fi
if [ ! -w "$models" ]; then
    echo "model-builder: $models is not writable by UID $(id -u); give that user the folder" \
        "or put a model at $models/$file" >&2
    exit 1
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
start="$(date +%s)"
echo "model-builder: no model at $models/$file; building the demo model" \
    "($images images, $max_iter steps)"
maskx synth --out "$work/synth" --classes 100 --images "$images" \
    --val-images "${MASKX_DEMO_VAL_IMAGES:-200}" --seed 0 --no-progress
maskx train --config /src/configs/tiny_synth.yaml --out "$work/run" \
    --data-root "$work/synth" --max-iter "$max_iter"
maskx export --checkpoint "$work/run/checkpoints/model_final.pt" \
    --output "$models/$file" --name maskx-demo
echo "model-builder: wrote $models/$file in $(($(date +%s) - start)) s"
