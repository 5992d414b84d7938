"""The HTTP API through the real lifespan (Starlette TestClient), real ONNX Runtime session."""

from __future__ import annotations

import struct
import threading
import time
import zlib
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pycocotools import mask as mask_utils
from pydantic import SecretStr

from service.api.main import ALIASES
from service.api.routes import demo as demo_module
from service.app import create_app
from service.schemas import ErrorResponse, ModelDescription, SegmentResponse
from service.settings import Settings
from service.testing import make_image
from tests.service.helpers import FakeRuntime

JPEG = {"content-type": "image/jpeg"}


def png_declaring(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def wait_ready(client: TestClient, timeout_s: float = 20) -> None:
    until = time.monotonic() + timeout_s
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < until, "not ready in time"
        time.sleep(0.02)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings.model_copy(update={"max_body_bytes": 2_000_000}))
    with TestClient(app) as c:
        wait_ready(c)
        yield c


def assert_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = ErrorResponse.model_validate(response.json())
    assert body.error.code == code and body.error.message
    assert "Traceback" not in response.text


def test_segment_raw_body_and_multipart(client: TestClient, synthetic_model: None) -> None:
    data = make_image(640, 480)
    for response in (
        client.post("/segment", content=data, headers=JPEG),
        client.post("/segment", files={"image": ("x.jpg", data, "image/jpeg")}),
    ):
        assert response.status_code == 200, response.text
        body = SegmentResponse.model_validate(response.json())
        assert (body.image.width, body.image.height) == (640, 480)
        assert body.model.name == "maskx-test" and body.model.num_classes == 4
        assert [d.label for d in body.detections] == [1, 2]  # default score threshold 0.5
        assert [d.mask_source for d in body.detections] == ["supervised", "transferred"]
        np.testing.assert_allclose(body.detections[0].box, [64, 96, 384, 336], atol=0.02)
        m = mask_utils.decode(body.detections[0].mask.model_dump())
        assert m.shape == (480, 640) and 0 < m.sum() < 320 * 240
        assert set(body.timing_ms.model_dump()) == {"decode", "queue", "inference", "postprocess"}


def test_query_parameters(client: TestClient, synthetic_model: None) -> None:
    data = make_image(320, 320)
    r = client.post("/segment?score_threshold=0&classes=ring-yellow,1&masks=none", content=data,
                    headers=JPEG)  # fmt: skip
    dets = r.json()["detections"]
    assert [d["label"] for d in dets] == [1, 4] and all("mask" not in d for d in dets)
    r = client.post("/segment?score_threshold=0&max_detections=1", content=data, headers=JPEG)
    assert len(r.json()["detections"]) == 1
    full = client.post("/segment?mask_threshold=0.05", content=data, headers=JPEG).json()
    tight = client.post("/segment?mask_threshold=0.95", content=data, headers=JPEG).json()
    area = [mask_utils.area(d["detections"][0]["mask"]) for d in (full, tight)]
    assert area[0] > area[1] > 0


def test_exif_orientation_6(client: TestClient, synthetic_model: None) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    r = client.post("/segment", content=make_image(320, 240, exif=exif.tobytes()), headers=JPEG)
    body = r.json()
    assert body["image"] == {"width": 240, "height": 320}
    x1, y1, x2, y2 = body["detections"][0]["box"]
    # the box fractions of the test graph, in the displayed (portrait) frame
    assert (x1, y1, x2, y2) == pytest.approx((24.0, 64.0, 144.0, 224.0), abs=0.6)
    assert body["detections"][0]["mask"]["size"] == [320, 240]


BAD_INPUTS = [
    ("empty", b"", JPEG, 400, "empty_body"),
    ("truncated-jpeg", make_image(640, 480)[:3000], JPEG, 400, "undecodable_image"),
    ("text-as-jpeg", b"just some text", JPEG, 400, "undecodable_image"),
    ("random-as-png", np.random.default_rng(1).bytes(4096), {"content-type": "image/png"}, 400,
     "undecodable_image"),
    ("svg", b'<svg xmlns="http://www.w3.org/2000/svg"/>', {"content-type": "image/svg+xml"}, 415,
     "unsupported_media_type"),
    ("svg-as-png", b'<svg xmlns="http://www.w3.org/2000/svg"/>', {"content-type": "image/png"},
     400, "undecodable_image"),
    ("html", b"<html><body>x</body></html>", {"content-type": "text/html"}, 415,
     "unsupported_media_type"),
    ("no-content-type", make_image(64, 64), {}, 415, "unsupported_media_type"),
    ("bomb-png", png_declaring(60000, 60000), {"content-type": "image/png"}, 413,
     "image_too_large"),
    ("over-pixel-limit", png_declaring(8000, 6000), {"content-type": "image/png"}, 413,
     "image_too_large"),
    ("body-over-limit", b"\xff" * 2_000_001, JPEG, 413, "body_too_large"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "headers", "status", "code"), [b[1:] for b in BAD_INPUTS],
                         ids=[b[0] for b in BAD_INPUTS])  # fmt: skip
