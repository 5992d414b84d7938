"""Detectron's inference arithmetic in NumPy, written from the authors' code, not from maskx.

A self-contained reference for parity tests: every function here restates one function of
Detectron (github.com/facebookresearch/Detectron, the version vendored in the Mask^X authors'
repository ronghanghu/seg_every_thing under ``lib/``) or of Caffe2, with the names of the
originals, so that the pieces compose into a reference forward pass of an imported model:

    anchors      = fpn_level_anchors(...)                     per level (FPN.py)
    rois_l, p_l  = generate_proposals_one_level(...)          per level (ops/generate_proposals.py)
    rois         = collect_fpn_proposals([...], [...], n)     (collect_and_distribute_...py)
    levels       = map_rois_to_fpn_levels(rois, 2, 5)         (FPN.py)
    feats        = roi_align(feature_of_level, rois, ...)     (Caffe2 roi_align_op)
    ... box head (the model's own layers) ...
    boxes        = clip_tiled_boxes(bbox_transform(rois, deltas, (10, 10, 5, 5)), im_shape)
    scores, boxes, _ = box_results_with_nms_and_limit(scores, boxes, ...)  (core/test.py)

All boxes here are Detectron's legacy boxes: (x1, y1, x2, y2) with inclusive corners, width
``x2 - x1 + 1``. The continuous box maskx uses for the same region is (x1, y1, x2 + 1, y2 + 1).

Where Detectron reads ``cfg``, the value is an argument whose default is the released
models' test config (``configs/bbox2mask_vg/eval_sw*/runtest_*.yaml`` over
``lib/core/config.py``): ``BBOX_XFORM_CLIP = log(1000 / 16)``, ``RPN_MIN_SIZE = 0``,
``RPN_PRE_NMS_TOP_N = RPN_POST_NMS_TOP_N = 1000``, ``RPN_NMS_THRESH = 0.7``,
``SCORE_THRESH = 0.05``, ``NMS = 0.5``, ``DETECTIONS_PER_IM = 100``,
``ROI_CANONICAL_SCALE = 224``, ``ROI_CANONICAL_LEVEL = 4``, levels 2..5 (RoIs) and 2..6
(RPN), ``RPN_ANCHOR_START_SIZE = 32``, ``RPN_ASPECT_RATIOS = (0.5, 1, 2)``,
RoIAlign sampling ratio 2.
"""

from __future__ import annotations

import numpy as np

BBOX_XFORM_CLIP = float(np.log(1000.0 / 16.0))


