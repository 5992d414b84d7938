"""Detectron's test-time resize and mask paste, ported to NumPy as judges for the service.

Written from the authors' code, not from the service's: ``prep_im_for_blob``
(``detectron/utils/blob.py``), ``expand_boxes`` (``detectron/utils/boxes.py``) and
``segm_results`` (``detectron/core/test.py``), with ``cv2.resize(..., INTER_LINEAR)`` replaced
by :func:`cv2_resize_linear`, a loop-by-loop port of OpenCV's ``resize.cpp`` for float32
images (``resizeGeneric_`` with ``HResizeLinear`` / ``VResizeLinear``, no IPP). Where
opencv-python is installed the tests also hold this port against cv2 itself.
"""

from __future__ import annotations

import math

import numpy as np


def cv2_resize_linear(
    src: np.ndarray,
    dsize: tuple[int, int] | None = None,
    fx: float | None = None,
    fy: float | None = None,
) -> np.ndarray:
    """``cv2.resize(src, dsize, fx=fx, fy=fy, interpolation=cv2.INTER_LINEAR)``.

    ``src`` float32 ``[h, w]`` or ``[h, w, c]``; ``dsize`` is (width, height) as in cv2.
    """
    src = np.asarray(src, dtype=np.float32)
    h, w = src.shape[:2]
    if dsize is None:
        assert fx is not None and fy is not None
        # saturate_cast<int>(double) is cvRound: round half to even (np.rint).
        dsize = (int(np.rint(w * fx)), int(np.rint(h * fy)))
        inv_scale_x, inv_scale_y = fx, fy
    else:
        inv_scale_x, inv_scale_y = dsize[0] / w, dsize[1] / h
    out_w, out_h = dsize
    assert out_w > 0 and out_h > 0, "cv2 asserts !dsize.empty()"
    if (out_w, out_h) == (w, h):
        return src.copy()  # resize.cpp: "if (dsize == ssize) { src.copyTo(dst); return; }"
    scale_x, scale_y = 1.0 / inv_scale_x, 1.0 / inv_scale_y
    one = np.float32(1)

    xofs, alpha = [], []
    for dx in range(out_w):
        f = np.float32((dx + 0.5) * scale_x - 0.5)
        sx = math.floor(f)
        f = np.float32(f - np.float32(sx))
        if sx < 0:
            f, sx = np.float32(0), 0
        if sx >= w - 1:  # sx + ksize2 >= ssize.width, with ksize2 = 1
            f, sx = np.float32(0), w - 1
        xofs.append(sx)
        alpha.append((one - f, f))
    yofs, beta = [], []
    for dy in range(out_h):
        f = np.float32((dy + 0.5) * scale_y - 0.5)
        sy = math.floor(f)
        yofs.append(sy)
        f = np.float32(f - np.float32(sy))  # not clamped: the rows are clamped instead
        beta.append((one - f, f))

    def hresize(row: np.ndarray) -> np.ndarray:
        out = np.empty((out_w, *row.shape[1:]), dtype=np.float32)
        for dx in range(out_w):
            sx = xofs[dx]
            if sx + 1 < w:
                out[dx] = row[sx] * alpha[dx][0] + row[sx + 1] * alpha[dx][1]
            else:  # past xmax: the edge pixel alone
                out[dx] = row[sx]
        return out

    cache: dict[int, np.ndarray] = {}
    dst = np.empty((out_h, out_w, *src.shape[2:]), dtype=np.float32)
    for dy in range(out_h):
        rows = []
        for k in (0, 1):
            sy = min(max(yofs[dy] + k, 0), h - 1)
            if sy not in cache:
                cache[sy] = hresize(src[sy])
            rows.append(cache[sy])
        dst[dy] = rows[0] * beta[dy][0] + rows[1] * beta[dy][1]
    return dst


