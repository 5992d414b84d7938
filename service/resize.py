"""How an image is brought to a model's input scale: the size rule and the pixel resampling.

Written once, here, for everything that resizes an image for a model: the service
(:mod:`service.preprocess`), ``maskx predict`` and the COCO results path (through it), and the
exporter's verification images (``training/export/onnx_export.py`` ``letterbox``). Torch-free.
A model's rule is its metadata's ``resize_rule`` (:data:`service.contract.RESIZE_RULES`):

``floor`` (the default; every maskx-trained model)
    torchvision's ``GeneralizedRCNNTransform``: ``scale = min(min_size / short side,
    max_size / long side)``, each side ``floor(side * scale)``; pixels resampled with Pillow's
    bilinear filter (antialiased when shrinking). The eager model's transform computes the
    same sizes from the same image (not always from an image already at that size: flooring
    is not idempotent, 303 * (160 / 303) floors to 159).
``detectron``
    Detectron's ``prep_im_for_blob`` (``detectron/utils/blob.py``): ``scale = min_size / short
    side``; if ``round(scale * long side) > max_size`` then ``scale = max_size / long side``;
    then ``cv2.resize(im, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)``, whose
    output sides are ``cvRound(side * scale)`` (round half to even, as Python's ``round``) and
    whose pixels are OpenCV's bilinear without antialiasing (:func:`resize_linear`).
"""

from __future__ import annotations

import math

import numpy as np

from service.contract import RESIZE_RULES


def _check_rule(rule: str) -> None:
    if rule not in RESIZE_RULES:
        raise ValueError(f"resize_rule={rule!r} is not one of {', '.join(RESIZE_RULES)}")


def resize_scale(
    height: int, width: int, min_size: int, max_size: int, rule: str = "floor"
) -> float:
    """The factor an image of ``height`` × ``width`` is scaled by under ``rule``.

    For ``detectron`` it is Detectron's ``im_scale``: boxes found at the model's scale map back
    to the image by dividing by it (as Detectron's ``rois / im_scale``).
    """
    _check_rule(rule)
    short, long = min(height, width), max(height, width)
    if rule == "floor":
        return min(min_size / short, max_size / long)
    scale = float(min_size) / float(short)
    if round(scale * long) > max_size:  # Detectron: np.round, half to even like round()
        scale = float(max_size) / float(long)
    return scale


def resized_size(
    height: int, width: int, min_size: int, max_size: int, rule: str = "floor"
) -> tuple[int, int]:
    """(h, w) of an image of ``height`` × ``width`` at the model's scale under ``rule``.

    ``floor``: ``floor(side * scale)``, torchvision's rounding. ``detectron``: cv2's
    ``cvRound(side * scale)``. Never below 1 (where cv2 would refuse a 0-pixel side).
    """
    scale = resize_scale(height, width, min_size, max_size, rule)
    if rule == "floor":
        return max(1, math.floor(height * scale)), max(1, math.floor(width * scale))
    return max(1, round(height * scale)), max(1, round(width * scale))


