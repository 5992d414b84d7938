# syntax=docker/dockerfile:1
#
# maskx images. Targets:
#   serve-gpu  (default) ONNX Runtime CUDA worker: the `gpu` extra only, no torch
#   serve-cpu            ONNX Runtime CPU worker: the `serve` extra only, no torch
#   trainer              `maskx train` / `maskx export` / `maskx evaluate`: the `train` extra
#
#   docker build -t maskx/segmenter:latest .
#   docker build --target serve-cpu -t maskx/segmenter:cpu .
#   docker build --target trainer -t maskx/trainer:latest .
#
# Every image installs what pyproject.toml lists for its extra (deploy/extras_requirements.py reads
# it), dependencies first and source last, so editing the code reuses the dependency layers.
# deploy/README.md explains the build arguments; tests/deploy/ checks this file statically.

# onnxruntime-gpu from PyPI is built against CUDA 13 + cuDNN 9 from 1.27 on; the runtime image
# must carry the same CUDA major and cuDNN 9. For a driver older than 580 (CUDA 12 only), build with
# CUDA_IMAGE=nvidia/cuda:12.9.1-cudnn-runtime-ubuntu24.04 GPU_CONSTRAINTS=constraints-cuda12.txt.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
ARG GPU_CONSTRAINTS=constraints-cuda13.txt
# Same Python minor as the CUDA image's Ubuntu 24.04 (3.12), so both serving images behave alike.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm
# Folder (inside the build context) whose files are baked into /models; the default holds only a
# placeholder, and the model is mounted at /models at run time instead.
ARG MODEL_DIR=deploy/model

# ---------------------------------------------------------------------------------------------
# Bases: a Python virtual environment at /opt/venv on top of each runtime image.
# ---------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS gpu-base
ENV DEBIAN_FRONTEND=noninteractive
# Ubuntu's python3 is the one Python of this image; versions follow the base image's release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

FROM ${PYTHON_IMAGE} AS cpu-base
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# ---------------------------------------------------------------------------------------------
# Builders: dependency layer from pyproject.toml alone, then the package itself.
# ---------------------------------------------------------------------------------------------
FROM gpu-base AS serve-gpu-build
ARG GPU_CONSTRAINTS
WORKDIR /src
COPY pyproject.toml deploy/extras_requirements.py deploy/constraints-cuda12.txt deploy/constraints-cuda13.txt ./
RUN python extras_requirements.py gpu > requirements.txt \
    && pip install --no-cache-dir -c "${GPU_CONSTRAINTS}" -r requirements.txt
# Only the package: the wheel builds without README.md (no long description in an image).
COPY maskx ./maskx
COPY model ./model
COPY training ./training
COPY service ./service
# The project itself; its dependencies are already satisfied by the layer above.
RUN pip install --no-cache-dir -c "${GPU_CONSTRAINTS}" ".[gpu]"

FROM cpu-base AS serve-cpu-build
WORKDIR /src
COPY pyproject.toml deploy/extras_requirements.py ./
RUN python extras_requirements.py serve > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt
COPY maskx ./maskx
COPY model ./model
COPY training ./training
COPY service ./service
# The project itself, pinned by being this very source; its dependencies are in the layer above.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[serve]"

# ---------------------------------------------------------------------------------------------
# trainer: torch comes from the `train` extra; PyPI's Linux torch wheels bring their own CUDA
# libraries, so a plain Python base is enough (run with --gpus all to train on a GPU).
# ---------------------------------------------------------------------------------------------
FROM cpu-base AS trainer
WORKDIR /src
COPY pyproject.toml deploy/extras_requirements.py ./
RUN python extras_requirements.py train > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt
COPY maskx ./maskx
COPY model ./model
COPY training ./training
COPY service ./service
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[train]" \
    && useradd --create-home --uid 10001 --user-group maskx \
    && mkdir -p /workspace \
    && chown maskx:maskx /workspace
USER 10001:10001
WORKDIR /workspace
ENTRYPOINT ["maskx"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------------
# serve-cpu: the worker on ONNX Runtime's CPU provider.
# ---------------------------------------------------------------------------------------------
FROM cpu-base AS serve-cpu
ARG MODEL_DIR
RUN useradd --create-home --uid 10001 --user-group maskx
COPY --from=serve-cpu-build /opt/venv /opt/venv
COPY ${MODEL_DIR}/ /models/
ENV MASKX_MODEL_PATH=/models/model.onnx \
    MASKX_PROVIDERS=cpu \
    MASKX_HOST=0.0.0.0 \
    MASKX_PORT=8000
# Numeric, so that Kubernetes' runAsNonRoot can verify that the user is not root.
USER 10001:10001
WORKDIR /home/maskx
VOLUME ["/models"]
EXPOSE 8000
# Python's urllib instead of curl: nothing extra in the image. urlopen raises on non-2xx.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('MASKX_PORT', '8000') + '/healthz', timeout=4)"]
ENTRYPOINT ["maskx", "serve"]

# ---------------------------------------------------------------------------------------------
# serve-gpu (default target): the worker on ONNX Runtime's CUDA provider.
# ---------------------------------------------------------------------------------------------
FROM gpu-base AS serve-gpu
ARG MODEL_DIR
RUN useradd --create-home --uid 10001 --user-group maskx
COPY --from=serve-gpu-build /opt/venv /opt/venv
COPY ${MODEL_DIR}/ /models/
ENV MASKX_MODEL_PATH=/models/model.onnx \
    MASKX_PROVIDERS=auto \
    MASKX_HOST=0.0.0.0 \
    MASKX_PORT=8000 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /home/maskx
VOLUME ["/models"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('MASKX_PORT', '8000') + '/healthz', timeout=4)"]
ENTRYPOINT ["maskx", "serve"]
