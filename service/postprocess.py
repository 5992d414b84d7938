"""Graph outputs -> response detections: box-local mask paste, threshold, COCO RLE.

torchvision pastes every 28×28 mask into a full-image float canvas (``paste_masks_in_image``);
at 1920×1080 and 100 detections that is 830 MB of float32 written and scanned. Here each mask is
resized **only inside its box** with the same geometry (box expanded by (M+2)/M around a one-pixel
zero pad, bilinear with ``align_corners=False`` into the integer box, clipped to the image), and
the COCO compressed RLE of the full image is written directly from that box region. Nothing of
image size is ever allocated per detection.

Work and memory are bounded per request, whatever the detections: the total area of the masks
to paste is checked against a cap before any is pasted (422 ``mask_area_too_large``); masks are
pasted and encoded a group at a time (at most about ``MASK_GROUP_PIXELS`` of mask area held at
once, each group freed before the next, a larger mask alone and in bands of rows), and the
request's deadline is checked between groups.

A model's metadata names its paste rule (``mask_paste``): ``maskx`` is the above
(:func:`paste_masks_box_local`); ``detectron`` is Detectron's ``segm_results``
(:func:`paste_masks_detectron`): the same expansion of the *legacy* (inclusive) box, OpenCV's
bilinear resize and a strict threshold, box-local as well.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.contract import ModelMetadata
from service.errors import ServiceError
from service.resize import linear_taps, resize_scale
from service.runtime import RawDetections

# |value| bounds of a compressed-RLE count written in 1, 2, ... 5-bit chunks (signed, 5 bits
# each, the top one's high bit saying "more follows"): k chunks hold -2**(5k-1) <= v < 2**(5k-1).
_CHUNK_LIMITS = np.array([2 ** (5 * k - 1) - 1 for k in range(1, 13)], dtype=np.int64)
# Mask area pasted and encoded together: large enough that many small masks share one set of
# numpy calls (their per-call overhead is what a per-mask loop pays), small enough that a group
# costs a few tens of MB whatever the image.
MASK_GROUP_PIXELS = 1 << 22
# Pixels of one mask resampled at a time (float32 temporaries) before thresholding.
_PASTE_BAND_PIXELS = 1 << 20
DEFAULT_MAX_MASK_PIXELS = 200_000_000
DEFAULT_MAX_RESPONSE_BYTES = 64_000_000
Paste = Callable[[np.ndarray, np.ndarray, int, int, float], list[tuple[int, int, np.ndarray]]]


@dataclass(frozen=True)
class SegmentParams:
    """Per-request options (``POST /v1/segment`` query).

    ``score_threshold`` is the one applied; ``score_floor_applied`` is True when the request
    asked for less and the model's score floor was applied instead.
    """

    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    max_detections: int = 100
    classes: frozenset[int] | None = None  # model labels to keep; None keeps all
    masks: bool = True  # False: no mask work at all (``masks=none``)
    score_floor_applied: bool = False


@dataclass
class Detection:
    """One detection in displayed-image pixels.

    ``label`` is the model label (1..K), ``category_id`` the dataset's id of that class (COCO
    ``category_id``); ``mask`` is the COCO RLE dict (``size`` [h, w], ``counts`` str) or None.
    """

    box: tuple[float, float, float, float]
    score: float
    label: int
    category_id: int
    name: str
    mask_source: str
    mask: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """One entry of the ``detections`` list of a ``POST /segment`` response."""
        out: dict[str, Any] = {
            "box": [round(v, 2) for v in self.box],
            "score": round(self.score, 5),
            "label": self.label,
            "category_id": self.category_id,
            "name": self.name,
            "mask_source": self.mask_source,
        }
        if self.mask is not None:
            out["mask"] = self.mask
        return out

    def to_coco(self, image_id: int) -> dict[str, Any]:
        """One entry of a COCO results list (what ``COCO.loadRes`` reads): ``bbox`` is
        x, y, width, height; ``segmentation`` the RLE (absent with ``masks=none``)."""
        x1, y1, x2, y2 = self.box
        out: dict[str, Any] = {
            "image_id": image_id,
            "category_id": self.category_id,
            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
            "score": round(self.score, 5),
        }
        if self.mask is not None:
            out["segmentation"] = self.mask
        return out


def limit_blas_threads() -> None:
    """Run numpy's BLAS on one thread in this process (process-wide, idempotent).

    The paste's matrix products are small. A multi-threaded OpenBLAS gains nothing on them,
    and its worker threads busy-wait after every product: measured here, an ONNX Runtime run
    right after pasting 28 masks took 72 ms instead of 32 ms while they spun.
    """
    global _blas_limited
    if _blas_limited:
        return
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
    _blas_limited = True


_blas_limited = False


def expand_boxes_for_paste(boxes: np.ndarray, mask_size: int, padding: int = 1) -> np.ndarray:
    """Integer boxes ``[N, 4]`` (int64) that the padded ``M+2p`` mask is resized into.

    torchvision ``expand_masks`` + ``expand_boxes``: scale each box about its centre by
    ``(M + 2p) / M`` in float32, then truncate toward zero like ``Tensor.to(int64)``.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scale = np.float32((mask_size + 2 * padding) / mask_size)
    w_half = (boxes[:, 2] - boxes[:, 0]) * np.float32(0.5) * scale
    h_half = (boxes[:, 3] - boxes[:, 1]) * np.float32(0.5) * scale
    x_c = (boxes[:, 2] + boxes[:, 0]) * np.float32(0.5)
    y_c = (boxes[:, 3] + boxes[:, 1]) * np.float32(0.5)
    expanded = np.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], axis=1)
    return np.trunc(expanded).astype(np.int64)


