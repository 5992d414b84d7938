"""`docker compose up` from a fresh checkout reaches a serving model with no manual step.

The working tree's files (tracked and not ignored: what a clone of it holds, no artifacts, no
model) are copied to a new folder, and deploy/smoke.sh runs there on the CPU stack with the local
stand-ins (deploy/docker-compose.local.yml: Prometheus from Debian's package; Grafana cannot be
obtained here). The model volume starts empty, so the model-builder must make the demo model
before the worker can be ready; Prometheus must then report the worker's target up and answer a
histogram_quantile over its latency. The stack and its volumes are removed afterwards.

Slow (it builds the trainer image and trains): `make test-docker`. The demo model is built with
fewer images and steps than the default (MASKX_DEMO_IMAGES / MASKX_DEMO_MAX_ITER) to keep it short.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.docker_helpers import (
    ROOT,
    TEST_PREFIX,
    ensure_engine,
    free_port,
    python_base_image,
    run,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def fresh_checkout(dest: Path) -> Path:
    """The files a clone of the working tree would have (tracked + untracked, not ignored)."""
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]).stdout
    for rel in filter(None, listed.split("\0")):
        src = ROOT / rel
        if not src.exists():  # deleted in the working tree
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target, follow_symlinks=False)
    return dest


def test_compose_up_from_a_fresh_checkout_serves_and_is_scraped(tmp_path: Path) -> None:
    ensure_engine()
    if (
        shutil.which("docker-compose") is None
        and run(["docker", "compose", "version"], check=False).returncode
    ):
        pytest.skip("neither `docker compose` nor docker-compose is installed")
    checkout = fresh_checkout(tmp_path / "maskx")
    assert not (checkout / "artifacts").exists(), "a fresh checkout has no model"
    project = f"maskxtest{os.getpid()}"
    env = {
        **os.environ,
        "COMPOSE_PROJECT_NAME": project,
        "MASKX_PYTHON_IMAGE": python_base_image(),
        "MASKX_IMAGE": f"{TEST_PREFIX}/segmenter",
        "MASKX_TRAINER_IMAGE": f"{TEST_PREFIX}/trainer",
        "PROMETHEUS_LOCAL_IMAGE": f"{TEST_PREFIX}/prometheus-debian:local",
        "MASKX_HTTP_BIND": "127.0.0.1",
        "MASKX_HTTP_PORT": str(free_port()),
        "PROMETHEUS_PORT": str(free_port()),
        "MASKX_DEMO_IMAGES": "48",
        "MASKX_DEMO_VAL_IMAGES": "8",
        "MASKX_DEMO_MAX_ITER": "20",
        "MASKX_SMOKE_WAIT_S": "600",
    }
    env.pop("MASKX_MODEL_DIR", None)
    try:
        proc = subprocess.run(
            ["nice", "-n", "15", "bash", "deploy/smoke.sh", "--local"],
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
            timeout=3600,
            check=False,
        )
        compose = ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]
        files = ["-f", "docker-compose.yml", "-f", "deploy/docker-compose.local.yml"]
        logs = run(
            [*compose, *files, "logs", "--no-color", "model-builder"],
            cwd=checkout,
            env=env,
            check=False,
        ).stdout
    finally:
        compose = ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]
        subprocess.run(
            [*compose, "-f", "docker-compose.yml", "-f", "deploy/docker-compose.local.yml",
             "down", "--volumes", "--remove-orphans"],
            cwd=checkout, env=env, capture_output=True, timeout=300, check=False,
        )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "smoke test: PASS" in proc.stdout, output[-6000:]
    # The model came from the builder: the volume was new.
    assert "no model at /models/model.onnx; building the demo model" in logs, logs[-3000:]
    assert "model-builder: wrote /models/model.onnx" in logs, logs[-3000:]
    assert "Prometheus scrape target 'maskx' is up" in proc.stdout
    assert re.search(r"histogram_quantile p99 of POST /v1/segment: [0-9.]+ s", proc.stdout)
    ready = re.search(r"ready (\d+) s after 'up' began", proc.stdout)
    assert ready, proc.stdout
    print(f"\ncompose up -> ready: {ready.group(1)} s\n{proc.stdout}")