# ------------------------------------------------------------------ utils/boxes.py
def boxes_area(boxes: np.ndarray) -> np.ndarray:
    """``boxes_area``: (x2 - x1 + 1) * (y2 - y1 + 1) of legacy boxes [N, 4]."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    return w * h


def bbox_transform(
    boxes: np.ndarray,
    deltas: np.ndarray,
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
    clip: float = BBOX_XFORM_CLIP,
) -> np.ndarray:
    """``bbox_transform``: apply deltas [N, 4k] to legacy boxes [N, 4] → legacy boxes [N, 4k]."""
    if boxes.shape[0] == 0:
        return np.zeros((0, deltas.shape[1]), dtype=deltas.dtype)
    boxes = boxes.astype(deltas.dtype, copy=False)
    widths = boxes[:, 2] - boxes[:, 0] + 1.0
    heights = boxes[:, 3] - boxes[:, 1] + 1.0
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = np.minimum(deltas[:, 2::4] / ww, clip)
    dh = np.minimum(deltas[:, 3::4] / wh, clip)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = np.exp(dw) * widths[:, None]
    pred_h = np.exp(dh) * heights[:, None]
    pred = np.zeros(deltas.shape, dtype=deltas.dtype)
    pred[:, 0::4] = pred_ctr_x - 0.5 * pred_w
    pred[:, 1::4] = pred_ctr_y - 0.5 * pred_h
    pred[:, 2::4] = pred_ctr_x + 0.5 * pred_w - 1  # "- 1" is correct (Detectron's comment)
    pred[:, 3::4] = pred_ctr_y + 0.5 * pred_h - 1
    return pred


def clip_tiled_boxes(boxes: np.ndarray, im_shape: tuple[int, int]) -> np.ndarray:
    """``clip_tiled_boxes``: clip legacy boxes [N, 4k] to [0, W - 1] x [0, H - 1];
    ``im_shape`` is (height, width). Returns a clipped copy."""
    boxes = boxes.copy()
    boxes[:, 0::4] = np.maximum(np.minimum(boxes[:, 0::4], im_shape[1] - 1), 0)
    boxes[:, 1::4] = np.maximum(np.minimum(boxes[:, 1::4], im_shape[0] - 1), 0)
    boxes[:, 2::4] = np.maximum(np.minimum(boxes[:, 2::4], im_shape[1] - 1), 0)
    boxes[:, 3::4] = np.maximum(np.minimum(boxes[:, 3::4], im_shape[0] - 1), 0)
    return boxes


def nms(dets: np.ndarray, thresh: float) -> np.ndarray:
    """``utils/cython_nms.pyx`` ``nms``: greedy NMS of dets [N, 5] (legacy box, score),
    float32 arithmetic, "+1" areas, suppress when IoU >= thresh. Returns kept indices by
    score, descending."""
    dets = dets.astype(np.float32, copy=False)
    x1, y1, x2, y2, scores = (dets[:, i] for i in range(5))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    suppressed = np.zeros(dets.shape[0], dtype=bool)
    keep = []
    for _i in range(dets.shape[0]):
        i = order[_i]
        if suppressed[i]:
            continue
        keep.append(i)
        for _j in range(_i + 1, dets.shape[0]):
            j = order[_j]
            if suppressed[j]:
                continue
            w = np.float32(max(0.0, min(x2[i], x2[j]) - max(x1[i], x1[j]) + 1))
            h = np.float32(max(0.0, min(y2[i], y2[j]) - max(y1[i], y1[j]) + 1))
            inter = w * h
            if inter / (areas[i] + areas[j] - inter) >= thresh:
                suppressed[j] = True
    return np.array(keep, dtype=np.int64)


# ------------------------------------------------------------------ modeling/generate_anchors.py
def _whctrs(anchor: np.ndarray) -> tuple[float, float, float, float]:
    w = anchor[2] - anchor[0] + 1
    h = anchor[3] - anchor[1] + 1
    return w, h, anchor[0] + 0.5 * (w - 1), anchor[1] + 0.5 * (h - 1)


def _mkanchors(ws: np.ndarray, hs: np.ndarray, x_ctr: float, y_ctr: float) -> np.ndarray:
    ws, hs = ws[:, None], hs[:, None]
    return np.hstack(
        (
            x_ctr - 0.5 * (ws - 1),
            y_ctr - 0.5 * (hs - 1),
            x_ctr + 0.5 * (ws - 1),
            y_ctr + 0.5 * (hs - 1),
        )
    )


def _ratio_enum(anchor: np.ndarray, ratios: np.ndarray) -> np.ndarray:
    w, h, x_ctr, y_ctr = _whctrs(anchor)
    size_ratios = w * h / ratios
    ws = np.round(np.sqrt(size_ratios))
    hs = np.round(ws * ratios)
    return _mkanchors(ws, hs, x_ctr, y_ctr)


def _scale_enum(anchor: np.ndarray, scales: np.ndarray) -> np.ndarray:
    w, h, x_ctr, y_ctr = _whctrs(anchor)
    return _mkanchors(w * scales, h * scales, x_ctr, y_ctr)


def generate_anchors(
    stride: float = 16,
    sizes: tuple[float, ...] = (32, 64, 128, 256, 512),
    aspect_ratios: tuple[float, ...] = (0.5, 1, 2),
) -> np.ndarray:
    """``generate_anchors``: legacy anchors [len(ratios) * len(sizes), 4] of the reference
    window (0, 0, stride - 1, stride - 1), ratio-major."""
    scales = np.array(sizes, dtype=float) / stride
    ratios = np.array(aspect_ratios, dtype=float)
    anchor = np.array([1, 1, stride, stride], dtype=float) - 1
    anchors = _ratio_enum(anchor, ratios)
    return np.vstack([_scale_enum(anchors[i, :], scales) for i in range(anchors.shape[0])])


def fpn_level_anchors(
    level: int,
    height: int,
    width: int,
    k_min: int = 2,
    start_size: float = 32,
    aspect_ratios: tuple[float, ...] = (0.5, 1, 2),
) -> np.ndarray:
    """All legacy anchors [H * W * A, 4] of FPN level ``level`` on an H x W feature map:
    ``add_fpn_rpn_outputs``'s ``generate_anchors(stride=2**lvl, sizes=(start * 2**(lvl -
    k_min),))`` shifted as ``GenerateProposalsOp.forward`` does, ordered (y, x, anchor)."""
    stride = 2.0**level
    cell = generate_anchors(stride, (start_size * 2.0 ** (level - k_min),), aspect_ratios)
    shift_x, shift_y = np.meshgrid(np.arange(0, width) * stride, np.arange(0, height) * stride)
    shifts = np.vstack((shift_x.ravel(), shift_y.ravel(), shift_x.ravel(), shift_y.ravel())).T
    return (cell[None, :, :] + shifts[:, None, :]).reshape(-1, 4)


# ------------------------------------------------------------------ modeling/FPN.py
def map_rois_to_fpn_levels(
    rois: np.ndarray, k_min: int, k_max: int, s0: float = 224, lvl0: float = 4
) -> np.ndarray:
    """``map_rois_to_fpn_levels``: FPN level (k_min..k_max, not an index) of legacy rois [N, 4]."""
    s = np.sqrt(boxes_area(rois))
    target = np.floor(lvl0 + np.log2(s / s0 + 1e-6))
    return np.clip(target, k_min, k_max)


# ------------------------------------------------------------------ ops/generate_proposals.py
def _filter_boxes(boxes: np.ndarray, min_size: float, im_info: np.ndarray) -> np.ndarray:
    """The authors' ``_filter_boxes``: both "+1" sides >= min_size * im_scale and the centre
    inside ``im_info``'s (height, width)."""
    min_size = min_size * im_info[2]
    ws = boxes[:, 2] - boxes[:, 0] + 1
    hs = boxes[:, 3] - boxes[:, 1] + 1
    x_ctr = boxes[:, 0] + ws / 2.0
    y_ctr = boxes[:, 1] + hs / 2.0
    return np.where(
        (ws >= min_size) & (hs >= min_size) & (x_ctr < im_info[1]) & (y_ctr < im_info[0])
    )[0]