def _bilinear_rows(
    out_lens: np.ndarray, in_len: int, starts: np.ndarray, stops: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``starts[k]:stops[k]`` of the ``[out_lens[k], in_len]`` bilinear resize matrix of
    every k, stacked: returns the ``[sum(stops - starts), in_len]`` float32 weights and each
    k's first row.

    Same sampling as ``F.interpolate(mode="bilinear", align_corners=False)`` with an explicit
    output size: ``src = (dst + 0.5) * in/out - 0.5``, clamped at 0, neighbours clamped at the
    last input index.
    """
    n_rows = stops - starts
    first = _exclusive_cumsum(n_rows)
    owner = np.repeat(np.arange(len(n_rows)), n_rows)
    dst = (np.arange(int(n_rows.sum())) - first[owner] + starts[owner]).astype(np.float32)
    scale = (in_len / out_lens).astype(np.float32)[owner]
    src = np.maximum((dst + np.float32(0.5)) * scale - np.float32(0.5), 0)
    i0 = src.astype(np.int64)
    i1 = np.minimum(i0 + 1, in_len - 1)
    lam1 = src - i0
    weights = np.zeros((len(dst), in_len), dtype=np.float32)
    rows = np.arange(len(dst))
    weights[rows, i0] = 1 - lam1
    weights[rows, i1] += lam1  # i1 == i0 at the last input index: the weights sum to 1
    return weights, first


def binarise_mask(probs: np.ndarray, threshold: float) -> np.ndarray:
    """The one mask rule of maskx, shared by the service and ``maskx evaluate``: a pixel is in
    the mask when its probability is **strictly above** ``threshold``.

    ``probs`` float ``[..., H, W]`` → bool of the same shape, compared in float32. The rule is
    Detectron's (``mask > cfg.MRCNN.THRESH_BINARIZE``) and torchvision's evaluation's
    (``masks > 0.5``): a probability equal to the threshold is background, so
    ``mask_threshold=0`` keeps only pixels with some probability, not the whole pasted box.
    """
    return np.asarray(probs, dtype=np.float32) > np.float32(threshold)


def _paste_windows(probs: np.ndarray, int_boxes: np.ndarray, im_h: int, im_w: int):
    """What both paste rules start from: the masks zero-padded to ``[N, M + 2, M + 2]``, the
    integer boxes' corners, their sizes ``w, h`` (at least 1) and the windows ``x0, y0, x1, y1``
    the boxes cover inside the ``im_h`` × ``im_w`` image (``x1``/``y1`` exclusive)."""
    n, m = len(probs), probs.shape[-1]
    padded = np.zeros((n, m + 2, m + 2), dtype=np.float32)
    padded[:, 1:-1, 1:-1] = probs
    bx0, by0, bx1, by1 = np.asarray(int_boxes, dtype=np.int64).reshape(n, 4).T
    w = np.maximum(bx1 - bx0 + 1, 1)
    h = np.maximum(by1 - by0 + 1, 1)
    x0, x1 = np.maximum(bx0, 0), np.minimum(bx1 + 1, im_w)
    y0, y1 = np.maximum(by0, 0), np.minimum(by1 + 1, im_h)
    return padded, (bx0, by0, bx1, by1), (w, h), (x0, y0, x1, y1)


def paste_masks_box_local(
    probs: np.ndarray, int_boxes: np.ndarray, im_h: int, im_w: int, threshold: float
) -> list[tuple[int, int, np.ndarray]]:
    """Paste each mask inside its own box only.

    ``probs`` float32 ``[N, M, M]``; ``int_boxes`` int64 ``[N, 4]`` from
    :func:`expand_boxes_for_paste`. Returns one ``(x0, y0, region)`` per mask: ``region`` is
    bool ``[y1 - y0, x1 - x0]``, the mask (:func:`binarise_mask`) over the box clipped to
    the ``im_h`` × ``im_w`` image, placed at column ``x0``, row ``y0``; it equals the same
    window of torchvision's full-image paste. The resize matrices of all masks are built in
    one go; each mask then costs two small matrix products.
    """
    if len(probs) == 0:
        return []
    m = probs.shape[-1]
    padded, (bx0, by0, _, _), (w, h), (x0, y0, x1, y1) = _paste_windows(
        probs, int_boxes, im_h, im_w
    )
    empty = (x1 <= x0) | (y1 <= y0)
    x1, y1 = np.where(empty, x0, x1), np.where(empty, y0, y1)  # no rows for empty windows
    wy, y_first = _bilinear_rows(h, m + 2, y0 - by0, y1 - by0)
    wx, x_first = _bilinear_rows(w, m + 2, x0 - bx0, x1 - bx0)
    thr = np.float32(threshold)
    out = []
    for k, (ox, oy, rows, cols) in enumerate(
        zip(x0.tolist(), y0.tolist(), (y1 - y0).tolist(), (x1 - x0).tolist(), strict=True)
    ):
        if rows == 0:
            out.append((ox, oy, np.zeros((0, 0), dtype=bool)))
            continue
        a, b = y_first[k], x_first[k]
        tall = wy[a : a + rows] @ padded[k]
        wide = wx[b : b + cols].T
        if rows * cols <= _PASTE_BAND_PIXELS:
            out.append((ox, oy, binarise_mask(tall @ wide, thr)))
            continue
        # A large mask is resampled in bands of rows into its bool region: the float32 product
        # of the whole window would cost 4 bytes per displayed pixel.
        region = np.empty((rows, cols), dtype=bool)
        step = max(1, _PASTE_BAND_PIXELS // cols)
        for r in range(0, rows, step):
            # binarise_mask's rule, written into the band: strictly above, in float32.
            np.greater(tall[r : r + step] @ wide, thr, out=region[r : r + step])
        out.append((ox, oy, region))
    return out


def paste_mask_box_local(
    probs: np.ndarray, int_box: np.ndarray, im_h: int, im_w: int, threshold: float
) -> tuple[int, int, np.ndarray]:
    """:func:`paste_masks_box_local` of one mask (``probs`` ``[M, M]``, ``int_box`` ``[4]``)."""
    return paste_masks_box_local(probs[None], np.asarray(int_box)[None], im_h, im_w, threshold)[0]


def detectron_paste_boxes(legacy_boxes: np.ndarray, mask_size: int) -> np.ndarray:
    """Detectron's integer paste boxes ``[N, 4]`` (int64) of legacy (inclusive) float boxes.

    ``segm_results``: ``expand_boxes(boxes, (M + 2) / M)`` in float32, then ``astype(int32)``
    (truncation toward zero); that is :func:`expand_boxes_for_paste`'s arithmetic, applied to
    the legacy box (x1, y1, x2, y2) = continuous (x1, y1, x2 - 1, y2 - 1).
    """
    return expand_boxes_for_paste(legacy_boxes, mask_size)


def paste_masks_detectron(
    probs: np.ndarray, int_boxes: np.ndarray, im_h: int, im_w: int, threshold: float
) -> list[tuple[int, int, np.ndarray]]:
    """Detectron's ``segm_results`` paste, computed inside each box only.

    ``probs`` float32 ``[N, M, M]``; ``int_boxes`` int64 ``[N, 4]`` from
    :func:`detectron_paste_boxes`. Per mask, as Detectron: zero-pad to ``M + 2``,
    ``cv2.resize`` it to ``w = x2 - x1 + 1`` by ``h = y2 - y1 + 1`` (at least 1;
    ``INTER_LINEAR``, :func:`service.resize.linear_taps`), keep ``> threshold`` (strict) and
    paste at ``[y1:y2 + 1, x1:x2 + 1]`` clipped to the ``im_h`` × ``im_w`` image. Only the
    clipped window is resampled (each output pixel depends on its own taps alone, so it equals
    the same window of Detectron's full resize). Returns one ``(x0, y0, region)`` per mask,
    ``region`` bool ``[y1 - y0, x1 - x0]``, as :func:`paste_masks_box_local`.
    """
    if len(probs) == 0:
        return []
    m = probs.shape[-1]
    padded, (bx0, by0, _, _), (w, h), (x0, y0, x1, y1) = _paste_windows(
        probs, int_boxes, im_h, im_w
    )
    thr = np.float32(threshold)
    one = np.float32(1)
    out = []
    for k in range(len(probs)):
        ox, oy = int(x0[k]), int(y0[k])
        if x1[k] <= ox or y1[k] <= oy:
            out.append((ox, oy, np.zeros((0, 0), dtype=bool)))
            continue
        # cv2.resize(src, (w, h)): source steps of 1 / (w / (M + 2)), as resize.cpp divides.
        xi0, xi1, fx = linear_taps(
            int(w[k]), m + 2, 1.0 / (int(w[k]) / (m + 2)), clamp_fraction=True,
            start=ox - int(bx0[k]), stop=int(x1[k]) - int(bx0[k]),
        )  # fmt: skip
        yi0, yi1, fy = linear_taps(
            int(h[k]), m + 2, 1.0 / (int(h[k]) / (m + 2)), clamp_fraction=False,
            start=oy - int(by0[k]), stop=int(y1[k]) - int(by0[k]),
        )  # fmt: skip
        rows = padded[k]
        hor = rows[:, xi0] * (one - fx) + rows[:, xi1] * fx  # horizontal pass first, as cv2
        fy = fy[:, None]
        # In bands of rows: per-pixel arithmetic, so banding changes no value, and the float32
        # temporaries stay at a band's size whatever the box.
        region = np.empty((len(yi0), hor.shape[1]), dtype=bool)
        step = max(1, _PASTE_BAND_PIXELS // max(hor.shape[1], 1))
        for r in range(0, len(yi0), step):
            f = fy[r : r + step]
            band = hor[yi0[r : r + step]] * (one - f) + hor[yi1[r : r + step]] * f
            np.greater(band, thr, out=region[r : r + step])
        out.append((ox, oy, region))
    return out


def rle_to_string(counts: np.ndarray) -> str:
    """COCO's compressed RLE string (``rleToString`` in pycocotools' maskApi.c) of one list of
    uncompressed counts (zeros first, alternating, column-major)."""
    counts = np.asarray(counts, dtype=np.int64).reshape(-1)
    return _rle_strings(counts, np.array([len(counts)], dtype=np.int64))[0]


def encode_region(region: np.ndarray, x0: int, y0: int, im_h: int, im_w: int) -> dict[str, Any]:
    """COCO compressed RLE dict ``{"size": [h, w], "counts": str}`` of a box-local mask."""
    (counts,) = encode_regions([(x0, y0, region)], im_h, im_w)
    return {"size": [im_h, im_w], "counts": counts}


def encode_regions(
    regions: Sequence[tuple[int, int, np.ndarray]], im_h: int, im_w: int
) -> list[str]:
    """COCO compressed RLE strings of several box-local masks of one ``im_h`` × ``im_w`` image.

    ``regions`` holds ``(x0, y0, region)`` with ``region`` bool ``[h_i, w_i]`` inside the image.
    Each mask's counts alternate zeros/ones in column-major order and start with zeros (possibly
    0), as pycocotools writes them. Every step after the copy of each region is one numpy call
    over all masks together: with tens of detections, per-call overhead (not arithmetic) is
    what a per-mask loop would pay for.
    """
    n = len(regions)
    total = im_h * im_w
    if n == 0:
        return []
    # Every region, transposed to column-major with a False guard above and below each column,
    # laid end to end in one flat buffer. Guards make changes come in (start, end) pairs per
    # column, so over the whole buffer as well.
    heights = np.array([r.shape[0] for _, _, r in regions], dtype=np.int64) + 2
    widths = np.array([r.shape[1] for _, _, r in regions], dtype=np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(heights * widths, out=offsets[1:])
    flat = np.zeros(int(offsets[-1]), dtype=bool)
    for k, (_, _, region) in enumerate(regions):
        if region.size:
            view = flat[offsets[k] : offsets[k + 1]].reshape(region.shape[1], region.shape[0] + 2)
            view[:, 1:-1] = region.T
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts, lengths = change[0::2], change[1::2] - change[0::2]
    owner = np.searchsorted(offsets, starts, side="right") - 1  # the mask of each run
    col, row = np.divmod(starts - offsets[owner], heights[owner])
    x0s = np.array([x for x, _, _ in regions], dtype=np.int64)
    y0s = np.array([y for _, y, _ in regions], dtype=np.int64)
    starts = (x0s[owner] + col) * im_h + (y0s[owner] + row - 1)  # full-image, column-major
    ends = starts + lengths
    # A run that reaches the bottom of a column goes on at the top of the next one in the
    # full image: merge runs that touch, never across masks.
    cut = np.ones(len(starts) + 1, dtype=bool)
    cut[1:-1] = (ends[:-1] != starts[1:]) | (owner[:-1] != owner[1:])
    owner, starts, ends = owner[cut[:-1]], starts[cut[:-1]], ends[cut[1:]]
    # Per mask with r runs: bounds [0, s_1, e_1, ..., s_r, e_r, total], all masks end to end;
    # their differences are the counts (zeros first, then alternating).
    runs = np.bincount(owner, minlength=n)
    run_index = np.arange(len(starts)) - _exclusive_cumsum(runs)[owner]
    n_bounds = 2 * runs + 2
    bound_offsets = _exclusive_cumsum(n_bounds)
    bounds = np.empty(int(n_bounds.sum()), dtype=np.int64)
    bounds[bound_offsets] = 0
    bounds[bound_offsets + n_bounds - 1] = total
    at = bound_offsets[owner] + 1 + 2 * run_index
    bounds[at] = starts
    bounds[at + 1] = ends
    counts = np.diff(bounds)
    between = np.ones(len(counts), dtype=bool)
    between[bound_offsets[1:] - 1] = False  # the differences across two masks
    counts = counts[between]
    n_counts = 2 * runs + 1
    last = _exclusive_cumsum(n_counts) + n_counts - 1
    empty_tail = counts[last] == 0  # the mask reaches the last pixel: no trailing zeros run
    keep = np.ones(len(counts), dtype=bool)
    keep[last[empty_tail]] = False
    return _rle_strings(counts[keep], n_counts - empty_tail)


def _exclusive_cumsum(values: np.ndarray) -> np.ndarray:
    """``[0, v_0, v_0 + v_1, ...]`` without the grand total (int64)."""
    out = np.zeros(len(values), dtype=np.int64)
    np.cumsum(values[:-1], out=out[1:])
    return out


def _rle_strings(counts: np.ndarray, lengths: np.ndarray) -> list[str]:
    """Compressed RLE strings of concatenated count lists (``lengths[k]`` counts each, >= 1).

    Each count from a list's fourth on is stored as the difference to the count two before it,
    then written as little-endian 5-bit chunks with a continuation bit, offset by 48.
    """
    counts = np.asarray(counts, dtype=np.int64)
    starts = _exclusive_cumsum(lengths)
    position = np.arange(len(counts)) - np.repeat(starts, lengths)
    x = counts.copy()
    delta = np.flatnonzero(position >= 3)
    x[delta] -= counts[delta - 2]
    # Chunks per value: the fewest 5-bit groups whose signed value holds it. Most values need
    # one or two, so the characters are built per chunk actually written, not per possible one.
    magnitude = np.where(x < 0, -x - 1, x)
    n_chunks = np.searchsorted(_CHUNK_LIMITS, magnitude) + 1  # first limit >= magnitude
    value = np.repeat(x, n_chunks)
    chunk = np.arange(len(value)) - np.repeat(_exclusive_cumsum(n_chunks), n_chunks)
    more = chunk < np.repeat(n_chunks - 1, n_chunks)
    chars = ((value >> (5 * chunk)) & 0x1F) + 48 + 0x20 * more
    text = chars.astype(np.uint8).tobytes().decode("ascii")
    per_mask = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(np.add.reduceat(n_chunks, starts), out=per_mask[1:])  # every mask has a count
    return [text[a:b] for a, b in zip(per_mask[:-1].tolist(), per_mask[1:].tolist(), strict=True)]


def window_areas(int_boxes: np.ndarray, im_h: int, im_w: int) -> np.ndarray:
    """Pixels of each integer paste box ``[N, 4]`` (inclusive corners) clipped to the image:
    what pasting and encoding that mask costs. int64 ``[N]``."""
    b = np.asarray(int_boxes, dtype=np.int64).reshape(-1, 4)
    w = np.clip(np.minimum(b[:, 2] + 1, im_w) - np.maximum(b[:, 0], 0), 0, None)
    h = np.clip(np.minimum(b[:, 3] + 1, im_h) - np.maximum(b[:, 1], 0), 0, None)
    return w * h


def encode_masks(
    probs: np.ndarray,
    int_boxes: np.ndarray,
    im_h: int,
    im_w: int,
    threshold: float,
    paste: Paste,
    *,
    deadline: float | None = None,
    group_pixels: int = MASK_GROUP_PIXELS,
    max_chars: int | None = None,
) -> list[str]:
    """COCO compressed RLE strings of ``N`` masks, pasted by ``paste`` a group at a time.

    ``probs`` float32 ``[N, M, M]`` and ``int_boxes`` int64 ``[N, 4]`` as ``paste`` takes them
    (:func:`paste_masks_box_local` or :func:`paste_masks_detectron`). Consecutive masks are
    grouped while their clipped windows add up to at most ``group_pixels``; each group is pasted,
    encoded and dropped before the next, so memory stays at about one group's area (a mask
    larger than that is a group alone, pasted in bands). ``deadline`` (a ``time.monotonic()``
    value) is checked before each group: 504 ``deadline_exceeded`` once it has passed.
    ``max_chars`` bounds the strings' total length (the masks' share of the response, and what
    they hold in memory until it is sent): 422 ``response_too_large`` as soon as it is passed.
    The strings equal those of pasting and encoding all masks at once.
    """
    n = len(probs)
    areas = window_areas(int_boxes, im_h, im_w)
    out: list[str] = []
    start, chars = 0, 0
    while start < n:
        stop, held = start + 1, int(areas[start])
        while stop < n and held + int(areas[stop]) <= group_pixels:
            held += int(areas[stop])
            stop += 1
        if deadline is not None and time.monotonic() >= deadline:
            raise ServiceError(
                "deadline_exceeded",
                f"the request deadline passed while its masks were encoded ({start} of {n} done)",
            )
        regions = paste(probs[start:stop], int_boxes[start:stop], im_h, im_w, threshold)
        strings = encode_regions(regions, im_h, im_w)
        del regions
        chars += sum(len(x) for x in strings)
        if max_chars is not None and chars > max_chars:
            raise ServiceError(
                "response_too_large",
                f"the masks' RLE passed {max_chars} characters after {stop} of {n} masks "
                "(MASKX_MAX_RESPONSE_BYTES); raise score_threshold, lower max_detections or "
                "ask for masks=none",
            )
        out.extend(strings)
        start = stop
    return out


def postprocess_detections(
    raw: RawDetections,
    *,
    input_size: tuple[int, int],
    image_size: tuple[int, int],
    info: ModelMetadata,
    params: SegmentParams,
    max_mask_pixels: int | None = None,
    deadline: float | None = None,
    max_response_bytes: int | None = None,
) -> list[Detection]:
    """Detections of **one** image, filtered, in displayed pixels, with masks.

    ``raw`` holds that image's graph outputs (boxes in input pixels); ``input_size`` is the
    (h, w) the image was resized to before padding; ``image_size`` is the displayed (h, w).
    Keeps scores ``>= score_threshold`` and the requested classes, best first, at most
    ``max_detections``; boxes are scaled back and clipped to the image, then each mask is pasted
    inside its box and RLE-encoded for the full image (:func:`encode_masks`). With
    ``max_mask_pixels``, masks whose clipped boxes add up to more pixels are refused before any
    is pasted (422 ``mask_area_too_large``); ``deadline`` is checked between groups of masks;
    ``max_response_bytes`` bounds the masks' RLE text (422 ``response_too_large``).
    """
    im_h, im_w = image_size
    keep = raw.scores >= params.score_threshold
    if params.classes is not None:
        keep &= np.isin(raw.labels, np.fromiter(params.classes, dtype=np.int64))
    index = np.flatnonzero(keep)
    index = index[np.argsort(-raw.scores[index], kind="stable")][: params.max_detections]
    if index.size == 0:
        return []
    labels = raw.labels[index]
    bad = (labels < 1) | (labels > info.num_classes)
    if bad.any():
        raise ValueError(
            f"model returned labels {labels[bad][:5].tolist()} outside 1..{info.num_classes}"
        )
    boxes, legacy = image_boxes(raw.boxes[index], input_size, image_size, info)
    scores = raw.scores[index].tolist()
    out = [
        Detection(
            box=tuple(box),  # type: ignore[arg-type]
            score=score,
            label=label,
            category_id=info.category_id(label),
            name=info.class_name(label),
            mask_source=info.mask_source(label),
        )
        for box, score, label in zip(boxes.tolist(), scores, labels.tolist(), strict=True)
    ]
    if params.masks:
        m = info.mask_resolution
        probs = raw.mask_probs[index]
        paste: Paste
        if info.mask_paste == "detectron":
            int_boxes, paste = detectron_paste_boxes(legacy, m), paste_masks_detectron
        else:
            int_boxes, paste = expand_boxes_for_paste(boxes, m), paste_masks_box_local
        if max_mask_pixels is not None:
            area = int(window_areas(int_boxes, im_h, im_w).sum())
            if area > max_mask_pixels:
                raise ServiceError(
                    "mask_area_too_large",
                    f"the {len(out)} masks to return cover {area} pixels of the "
                    f"{im_w}x{im_h} image, over the limit of {max_mask_pixels} "
                    "(MASKX_MAX_MASK_PIXELS); raise score_threshold, lower max_detections, "
                    "name fewer classes or ask for masks=none",
                )
        counts = encode_masks(
            probs, int_boxes, im_h, im_w, params.mask_threshold, paste, deadline=deadline,
            max_chars=max_response_bytes,
        )  # fmt: skip
        for det, c in zip(out, counts, strict=True):
            det.mask = {"size": [im_h, im_w], "counts": c}
    return out


def image_boxes(
    boxes: np.ndarray,
    input_size: tuple[int, int],
    image_size: tuple[int, int],
    info: ModelMetadata,
) -> tuple[np.ndarray, np.ndarray]:
    """Graph boxes (continuous, input pixels) -> boxes in displayed pixels, clipped.

    Returns float32 ``[N, 4]`` continuous boxes and the same boxes in the legacy (inclusive)
    convention, ``(x1, y1, x2 - 1, y2 - 1)``, that Detectron's paste takes. ``floor`` models:
    each axis scaled by displayed / input size, clipped to [0, W] x [0, H]. ``detectron``
    models: Detectron's ``rois / im_scale`` on the legacy corners, then its
    ``clip_tiled_boxes`` (legacy to [0, W - 1] x [0, H - 1]); the legacy boxes are the ones
    computed, not recovered from the continuous ones, so that no float32 ``+ 1 - 1`` moves a
    paste box across an integer.
    """
    im_h, im_w = image_size
    one = np.float32(1)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if info.resize_rule == "detectron":
        scale = np.float32(resize_scale(im_h, im_w, info.min_size, info.max_size, "detectron"))
        legacy = boxes.copy()
        legacy[:, 2:] -= one
        legacy /= scale
        np.clip(legacy[:, 0::2], 0, im_w - 1, out=legacy[:, 0::2])
        np.clip(legacy[:, 1::2], 0, im_h - 1, out=legacy[:, 1::2])
        continuous = legacy.copy()
        continuous[:, 2:] += one
        return continuous, legacy
    ratio = np.array([im_w / input_size[1], im_h / input_size[0]] * 2, dtype=np.float32)
    continuous = boxes * ratio
    np.clip(continuous[:, 0::2], 0, im_w, out=continuous[:, 0::2])
    np.clip(continuous[:, 1::2], 0, im_h, out=continuous[:, 1::2])
    legacy = continuous.copy()
    legacy[:, 2:] -= one
    return continuous, legacy
