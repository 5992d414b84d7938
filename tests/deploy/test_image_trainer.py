"""The `trainer` image: built on a real engine, `maskx synth` + `maskx train` run in it.

Slow (the image carries PyTorch with its CUDA libraries, a few GB): `make test-docker`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.deploy.docker_helpers import TEST_PREFIX, build_image, ensure_engine, run

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_trains_a_few_steps_with_the_tiny_config(tmp_path: Path) -> None:
    ensure_engine()
    image = build_image("trainer", f"{TEST_PREFIX}/trainer:latest", timeout=3600).tag
    base = [
        "docker", "run", "--rm", "--user", f"{os.getuid()}:{os.getgid()}",
        "-v", f"{tmp_path}:/workspace/out", "--shm-size", "1g", image,
    ]  # fmt: skip
    run([*base, "synth", "--out", "out/synth", "--classes", "20", "--images", "16",
         "--val-images", "4", "--seed", "0", "--no-progress"], timeout=600)  # fmt: skip
    trained = run([*base, "train", "--config", "/src/configs/tiny_synth.yaml",
                   "--out", "out/run", "--data-root", "out/synth", "--max-iter", "4"],
                  timeout=1200)  # fmt: skip
    final = tmp_path / "run" / "checkpoints" / "model_final.pt"
    assert final.is_file() and final.stat().st_size > 100_000, trained.stdout[-2000:]
    versions = run(
        ["docker", "run", "--rm", "--entrypoint", "python", image, "-c",
         "import torch, torchvision, onnxruntime; print(torch.__version__, torchvision.__version__)"]
    ).stdout.split()  # fmt: skip
    assert versions[0].startswith("2.14.1") and versions[1].startswith("0.29.1"), versions