def test_bad_input_gives_coded_4xx_and_server_keeps_serving(
    client: TestClient, data: bytes, headers: dict, status: int, code: str
) -> None:
    assert_error(client.post("/segment", content=data, headers=headers), status, code)
    assert client.post("/segment", content=make_image(64, 48), headers=JPEG).status_code == 200


def test_body_over_limit_without_content_length_is_cut_while_reading(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b"\0" * 100_000

    assert_error(client.post("/segment", content=chunks(), headers=JPEG), 413, "body_too_large")


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("score_threshold=1.5", "invalid_parameter"),
        ("score_threshold=abc", "invalid_parameter"),
        ("max_detections=0", "invalid_parameter"),
        ("max_detections=1001", "invalid_parameter"),
        ("mask_threshold=-0.1", "invalid_parameter"),
        ("masks=png", "invalid_parameter"),
        ("classes=unicorn", "unknown_class"),
        ("classes=99", "unknown_class"),
    ],
)
def test_bad_query_values(client: TestClient, query: str, code: str) -> None:
    r = client.post(f"/segment?{query}", content=make_image(64, 48), headers=JPEG)
    assert_error(r, 422, code)
    assert query.split("=")[1] in r.json()["error"]["message"]


def test_multipart_without_image_field(client: TestClient) -> None:
    r = client.post("/segment", files={"picture": ("x.jpg", make_image(64, 48), "image/jpeg")})
    assert_error(r, 422, "missing_image_field")
    assert "picture" in r.json()["error"]["message"]


def test_health_model_metrics_and_unknown_routes(client: TestClient, synthetic_model: None) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    desc = ModelDescription.model_validate(client.get("/v1/model").json())
    assert desc.provider == "cpu" and desc.mask_classes == [True, False, True, False]
    client.post("/segment", content=make_image(64, 48), headers=JPEG)
    text = client.get("/metrics").text
    for name in (
        'maskx_request_duration_seconds_bucket{le="0.001",route="/segment",status="200"}',
        'maskx_requests_total{route="/segment",status="200"}',
        "maskx_queue_wait_seconds_count",
        "maskx_inference_seconds_count",
        "maskx_preprocess_seconds_count",
        "maskx_postprocess_seconds_count",
        "maskx_batch_size_count",
        "maskx_detections_per_image_count",
        "maskx_in_flight_requests 0.0",
        "maskx_queue_depth 0.0",
        "maskx_queue_capacity 64.0",
        # The test graph's metadata has a checkpoint hash and nothing else of the identity.
        'maskx_model_info{checkpoint_sha256="' + "0" * 64 + '",exported_at="unknown",'
        'maskx_version="unknown",name="maskx-test",precision="unknown",provider="cpu",'
        'score_floor="unknown",version="0.0.1"} 1.0',
    ):
        assert name in text, name
    assert_error(client.get("/nowhere"), 404, "not_found")
    assert_error(client.get("/segment"), 405, "method_not_allowed")
    assert "unmatched" in client.get("/metrics").text
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/segment", "/v1/model", "/healthz", "/readyz", "/metrics"} <= set(paths)
    assert "/segment" not in paths, "the alias stays out of the schema"


def test_versioned_path_and_its_alias_answer_alike(client: TestClient) -> None:
    assert ALIASES == {"/segment": "/v1/segment"}
    data = make_image(96, 64)
    new = client.post("/v1/segment?score_threshold=0.3", content=data, headers=JPEG)
    old = client.post("/segment?score_threshold=0.3", content=data, headers=JPEG)
    assert new.status_code == old.status_code == 200, (new.text, old.text)
    strip = lambda body: {k: v for k, v in body.items() if k != "timing_ms"}  # noqa: E731
    assert strip(new.json()) == strip(old.json())
    assert new.json()["detections"], "the same detections, not two empty answers"
    # Each path counts under its own route template: the alias's remaining callers show.
    text = client.get("/metrics").text
    assert 'maskx_requests_total{route="/v1/segment",status="200"} 1.0' in text
    assert 'maskx_requests_total{route="/segment",status="200"} 1.0' in text
    # Validation and errors are the same on both.
    for path in ("/v1/segment", "/segment"):
        assert_error(client.post(path + "?masks=x", content=data, headers=JPEG), 422,
                     "invalid_parameter")  # fmt: skip
    # The probes and /metrics stay unversioned; there is no /v1/healthz.
    assert_error(client.get("/v1/healthz"), 404, "not_found")


