"""The demo page in headless Chromium against the real app served by uvicorn on loopback.

Needs Debian's ``chromium`` (``apt-get install -y chromium``); Playwright drives it through
``executable_path``, so no browser download is involved. The screenshot of the page after a
sample was segmented is kept at ``artifacts/test-screenshots/demo_page.png``.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

from service.app import create_app
from service.overlay import class_color
from service.settings import Settings
from service.testing import CLASSES, LABELS, build_test_model, default_metadata
from tests.service.helpers import CHROMIUM, CHROMIUM_ARGS, LiveServer

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "service" / "static" / "samples"
NAMES = [CLASSES[label - 1] for label in LABELS]  # the graph's detections, best first
SCREENSHOT_DIR = ROOT / "artifacts" / "test-screenshots"
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app served by uvicorn on a free loopback port, as ``maskx serve`` runs it, with a
    real ONNX Runtime session on the service's synthetic test graph (whose outputs we pin)."""
    model = build_test_model(tmp_path_factory.mktemp("model") / "test.onnx")
    settings = Settings(model_path=model, providers="cpu")
    with LiveServer(create_app(settings)) as server:
        server.wait_ready()
        yield server.url


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.is_file():
        pytest.fail(
            f"headless Chromium not found at {CHROMIUM}: install it with "
            "`apt-get install -y chromium` (Debian), or point MASKX_CHROMIUM at the binary"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, base_url: str) -> Iterator[object]:  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1200, "height": 860})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # The page runs under its own Content-Security-Policy: anything it blocks is an error.
    page.on(
        "console",
        lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    page.goto(f"{base_url}/")
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the demo page: {errors}"


def _canvas_pixels(page) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The demo canvas as uint8 RGB [H, W, 3] (lossless PNG export of its own pixels)."""
    data_url = page.evaluate("document.getElementById('canvas').toDataURL('image/png')")
    png = base64.b64decode(data_url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def _wait_for(page, expression: str) -> None:  # type: ignore[no-untyped-def]
    """Poll ``expression`` until it is true. ``page.wait_for_function`` would evaluate it with
    ``eval`` inside the page, which the page's CSP (no ``unsafe-eval``) forbids; ``evaluate``
    goes through the debugging protocol."""
    until = time.monotonic() + TIMEOUT_MS / 1000
    while not page.evaluate(expression):
        assert time.monotonic() < until, f"timed out waiting for {expression}"
        time.sleep(0.05)


def _wait_done(page, rows: int | None = None) -> dict:  # type: ignore[no-untyped-def]
    """Wait for a finished request (with ``rows`` table rows); fail at once on a shown error."""
    state = "document.getElementById('status').dataset.state"
    done = f"{state} === 'done'"
    if rows is not None:
        done += f" && document.querySelectorAll('#detections tbody tr').length === {rows}"
    _wait_for(page, f"{state} === 'error' || ({done})")
    assert page.get_attribute("#status", "data-state") == "done", (
        f"the demo page shows an error: {page.inner_text('#status')}"
    )
    return page.evaluate("window.maskxDemo.lastResponse")


def test_demo_page_draws_masks_boxes_and_labels(page) -> None:  # type: ignore[no-untyped-def]
    page.wait_for_selector('#model-info[data-loaded="true"]')
    meta = default_metadata()
    assert f"{meta['name']} {meta['version']}" in page.inner_text("#model-info")

    page.click('button.sample[data-sample="synth-1.png"]')
    response = _wait_done(page, rows=2)
    dets = response["detections"]
    assert [d["name"] for d in dets] == NAMES[:2]
    assert [d["mask_source"] for d in dets] == ["supervised", "transferred"]

    original = np.asarray(Image.open(SAMPLES / "synth-1.png").convert("RGB")).astype(int)
    height, width = original.shape[:2]
    canvas = _canvas_pixels(page)
    assert canvas.shape == original.shape, "the canvas keeps the image's own pixel grid"
    changed = np.abs(canvas - original).sum(axis=2) > 30
    for det in dets:
        x1, y1, x2, y2 = (round(v) for v in det["box"])
        inside = changed[y1:y2, x1:x2]
        # A soft disc or square of about a third of the box is blended in, plus the outline.
        assert inside.mean() > 0.3, (det["name"], float(inside.mean()))
        # The mask tint follows mask_source: the box centre moved towards the class colour,
        # the same palette as the PNG overlays of maskx predict.
        colour = np.array(class_color(det["label"], det["mask_source"]))
        cy, cx = (y1 + y2) // 2, (x1 + x2) // 2
        before = np.abs(original[cy, cx] - colour).sum()
        after = np.abs(canvas[cy, cx] - colour).sum()
        assert after < 0.7 * before, (det["name"], before, after)
        # The box outline is the class colour (same palette in JS and Python).
        edge = canvas[cy, x1]
        assert np.abs(edge - colour).max() <= 2, (det["name"], edge.tolist(), colour.tolist())
    # Away from the boxes and their labels, the image is drawn untouched.
    np.testing.assert_array_equal(
        canvas[height - 12 :, : width // 2], original[height - 12 :, : width // 2]
    )

    # Labels: table rows with name, score and mask source; a legend entry per class.
    table = page.inner_text("#detections tbody")
    for det in dets:
        assert det["name"] in table and f"{det['score']:.3f}" in table
        assert det["mask_source"] in table
    legend = page.inner_text("#legend")
    for det in dets:
        assert f"{det['name']} ({det['mask_source']})" in legend
    timings = page.inner_text("#timings")
    for stage in ("decode", "queue", "inference", "postprocess"):
        assert stage in timings

    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT_DIR / "demo_page.png"), full_page=True)


def test_demo_page_thresholds_requery(page) -> None:  # type: ignore[no-untyped-def]
    page.set_input_files("#file-input", str(SAMPLES / "synth-2.png"))
    _wait_done(page, rows=2)
    page.fill("#score-threshold", "0.2")  # the 0.35 detection appears
    response = _wait_done(page, rows=3)
    assert [d["name"] for d in response["detections"]] == NAMES

    def mask_pixels(resp: dict) -> int:
        return int(
            page.evaluate(
                "(m) => window.maskxDemo.rleDecode(m).reduce((a, b) => a + b, 0)",
                resp["detections"][0]["mask"],
            )
        )

    loose = mask_pixels(response)
    page.fill("#mask-threshold", "0.95")
    _wait_for(
        page,
        f"window.maskxDemo.lastResponse.detections[0].mask.counts !== "
        f"{response['detections'][0]['mask']['counts']!r}",
    )
    strict = mask_pixels(page.evaluate("window.maskxDemo.lastResponse"))
    assert 0 < strict < loose


def test_demo_page_drop_and_error(page) -> None:  # type: ignore[no-untyped-def]
    # Drop a sample file on the drop zone, as a user dragging from the desktop would.
    page.evaluate(
        """async () => {
            const blob = await (await fetch('static/samples/synth-3.png')).blob();
            const dt = new DataTransfer();
            dt.items.add(new File([blob], 'dropped.png', {type: 'image/png'}));
            document.getElementById('drop-zone').dispatchEvent(
                new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
        }"""
    )
    _wait_done(page, rows=2)
    assert "dropped.png" in page.inner_text("#status")

    # A file that is not an image: the page shows the service's error code and message.
    page.set_input_files(
        "#file-input",
        files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not an image"}],
    )
    page.wait_for_selector('#status[data-state="error"]')
    status = page.inner_text("#status")
    assert "400" in status and "undecodable_image" in status, status


def test_js_rle_decoder_matches_pycocotools(page) -> None:  # type: ignore[no-untyped-def]
    """The page's port of rleFrString against pycocotools, with the window it draws in."""
    rng = np.random.default_rng(0)
    block = np.zeros((90, 700), dtype=np.uint8)
    block[3:88, 100:690] = 1  # long runs: multi-chunk counts and negative deltas
    cases = [
        (rng.random((37, 23)) < 0.4).astype(np.uint8),
        (rng.random((64, 48)) < 0.97).astype(np.uint8),
        block,
        np.zeros((5, 7), dtype=np.uint8),
        np.ones((9, 4), dtype=np.uint8),
    ]
    for mask in cases:
        rle = mask_utils.encode(np.asfortranarray(mask))
        js = page.evaluate(
            """(rle) => { const m = window.maskxDemo.rleDecode(rle);
                return {data: Array.from(m), box: [m.x0, m.x1, m.y0, m.y1]}; }""",
            {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
        )
        decoded = np.array(js["data"], dtype=np.uint8).reshape(mask.shape)
        np.testing.assert_array_equal(decoded, mask_utils.decode(rle))
        if mask.any():
            ys, xs = np.nonzero(mask)
            assert js["box"] == [xs.min(), xs.max(), ys.min(), ys.max()]
