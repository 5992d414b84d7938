"""Conventions users expect: request ids, CORS, COCO ids and results, health after failures,
the provider in use, access and JSON logs. Through the real lifespan (Starlette TestClient)."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pycocotools import mask as mask_utils

from service.app import create_app
from service.logs import JsonFormatter, configure_logging
from service.schemas import CocoResult, ModelDescription, SegmentResponse
from service.settings import Settings
from service.testing import CATEGORY_IDS, LABELS, make_image
from tests.service.helpers import FakeRuntime

JPEG = {"content-type": "image/jpeg"}
DATA = make_image(160, 120)


def _client(settings: Settings, **update: object) -> TestClient:
    return TestClient(create_app(settings.model_copy(update=update), runtime=FakeRuntime()))


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with _client(settings) as c:
        yield c


def test_request_id_is_echoed_generated_and_in_error_bodies(client: TestClient) -> None:
    r = client.post("/segment", content=DATA, headers=JPEG | {"X-Request-ID": "abc-123"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "abc-123"
    generated = client.get("/healthz").headers["x-request-id"]
    assert re.fullmatch("[0-9a-f]{32}", generated), generated  # a uuid4's hex
    assert client.get("/healthz").headers["x-request-id"] != generated  # one per request
    bad = client.post("/segment", content=b"", headers=JPEG | {"X-Request-ID": "e-1"})
    assert bad.status_code == 400 and bad.json()["error"]["request_id"] == "e-1"
    # An id that would pollute logs or headers is replaced, not echoed.
    odd = client.get("/healthz", headers={"X-Request-ID": "a b\tc" + "x" * 200})
    assert re.fullmatch("[0-9a-f]{32}", odd.headers["x-request-id"])
    missing = client.get("/nope", headers={"X-Request-ID": "n-404"})
    assert missing.status_code == 404 and missing.json()["error"]["request_id"] == "n-404"


def test_cors_preflight_answered_when_configured_and_refused_when_not(settings: Settings) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}  # fmt: skip
    with _client(settings, cors_origins="https://app.example") as c:
        ok = c.options("/segment", headers=preflight)
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == "https://app.example"
        assert "POST" in ok.headers["access-control-allow-methods"]
        other = c.options("/segment", headers=preflight | {"Origin": "https://evil.example"})
        assert other.status_code == 400
        assert "access-control-allow-origin" not in other.headers
        r = c.post("/segment", content=DATA, headers=JPEG | {"Origin": "https://app.example"})
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
    with _client(settings) as c:  # off by default
        refused = c.options("/segment", headers=preflight)
        assert refused.status_code == 405
        assert "access-control-allow-origin" not in refused.headers
        r = c.post("/segment", content=DATA, headers=JPEG | {"Origin": "https://app.example"})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_detections_and_model_table_carry_the_dataset_category_id(client: TestClient) -> None:
    body = SegmentResponse.model_validate(
        client.post("/segment", content=DATA, headers=JPEG).json()
    )
    assert body.detections
    for det in body.detections:
        assert det.category_id == CATEGORY_IDS[det.label - 1] != det.label
    table = ModelDescription.model_validate(client.get("/v1/model").json())
    assert table.category_ids == list(CATEGORY_IDS)


def test_coco_format_is_a_results_list_pycocotools_reads(client: TestClient) -> None:
    native = client.post("/segment", content=DATA, headers=JPEG, params={"score_threshold": 0})
    coco = client.post("/segment", content=DATA, headers=JPEG,
                       params={"score_threshold": 0, "format": "coco", "image_id": 42})  # fmt: skip
    assert coco.status_code == 200
    entries = [CocoResult.model_validate(e) for e in coco.json()]
    dets = native.json()["detections"]
    assert len(entries) == len(dets) == len(LABELS)
    for entry, det in zip(entries, dets, strict=True):
        x1, y1, x2, y2 = det["box"]
        assert entry.image_id == 42 and entry.category_id == det["category_id"]
        assert entry.bbox == pytest.approx((x1, y1, x2 - x1, y2 - y1), abs=0.011)
        assert entry.segmentation is not None
        assert mask_utils.area(entry.segmentation.model_dump()) > 0
    # pycocotools itself: a ground truth with this image and categories loads the list.
    from pycocotools.coco import COCO

    gt = COCO()
    gt.dataset = {
        "images": [{"id": 42, "width": 160, "height": 120}],
        "categories": [{"id": i, "name": str(i)} for i in CATEGORY_IDS],
        "annotations": [],
    }
    gt.createIndex()
    loaded = gt.loadRes(coco.json())
    assert len(loaded.getAnnIds()) == len(LABELS)
    bad = client.post("/segment", content=DATA, headers=JPEG, params={"format": "yaml"})
    assert bad.status_code == 422


def test_healthz_fails_after_consecutive_inference_failures(settings: Settings) -> None:
    rt = FakeRuntime(fail=True)
    app = create_app(settings.model_copy(update={"unhealthy_after_failures": 2}), runtime=rt)
    with TestClient(app) as c:
        assert c.post("/segment", content=DATA, headers=JPEG).status_code == 500
        assert c.get("/healthz").status_code == 200  # one failure is not a pattern
        assert c.post("/segment", content=DATA, headers=JPEG).status_code == 500
        sick = c.get("/healthz")
        assert sick.status_code == 503 and sick.json()["error"]["code"] == "unhealthy"
        assert "maskx_consecutive_inference_failures 2.0" in c.get("/metrics").text
        rt.fail = False
        assert c.post("/segment", content=DATA, headers=JPEG).status_code == 200
        assert c.get("/healthz").status_code == 200


def test_model_info_reports_the_provider_in_use_now(settings: Settings) -> None:
    rt = FakeRuntime(provider="cuda")
    with TestClient(create_app(settings, runtime=rt)) as c:
        assert c.get("/v1/model").json()["provider"] == "cuda"
        rt.provider = "cpu"  # ONNX Runtime fell back after start-up
        assert c.get("/v1/model").json()["provider"] == "cpu"
        text = c.get("/metrics").text
        assert 'provider="cpu"' in text and 'provider="cuda"' not in text


def test_access_log_is_opt_in_and_carries_the_request_id(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="maskx.access")
    with _client(settings) as c:
        c.get("/healthz", headers={"X-Request-ID": "quiet"})
    assert not [r for r in caplog.records if r.name == "maskx.access"]
    with _client(settings, access_log=True) as c:
        c.post("/segment", content=DATA, headers=JPEG | {"X-Request-ID": "loud-1"})
    lines = [r for r in caplog.records if r.name == "maskx.access"]
    assert len(lines) == 1
    assert lines[0].getMessage().startswith("POST /segment 200 ")
    assert lines[0].request_id == "loud-1" and lines[0].status == 200


def test_json_log_lines_parse_and_carry_the_request_id() -> None:
    configure_logging("info", "json")
    root = logging.getLogger()
    stream = io.StringIO()
    root.handlers[0].stream = stream  # type: ignore[attr-defined]
    try:
        from service.logs import request_id_var

        token = request_id_var.set("r-7")
        logging.getLogger("maskx.service").warning("queue is %s", "full")
        request_id_var.reset(token)
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("maskx.service").exception("failed")
    finally:
        root.handlers.clear()
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "queue is full" and first["request_id"] == "r-7"
    assert first["level"] == "warning" and first["time"].endswith("Z")
    assert second["request_id"] == "-" and "ValueError: boom" in second["exception"]
    # The formatter alone: a record's access-log fields are kept, and nothing is invented.
    record = logging.LogRecord("maskx.access", logging.INFO, __file__, 1, "%s done", ("GET",), None)
    record.request_id, record.status, record.path = "r-9", 204, "/healthz"
    entry = json.loads(JsonFormatter().format(record))
    assert entry.pop("time").endswith("Z")
    assert entry == {"level": "info", "logger": "maskx.access", "message": "GET done",
                     "request_id": "r-9", "path": "/healthz", "status": 204}  # fmt: skip


def test_latency_histogram_covers_the_deadline(settings: Settings) -> None:
    for deadline in (30.0, 120.0):
        with _client(settings, request_timeout_s=deadline) as c:
            c.get("/healthz")
            text = c.get("/metrics").text
            bounds = [float(line.split('le="')[1].split('"')[0])
                      for line in text.splitlines()
                      if line.startswith("maskx_request_duration_seconds_bucket")
                      and "+Inf" not in line]  # fmt: skip
            assert max(bounds) > deadline


def test_new_settings_fail_early_with_their_variable() -> None:
    with pytest.raises(ValueError, match="MASKX_MAX_IN_FLIGHT"):
        Settings(max_in_flight=2, max_batch_size=4)
    with pytest.raises(ValueError, match="log_format"):
        Settings(log_format="yaml")  # type: ignore[arg-type]
    assert Settings(cors_origins=" https://a.example, https://b.example ").cors_origin_list == [
        "https://a.example",
        "https://b.example",
    ]
