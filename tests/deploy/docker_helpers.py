"""Helpers of the tests that build and run the images on a real Docker engine.

The engine and the base image come from the project's own scripts (deploy/docker-engine.sh,
deploy/local-base.sh), as `make test` uses them. A test skips, printing why, only where no engine
can run (no dockerd, not root); a build or a run that fails is a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.deploy.helpers import DEPLOY, ROOT, SAMPLE_IMAGE, free_port, stop_process, worker_env

FIXTURE_CHECKPOINT = ROOT / "tests" / "fixtures" / "previous_layout" / "checkpoint.pt"
# Image names of the tests, apart from the user's (maskx/...) so that a test never replaces them.
TEST_PREFIX = "maskx-test"


def load_locks() -> types.ModuleType:
    """deploy/locks.py as a module (deploy/ is a folder of files, not an import package)."""
    if "maskx_deploy_locks" not in sys.modules:
        spec = importlib.util.spec_from_file_location("maskx_deploy_locks", DEPLOY / "locks.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while being made
        spec.loader.exec_module(module)
    return sys.modules["maskx_deploy_locks"]


def run(
    args: Sequence[str],
    *,
    timeout: float = 120,
    check: bool = True,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
    umask: int = -1,
) -> subprocess.CompletedProcess[str]:
    """Run a command; with ``check``, fail the test with its output when it exits non-zero."""
    proc = subprocess.run(
        list(args),
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        umask=umask,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"`{' '.join(args)}` exited {proc.returncode}:\n{proc.stdout[-4000:]}\n"
            f"{proc.stderr[-4000:]}",
            pytrace=False,
        )
    return proc


def ensure_engine() -> None:
    """A Docker engine answers (started by deploy/docker-engine.sh when it can be), or skip with
    the script's reason."""
    proc = subprocess.run(
        ["bash", str(DEPLOY / "docker-engine.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"no Docker engine can run here: {proc.stdout.strip() or proc.stderr.strip()}")


def python_base_image() -> str:
    """The CPU images' base: MASKX_TEST_PYTHON_IMAGE if set (e.g. python:3.12-slim-bookworm where
    Docker Hub is reachable), else the Debian base of deploy/local-base.sh, made if missing."""
    name = os.environ.get("MASKX_TEST_PYTHON_IMAGE")
    if name:
        return name
    name = "maskx/debian-python:bookworm"
    if run(["docker", "image", "inspect", name], check=False).returncode != 0:
        if os.geteuid() != 0 or shutil.which("debootstrap") is None:
            pytest.skip(
                f"no base image {name}, and deploy/local-base.sh needs root and debootstrap "
                "(apt-get install -y debootstrap) to make it"
            )
        run(["nice", "-n", "15", "bash", str(DEPLOY / "local-base.sh")], timeout=1200)
    return name


@dataclass
class Built:
    tag: str
    log: str  # the builder's output: the steps it ran (or took from its cache)


def build_image(target: str, tag: str, *, timeout: float = 1800, **build_args: str) -> Built:
    """``docker build --target TARGET`` of the repository at low CPU priority."""
    args = ["nice", "-n", "15", "docker", "build", "--target", target, "-t", tag]
    for key, value in {"PYTHON_IMAGE": python_base_image(), **build_args}.items():
        args += ["--build-arg", f"{key}={value}"]
    return Built(tag, run([*args, str(ROOT)], timeout=timeout).stdout)


def wait_ready(url: str, timeout_s: float, alive: Callable[[], str | None] | None = None) -> float:
    """Poll ``url/readyz`` until 200; returns the seconds it took. ``alive`` (optional) returns
    a failure message when the server has died."""
    start = time.monotonic()
    while True:
        if alive is not None and (why := alive()):
            pytest.fail(why, pytrace=False)
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.TransportError:
            pass
        if time.monotonic() - start > timeout_s:
            pytest.fail(f"{url} was not ready within {timeout_s:.0f} s", pytrace=False)
        time.sleep(0.5)


def export_tiny_model(folder: Path) -> Path:
    """``maskx export`` on this host, under the default umask, of the small checkpoint in
    tests/fixtures/previous_layout (a 12-class model trained for a few steps): the file a user
    would mount into the container."""
    out = folder / "model.onnx"
    args = [sys.executable, "-m", "maskx.cli", "export", "--checkpoint", str(FIXTURE_CHECKPOINT)]
    run([*args, "--output", str(out), "--name", "container-check"], timeout=600, umask=0o022)
    return out


@dataclass
class HostWorker:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        stop_process(self.process)


@contextmanager
def host_worker(model: Path, log: Path, **settings: str) -> Iterator[HostWorker]:
    """``maskx serve`` on this host (the installed package) for ``model``."""
    port = free_port()
    env = worker_env(model, port, **settings)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from maskx.cli import main; sys.exit(main(['serve']))",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    worker = HostWorker(f"http://127.0.0.1:{port}", process, log)
    try:
        wait_ready(
            worker.url,
            120,
            lambda: (
                f"maskx serve exited {process.returncode}:\n{log.read_text()}"
                if process.poll() is not None
                else None
            ),
        )
        yield worker
    finally:
        worker.stop()


def container_state(name: str) -> dict:
    return json.loads(run(["docker", "inspect", "--format", "{{json .State}}", name]).stdout)


def remove_container(name: str) -> None:
    subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60, check=False)


def start_container(
    image: str, model_dir: Path, name: str, *, docker_args: Sequence[str] = (), **env: str
) -> str:
    """``docker run -d`` of a serving image with ``model_dir`` mounted at /models; waits until
    /readyz answers 200 (fails with the container's log if it exits first). Returns its URL."""
    port = free_port()
    remove_container(name)
    args = ["docker", "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8000", *docker_args]
    # The image's own HEALTHCHECK command, probed more often than its 15 s so the test is quick.
    args += ["--health-interval", "2s", "-v", f"{model_dir}:/models:ro"]
    for key, value in {"MASKX_LOG_LEVEL": "warning", **env}.items():
        args += ["-e", f"{key}={value}"]
    run([*args, image])
    url = f"http://127.0.0.1:{port}"

    def dead() -> str | None:
        state = container_state(name)
        if state["Status"] == "exited":
            logs = run(["docker", "logs", name], check=False)
            return f"container exited {state['ExitCode']}:\n{logs.stdout}\n{logs.stderr}"
        return None

    wait_ready(url, 180, dead)
    return url


def segment(url: str, image: Path = SAMPLE_IMAGE, timeout: float = 60) -> dict:
    """POST /segment with every detection kept (score_threshold=0)."""
    response = httpx.post(
        f"{url}/segment",
        params={"score_threshold": 0},
        files={"image": (image.name, image.read_bytes(), "image/png")},
        timeout=timeout,
    )
    assert response.status_code == 200, response.text
    return response.json()


def assert_same_detections(got: dict, want: dict) -> None:
    """Same detections up to float noise between two ONNX Runtime builds: labels, scores and boxes
    within tolerance, masks with IoU >= 0.98 (pycocotools judges the RLE)."""
    from pycocotools import mask as mask_utils

    a, b = got["detections"], want["detections"]
    assert len(a) == len(b), f"{len(a)} detections vs {len(b)} on the host"
    assert a, "the check needs detections to compare; the model gave none"
    for x, y in zip(a, b, strict=True):
        assert x["label"] == y["label"] and x["name"] == y["name"], (x["label"], y["label"])
        assert abs(x["score"] - y["score"]) < 1e-3, (x["score"], y["score"])
        assert max(abs(p - q) for p, q in zip(x["box"], y["box"], strict=True)) < 0.5
        if x.get("mask") or y.get("mask"):
            rx = {"size": x["mask"]["size"], "counts": x["mask"]["counts"].encode()}
            ry = {"size": y["mask"]["size"], "counts": y["mask"]["counts"].encode()}
            if mask_utils.area(rx) + mask_utils.area(ry) > 0:
                iou = mask_utils.iou([rx], [ry], [0])[0][0]
                assert iou >= 0.98, f"mask IoU {iou:.3f} for label {x['label']}"
