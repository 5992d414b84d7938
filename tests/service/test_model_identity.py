"""Model identity in ``GET /v1/model`` and ``maskx_model_info``, and the graph's score floor:
a request below it is answered with the floor applied, and told so (body field and header)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.contract import ModelMetadata
from service.schemas import ModelDescription, SegmentResponse
from service.settings import Settings
from service.testing import SCORES, build_test_model, default_metadata, make_image

JPEG = {"content-type": "image/jpeg"}
SHA = "ab" * 32
FLOOR = 0.4  # between the test graph's scores 0.71 and 0.35
IDENTITY = {
    "checkpoint_sha256": SHA,
    "precision": "fp16-backbone",
    "exported_at": "2026-12-01T08:30:00Z",
    "maskx_version": "0.3.1",
    "score_threshold": FLOOR,
}


def _client(path: Path, **settings: object) -> Iterator[TestClient]:
    app = create_app(Settings(model_path=path, providers="cpu", warmup=False, **settings))
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def identified_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("identity")
    return build_test_model(folder / "m.onnx", metadata=default_metadata(**IDENTITY))


@pytest.fixture
def client(identified_model: Path) -> Iterator[TestClient]:
    yield from _client(identified_model)


def test_model_route_and_info_metric_carry_the_identity(client: TestClient) -> None:
    body = client.get("/v1/model").json()
    ModelDescription.model_validate(body)
    identity = {k: body.get(k) for k in IDENTITY if k != "score_threshold"}
    assert identity == {k: v for k, v in IDENTITY.items() if k != "score_threshold"}
    assert body["score_floor"] == FLOOR
    line = next(
        x for x in client.get("/metrics").text.splitlines() if x.startswith("maskx_model_info{")
    )
    labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
    assert labels == {
        "name": "maskx-test", "version": "0.0.1", "provider": "cpu", "checkpoint_sha256": SHA,
        "precision": "fp16-backbone", "exported_at": "2026-12-01T08:30:00Z",
        "maskx_version": "0.3.1", "score_floor": "0.4",
    }  # fmt: skip


def test_older_files_report_null_and_unknown(tmp_path: Path) -> None:
    # A file from an exporter that wrote none of the identity keys but its "exporter" line.
    meta = default_metadata(exporter="maskx 0.0.9, torch 2.1.0, opset 17")
    del meta["checkpoint_sha256"]
    path = build_test_model(tmp_path / "old.onnx", metadata=meta)
    for client in _client(path):
        body = client.get("/v1/model").json()
        assert body["checkpoint_sha256"] is None and body["precision"] is None
        assert body["exported_at"] is None and body["score_floor"] is None
        assert body["maskx_version"] == "0.0.9", "read from the exporter line"
        metrics = client.get("/metrics").text
        assert 'checkpoint_sha256="unknown"' in metrics and 'score_floor="unknown"' in metrics
        # No floor: a threshold of 0 keeps every detection, with no header.
        r = client.post("/v1/segment?score_threshold=0", content=make_image(96, 64), headers=JPEG)
        assert len(r.json()["detections"]) == len(SCORES)
        assert r.json()["score_threshold_applied"] == 0
        assert "x-maskx-score-floor" not in r.headers


def test_threshold_below_the_floor_is_raised_and_said(client: TestClient) -> None:
    data = make_image(96, 64)
    low = client.post("/v1/segment?score_threshold=0.1", content=data, headers=JPEG)
    assert low.status_code == 200, low.text
    body = SegmentResponse.model_validate(low.json())
    assert body.score_threshold_applied == FLOOR
    assert low.headers["x-maskx-score-floor"] == "0.4"
    # The floor filtered: the 0.35 detection of the graph is not in the answer.
    assert [round(d.score, 2) for d in body.detections] == [0.92, 0.71]
    # At or above the floor the request's own threshold applies, and no header says otherwise.
    high = client.post("/v1/segment?score_threshold=0.8", content=data, headers=JPEG)
    assert high.json()["score_threshold_applied"] == 0.8
    assert "x-maskx-score-floor" not in high.headers
    assert len(high.json()["detections"]) == 1
    # A COCO list has no field for it: the header says it.
    coco = client.post("/v1/segment?score_threshold=0&format=coco", content=data, headers=JPEG)
    assert coco.headers["x-maskx-score-floor"] == "0.4" and len(coco.json()) == 2


def test_server_default_below_the_floor_is_raised_too(identified_model: Path) -> None:
    for client in _client(identified_model, score_threshold=0.05):
        r = client.post("/v1/segment", content=make_image(96, 64), headers=JPEG)
        assert r.json()["score_threshold_applied"] == FLOOR
        assert r.headers["x-maskx-score-floor"] == "0.4"


@pytest.mark.parametrize("bad", [1.5, -0.1, "0.05", True])
def test_a_malformed_floor_is_refused_at_load(bad: object) -> None:
    with pytest.raises(ValueError, match="score_threshold"):
        ModelMetadata.from_dict(default_metadata(score_threshold=bad), "m.onnx")


def test_browsers_may_read_the_floor_header(identified_model: Path) -> None:
    origin = "https://app.example"
    for client in _client(identified_model, cors_origins=origin):
        r = client.post(
            "/v1/segment?score_threshold=0", content=make_image(96, 64),
            headers=JPEG | {"origin": origin},
        )  # fmt: skip
        assert r.headers["x-maskx-score-floor"] == "0.4"
        exposed = r.headers["access-control-expose-headers"].lower()
        assert "x-maskx-score-floor" in exposed, exposed