def linear_taps(
    out_len: int,
    in_len: int,
    src_per_dst: float,
    *,
    clamp_fraction: bool,
    start: int = 0,
    stop: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's ``INTER_LINEAR`` sampling along one axis, for output indices ``start:stop``.

    ``src = float32((dst + 0.5) * src_per_dst - 0.5)``, computed in float64 and then cast, as
    OpenCV's ``resize.cpp`` does. Returns int64 ``i0`` and ``i1`` (``floor(src)`` and the next
    index, both clamped to ``0..in_len - 1``) and float32 ``frac = src - floor(src)``, each
    ``[stop - start]``. OpenCV clamps the fraction to 0 where ``floor(src)`` falls outside
    ``0..in_len - 2`` on the horizontal axis only (``clamp_fraction=True``); vertically it
    blends the clamped edge row with itself, which can differ from that row by one ulp.
    """
    stop = out_len if stop is None else stop
    dst = np.arange(start, stop, dtype=np.float64)
    src = ((dst + 0.5) * src_per_dst - 0.5).astype(np.float32)
    floor = np.floor(src)
    frac = src - floor
    i = floor.astype(np.int64)
    if clamp_fraction:
        frac[(i < 0) | (i >= in_len - 1)] = 0
    return np.clip(i, 0, in_len - 1), np.clip(i + 1, 0, in_len - 1), frac


def resize_linear(
    image: np.ndarray, size: tuple[int, int], scale: float | None = None
) -> np.ndarray:
    """``cv2.resize(image, ..., interpolation=cv2.INTER_LINEAR)`` of a float32 image, in numpy.

    ``image`` is ``[h, w]`` or ``[h, w, C]`` (converted to float32); ``size`` the output
    (h, w). With ``scale`` (cv2's ``fx = fy``) source positions step by ``1 / scale``, else by
    ``1 / (out / in)`` per axis (cv2 with an explicit ``dsize``). Horizontal pass first, then
    vertical, two float32 taps each, no antialiasing; an output of the input's size is a copy
    (cv2 copies whatever ``fx`` says). Returns float32 ``[h', w'(, C)]``, bit-identical to
    OpenCV's own code path (checked against opencv-python with its IPP path turned off; IPP's
    resize differs from it by float rounding, at most 1e-5 relative).
    """
    img = np.asarray(image)
    h, w = img.shape[:2]
    out_h, out_w = size
    if (out_h, out_w) == (h, w):
        return img.astype(np.float32)
    x_step = 1.0 / scale if scale is not None else 1.0 / (out_w / w)
    y_step = 1.0 / scale if scale is not None else 1.0 / (out_h / h)
    x0, x1, fx = linear_taps(out_w, w, x_step, clamp_fraction=True)
    y0, y1, fy = linear_taps(out_h, h, y_step, clamp_fraction=False)
    # Only the input pixels that some output pixel reads are gathered, in the input's own dtype,
    # and only they are converted to float32 (exact for uint8): a 40-MP image shrunk to the
    # model's scale never exists as float32 (12 bytes a pixel). In-place products keep the
    # arithmetic (a * (1 - f) + b * f in float32) and halve the temporaries.
    rows, inverse = np.unique(np.concatenate([y0, y1]), return_inverse=True)
    tail = (1,) * (img.ndim - 2)
    at_rows = rows[:, None]
    left = img[at_rows, x0[None, :]].astype(np.float32)
    right = img[at_rows, x1[None, :]].astype(np.float32)
    hor = _blend(left, right, fx.reshape(1, -1, *tail))
    del left, right
    return _blend(hor[inverse[:out_h]], hor[inverse[out_h:]], fy.reshape(-1, 1, *tail))


def _blend(a: np.ndarray, b: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """``a * (1 - frac) + b * frac`` in float32, written into ``a`` (a fresh gather)."""
    a *= np.float32(1) - frac
    b *= frac
    a += b
    return a


def resize_pixels(rgb: np.ndarray, size: tuple[int, int], rule: str, scale: float) -> np.ndarray:
    """uint8 ``[h, w, 3]`` -> uint8 ``[h', w', 3]`` at ``size`` (h', w') the way ``rule`` does.

    ``floor``: Pillow's bilinear filter (what the service has always done). ``detectron``:
    :func:`resize_linear` with ``fx = fy = scale``, rounded to uint8. Detectron resizes the
    float image after subtracting its pixel means; bilinear weights sum to 1, so that equals
    resizing first and subtracting after, and the only difference left is the rounding to
    uint8 the graph's input needs: at most 0.5 grey level (plus float32 noise).
    """
    _check_rule(rule)
    if rule == "detectron":
        out = resize_linear(rgb, size, scale)
        return np.rint(out).clip(0, 255).astype(np.uint8)
    from PIL import Image

    if rgb.shape[:2] == tuple(size):
        return rgb
    image = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    return np.asarray(image.resize((size[1], size[0]), Image.Resampling.BILINEAR))