def test_api_key_guards_every_route_but_the_probes(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"api_key": SecretStr("k3y")}))
    with TestClient(app) as c:
        wait_ready(c)
        data = make_image(64, 48)
        r = c.post("/segment", content=data, headers=JPEG)
        assert_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
        bad = JPEG | {"authorization": "Bearer nope"}
        assert_error(c.post("/segment", content=data, headers=bad), 401, "unauthorized")
        good = JPEG | {"authorization": "Bearer k3y"}
        assert c.post("/segment", content=data, headers=good).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        key = {"authorization": "Bearer k3y"}
        for path in ("/v1/model", "/metrics", "/docs", "/openapi.json", "/", "/static/app.js",
                     "/docs-assets/swagger-ui.css", "/no-such-route"):  # fmt: skip
            r = c.get(path)
            assert_error(r, 401, "unauthorized")
            assert r.headers["x-request-id"]
            assert_error(c.get(path, headers={"authorization": "Bearer k3y-"}), 401, "unauthorized")
            assert c.get(path, headers=key, follow_redirects=False).status_code in (200, 307, 404)
        assert c.get("/v1/model", headers=key).json()["name"]
        assert "maskx_requests_total" in c.get("/metrics", headers=key).text
        assert_error(c.post("/v1/segment", content=data, headers=bad), 401, "unauthorized")
        assert c.post("/v1/segment", content=data, headers=good).status_code == 200
        # The schema tells clients to send the key (and only when one is set: see below).
        schema = c.get("/openapi.json", headers=key).json()
        assert schema["paths"]["/v1/segment"]["post"]["security"] == [{"HTTPBearer": []}]
    with TestClient(create_app(settings)) as c:
        assert "security" not in c.get("/openapi.json").json()["paths"]["/v1/segment"]["post"]


def test_not_ready_until_warm_up_is_done(settings: Settings) -> None:
    gate = threading.Event()  # warm-up inferences wait until the test opens it
    rt = FakeRuntime(gate=gate)
    app = create_app(settings.model_copy(update={"warmup": True}), runtime=rt)
    with TestClient(app) as c:
        try:
            r = c.get("/readyz")
            assert_error(r, 503, "not_ready")
            assert r.headers["retry-after"]
            r = c.post("/segment", content=make_image(64, 48), headers=JPEG)
            assert_error(r, 503, "not_ready")
            assert c.get("/healthz").status_code == 200
        finally:
            gate.set()
        wait_ready(c)
        # warm-up covered landscape, portrait, square and a full batch
        assert rt.calls[:4] == [1, 1, 1, settings.max_batch_size]
        assert c.post("/segment", content=make_image(64, 48), headers=JPEG).status_code == 200


def test_inference_failure_is_a_json_500(settings: Settings) -> None:
    app = create_app(settings, runtime=FakeRuntime(fail=True))
    with TestClient(app) as c:
        r = c.post("/segment", content=make_image(64, 48), headers=JPEG)
        assert_error(r, 500, "inference_failed")


def test_demo_routes_stay_out_of_the_schema(
    client: TestClient, settings: Settings, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The repository ships the demo page: `/` serves it.
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<title>maskx" in r.text
    assert "/" not in client.get("/openapi.json").json()["paths"]
    # An install without the static folder redirects `/` to the API docs instead.
    monkeypatch.setattr(demo_module, "STATIC_DIR", tmp_path / "no-static")
    with TestClient(create_app(settings)) as bare:
        r = bare.get("/", follow_redirects=False)
        assert r.status_code == 307 and r.headers["location"] == "/docs"
        assert bare.get("/static/app.js").status_code == 404
        assert "/" not in bare.get("/openapi.json").json()["paths"]


def test_segment_takes_no_thread_pool_hop_outside_decode_infer_and_paste(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A plain `def` dependency or route would run in the ASGI thread pool: a thread hop per
    # request for microseconds of work. Only the engine's own pools may take the request's work.
    import anyio.to_thread

    hops: list[object] = []
    run_sync = anyio.to_thread.run_sync

    async def counting(func, *args, **kwargs):  # type: ignore[no-untyped-def]
        hops.append(func)
        return await run_sync(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    response = client.post(
        "/segment", content=make_image(64, 48), headers={"content-type": "image/jpeg"}
    )
    assert response.status_code == 200
    assert client.get("/readyz").status_code == 200
    assert hops == []
