"""Every stage of a request is bounded in time and memory, whatever its (valid) input.

Each test builds its hostile input itself and states its bound from the mechanism: a count
read from markers costs less than decoding a tenth of the file; memory grows with the largest
mask (or a band of rows), not with the detections × the displayed pixels; a deadline is
honoured within one group of masks. Memory of numpy work is read with ``tracemalloc``; Pillow's
allocations are not traced, so decoding is measured as peak RSS in a child process.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service import postprocess
from service.app import create_app
from service.contract import ModelMetadata
from service.errors import ServiceError
from service.postprocess import (
    SegmentParams,
    encode_masks,
    encode_regions,
    expand_boxes_for_paste,
    paste_masks_box_local,
    paste_masks_detectron,
    postprocess_detections,
    window_areas,
)
from service.preprocess import _to_rgb, decode_image, jpeg_scan_count
from service.runtime import RawDetections
from service.settings import Settings
from service.testing import default_metadata, make_image, mask_probabilities
from tests.service.helpers import FakeRuntime, LiveServer


def progressive_jpeg(width: int, height: int, extra_scans: int = 0) -> bytes:
    """A flat grey progressive JPEG whose last scan (an AC refinement) is repeated
    ``extra_scans`` more times: each copy is a few bytes, yet libjpeg walks every block of the
    image for it."""
    buf = io.BytesIO()
    Image.new("L", (width, height), 128).save(buf, "JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    last, eoi = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
    return data[:eoi] + data[last:eoi] * extra_scans + data[eoi:]


def _decode_s(data: bytes) -> float:
    t = time.perf_counter()
    with Image.open(io.BytesIO(data)) as image:
        image.draft("L", (image.width // 8, image.height // 8))
        image.load()
    return time.perf_counter() - t


def test_scan_count_reads_markers_only() -> None:
    plain = make_image(64, 48)
    assert jpeg_scan_count(plain) == 1
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(buf, "JPEG", progressive=True)
    assert jpeg_scan_count(buf.getvalue()) == 10  # libjpeg's standard script for YCbCr
    assert jpeg_scan_count(progressive_jpeg(64, 48)) == 6  # ... and for one component
    assert jpeg_scan_count(progressive_jpeg(64, 48, 500)) == 506
    assert jpeg_scan_count(progressive_jpeg(64, 48, 500), stop_after=40) == 41


def test_a_thumbnail_inside_exif_is_not_counted() -> None:
    thumb = progressive_jpeg(16, 16, 50)  # 56 scans, inside an APP1 segment
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x010E] = "x"
    app1 = b"Exif\x00\x00" + exif.tobytes()[6:] + thumb
    Image.new("RGB", (32, 32)).save(buf, "JPEG")
    data = buf.getvalue()
    data = data[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + data[2:]
    assert jpeg_scan_count(data) == 1


def test_scan_bomb_is_refused_before_decoding_and_a_neighbour_is_answered() -> None:
    """10 MP, 2006 scans, ~120 KB: decoding it would take seconds (measured below on a tenth
    of it); refusing it reads markers only, so it costs less than that tenth, and a normal
    request sent while bombs arrive on two other connections is answered as fast."""
    bomb = progressive_jpeg(4000, 2500, 2000)
    tenth = progressive_jpeg(4000, 2500, 200)
    assert len(bomb) < 200_000
    tenth_s = _decode_s(tenth)
    settings = Settings(warmup=False, max_batch_delay_ms=1, worker_threads=2)
    normal = make_image(64, 48)
    with LiveServer(create_app(settings, runtime=FakeRuntime())) as live:
        live.wait_ready()
        url = live.url + "/segment"
        post = {"headers": {"Content-Type": "image/jpeg"}, "timeout": 60}
        t = time.perf_counter()
        r = httpx.post(url, content=bomb, **post)
        refuse_s = time.perf_counter() - t
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == "image_too_complex"
        assert "MASKX_MAX_JPEG_SCANS" in r.json()["error"]["message"]
        assert refuse_s < tenth_s, (refuse_s, tenth_s)
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            bombs = [pool.submit(lambda: [httpx.post(url, content=bomb, **post) for _ in range(5)])
                     for _ in range(2)]  # fmt: skip
            t = time.perf_counter()
            ok = httpx.post(url, content=normal, **post)
            beside_s = time.perf_counter() - t
            assert all(x.status_code == 413 for f in bombs for x in f.result())
        assert ok.status_code == 200, ok.text
        assert beside_s < tenth_s, (beside_s, tenth_s)


def test_an_ordinary_progressive_jpeg_still_decodes() -> None:
    image = decode_image(
        progressive_jpeg(640, 480, 20), min_size=320, max_size=512, max_pixels=10**8
    )
    assert image.input_size == (320, 426)
    with pytest.raises(ServiceError) as err:
        decode_image(
            progressive_jpeg(640, 480, 20), min_size=320, max_size=512, max_pixels=10**8,
            max_jpeg_scans=25,
        )  # fmt: skip
    assert err.value.code == "image_too_complex"


# ----------------------------------------------------------------------------- post-processing


def _info(rule: str = "floor") -> ModelMetadata:
    meta = default_metadata()
    if rule == "detectron":
        meta.update(resize_rule="detectron", mask_paste="detectron")
    return ModelMetadata.from_dict(meta, "bounds")


def _full_image_raw(n: int, input_size: tuple[int, int]) -> RawDetections:
    """``n`` detections, each box covering the whole input (what ``score_threshold=0`` on a
    crowded scene gives), with smooth masks."""
    ih, iw = input_size
    rng = np.random.default_rng(0)
    boxes = np.tile(np.array([[0, 0, iw, ih]], np.float32), (n, 1))
    boxes += rng.uniform(-1, 1, (n, 4)).astype(np.float32)
    return RawDetections(
        boxes=boxes,
        scores=np.linspace(0.9, 0.01, n, dtype=np.float32),
        labels=np.ones(n, dtype=np.int64),
        batch_index=np.zeros(n, dtype=np.int64),
        mask_probs=np.resize(mask_probabilities(), (n, 28, 28)).astype(np.float32),
    )


EVERY = SegmentParams(score_threshold=0.0, max_detections=1000)


@pytest.mark.parametrize("rule", ["floor", "detectron"])
def test_every_detection_on_a_large_image_stays_within_one_mask_of_memory(rule: str) -> None:
    """4 masks each covering a 20-MP image: before, every region and a flat buffer of all of
    them were held at once (~6 bytes x 4 masks x 20 MP, about 500 MB); now growth stays under
    4 bytes per displayed pixel (one mask's bool region, its RLE buffer and their comparison,
    with float32 bands of a few MB), about 1.3x the decoded RGB image."""
    h, w = 4000, 5000
    raw = _full_image_raw(4, (320, 400))
    tracemalloc = pytest.importorskip("tracemalloc")
    tracemalloc.start()
    try:
        dets = postprocess_detections(
            raw, input_size=(320, 400), image_size=(h, w), info=_info(rule), params=EVERY
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(dets) == 4 and all(d.mask is not None for d in dets)
    assert peak < 4 * h * w, f"peak {peak / 1e6:.0f} MB for {h}x{w}"


def test_mask_area_over_the_cap_is_refused_before_any_paste() -> None:
    """1000 full-image detections on a 40-MP image would paste 40 G pixels; the cap answers
    422 naming the limit after summing 1000 box areas, i.e. in far less time than pasting one
    mask (measured here)."""
    h, w = 5000, 8000
    raw = _full_image_raw(1000, (320, 512))
    one = raw.mask_probs[:1], expand_boxes_for_paste(np.array([[0, 0, w, h]], np.float32), 28)
    t = time.perf_counter()
    encode_regions(paste_masks_box_local(*one, h, w, 0.5), h, w)
    one_mask_s = time.perf_counter() - t
    t = time.perf_counter()
    with pytest.raises(ServiceError) as err:
        postprocess_detections(
            raw, input_size=(320, 512), image_size=(h, w), info=_info(), params=EVERY,
            max_mask_pixels=200_000_000,
        )  # fmt: skip
    refuse_s = time.perf_counter() - t
    assert err.value.code == "mask_area_too_large" and err.value.status == 422
    assert "MASKX_MAX_MASK_PIXELS" in err.value.message and "200000000" in err.value.message
    # It says what the client can change: the parameters that shrink the mask area.
    assert "raise score_threshold, lower max_detections" in err.value.message, err.value.message
    assert refuse_s < one_mask_s, (refuse_s, one_mask_s)
    # masks=none needs no paste: the same request answers
    dets = postprocess_detections(
        raw, input_size=(320, 512), image_size=(h, w), info=_info(),
        params=SegmentParams(score_threshold=0.0, max_detections=1000, masks=False),
        max_mask_pixels=200_000_000,
    )  # fmt: skip
    assert len(dets) == 1000


@pytest.mark.parametrize("paste", [paste_masks_box_local, paste_masks_detectron])
def test_groups_and_bands_change_no_mask(paste, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pasting a group at a time, and large masks in bands of rows, gives the strings of
    pasting every mask at once, each in one piece."""
    h, w = 1500, 1200  # windows over the band size, so bands are used
    rng = np.random.default_rng(3)
    n = 7
    corners = rng.uniform(-50, 1000, (n, 2)).astype(np.float32)
    sizes = rng.uniform(5, 1400, (n, 2)).astype(np.float32)
    boxes = np.concatenate([corners, corners + sizes], axis=1)
    int_boxes = expand_boxes_for_paste(boxes, 28)
    probs = np.resize(mask_probabilities(), (n, 28, 28)).astype(np.float32)
    probs += rng.uniform(0, 0.2, probs.shape).astype(np.float32)
    grouped = encode_masks(probs, int_boxes, h, w, 0.5, paste, group_pixels=200_000)
    monkeypatch.setattr(postprocess, "_PASTE_BAND_PIXELS", 1 << 40)  # no bands
    whole = encode_regions(paste(probs, int_boxes, h, w, 0.5), h, w)
    assert grouped == whole
    assert window_areas(int_boxes, h, w).max() > 1 << 20  # a banded mask is among them


