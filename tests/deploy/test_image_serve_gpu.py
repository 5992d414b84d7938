"""The `serve-gpu` image's Python environment: onnxruntime-gpu, and not the CPU onnxruntime too.

The CUDA base image cannot be pulled here (no Docker Hub), so the stage is built on the local
Debian base instead (CUDA_IMAGE is a build argument; the stage installs its Python with apt). That
checks what the `gpu` lock installs, not CUDA itself: onnxruntime-gpu lists the CUDA provider,
the CPU build of the same `onnxruntime` module is absent, torch is absent. Slow (the
onnxruntime-gpu wheel is large): `make test-docker`.
"""

from __future__ import annotations

import pytest

from tests.deploy.docker_helpers import (
    TEST_PREFIX,
    build_image,
    ensure_engine,
    python_base_image,
    run,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_gpu_image_has_onnxruntime_gpu_only() -> None:
    ensure_engine()
    image = build_image(
        "serve-gpu", f"{TEST_PREFIX}/segmenter:gpu-env", CUDA_IMAGE=python_base_image()
    ).tag
    listed = run(["docker", "run", "--rm", "--entrypoint", "pip", image, "list"]).stdout.lower()
    names = {line.split()[0] for line in listed.splitlines()[2:] if line.strip()}
    assert "onnxruntime-gpu" in names, sorted(names)
    assert "onnxruntime" not in names, "the GPU image also has the CPU onnxruntime"
    assert not names & {"torch", "torchvision"}
    providers = run(
        ["docker", "run", "--rm", "--entrypoint", "python", image, "-c",
         "import onnxruntime; print(onnxruntime.get_available_providers())"]
    ).stdout  # fmt: skip
    assert "CUDAExecutionProvider" in providers, providers
