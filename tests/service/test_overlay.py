"""The overlay renderer: COCO RLE decoding (pycocotools as judge), palette, drawing."""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

from service.overlay import (
    HUE_RANGES,
    class_color,
    family_color,
    render_overlay,
    rle_decode,
    rle_decode_window,
)


def _encode(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


@pytest.mark.parametrize(
    ("height", "width", "density"),
    [(1, 1, 0.5), (7, 5, 0.3), (33, 17, 0.9), (240, 320, 0.02), (480, 640, 0.5)],
)
def test_rle_decode_matches_pycocotools(height: int, width: int, density: float) -> None:
    rng = np.random.default_rng(height * 1000 + width)
    mask = (rng.random((height, width)) < density).astype(np.uint8)
    rle = _encode(mask)
    decoded = rle_decode(rle["counts"], rle["size"])
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, mask_utils.decode(rle))
    np.testing.assert_array_equal(decoded, mask)


def test_rle_decode_long_runs_and_empty_mask() -> None:
    # Long runs need multi-group counts and negative deltas (sign extension).
    mask = np.zeros((600, 800), dtype=np.uint8)
    mask[100:500, 200:700] = 1
    mask[0, 0] = 1
    for m in (mask, np.zeros_like(mask), np.ones_like(mask)):
        rle = _encode(m)
        np.testing.assert_array_equal(rle_decode(rle["counts"], rle["size"]), m)


@pytest.mark.parametrize("seed", range(6))
def test_rle_decode_window_is_the_masks_bounding_window(seed: int) -> None:
    rng = np.random.default_rng(seed)
    height, width = int(rng.integers(1, 60)), int(rng.integers(1, 60))
    mask = np.zeros((height, width), dtype=np.uint8)
    y0, x0 = int(rng.integers(0, height)), int(rng.integers(0, width))
    y1, x1 = int(rng.integers(y0, height)) + 1, int(rng.integers(x0, width)) + 1
    mask[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < 0.6
    rle = _encode(mask)
    wx, wy, region = rle_decode_window(rle["counts"], rle["size"])
    full = np.zeros((height, width), dtype=bool)
    full[wy : wy + region.shape[0], wx : wx + region.shape[1]] = region
    np.testing.assert_array_equal(full, mask_utils.decode(rle).astype(bool))
    if mask.any():
        ys, xs = np.nonzero(mask)
        assert (wx, wy) == (xs.min(), ys.min())
        assert region.shape == (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    else:
        assert region.size == 0


def test_rle_decode_rejects_wrong_size() -> None:
    rle = _encode(np.ones((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"4\*5"):
        rle_decode(rle["counts"], [4, 5])


def test_palette_separates_mask_sources() -> None:
    import colorsys

    def hue(rgb: tuple[int, int, int]) -> float:
        return colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] * 360

    for label in range(1, 60):
        h_sup = hue(class_color(label, "supervised"))
        h_tr = hue(class_color(label, "transferred"))
        assert 80 <= h_sup <= 175, (label, h_sup)  # greens
        assert h_tr >= 325 or h_tr <= 40, (label, h_tr)  # reds, magentas, oranges
    assert class_color(3, "supervised") != class_color(4, "supervised")
    assert set(HUE_RANGES) == {"supervised", "transferred"}
    assert family_color("supervised") != family_color("transferred")
    with pytest.raises(ValueError, match="mask_source"):
        class_color(1, "oracle")


def _response(width: int, height: int) -> dict:
    sup = np.zeros((height, width), dtype=np.uint8)
    sup[20:60, 30:90] = 1
    tr = np.zeros((height, width), dtype=np.uint8)
    tr[70:110, 120:180] = 1
    return {
        "image": {"width": width, "height": height},
        "detections": [
            {"box": [30, 20, 90, 60], "score": 0.9, "label": 1, "name": "circle",
             "mask_source": "supervised", "mask": _encode(sup)},
            {"box": [120, 70, 180, 110], "score": 0.7, "label": 2, "name": "square",
             "mask_source": "transferred", "mask": _encode(tr)},
        ],
    }  # fmt: skip


def test_render_overlay_colours_masks_and_leaves_background() -> None:
    width, height = 200, 150
    image = Image.new("RGB", (width, height), (128, 128, 128))
    out = render_overlay(image, _response(width, height))
    px = np.asarray(out).astype(int)
    assert out.width >= width and out.height > height  # legend strip below the image
    # Inside each mask (away from edges and labels) the pixel moves towards the class colour.
    for (y, x), source, label in (((45, 60), "supervised", 1), ((95, 150), "transferred", 2)):
        colour = np.array(class_color(label, source))
        assert np.abs(px[y, x] - colour).sum() < np.abs(np.array([128] * 3) - colour).sum() * 0.6
    # Greens for A, reds for B.
    assert px[45, 60, 1] > px[45, 60, 0]
    assert px[95, 150, 0] > px[95, 150, 1]
    # Far from every detection the image is untouched.
    np.testing.assert_array_equal(px[130:150, 0:20], 128)
    np.testing.assert_array_equal(px[0:10, 190:200], 128)
    # Without the legend the output has the image's size.
    assert render_overlay(image, _response(width, height), legend=False).size == (width, height)
    # The input is not modified.
    assert np.asarray(image).max() == 128


def test_render_overlay_names_size_mismatch() -> None:
    image = Image.new("RGB", (100, 100))
    with pytest.raises(ValueError, match="200x150"):
        render_overlay(image, _response(200, 150))