def test_deadline_is_honoured_between_masks() -> None:
    """40 full-image masks on a 12-MP image with the deadline 0.2 s away: the error comes
    within the deadline plus one mask's paste (measured here), not after all 40."""
    h, w = 3000, 4000
    raw = _full_image_raw(40, (320, 426))
    probs, int_boxes = raw.mask_probs, expand_boxes_for_paste(raw.boxes * (w / 426), 28)
    t = time.perf_counter()
    encode_masks(probs[:1], int_boxes[:1], h, w, 0.5, paste_masks_box_local)
    one_mask_s = time.perf_counter() - t
    t = time.monotonic()
    with pytest.raises(ServiceError) as err:
        postprocess_detections(
            raw, input_size=(320, 426), image_size=(h, w), info=_info(), params=EVERY,
            deadline=t + 0.2,
        )  # fmt: skip
    elapsed = time.monotonic() - t
    assert err.value.code == "deadline_exceeded"
    assert elapsed < 0.2 + 3 * one_mask_s, (elapsed, one_mask_s)
    assert elapsed < 40 * one_mask_s / 2


# ---------------------------------------------------------------------------- mode conversion


def _full_size_reference(image: Image.Image) -> Image.Image:
    """The conversion as it was: whole-image float64 or RGBA canvas."""
    if image.mode.startswith("I;16"):
        arr = np.asarray(image, dtype=np.float64)
        if arr.max() > 255:
            arr = arr / 257.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


