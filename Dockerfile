# syntax=docker/dockerfile:1
#
# maskx images. Targets:
#   serve-cpu            ONNX Runtime CPU worker: the `serve` extra only, no torch
#   trainer              `maskx synth` / `train` / `export` / `evaluate`: the `train` extra
#   serve-gpu  (default) ONNX Runtime CUDA worker: the `gpu` extra only, no torch
#
#   docker build --target serve-cpu -t maskx/segmenter:latest-cpu .
#   docker build --target trainer -t maskx/trainer:latest .
#   docker build -t maskx/segmenter:latest .
#
# Every image installs a locked requirement file of deploy/requirements/ (exact versions, every
# file checked against its hash; `python deploy/locks.py compile` regenerates them from
# pyproject.toml's extras), dependencies first and source last, so editing the code reuses the
# dependency layer. deploy/README.md explains the build arguments; tests/deploy/ checks this file.
#
# The stages are ordered CPU first: Docker's legacy builder (no BuildKit) builds every stage that
# comes before the target, so `--target serve-cpu` must not come after the CUDA stages.

# Python base of the CPU images. Any Debian/Ubuntu image with python3 and python3-venv works; on a
# host without access to Docker Hub, deploy/local-base.sh makes one from the Debian mirror.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm
# onnxruntime-gpu from PyPI is built against CUDA 13 + cuDNN 9 from 1.27 on; the runtime image
# must carry the same CUDA major and cuDNN 9. For a driver older than 580 (CUDA 12 only), build with
# CUDA_IMAGE=nvidia/cuda:12.9.1-cudnn-runtime-ubuntu24.04 GPU_LOCK=gpu-cuda12.txt.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
ARG GPU_LOCK=gpu-cuda13.txt
# Folder (inside the build context) whose files are baked into /models; the default holds only a
# placeholder, and the model is mounted at /models at run time instead.
ARG MODEL_DIR=deploy/model

