"""Fixtures of the deployment checks (helpers are in helpers.py and docker_helpers.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.deploy.helpers import ROOT, TORCH_BLOCKER, Worker, free_port, worker_env


@pytest.fixture(scope="session")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """One real worker (uvicorn, real ONNX Runtime session on the contract test graph) for the
    session's deployment checks. It starts through ``maskx serve`` exactly as the images do,
    with settings from ``MASKX_*`` variables, in an interpreter where torch cannot be imported."""
    from service.testing import build_test_model

    tmp = tmp_path_factory.mktemp("worker")
    model = build_test_model(tmp / "model.onnx")
    port = free_port()
    report = tmp / "torch_report.json"
    log = tmp / "worker.log"
    env = worker_env(model, port, PYTHONPATH=str(ROOT))
    program = TORCH_BLOCKER + "\nfrom maskx.cli import main\nsys.exit(main(['serve']))\n"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-c", program, str(report)],
            cwd=tmp,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    w = Worker(f"http://127.0.0.1:{port}", process, report, log)
    deadline = time.monotonic() + 90
    while True:
        if process.poll() is not None:
            pytest.fail(f"maskx serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{w.url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            w.stop()
            pytest.fail(f"maskx serve was not ready within 90 s:\n{log.read_text()}")
        time.sleep(0.2)
    try:
        yield w
    finally:
        w.stop()
