"""Graph outputs -> response detections: box-local mask paste, threshold, COCO RLE.

torchvision pastes every 28×28 mask into a full-image float canvas (``paste_masks_in_image``);
at 1920×1080 and 100 detections that is 830 MB of float32 written and scanned. Here each mask is
resized **only inside its box** with the same geometry (box expanded by (M+2)/M around a one-pixel
zero pad, bilinear with ``align_corners=False`` into the integer box, clipped to the image), and
the COCO compressed RLE of the full image is written directly from that box region. Nothing of
image size is ever allocated per detection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from maskx.service.runtime import ModelInfo, RawDetections

_MAX_CHUNKS = 12  # 5-bit chunks per RLE count; enough for any count below 2**59


@dataclass(frozen=True)
class SegmentParams:
    """Per-request options (``POST /segment`` query)."""

    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    max_detections: int = 100
    classes: frozenset[int] | None = None  # model labels to keep; None keeps all
    masks: bool = True  # False: no mask work at all (``masks=none``)


@dataclass
class Detection:
    """One detection in displayed-image pixels.

    ``mask`` is the COCO RLE dict (``size`` [h, w], ``counts`` str) or None; ``mask_origin``
    (x0, y0) and ``mask_region`` (bool [h_r, w_r]) are the same mask kept box-local, for
    overlays that should not decode a full-image bitmap.
    """

    box: tuple[float, float, float, float]
    score: float
    label: int
    name: str
    mask_source: str
    mask: dict[str, Any] | None = None
    mask_origin: tuple[int, int] = (0, 0)
    mask_region: np.ndarray | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "box": [round(v, 2) for v in self.box],
            "score": round(self.score, 5),
            "label": self.label,
            "name": self.name,
            "mask_source": self.mask_source,
        }
        if self.mask is not None:
            out["mask"] = self.mask
        return out


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


def _bilinear_matrix(out_len: int, in_len: int, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of the ``[out_len, in_len]`` bilinear resize matrix.

    Same sampling as ``F.interpolate(mode="bilinear", align_corners=False)`` with an explicit
    output size: ``src = (dst + 0.5) * in/out - 0.5``, clamped at 0, neighbours clamped at the
    last input index.
    """
    dst = np.arange(start, stop, dtype=np.float32)
    src = np.maximum((dst + np.float32(0.5)) * np.float32(in_len / out_len) - np.float32(0.5), 0)
    i0 = src.astype(np.int64)
    i1 = np.minimum(i0 + 1, in_len - 1)
    lam1 = src - i0
    weights = np.zeros((stop - start, in_len), dtype=np.float32)
    rows = np.arange(stop - start)
    weights[rows, i0] = 1 - lam1
    weights[rows, i1] += lam1  # i1 == i0 at the last input index: the weights sum to 1
    return weights


def paste_mask_box_local(
    probs: np.ndarray, int_box: np.ndarray, im_h: int, im_w: int, threshold: float
) -> tuple[int, int, np.ndarray]:
    """Paste one mask inside its box only.

    ``probs`` float32 ``[M, M]``; ``int_box`` int64 ``[4]`` from :func:`expand_boxes_for_paste`.
    Returns ``(x0, y0, region)``: ``region`` is bool ``[y1 - y0, x1 - x0]``, the thresholded
    (``>= threshold``) mask over the box clipped to the ``im_h`` × ``im_w`` image, placed at
    column ``x0``, row ``y0``. Equals the same window of torchvision's full-image paste.
    """
    m = probs.shape[-1]
    padded = np.zeros((m + 2, m + 2), dtype=np.float32)
    padded[1:-1, 1:-1] = probs
    bx0, by0, bx1, by1 = (int(v) for v in int_box)
    w = max(bx1 - bx0 + 1, 1)
    h = max(by1 - by0 + 1, 1)
    x0, x1 = max(bx0, 0), min(bx1 + 1, im_w)
    y0, y1 = max(by0, 0), min(by1 + 1, im_h)
    if x1 <= x0 or y1 <= y0:
        return max(x0, 0), max(y0, 0), np.zeros((0, 0), dtype=bool)
    wy = _bilinear_matrix(h, m + 2, y0 - by0, y1 - by0)
    wx = _bilinear_matrix(w, m + 2, x0 - bx0, x1 - bx0)
    region = (wy @ padded) @ wx.T
    return x0, y0, region >= np.float32(threshold)