@pytest.mark.parametrize("mode", ["I;16", "RGBA", "P"])
def test_banded_conversion_equals_the_full_size_one(mode: str) -> None:
    rng = np.random.default_rng(1)
    h, w = 1200, 1000  # more than one band
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
    elif mode == "RGBA":
        image = Image.fromarray(rng.integers(0, 255, (h, w, 4), dtype=np.uint8), "RGBA")
    else:
        image = Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8), "P")
        image.putpalette(rng.integers(0, 255, 768, dtype=np.uint8).tolist())
        image.info["transparency"] = 7
    assert np.array_equal(np.asarray(_to_rgb(image)), np.asarray(_full_size_reference(image)))


_RSS_CHILD = textwrap.dedent(
    """
    import json, sys, time
    from service.preprocess import decode_image

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    data = sys.stdin.buffer.read()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS: imports are not counted
    before = status("VmRSS:")
    t = time.perf_counter()
    decode_image(data, min_size=800, max_size=1333, max_pixels=10**9, resize_rule=sys.argv[1])
    took = time.perf_counter() - t
    print(json.dumps({"growth": status("VmHWM:") - before, "seconds": took}))
    """
)


@pytest.mark.parametrize("kind", ["I;16", "RGBA"])
@pytest.mark.parametrize("rule", ["floor", "detectron"])
def test_converting_a_large_png_costs_about_the_decoded_image(kind: str, rule: str) -> None:
    """A 9-MP 16-bit or RGBA PNG (a few hundred KB): peak RSS growth of decoding it stays
    under 5 bytes per pixel and a few bands under the floor rule, and under 13 bytes per pixel
    under detectron (measured 10-11: the decoded pixels, 2 or 4 bytes, the RGB result, 3, its
    array copy, 3); before, 20-30 (the whole-image float64 conversion alone was 8 bytes a pixel,
    and the RGBA composite two more 4-byte canvases)."""
    h, w = 1500, 6000  # reduced by 2 under floor: the input is 333 x 1333
    yy, xx = np.mgrid[0:h, 0:w]
    if kind == "I;16":
        image = Image.fromarray(((yy * 16 + xx) % 65536).astype(np.uint16))
    else:
        flat = np.zeros((h, w, 4), dtype=np.uint8)
        flat[..., 0], flat[..., 3] = (xx % 256), (yy % 256)
        image = Image.fromarray(flat, "RGBA")
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=1)
    out = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, rule],
        input=buf.getvalue(), capture_output=True, check=True, timeout=120,
    )  # fmt: skip
    growth = json.loads(out.stdout)["growth"]
    print(f"{kind} {rule}: {growth / 1e6:.0f} MB")
    # floor: reduced before conversion, so the decoded pixels (2 or 4 bytes) and bands of a
    # few MB (measured 56 and 61 MB here; at 40 MP 109 and 191 MB); detectron converts at full
    # size, in bands (measured 91 and 93 MB).
    bound = 5 * h * w + 32_000_000 if rule == "floor" else 13 * h * w
    assert growth < bound, f"{kind} {rule}: {growth / 1e6:.0f} MB, {h * w} pixels"


