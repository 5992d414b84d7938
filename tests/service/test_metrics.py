"""Metrics an operator reads: process metrics on the worker's own registry, failed inference
calls, why a request got 429, and whether the worker is ready and healthy."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.admission import Admission
from service.app import create_app
from service.errors import ServiceError
from service.metrics import ServiceMetrics
from service.settings import Settings
from service.testing import make_image
from tests.service.helpers import FakeRuntime

JPEG = {"content-type": "image/jpeg"}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(name, sorted label pairs): value}`` of a /metrics body."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


def test_process_metrics_are_on_the_worker_registry(settings: Settings) -> None:
    with TestClient(create_app(settings)) as c:
        text = c.get("/metrics").text
    # A real process reading, not a placeholder: the worker holds at least ONNX Runtime.
    assert value(text, "process_resident_memory_bytes") > 20e6
    assert value(text, "process_open_fds") > 0
    assert value(text, "process_cpu_seconds_total") > 0
    assert any(name == "python_info" for name, _ in samples(text))


def test_failed_inference_calls_are_counted_and_turn_health_off(settings: Settings) -> None:
    cfg = settings.model_copy(update={"unhealthy_after_failures": 2})
    with TestClient(create_app(cfg, runtime=FakeRuntime(fail=True))) as c:
        text = c.get("/metrics").text
        assert value(text, "maskx_inference_failures_total") == 0
        assert value(text, "maskx_healthy") == 1
        for _ in range(2):
            assert c.post("/segment", content=make_image(64, 48), headers=JPEG).status_code == 500
        text = c.get("/metrics").text
        assert value(text, "maskx_inference_failures_total") == 2
        assert value(text, "maskx_healthy") == 0
        assert c.get("/healthz").status_code == 503


def test_ready_gauge_follows_readyz(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"warmup": True}), runtime=FakeRuntime(delay_s=0.3))
    with TestClient(app) as c:
        assert c.get("/readyz").status_code == 503
        assert value(c.get("/metrics").text, "maskx_ready") == 0
        until = time.monotonic() + 20
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < until
            time.sleep(0.05)
        assert value(c.get("/metrics").text, "maskx_ready") == 1
        app.state.worker.admission.begin_drain()
        assert value(c.get("/metrics").text, "maskx_ready") == 0


def test_429_reasons_are_told_apart() -> None:
    metrics = ServiceMetrics()
    admission = Admission(1, metrics, ready=lambda: True)
    with admission.admit(), pytest.raises(ServiceError) as err, admission.admit():
        pass
    assert err.value.code == "server_busy"
    from prometheus_client import generate_latest

    text = generate_latest(metrics.registry).decode()
    assert value(text, "maskx_rejected_requests_total", reason="server_busy") == 1
    # The other reason is exported at 0 from the start (rate() needs a first sample).
    assert value(text, "maskx_rejected_requests_total", reason="queue_full") == 0