# ---------------------------------------------------------------------------------------------
# CPU base: a virtual environment at /opt/venv. Extra CA certificates (a company proxy's) are the
# *.crt files of deploy/ca-certificates/, added to the system bundle that pip is told to use.
# The package index is PyPI unless the build arguments PIP_INDEX (one URL), PIP_EXTRA_INDEX and
# PIP_TRUSTED_HOSTS (space-separated) name others; a proxy comes through Docker's predefined
# HTTP_PROXY / HTTPS_PROXY / NO_PROXY build arguments. The hashes of the lock hold either way.
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu-base
COPY deploy/ca-certificates/ /usr/local/share/ca-certificates/maskx/
COPY deploy/pip-install-locked.sh /usr/local/bin/pip-install-locked
RUN if ls /usr/local/share/ca-certificates/maskx/*.crt >/dev/null 2>&1; then update-ca-certificates; fi \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt

# ---------------------------------------------------------------------------------------------
# serve-cpu: the worker on ONNX Runtime's CPU provider.
# ---------------------------------------------------------------------------------------------
FROM cpu-base AS serve-cpu-build
ARG PIP_INDEX=""
ARG PIP_EXTRA_INDEX=""
ARG PIP_TRUSTED_HOSTS=""
WORKDIR /src
COPY deploy/requirements/build.txt deploy/requirements/serve.txt ./
RUN pip-install-locked -r build.txt \
    && pip-install-locked -r serve.txt
# Only the package: the wheel builds without README.md (no long description in an image).
COPY pyproject.toml ./
COPY maskx ./maskx
COPY model ./model
COPY training ./training
COPY service ./service
# The project itself, with no dependency resolution: everything it needs is the lock above.
RUN pip install --no-deps --no-build-isolation . \
    && pip check

FROM cpu-base AS serve-cpu
ARG MODEL_DIR
RUN useradd --create-home --uid 10001 --user-group maskx
COPY --from=serve-cpu-build /opt/venv /opt/venv
COPY ${MODEL_DIR}/ /models/
# No GPU provider in this image's onnxruntime: MASKX_PROVIDERS=cuda here is a mistake, refused
# at start with the reason rather than served on the CPU it already uses.
ENV MASKX_MODEL_PATH=/models/model.onnx \
    MASKX_PROVIDERS=cpu \
    MASKX_ALLOW_CPU_FALLBACK=false \
    MASKX_HOST=0.0.0.0 \
    MASKX_PORT=8000
# Numeric, so that Kubernetes' runAsNonRoot can verify that the user is not root.
USER 10001:10001
WORKDIR /home/maskx
VOLUME ["/models"]
EXPOSE 8000
# Healthy means ready: model loaded and warmed up (/readyz), not merely alive (/healthz).
# Python's urllib instead of curl: nothing extra in the image. urlopen raises on non-2xx.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('MASKX_PORT', '8000') + '/readyz', timeout=4)"]
ENTRYPOINT ["maskx", "serve"]

# ---------------------------------------------------------------------------------------------
# trainer: torch comes from the `train` lock; PyPI's Linux torch wheels bring their own CUDA
# libraries, so a plain Python base is enough (run with --gpus all to train on a GPU).
# ---------------------------------------------------------------------------------------------
FROM cpu-base AS trainer
ARG PIP_INDEX=""
ARG PIP_EXTRA_INDEX=""
ARG PIP_TRUSTED_HOSTS=""
WORKDIR /src
COPY deploy/requirements/build.txt deploy/requirements/train.txt ./
RUN pip-install-locked -r build.txt \
    && pip-install-locked -r train.txt
COPY pyproject.toml ./
COPY maskx ./maskx
COPY model ./model
COPY training ./training
COPY service ./service
COPY configs ./configs
COPY deploy/build-demo-model.sh /usr/local/bin/build-demo-model
RUN pip install --no-deps --no-build-isolation . \
    && pip check \
    && useradd --create-home --uid 10001 --user-group maskx \
    && mkdir -p /workspace /models \
    && chown maskx:maskx /workspace /models
USER 10001:10001
WORKDIR /workspace
ENTRYPOINT ["maskx"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------------
# serve-gpu (default target): the worker on ONNX Runtime's CUDA provider.
# ---------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS gpu-base
ENV DEBIAN_FRONTEND=noninteractive
COPY deploy/ca-certificates/ /usr/local/share/ca-certificates/maskx/
COPY deploy/pip-install-locked.sh /usr/local/bin/pip-install-locked
# Ubuntu's python3 is the one Python of this image; versions follow the base image's release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && if ls /usr/local/share/ca-certificates/maskx/*.crt >/dev/null 2>&1; then update-ca-certificates; fi \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt

FROM gpu-base AS serve-gpu-build
ARG GPU_LOCK
ARG PIP_INDEX=""
ARG PIP_EXTRA_INDEX=""
ARG PIP_TRUSTED_HOSTS=""
WORKDIR /src
COPY deploy/requirements/build.txt deploy/requirements/gpu-cuda12.txt deploy/requirements/gpu-cuda13.txt ./
RUN pip-install-locked -r build.txt \
    && pip-install-locked -r "${GPU_LOCK}"
COPY pyproject.toml ./
COPY maskx ./maskx
COPY model ./model
COPY training ./training
COPY service ./service
RUN pip install --no-deps --no-build-isolation . \
    && pip check

FROM gpu-base AS serve-gpu
ARG MODEL_DIR
# The TensorRT cache folder (MASKX_TRT_CACHE_DIR) exists, owned by the worker's user, so that a
# fresh named volume mounted there takes that owner (Docker copies it) and the worker can write.
RUN useradd --create-home --uid 10001 --user-group maskx \
    && install -d -o 10001 -g 10001 /var/cache/maskx/tensorrt
COPY --from=serve-gpu-build /opt/venv /opt/venv
COPY ${MODEL_DIR}/ /models/
# CUDA, with the CPU provider for the nodes CUDA lacks. PyPI's onnxruntime-gpu also lists the
# TensorRT provider, but this image carries no TensorRT libraries: deploy/README.md shows the
# TensorRT build, after which MASKX_PROVIDERS=tensorrt,cuda,cpu uses it.
# Strict: on a node whose driver is too old or that has no GPU, the worker exits naming the
# reason instead of passing its probes at CPU speed; MASKX_ALLOW_CPU_FALLBACK=true overrides.
ENV MASKX_MODEL_PATH=/models/model.onnx \
    MASKX_PROVIDERS=cuda,cpu \
    MASKX_ALLOW_CPU_FALLBACK=false \
    MASKX_HOST=0.0.0.0 \
    MASKX_PORT=8000 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /home/maskx
VOLUME ["/models"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('MASKX_PORT', '8000') + '/readyz', timeout=4)"]
ENTRYPOINT ["maskx", "serve"]
