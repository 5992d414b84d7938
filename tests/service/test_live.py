"""Real uvicorn on loopback: masks against the reference paste, backpressure, deadlines, drain."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from service.app import create_app
from service.pipeline import Pipeline
from service.runtime import load_runtime
from service.settings import Settings
from service.testing import make_image
from tests.service.helpers import FakeRuntime, LiveServer

JPEG = {"content-type": "image/jpeg"}


def assert_masks_match_reference_paste(
    model_path: Path, settings: Settings, images: list[bytes], content_type: str = "image/jpeg"
) -> int:
    """POST ``images`` (twice, concurrently) through real uvicorn and check every mask against
    torchvision's full-image paste of the same probabilities and pycocotools' RLE; returns the
    number of masks checked."""
    torch = pytest.importorskip("torch")
    roi_heads = pytest.importorskip("torchvision.models.detection.roi_heads")
    reference = Pipeline(load_runtime(model_path, ["cpu"]))
    app = create_app(settings.model_copy(update={"max_batch_delay_ms": 50.0}))
    headers = {"content-type": content_type}
    with LiveServer(app) as live:
        live.wait_ready()

        async def send_all() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=live.url, timeout=60) as client:
                return await asyncio.gather(
                    *(
                        client.post("/segment?score_threshold=0", content=data, headers=headers)
                        for data in images * 2
                    )
                )

        responses = asyncio.run(send_all())
        metrics = httpx.get(live.url + "/metrics").text
    # concurrent requests were batched into shared runtime calls
    batch_sum = float(metrics.split("maskx_batch_size_sum ")[1].split()[0])
    batch_count = float(metrics.split("maskx_batch_size_count ")[1].split()[0])
    assert batch_sum == 2 * len(images) and batch_count < 2 * len(images)

    checked = 0
    for data, response in zip(images * 2, responses, strict=True):
        assert response.status_code == 200, response.text
        body = response.json()
        prepared = reference.prepare(data)
        (raw,) = reference.infer([prepared])
        order = np.argsort(-raw.scores, kind="stable")
        assert len(body["detections"]) == len(order) > 0
        h, w = body["image"]["height"], body["image"]["width"]
        # The JSON rounds boxes to 0.01 px, which can move torchvision's integer paste box by a
        # pixel: paste the reference with the exact boxes the service scaled from the graph.
        in_h, in_w = prepared.input_size
        ratio = np.array([w / in_w, h / in_h] * 2, dtype=np.float32)
        boxes = raw.boxes[order].astype(np.float32) * ratio
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        np.testing.assert_allclose(
            boxes, np.array([d["box"] for d in body["detections"]]), atol=0.006
        )
        ref = roi_heads.paste_masks_in_image(
            torch.from_numpy(raw.mask_probs[order])[:, None], torch.from_numpy(boxes), (h, w)
        )[:, 0].numpy()
        for det, ref_mask in zip(body["detections"], ref, strict=True):
            rle = det["mask"]
            assert rle["size"] == [h, w]
            decoded = mask_utils.decode(rle)
            assert decoded.shape == (h, w)
            expected = ref_mask > 0.5  # the one mask rule (binarise_mask)
            inter = np.logical_and(decoded, expected).sum()
            union = np.logical_or(decoded, expected).sum()
            if union == 0:  # an empty mask must be empty on both sides
                assert decoded.sum() == 0
            else:
                diff = decoded.astype(bool) != expected
                assert inter / union >= 0.99, (inter, union, ref_mask[diff])
            again = mask_utils.encode(np.asfortranarray(decoded))
            assert again["counts"].decode() == rle["counts"]
            checked += 1
    return checked


def test_masks_over_http_match_the_reference_paste(model_path: Path, settings: Settings) -> None:
    images = [make_image(640, 480, seed=1), make_image(1000, 750, seed=2), make_image(333, 517)]
    assert assert_masks_match_reference_paste(model_path, settings, images) >= 6


def test_flood_gets_only_200_or_429_and_the_server_stays_healthy(settings: Settings) -> None:
    rt = FakeRuntime(delay_s=0.1)
    cfg = settings.model_copy(update={"max_batch_size": 1, "queue_size": 2, "max_in_flight": 64})
    data = make_image(64, 48)
    with LiveServer(create_app(cfg, runtime=rt)) as live:
        live.wait_ready()

        async def flood() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=64)
            async with httpx.AsyncClient(base_url=live.url, timeout=30, limits=limits) as client:
                return await asyncio.gather(
                    *(client.post("/segment", content=data, headers=JPEG) for _ in range(40))
                )

        responses = asyncio.run(flood())
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 429}, statuses
        assert statuses.count(200) >= 1 and statuses.count(429) >= 1
        for r in responses:
            if r.status_code == 429:
                assert r.json()["error"]["code"] == "queue_full"
                assert int(r.headers["retry-after"]) >= 1
        assert httpx.get(live.url + "/healthz").status_code == 200
        assert httpx.post(live.url + "/segment", content=data, headers=JPEG).status_code == 200
        text = httpx.get(live.url + "/metrics").text
        assert 'maskx_requests_total{route="/segment",status="429"}' in text
        # Each 429 says why: the queue was full (the in-flight cap of 64 was never reached).
        rejected = f'maskx_rejected_requests_total{{reason="queue_full"}} {statuses.count(429)}.0'
        assert rejected in text
        assert 'maskx_rejected_requests_total{reason="server_busy"} 0.0' in text


def test_deadline_gives_504_and_the_server_stays_healthy(settings: Settings) -> None:
    rt = FakeRuntime(delay_s=0.6)
    cfg = settings.model_copy(update={"request_timeout_s": 0.2})
    with LiveServer(create_app(cfg, runtime=rt)) as live:
        live.wait_ready()
        r = httpx.post(live.url + "/segment", content=make_image(64, 48), headers=JPEG)
        assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
        assert httpx.get(live.url + "/healthz").status_code == 200
        rt.delay_s = 0.0
        time.sleep(0.7)  # let the abandoned batch finish
        r = httpx.post(live.url + "/segment", content=make_image(64, 48), headers=JPEG)
        assert r.status_code == 200


def sigterm_once_in_flight(app: Any, live: LiveServer) -> None:
    """Wait until a request is admitted, then send the server its SIGTERM."""
    until = time.monotonic() + 5
    while app.state.worker.admission.in_flight == 0:
        assert time.monotonic() < until
        time.sleep(0.01)
    live.server.handle_exit(signal.SIGTERM, None)


def assert_drained(live: LiveServer, worker: threading.Thread) -> None:
    worker.join(10)
    live._thread.join(10)
    assert not live._thread.is_alive(), "server did not stop after draining"


def test_sigterm_drains_in_flight_requests_and_refuses_new_ones(settings: Settings) -> None:
    rt = FakeRuntime(delay_s=0.8)
    app = create_app(settings.model_copy(update={"max_batch_size": 1}), runtime=rt)
    data = make_image(64, 48)
    results: dict[str, httpx.Response] = {}
    with LiveServer(app) as live:
        live.wait_ready()

        def slow_request() -> None:
            results["first"] = httpx.post(live.url + "/segment", content=data, headers=JPEG)

        worker = threading.Thread(target=slow_request)
        worker.start()
        sigterm_once_in_flight(app, live)
        refused = httpx.post(live.url + "/segment", content=data, headers=JPEG)
        not_ready = httpx.get(live.url + "/readyz")
        assert_drained(live, worker)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"
    assert refused.headers["retry-after"]
    assert not_ready.status_code == 503
    assert results["first"].status_code == 200


def test_a_request_admitted_before_sigterm_is_served_while_its_body_still_arrives(
    settings: Settings,
) -> None:
    # Drain stops admitting requests; one already admitted (here: still uploading its body
    # when SIGTERM comes) must still get its answer, not a 503 after the fact.
    app = create_app(settings, runtime=FakeRuntime())
    data = make_image(64, 48)
    rest_of_body = threading.Event()
    results: dict[str, httpx.Response] = {}

    def body() -> Iterator[bytes]:
        yield data[:100]
        rest_of_body.wait(10)
        yield data[100:]

    with LiveServer(app) as live:
        live.wait_ready()

        def slow_upload() -> None:
            results["first"] = httpx.post(live.url + "/segment", content=body(), headers=JPEG)

        worker = threading.Thread(target=slow_upload)
        worker.start()
        sigterm_once_in_flight(app, live)
        refused = httpx.post(live.url + "/segment", content=data, headers=JPEG)
        rest_of_body.set()
        assert_drained(live, worker)
    assert refused.status_code == 503
    assert results["first"].status_code == 200, results["first"].text
