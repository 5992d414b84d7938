"""Helpers of the service tests (imported by the tests, never from conftest): a fake runtime
with a configurable delay and failure, a real uvicorn server on loopback in a thread, and where
headless Chromium is."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from service.contract import ModelMetadata
from service.runtime import RawDetections
from service.testing import default_metadata, expected_outputs

# Debian's chromium, driven by Playwright through executable_path (no browser download).
CHROMIUM = Path(os.environ.get("MASKX_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class FakeRuntime:
    """A runtime without ONNX Runtime: returns :func:`expected_outputs` after ``delay_s``.

    ``calls`` records the batch size of every call; ``fail`` makes every call raise. With a
    ``gate`` (a ``threading.Event``), every call waits for the test to set it (at most
    ``GATE_TIMEOUT_S``): a test orders events by what happened, not by how long it took.
    """

    GATE_TIMEOUT_S = 30.0

    def __init__(
        self,
        info: ModelMetadata | None = None,
        *,
        delay_s: float = 0.0,
        fail: bool = False,
        provider: str = "fake",
        gate: threading.Event | None = None,
    ) -> None:
        self.gate = gate
        self.info = info or ModelMetadata.from_dict(default_metadata(), "fake")
        self.delay_s = delay_s
        self.fail = fail
        self.provider = provider
        self.requested_provider = provider
        self.calls: list[int] = []

    def run(self, images: np.ndarray, image_sizes: np.ndarray) -> RawDetections:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images should be uint8 [B, 3, H, W], got {images.dtype} {images.shape}"
            )
        d = self.info.size_divisible
        if images.shape[2] % d or images.shape[3] % d:
            raise ValueError(f"images {images.shape} not padded to multiples of {d}")
        self.calls.append(int(images.shape[0]))
        if self.gate is not None and not self.gate.wait(self.GATE_TIMEOUT_S):
            raise RuntimeError(f"the test never opened the gate ({self.GATE_TIMEOUT_S:g} s)")
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("fake runtime failure")
        return expected_outputs(image_sizes)


class LiveServer:
    """A real uvicorn server on loopback in a background thread (for tests).

    Use as a context manager; ``url`` is ``http://127.0.0.1:<port>`` once entered. ``server`` is
    the draining uvicorn server of ``maskx serve``, so ``server.handle_exit(SIGTERM, None)``
    drains exactly as a signal would.
    """

    def __init__(self, app: Any, *, start_timeout_s: float = 30.0) -> None:
        self.app = app
        self.start_timeout_s = start_timeout_s
        self.url = ""
        self.server: Any = None
        self._thread: Any = None

    def __enter__(self) -> LiveServer:
        from service.cli import make_server
        from service.settings import Settings

        settings: Settings = self.app.state.settings.model_copy(
            update={"host": "127.0.0.1", "port": 0, "log_level": "warning"}
        )
        self.server = make_server(self.app, settings)
        self._thread = threading.Thread(target=self.server.run, name="maskx-live", daemon=True)
        self._thread.start()
        until = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > until:
                raise RuntimeError("the live server did not start (see the log above)")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Block until ``GET /readyz`` answers 200."""
        import httpx

        until = time.monotonic() + timeout_s
        while time.monotonic() < until:
            if httpx.get(self.url + "/readyz", timeout=5).status_code == 200:
                return
            time.sleep(0.02)
        raise TimeoutError(f"{self.url}/readyz did not turn ready within {timeout_s} s")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)
