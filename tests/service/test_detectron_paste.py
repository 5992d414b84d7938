"""Detectron's mask paste (``mask_paste: detectron``) against a port of its ``segm_results``.

The judge is ``tests/service/detectron_reference.py``: Detectron's code with ``cv2.resize``
replaced by a NumPy port of OpenCV's float32 ``INTER_LINEAR``; where opencv-python is
installed, the judge's paste is also held against the same code calling cv2 itself. Masks must
be identical, bit for bit: no tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest

from service.postprocess import (
    detectron_paste_boxes,
    encode_regions,
    expand_boxes_for_paste,
    paste_masks_box_local,
    paste_masks_detectron,
    rle_to_string,
)
from tests.service.detectron_reference import expand_boxes, segm_results

M = 28
IM_H, IM_W = 70, 90


def _masks(rng: np.random.Generator, n: int) -> np.ndarray:
    """float32 [n, M, M]: uniform noise, smooth blobs, and flat 0.5 (the threshold itself)."""
    yy, xx = np.mgrid[0:M, 0:M].astype(np.float32) / (M - 1)
    out = []
    for k in range(n):
        kind = k % 3
        if kind == 0:
            out.append(rng.random((M, M), dtype=np.float32))
        elif kind == 1:
            cx, cy, r, sharp = (
                rng.uniform(0.2, 0.8),
                rng.uniform(0.2, 0.8),
                rng.uniform(0.1, 0.5),
                rng.uniform(3, 30),
            )
            out.append(1 / (1 + np.exp(sharp * (np.hypot(xx - cx, yy - cy) - r))))
        else:
            out.append(np.full((M, M), 0.5))
    return np.stack(out).astype(np.float32)


def _legacy_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    """float32 [n, 4] legacy (inclusive) boxes: fractional ones inside the image, tiny ones
    (under a pixel), ones on the border (clipped as Detectron clips), ones partly or wholly
    past it, and ones larger than the image."""
    boxes = []
    for k in range(n):
        kind = k % 5
        if kind == 0:  # fractional, inside
            x1, y1 = rng.uniform(0, IM_W - 2), rng.uniform(0, IM_H - 2)
            x2, y2 = x1 + rng.uniform(0.5, 60), y1 + rng.uniform(0.5, 50)
        elif kind == 1:  # tiny: under one pixel, even zero-sized
            x1, y1 = rng.uniform(0, IM_W - 1), rng.uniform(0, IM_H - 1)
            x2, y2 = x1 + rng.choice([0.0, rng.uniform(0, 1.2)]), y1 + rng.uniform(0, 1.2)
        elif kind == 2:  # on the border: the expanded box crosses it
            x1, y1 = rng.choice([0.0, rng.uniform(0, 3)]), rng.uniform(0, IM_H / 2)
            x2, y2 = rng.choice([IM_W - 1.0, rng.uniform(IM_W - 4, IM_W - 1)]), IM_H - 1.0
        elif kind == 3:  # partly past the image (not clipped)
            x1, y1 = rng.uniform(-25, 5), rng.uniform(IM_H - 20, IM_H)
            x2, y2 = x1 + rng.uniform(1, 40), y1 + rng.uniform(1, 40)
        else:  # larger than the image, or past it
            x1, y1 = rng.uniform(-40, -1), rng.uniform(-40, -1)
            x2, y2 = rng.uniform(IM_W, IM_W + 40), rng.uniform(IM_H, IM_H + 40)
        boxes.append([x1, y1, max(x1, x2), max(y1, y2)])
    return np.array(boxes, dtype=np.float32)


def _canvas(regions: list[tuple[int, int, np.ndarray]]) -> np.ndarray:
    out = np.zeros((len(regions), IM_H, IM_W), dtype=np.uint8)
    for k, (x0, y0, region) in enumerate(regions):
        out[k, y0 : y0 + region.shape[0], x0 : x0 + region.shape[1]] = region
    return out


def test_paste_boxes_are_detectrons_expanded_and_truncated() -> None:
    rng = np.random.default_rng(0)
    boxes = _legacy_boxes(rng, 200)
    want = expand_boxes(boxes, (M + 2.0) / M).astype(np.int32)
    np.testing.assert_array_equal(detectron_paste_boxes(boxes, M), want)


@pytest.mark.parametrize("seed", range(4))
def test_detectron_paste_equals_segm_results(seed: int) -> None:
    rng = np.random.default_rng(seed)
    masks, legacy = _masks(rng, 90), _legacy_boxes(rng, 90)
    want = segm_results(masks, legacy, IM_H, IM_W, 0.5)
    got = _canvas(paste_masks_detectron(masks, detectron_paste_boxes(legacy, M), IM_H, IM_W, 0.5))
    for k in range(len(masks)):
        np.testing.assert_array_equal(got[k], want[k], err_msg=f"mask {k}, box {legacy[k]}")
    assert want.any(axis=(1, 2)).sum() > 40  # most masks paste something


def test_the_maskx_paste_is_not_detectrons() -> None:
    # The same detections pasted with the default rule (continuous boxes, torchvision's
    # geometry, >= threshold) differ from Detectron's on most masks: the test above can fail.
    rng = np.random.default_rng(0)
    masks, legacy = _masks(rng, 90), _legacy_boxes(rng, 90)
    want = segm_results(masks, legacy, IM_H, IM_W, 0.5)
    continuous = legacy + np.array([0, 0, 1, 1], dtype=np.float32)
    maskx = _canvas(
        paste_masks_box_local(masks, expand_boxes_for_paste(continuous, M), IM_H, IM_W, 0.5)
    )
    differ = sum(not np.array_equal(maskx[k], want[k]) for k in range(len(masks)))
    assert differ > len(masks) // 2


def test_threshold_is_strict() -> None:
    # Detectron keeps probabilities > 0.5; a flat 0.5 mask pastes nothing (maskx's >= keeps it).
    masks = np.full((1, M, M), 0.5, dtype=np.float32)
    box = np.array([[10, 10, 10 + M - 1, 10 + M - 1]], dtype=np.float32)  # w = M: no resampling
    ((_, _, region),) = paste_masks_detectron(masks, detectron_paste_boxes(box, M), IM_H, IM_W, 0.5)
    assert region.size and not region.any()


def test_boxes_outside_the_image_give_empty_masks() -> None:
    masks = np.ones((2, M, M), dtype=np.float32)
    boxes = np.array([[-50, -50, -20, -20], [IM_W + 5, 0, IM_W + 30, 10]], dtype=np.float32)
    regions = paste_masks_detectron(masks, detectron_paste_boxes(boxes, M), IM_H, IM_W, 0.5)
    assert [r.size for _, _, r in regions] == [0, 0]
    empty = rle_to_string(np.array([IM_H * IM_W]))
    assert encode_regions(regions, IM_H, IM_W) == [empty, empty]


def test_the_judge_pastes_as_cv2_does() -> None:
    """``segm_results`` with cv2.resize itself (opencv-python, a test-only judge): identical on
    OpenCV's own code path. Its IPP path rounds float32 sums differently, by under 1e-5; a
    pixel can then only differ where OpenCV's value lies that close to the threshold."""
    cv2 = pytest.importorskip("cv2")
    from tests.service import detectron_reference

    rng = np.random.default_rng(7)
    masks, legacy = _masks(rng, 60), _legacy_boxes(rng, 60)
    want = segm_results(masks, legacy, IM_H, IM_W, 0.5)
    use_ipp = cv2.ipp.useIPP()
    real = detectron_reference.cv2_resize_linear
    try:
        detectron_reference.cv2_resize_linear = lambda src, dsize: cv2.resize(src, dsize)
        cv2.ipp.setUseIPP(False)
        np.testing.assert_array_equal(segm_results(masks, legacy, IM_H, IM_W, 0.5), want)
        cv2.ipp.setUseIPP(True)
        with_ipp = segm_results(masks, legacy, IM_H, IM_W, 0.5)
        near = segm_results(masks, legacy, IM_H, IM_W, 0.5 - 1e-5) != segm_results(
            masks, legacy, IM_H, IM_W, 0.5 + 1e-5
        )
        assert not ((with_ipp != want) & ~near).any()
    finally:
        detectron_reference.cv2_resize_linear = real
        cv2.ipp.setUseIPP(use_ipp)