def prep_im_scale(im_shape: tuple[int, ...], target_size: int, max_size: int) -> float:
    """``im_scale`` of ``prep_im_for_blob``."""
    im_size_min = np.min(im_shape[0:2])
    im_size_max = np.max(im_shape[0:2])
    im_scale = float(target_size) / float(im_size_min)
    # Prevent the biggest axis from being more than max_size
    if np.round(im_scale * im_size_max) > max_size:
        im_scale = float(max_size) / float(im_size_max)
    return im_scale


def prep_im_blob_size(
    im_shape: tuple[int, ...], target_size: int, max_size: int
) -> tuple[int, int]:
    """(h, w) of the image ``prep_im_for_blob`` returns (cv2's output size for ``fx = fy``)."""
    s = prep_im_scale(im_shape, target_size, max_size)
    return int(np.rint(im_shape[0] * s)), int(np.rint(im_shape[1] * s))


def prep_im_for_blob(
    im: np.ndarray, pixel_means: np.ndarray, target_size: int, max_size: int
) -> tuple[np.ndarray, float]:
    """Detectron's ``prep_im_for_blob`` (one target size)."""
    im = im.astype(np.float32, copy=False)
    im -= pixel_means
    im_scale = prep_im_scale(im.shape, target_size, max_size)
    im = cv2_resize_linear(im, None, fx=im_scale, fy=im_scale)
    return im, im_scale


def expand_boxes(boxes: np.ndarray, scale: float) -> np.ndarray:
    """Detectron's ``expand_boxes``."""
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5

    w_half *= scale
    h_half *= scale

    boxes_exp = np.zeros(boxes.shape)
    boxes_exp[:, 0] = x_c - w_half
    boxes_exp[:, 2] = x_c + w_half
    boxes_exp[:, 1] = y_c - h_half
    boxes_exp[:, 3] = y_c + h_half
    return boxes_exp


def segm_results(
    masks: np.ndarray, ref_boxes: np.ndarray, im_h: int, im_w: int, thresh: float = 0.5
) -> np.ndarray:
    """Detectron's ``segm_results`` paste, class-agnostic: uint8 ``[N, im_h, im_w]``.

    ``masks`` float32 ``[N, M, M]``; ``ref_boxes`` float32 ``[N, 4]`` legacy (inclusive) boxes
    in image pixels. The RLE step is left out: the service's RLE is tested on its own.
    """
    M = masks.shape[-1]
    scale = (M + 2.0) / M
    ref_boxes = expand_boxes(ref_boxes, scale)
    ref_boxes = ref_boxes.astype(np.int32)
    padded_mask = np.zeros((M + 2, M + 2), dtype=np.float32)
    out = np.zeros((len(masks), im_h, im_w), dtype=np.uint8)
    for mask_ind in range(len(masks)):
        padded_mask[1:-1, 1:-1] = masks[mask_ind, :, :]

        ref_box = ref_boxes[mask_ind, :]
        w = ref_box[2] - ref_box[0] + 1
        h = ref_box[3] - ref_box[1] + 1
        w = np.maximum(w, 1)
        h = np.maximum(h, 1)

        mask = cv2_resize_linear(padded_mask, (int(w), int(h)))
        mask = np.array(mask > thresh, dtype=np.uint8)
        im_mask = np.zeros((im_h, im_w), dtype=np.uint8)

        x_0 = max(ref_box[0], 0)
        x_1 = min(ref_box[2] + 1, im_w)
        y_0 = max(ref_box[1], 0)
        y_1 = min(ref_box[3] + 1, im_h)
        if x_1 <= x_0 or y_1 <= y_0:
            continue  # a box wholly outside the image (Detectron's boxes are clipped first)

        im_mask[y_0:y_1, x_0:x_1] = mask[
            (y_0 - ref_box[1]) : (y_1 - ref_box[1]), (x_0 - ref_box[0]) : (x_1 - ref_box[0])
        ]
        out[mask_ind] = im_mask
    return out