def _png(image: Image.Image, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=1, **params)
    return buf.getvalue()


def _smooth(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.sin(xx / 97.0) * np.cos(yy / 61.0), (xx + 2 * yy) / (w + 2 * h)


def test_a_grey_image_resized_before_conversion_is_exactly_as_before() -> None:
    wave, ramp = _smooth(1800, 2400)
    grey = np.clip(128 + 100 * wave + 20 * ramp, 0, 255).astype(np.uint8)
    as_l = decode_image(_png(Image.fromarray(grey, "L")), min_size=320, max_size=512,
                        max_pixels=10**8)  # fmt: skip
    as_rgb = decode_image(_png(Image.fromarray(grey, "L").convert("RGB")), min_size=320,
                          max_size=512, max_pixels=10**8)  # fmt: skip
    assert np.array_equal(as_l.pixels, as_rgb.pixels)


@pytest.mark.parametrize("kind", ["I;16", "RGBA"])
def test_reducing_before_conversion_changes_pixels_by_rounding_only(kind: str) -> None:
    """Against converting at full size then resizing (what the service did): 16-bit differs
    by at most one grey level, transparent images by the rounding of a premultiplied box
    average (at most a few levels, under half a level on average), on smooth content."""
    wave, ramp = _smooth(1800, 2400)
    if kind == "I;16":
        image = Image.fromarray((30000 + 25000 * wave + 5000 * ramp).astype(np.uint16))
        reference = _full_size_reference(image)
    else:
        rgba = np.stack([128 + 100 * wave, 255 * ramp, 128 - 100 * wave, 255 * ramp], -1)
        image = Image.fromarray(rgba.astype(np.uint8), "RGBA")
        reference = _full_size_reference(image)
    new = decode_image(_png(image), min_size=320, max_size=512, max_pixels=10**8).pixels
    old = np.asarray(reference.resize(new.shape[:0:-1], Image.Resampling.BILINEAR))
    diff = np.abs(new.transpose(1, 2, 0).astype(int) - old.astype(int))
    assert diff.max() <= (1 if kind == "I;16" else 4) and diff.mean() < 0.5, (
        diff.max(),
        diff.mean(),
    )


def test_orientation_is_applied_to_the_reduced_image() -> None:
    """The reduced image no longer carries EXIF: the orientation read before is applied to it,
    and rotating after a square box reduction equals rotating first."""
    wave, ramp = _smooth(1600, 2400)
    rgba = np.stack([128 + 100 * wave, 255 * ramp, 128 - 100 * wave, 200 + 0 * ramp], -1)
    image = Image.fromarray(rgba.astype(np.uint8), "RGBA")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    oriented = decode_image(_png(image, exif=exif), min_size=320, max_size=512,
                            max_pixels=10**8)  # fmt: skip
    upright = decode_image(_png(image.transpose(Image.Transpose.ROTATE_270)), min_size=320,
                           max_size=512, max_pixels=10**8)  # fmt: skip
    assert (oriented.height, oriented.width) == (2400, 1600)
    assert np.array_equal(oriented.pixels, upright.pixels)


# ---------------------------------------------------------------------------- end to end (RSS)

_SERVER_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from service.app import create_app
    from service.cli import make_server
    from service.runtime import RawDetections
    from service.settings import Settings
    from service.testing import mask_probabilities
    from tests.service.helpers import FakeRuntime

    class EveryDetection(FakeRuntime):
        # n detections whose boxes cover the whole input: score_threshold=0 on a crowded scene
        def run(self, images, image_sizes):
            self.calls.append(len(images))
            n, (h, w) = int(sys.argv[2]), image_sizes[0].tolist()
            return RawDetections(
                boxes=np.tile(np.array([[0, 0, w, h]], np.float32), (n, 1)),
                scores=np.linspace(0.9, 0.01, n, dtype=np.float32),
                labels=np.ones(n, dtype=np.int64),
                batch_index=np.zeros(n, dtype=np.int64),
                mask_probs=np.resize(mask_probabilities(), (n, 28, 28)).astype(np.float32),
            )

    settings = Settings(host="127.0.0.1", port=int(sys.argv[1]), warmup=False,
                        log_level="warning", max_batch_delay_ms=1)
    make_server(create_app(settings, runtime=EveryDetection()), settings).run()
    """
)


def _status_bytes(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


@pytest.mark.slow
@pytest.mark.parametrize("n", [4, 1000])
def test_a_40_mp_request_with_every_detection_over_http(n: int) -> None:
    """A real worker process, a 40-MP PNG and detections whose boxes all cover the image.
    4 of them (160 M mask pixels, under MASKX_MAX_MASK_PIXELS): answered, with peak RSS growth
    under 3x the decoded RGB image (360 MB; measured +172 MB and 1.9 s, most of it decoding
    the PNG); before, the paste alone held ~6 bytes x 4 x 40 MP (~1 GB). 1000 of them (40 G
    pixels): 422 naming the limit, with no paste (measured the same +172 MB, 0.6 s)."""
    h, w = 5000, 8000
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (120, 90, 60)).save(buf, "PNG", compress_level=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", _SERVER_CHILD, str(port), str(n)])
    url = f"http://127.0.0.1:{port}"
    try:
        until = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < until and proc.poll() is None, "the worker did not start"
            time.sleep(0.1)
        with open(f"/proc/{proc.pid}/clear_refs", "w") as f:
            f.write("5")  # peak RSS := current RSS
        before = _status_bytes(proc.pid, "VmRSS:")
        t = time.perf_counter()
        r = httpx.post(
            url + "/segment?score_threshold=0&max_detections=1000",
            content=buf.getvalue(),
            headers={"content-type": "image/png"},
            timeout=60,
        )
        took = time.perf_counter() - t
        growth = _status_bytes(proc.pid, "VmHWM:") - before
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"n={n}: {r.status_code}, +{growth / 1e6:.0f} MB, {took:.1f} s")
    decoded = 3 * h * w
    if n == 4:
        assert r.status_code == 200, r.text
        assert len(r.json()["detections"]) == 4
        assert growth < 3 * decoded
    else:
        assert r.status_code == 422 and r.json()["error"]["code"] == "mask_area_too_large"
        assert "MASKX_MAX_MASK_PIXELS" in r.json()["error"]["message"]
        assert growth < 3 * decoded
        assert r.json()["error"]["message"].startswith("the 1000 masks")


def test_deadline_passed_while_waiting_for_a_postprocess_thread_is_not_postprocessed() -> None:
    """Post-processing has its own pool (a slow decode cannot hold it, nor it a decode); a
    request whose deadline passed while it waited for that pool is answered 504 unpasted."""
    cfg = Settings(warmup=False, max_batch_delay_ms=1, postprocess_threads=1,
                   request_timeout_s=0.5)  # fmt: skip
    app = create_app(cfg, runtime=FakeRuntime())
    with LiveServer(app) as live:
        live.wait_ready()
        worker = app.state.worker
        assert worker.post_pool is not worker.cpu_pool
        worker.post_pool.submit(time.sleep, 1.2)  # the only post-processing thread is busy
        r = httpx.post(live.url + "/segment", content=make_image(64, 48),
                       headers={"content-type": "image/jpeg"}, timeout=10)  # fmt: skip
        assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
        assert "before its masks were pasted" in r.json()["error"]["message"]
        text = httpx.get(live.url + "/metrics").text
        assert 'maskx_skipped_requests_total{stage="postprocess"} 1.0' in text
        assert "maskx_postprocess_seconds_count 0.0" in text


def test_mask_text_over_the_response_cap_is_refused_while_encoding() -> None:
    """Ragged masks (noise probabilities) cost far more RLE text than their area suggests: the
    cap stops encoding at the group that passes it, naming the limit."""
    h, w = 1000, 1000
    n = 40
    rng = np.random.default_rng(5)
    probs = rng.uniform(0, 1, (n, 28, 28)).astype(np.float32)
    int_boxes = expand_boxes_for_paste(np.tile(np.array([[0, 0, w, h]], np.float32), (n, 1)), 28)
    one = encode_masks(probs[:1], int_boxes[:1], h, w, 0.5, paste_masks_box_local)
    limit = 5 * len(one[0])  # about five masks' worth
    painted: list[int] = []

    def counting_paste(p, b, *rest):  # type: ignore[no-untyped-def]
        painted.append(len(p))
        return paste_masks_box_local(p, b, *rest)

    with pytest.raises(ServiceError) as err:
        encode_masks(probs, int_boxes, h, w, 0.5, counting_paste, max_chars=limit)
    assert err.value.code == "response_too_large" and err.value.status == 422
    assert "MASKX_MAX_RESPONSE_BYTES" in err.value.message
    assert sum(painted) < 10  # stopped at the group that passed it, not after all 40
    # Under the cap the same call answers every mask.
    assert len(encode_masks(probs, int_boxes, h, w, 0.5, paste_masks_box_local,
                            max_chars=100 * limit)) == n  # fmt: skip
