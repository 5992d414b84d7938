"""The `serve-cpu` image, built and run on a real Docker engine with a model exported on this host.

Part of `make test` (the layer cache makes a rebuild take seconds; the first build on a machine
takes a few minutes) and of `make test-docker`. Skips, with the reason, only where no engine can
run.
"""

from __future__ import annotations

import json
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.deploy.docker_helpers import (
    SAMPLE_IMAGE,
    TEST_PREFIX,
    Built,
    assert_same_detections,
    build_image,
    container_state,
    ensure_engine,
    export_tiny_model,
    host_worker,
    remove_container,
    run,
    segment,
    start_container,
)

pytestmark = pytest.mark.docker

IMAGE = f"{TEST_PREFIX}/segmenter:cpu"
UID = 10001


@pytest.fixture(scope="module")
def built() -> Built:
    ensure_engine()
    return build_image("serve-cpu", IMAGE)


@pytest.fixture(scope="module")
def image(built: Built) -> str:
    return built.tag


def test_building_serve_cpu_builds_no_gpu_stage(built: Built) -> None:
    """Docker's legacy builder builds every stage before the target (BuildKit only those the
    target needs): the CUDA stages must come after serve-cpu."""
    steps = [line for line in built.log.splitlines() if line.startswith("Step ")]
    assert any("AS serve-cpu" in line for line in steps), steps
    # Global ARG lines (CUDA_IMAGE, GPU_LOCK) are read for every target; no other step may be.
    gpu = [line for line in steps if "gpu" in line.lower() and " : ARG " not in line]
    assert not gpu, gpu


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("host-model")
    # A user's export folder is world-readable; pytest makes its folders private.
    folder.chmod(0o755)
    model = export_tiny_model(folder)
    assert stat.S_IMODE(model.stat().st_mode) == 0o644
    return folder


@pytest.fixture(scope="module")
def container(image: str, model_dir: Path) -> Iterator[tuple[str, str]]:
    name = f"{TEST_PREFIX}-serve-cpu"
    url = start_container(image, model_dir, name)
    try:
        yield name, url
    finally:
        remove_container(name)


def _exec(name: str, code: str) -> str:
    return run(["docker", "exec", name, "python", "-c", code]).stdout.strip()


def test_readyz_and_same_detections_as_maskx_serve_on_the_host(
    container: tuple[str, str], model_dir: Path, tmp_path: Path
) -> None:
    _, url = container
    ready = httpx.get(f"{url}/readyz", timeout=5)
    assert ready.status_code == 200, ready.text
    in_container = segment(url)
    with host_worker(model_dir / "model.onnx", tmp_path / "host.log") as host:
        on_host = segment(host.url)
    assert in_container["model"] == on_host["model"]
    assert_same_detections(in_container, on_host)


def test_runs_as_uid_10001_without_torch(container: tuple[str, str]) -> None:
    name, _ = container
    # The server process itself (PID 1), not just a shell started beside it.
    status = run(["docker", "exec", name, "cat", "/proc/1/status"]).stdout
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert set(uids) == {str(UID)}, f"PID 1 runs with UIDs {uids}"
    found = _exec(
        name,
        "import importlib.util as u; print([m for m in ('torch', 'torchvision') if u.find_spec(m)])",
    )
    assert found == "[]", f"the serving image has {found}"
    assert "torch" not in run(["docker", "exec", name, "pip", "list"]).stdout.lower()


def test_healthcheck_turns_healthy(container: tuple[str, str]) -> None:
    name, _ = container
    deadline = time.monotonic() + 60
    while (health := container_state(name)["Health"])["Status"] != "healthy":
        assert health["Status"] == "starting", json.dumps(health, indent=1)
        assert time.monotonic() < deadline, json.dumps(health, indent=1)
        time.sleep(1)
    probe = " ".join(
        json.loads(
            run(["docker", "inspect", "--format", "{{json .Config.Healthcheck}}", name]).stdout
        )["Test"]
    )
    assert "/readyz" in probe, f"the healthcheck must mean ready, not alive: {probe}"


def test_docker_stop_drains_an_in_flight_request(image: str, model_dir: Path) -> None:
    """A request whose body is still arriving when `docker stop` sends SIGTERM: the worker stops
    being ready (/readyz 503) but finishes that request (200, detections), then exits 0 well
    before the stop timeout would kill it."""
    name = f"{TEST_PREFIX}-serve-cpu-drain"
    url = start_container(image, model_dir, name)
    try:
        body = SAMPLE_IMAGE.read_bytes()
        release = threading.Event()
        result: dict = {}

        def chunks() -> Iterator[bytes]:
            yield body[:1024]
            release.wait(60)  # the rest of the body only once the stop is under way
            yield body[1024:]

        def send() -> None:
            try:
                response = httpx.post(
                    f"{url}/segment",
                    params={"score_threshold": 0},
                    content=chunks(),
                    headers={"Content-Type": "image/png"},
                    timeout=90,
                )
                result["status"], result["body"] = response.status_code, response.json()
            except BaseException as exc:  # reported by the assertions below
                result["error"] = repr(exc)

        thread = threading.Thread(target=send)
        thread.start()
        deadline = time.monotonic() + 30
        # Its body is still arriving: it counts as uploading, not yet as in flight.
        while "maskx_uploading_requests 1.0" not in httpx.get(f"{url}/metrics", timeout=5).text:
            assert thread.is_alive(), f"the request ended before the stop: {result}"
            assert time.monotonic() < deadline, "the request never showed as uploading"
            time.sleep(0.05)
        started = time.monotonic()
        stop = subprocess.Popen(
            ["docker", "stop", "-t", "30", name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 10
            while httpx.get(f"{url}/readyz", timeout=5).status_code != 503:
                assert time.monotonic() < deadline, "/readyz never turned 503 while draining"
                time.sleep(0.1)
        finally:
            release.set()
        thread.join(60)
        _, err = stop.communicate(timeout=60)
        took = time.monotonic() - started
        assert stop.returncode == 0, err
        assert "error" not in result, f"in-flight request failed during stop: {result['error']}"
        assert result["status"] == 200 and result["body"]["detections"], result
        state = container_state(name)
        assert state["ExitCode"] == 0, f"exit code {state['ExitCode']} (137: killed, not drained)"
        assert took < 25, f"docker stop took {took:.1f} s: the worker did not exit after draining"
    finally:
        release.set()
        remove_container(name)