def rle_counts_from_region(
    region: np.ndarray, x0: int, y0: int, im_h: int, im_w: int
) -> np.ndarray:
    """Uncompressed COCO RLE counts (int64) of the full ``im_h`` × ``im_w`` mask that is
    ``region`` (bool ``[h, w]``) at column ``x0``, row ``y0`` and zero elsewhere.

    Counts alternate zeros/ones in column-major order and start with zeros (possibly 0), as
    pycocotools writes them.
    """
    total = im_h * im_w
    h, w = region.shape
    if region.size == 0 or not region.any():
        return np.array([total], dtype=np.int64)
    # One False guard above and below every column so that no run crosses a column here;
    # runs that do continue across columns in the full image are merged below.
    cols = np.zeros((w, h + 2), dtype=np.int8)
    cols[:, 1:-1] = region.T
    change = np.diff(cols.ravel())
    starts = np.flatnonzero(change == 1) + 1
    ends = np.flatnonzero(change == -1) + 1

    def to_full(index: np.ndarray) -> np.ndarray:
        col, row = np.divmod(index, h + 2)
        return (x0 + col) * im_h + (y0 + row - 1)

    starts, ends = to_full(starts), to_full(ends)
    keep = ends[:-1] != starts[1:]
    starts = np.concatenate([starts[:1], starts[1:][keep]])
    ends = np.concatenate([ends[:-1][keep], ends[-1:]])
    bounds = np.empty(2 * len(starts) + 2, dtype=np.int64)
    bounds[0] = 0
    bounds[1:-1:2] = starts
    bounds[2:-1:2] = ends
    bounds[-1] = total
    counts = np.diff(bounds)
    if counts[-1] == 0:
        counts = counts[:-1]
    return counts


def rle_to_string(counts: np.ndarray) -> str:
    """COCO's compressed RLE string (``rleToString`` in pycocotools' maskApi.c), vectorised.

    Each count from the fourth on is stored as the difference to the count two before it,
    then written as little-endian 5-bit chunks with a continuation bit, offset by 48.
    """
    counts = np.asarray(counts, dtype=np.int64)
    x = counts.copy()
    x[3:] -= counts[1:-2]
    shifts = 5 * np.arange(_MAX_CHUNKS, dtype=np.int64)
    chunks = (x[:, None] >> shifts) & 0x1F
    rest = x[:, None] >> (shifts + 5)
    more = np.where(chunks & 0x10, rest != -1, rest != 0)
    n_chunks = np.argmin(more, axis=1) + 1
    chars = chunks + 48 + 0x20 * more
    used = np.arange(_MAX_CHUNKS) < n_chunks[:, None]
    return chars[used].astype(np.uint8).tobytes().decode("ascii")


def encode_region(region: np.ndarray, x0: int, y0: int, im_h: int, im_w: int) -> dict[str, Any]:
    """COCO compressed RLE dict ``{"size": [h, w], "counts": str}`` of a box-local mask."""
    counts = rle_counts_from_region(region, x0, y0, im_h, im_w)
    return {"size": [im_h, im_w], "counts": rle_to_string(counts)}


def postprocess_detections(
    raw: RawDetections,
    *,
    input_size: tuple[int, int],
    image_size: tuple[int, int],
    info: ModelInfo,
    params: SegmentParams,
) -> list[Detection]:
    """Detections of **one** image, filtered, in displayed pixels, with masks.

    ``raw`` holds that image's graph outputs (boxes in input pixels); ``input_size`` is the
    (h, w) the image was resized to before padding; ``image_size`` is the displayed (h, w).
    Keeps scores ``>= score_threshold`` and the requested classes, best first, at most
    ``max_detections``; boxes are scaled back and clipped to the image, then each mask is pasted
    inside its box and RLE-encoded for the full image.
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
    ratio = np.array([im_w / input_size[1], im_h / input_size[0]] * 2, dtype=np.float32)
    boxes = raw.boxes[index].astype(np.float32) * ratio
    np.clip(boxes[:, 0::2], 0, im_w, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, im_h, out=boxes[:, 1::2])
    int_boxes = expand_boxes_for_paste(boxes, info.mask_resolution) if params.masks else None
    out = []
    for j, i in enumerate(index):
        label = int(labels[j])
        det = Detection(
            box=tuple(float(v) for v in boxes[j]),  # type: ignore[arg-type]
            score=float(raw.scores[i]),
            label=label,
            name=info.class_name(label),
            mask_source=info.mask_source(label),
        )
        if int_boxes is not None:
            x0, y0, region = paste_mask_box_local(
                raw.mask_probs[i], int_boxes[j], im_h, im_w, params.mask_threshold
            )
            det.mask = encode_region(region, x0, y0, im_h, im_w)
            det.mask_origin, det.mask_region = (x0, y0), region
        out.append(det)
    return out