def generate_proposals_one_level(
    scores: np.ndarray,
    bbox_deltas: np.ndarray,
    im_info: np.ndarray,
    anchors: np.ndarray,
    pre_nms_top_n: int = 1000,
    post_nms_top_n: int = 1000,
    nms_thresh: float = 0.7,
    min_size: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """``GenerateProposalsOp.proposals_for_one_image`` for one image and one FPN level.

    Args:
        scores: [A, H, W] objectness probabilities (after the sigmoid).
        bbox_deltas: [4A, H, W].
        im_info: (height, width, scale); Detectron's height and width are the *padded* blob's.
        anchors: [H * W * A, 4] legacy, :func:`fpn_level_anchors`.
    Returns:
        legacy proposals [P, 4] and their probabilities [P], by probability descending.
    """
    bbox_deltas = bbox_deltas.transpose((1, 2, 0)).reshape((-1, 4))
    scores = scores.transpose((1, 2, 0)).reshape((-1, 1))
    if pre_nms_top_n <= 0 or pre_nms_top_n >= len(scores):
        order = np.argsort(-scores.squeeze(1), kind="stable")
    else:
        inds = np.argpartition(-scores.squeeze(1), pre_nms_top_n)[:pre_nms_top_n]
        order = inds[np.argsort(-scores[inds].squeeze(1), kind="stable")]
    bbox_deltas, anchors, scores = bbox_deltas[order], anchors[order], scores[order]
    proposals = bbox_transform(anchors, bbox_deltas, (1.0, 1.0, 1.0, 1.0))
    proposals = clip_tiled_boxes(proposals, (im_info[0], im_info[1]))
    keep = _filter_boxes(proposals, min_size, im_info)
    proposals, scores = proposals[keep], scores[keep]
    if nms_thresh > 0:
        keep = nms(np.hstack((proposals, scores)), nms_thresh)
        if post_nms_top_n > 0:
            keep = keep[:post_nms_top_n]
        proposals, scores = proposals[keep], scores[keep]
    return proposals, scores[:, 0]


# ------------------------------------------------------------------ ops/collect_and_distribute...
def collect_fpn_proposals(
    rois: list[np.ndarray], scores: list[np.ndarray], post_nms_top_n: int = 1000
) -> np.ndarray:
    """``collect``: the ``post_nms_top_n`` best proposals over all levels, by score."""
    all_rois = np.concatenate(rois)
    all_scores = np.concatenate(scores)
    return all_rois[np.argsort(-all_scores, kind="stable")[:post_nms_top_n]]


# ------------------------------------------------------------------ Caffe2 roi_align_op
def _bilinear_interpolate(data: np.ndarray, y: float, x: float) -> np.ndarray:
    """Caffe2's ``bilinear_interpolate`` of a [C, H, W] map at (y, x)."""
    height, width = data.shape[1:]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(data.shape[0], dtype=data.dtype)
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (
        hy * hx * data[:, y_low, x_low]
        + hy * lx * data[:, y_low, x_high]
        + ly * hx * data[:, y_high, x_low]
        + ly * lx * data[:, y_high, x_high]
    )


def roi_align(
    features: np.ndarray,
    rois: np.ndarray,
    pooled: int,
    spatial_scale: float,
    sampling_ratio: int = 2,
) -> np.ndarray:
    """Caffe2's ``RoIAlign`` forward (``roi_align_op``, no half-pixel offset: Detectron's).

    Args:
        features: [N, C, H, W].
        rois: [R, 5] (batch index, x1, y1, x2, y2), the legacy boxes Detectron feeds it.
    Returns:
        [R, C, pooled, pooled], float64.
    """
    out = np.zeros((rois.shape[0], features.shape[1], pooled, pooled))
    for n, roi in enumerate(rois):
        data = features[int(roi[0])].astype(np.float64)
        start_w, start_h = roi[1] * spatial_scale, roi[2] * spatial_scale
        end_w, end_h = roi[3] * spatial_scale, roi[4] * spatial_scale
        roi_w = max(end_w - start_w, 1.0)  # "Force malformed ROIs to be 1x1"
        roi_h = max(end_h - start_h, 1.0)
        bin_w, bin_h = roi_w / pooled, roi_h / pooled
        grid_h = sampling_ratio if sampling_ratio > 0 else int(np.ceil(roi_h / pooled))
        grid_w = sampling_ratio if sampling_ratio > 0 else int(np.ceil(roi_w / pooled))
        for ph in range(pooled):
            for pw in range(pooled):
                acc = np.zeros(features.shape[1])
                for iy in range(grid_h):
                    y = start_h + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = start_w + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                        acc += _bilinear_interpolate(data, y, x)
                out[n, :, ph, pw] = acc / (grid_h * grid_w)
    return out


# ------------------------------------------------------------------ core/test.py
def box_results_with_nms_and_limit(
    scores: np.ndarray,
    boxes: np.ndarray,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_im: int = 100,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``box_results_with_nms_and_limit`` without soft-NMS or box voting (off in the
    released configs).

    Args:
        scores: [R, K+1] class probabilities (background at 0).
        boxes: [R, 4(K+1)] legacy boxes of every class.
    Returns:
        scores [N], legacy boxes [N, 4] and labels [N] (1..K), class by class as Detectron
        stacks them (each class by score, descending). Labels are not in Detectron's return
        value (it returns per-class lists); they are what that list's index says.
    """
    num_classes = scores.shape[1]
    cls_dets = [np.zeros((0, 5), np.float32) for _ in range(num_classes)]
    for j in range(1, num_classes):
        inds = np.where(scores[:, j] > score_thresh)[0]
        dets = np.hstack((boxes[inds, j * 4 : (j + 1) * 4], scores[inds, j][:, None]))
        dets = dets.astype(np.float32, copy=False)
        cls_dets[j] = dets[nms(dets, nms_thresh)] if len(dets) else dets
    if detections_per_im > 0:
        image_scores = np.hstack([cls_dets[j][:, -1] for j in range(1, num_classes)])
        if len(image_scores) > detections_per_im:
            image_thresh = np.sort(image_scores)[-detections_per_im]
            for j in range(1, num_classes):
                cls_dets[j] = cls_dets[j][cls_dets[j][:, -1] >= image_thresh]
    results = np.vstack([cls_dets[j] for j in range(1, num_classes)])
    labels = np.concatenate([np.full(len(cls_dets[j]), j) for j in range(1, num_classes)])
    return results[:, -1], results[:, :-1], labels.astype(np.int64)
