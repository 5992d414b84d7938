"""Inference post-processing as pure, traceable functions over a whole batch: the RPN's
proposal selection and the detection post-process. The eager heads (:class:`model.rpn.MaskXRPN`,
:class:`model.roi_heads.MaskXRoIHeads`) and the ONNX export adapter call the same functions.

Every box carries its image's ``batch`` index instead of living in a per-image list, so that a
traced graph takes any batch size: per-image NMS is NMS per (image, group) and a per-image
top-k is a rank within the image (:func:`rank_within_group`). Boxes are continuous
(x1, y1, x2, y2) in input pixels; ``box_convention`` says which conventions apply to them
(:mod:`model.boxes`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import boxes as box_ops

from .boxes import CONTINUOUS, LEGACY, check_box_convention, clip_boxes, wide_enough

DETECTION_MIN_SIZE = 1e-2
"""torchvision's small-box filter on final detections (continuous convention only: Detectron's
``box_results_with_nms_and_limit`` has none)."""


def rank_within_group(group: Tensor, num_groups: Tensor | int) -> Tensor:
    """0-based position of each element among the elements of its group, in input order.

    ``group`` int64 [N] with values in [0, num_groups). Traceable (one-hot cumulative sum).
    """
    onehot = (group[:, None] == torch.arange(num_groups, device=group.device)[None, :]).to(
        torch.int64
    )
    return (onehot.cumsum(0) * onehot).sum(1) - 1


def stable_argsort(values: Tensor, descending: bool = False) -> Tensor:
    """``argsort`` that keeps ties in input order, in eager PyTorch and in the exported graph
    alike, so that equal scores (a flat image gives many) pick the same boxes in both.

    A traced ``argsort`` becomes ONNX ``TopK``, which ONNX Runtime resolves ties of by index;
    the exporter refuses ``stable=True``, and eager ``argsort`` without it does not keep ties.
    """
    if torchvision._is_tracing():
        return values.argsort(descending=descending)
    return values.argsort(descending=descending, stable=True)


def nms_in_rank_order(boxes: Tensor, key: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each group that visits the boxes by ``key``, descending, equal keys by index,
    in eager PyTorch and in the exported graph alike. Returns the kept indices in that order.

    Of two overlapping boxes of equal key NMS keeps the one it visits first, and each path
    orders equal scores its own way (torchvision's kernel sorts without keeping ties; ONNX
    Runtime's ``NonMaxSuppression`` keeps them), so NMS runs on each box's rank by the key,
    which is unique. The RPN ranks by objectness logits, not probabilities: a logit above about
    16.6 gives a probability of exactly 1.0 in float32, and near it the sigmoid's last bit
    differs between eager PyTorch and ONNX Runtime, so saturated proposals would tie in one
    path and not in the other (a full-size R-101 kept a different proposal that way).

    Args:
        boxes: float [N, 4] (continuous); key: float [N]; groups: int64 [N] (NMS never
        compares boxes of different groups); iou_threshold: IoU above which a box is dropped.
    Returns:
        int64 [N'] indices into ``boxes``.
    """
    order = stable_argsort(key, descending=True)
    positions = torch.ones_like(order).cumsum(0) - 1  # arange(N), traceable for any N
    rank = torch.zeros_like(order).scatter(0, order, positions)
    return box_ops.batched_nms(boxes, (-rank).to(boxes.dtype), groups, iou_threshold)


def top_per_group(scores: Tensor, group: Tensor, num_groups: int, n: int) -> Tensor:
    """bool [N]: the ``n`` highest ``scores`` of each group, equal scores by index (lower first).

    Args:
        scores: float [N]; group: int64 [N] in [0, num_groups); n: kept per group.

    The exported graph ranks every element (a sort and :func:`rank_within_group`, any batch
    size); eager PyTorch takes each group's ``n``-th best score with ``topk`` and keeps what is
    above it and the first of those equal to it, the same elements in linear time: at K = 3000
    with ``score_thresh`` 0 an image has 3 M (RoI, class) candidates, and sorting them all cost
    0.4 s of CPU per image.
    """
    if torchvision._is_tracing():
        order = stable_argsort(scores, descending=True)
        ranked = rank_within_group(group[order], num_groups) < n
        return torch.zeros_like(ranked).scatter(0, order, ranked)
    keep = torch.zeros_like(scores, dtype=torch.bool)
    for g in range(int(num_groups)):
        members = torch.where(group == g)[0]
        s = scores[members]
        if s.numel() <= n:
            keep[members] = True
            continue
        nth = s.topk(n).values[-1]
        chosen = s > nth
        equal = torch.where(s == nth)[0]
        chosen[equal[: n - int(chosen.sum())]] = True
        keep[members[chosen]] = True
    return keep


def top_n_per_level(objectness: Tensor, num_anchors_per_level: list[int], n: int) -> Tensor:
    """Indices [B, T] of the ``n`` highest scores of each level (torchvision's
    ``RegionProposalNetwork._get_top_n_idx``; Detectron's ``RPN_PRE_NMS_TOP_N`` per level).

    Args:
        objectness: [B, A] anchor logits (or probabilities), levels concatenated.
        num_anchors_per_level: anchors of each level, summing to A.
    """
    picked = []
    offset = 0
    for scores in objectness.split(num_anchors_per_level, 1):
        k = det_utils._topk_min(scores, n, 1)
        picked.append(scores.topk(k, dim=1).indices + offset)
        offset += scores.shape[1]
    return torch.cat(picked, dim=1)


def select_proposals(
    proposals: Tensor,
    objectness: Tensor,
    num_anchors_per_level: list[int],
    clip_sizes: Tensor,
    *,
    pre_nms_top_n: int,
    post_nms_top_n: int,
    nms_thresh: float,
    min_size: float,
    score_thresh: float = 0.0,
    box_convention: str = CONTINUOUS,
    valid: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """RPN proposals of a batch: per level top-n → clip → min size → NMS per level → top-n.

    The same as Detectron's ``GenerateProposals`` per FPN level followed by
    ``collect_and_distribute``'s top-n over levels: a per-level cut at ``post_nms_top_n``
    cannot remove what the cut over all levels keeps.

    Args:
        proposals: float [B, A, 4], decoded anchors (continuous), levels concatenated.
        objectness: float [B, A], logits.
        num_anchors_per_level: anchors of each level, summing to A.
        clip_sizes: int64 [B, 2], (height, width) each image's proposals are clipped to.
        pre_nms_top_n: proposals kept per level and image before NMS.
        post_nms_top_n: proposals kept per image after NMS.
        nms_thresh: IoU above which NMS suppresses (within one image and level).
        min_size: minimum width and height, input pixels.
        score_thresh: minimum objectness probability.
        box_convention: how to clip (:func:`model.boxes.clip_boxes`).
        valid: bool [B, A] or None: anchors that exist for their image (see
            :meth:`model.rpn.MaskXRPN.anchor_valid`); the others are neither ranked nor kept.
    Returns:
        boxes float [P, 4], scores float [P] (probabilities), batch int64 [P]; each image's
        proposals by score, descending.
    """
    check_box_convention(box_convention)
    b = proposals.shape[0]
    device = proposals.device
    objectness = objectness.reshape(b, -1)
    if valid is not None:
        objectness = objectness.masked_fill(~valid, float("-inf"))
    levels = torch.cat(
        [torch.full((n,), i, dtype=torch.int64, device=device)
         for i, n in enumerate(num_anchors_per_level)]
    )  # fmt: skip
    top = top_n_per_level(objectness, num_anchors_per_level, pre_nms_top_n)  # [B, T]
    batch = torch.arange(b, device=device)[:, None].expand_as(top)
    logits = objectness.gather(1, top).reshape(-1)
    scores = logits.sigmoid()
    exists = valid.gather(1, top).reshape(-1) if valid is not None else None
    boxes = proposals[batch, top].reshape(-1, 4)
    level = levels[top].reshape(-1)
    batch = batch.reshape(-1)
    boxes = clip_boxes(boxes, clip_sizes[batch], box_convention)
    kept = wide_enough(boxes, min_size) & (scores >= score_thresh)
    keep = torch.where(kept if exists is None else kept & exists)[0]
    boxes, scores, level, batch = boxes[keep], scores[keep], level[keep], batch[keep]
    groups = batch * len(num_anchors_per_level) + level
    keep = nms_in_rank_order(boxes, logits[keep], groups, nms_thresh)
    keep = keep[rank_within_group(batch[keep], b) < post_nms_top_n]
    return boxes[keep], scores[keep], batch[keep]


def select_detections(
    class_logits: Tensor,
    box_features: Tensor,
    proposals: Tensor,
    proposal_batch: Tensor,
    image_sizes: Tensor,
    *,
    box_deltas: Callable[[Tensor, Tensor], Tensor],
    box_coder: det_utils.BoxCoder,
    score_thresh: float,
    nms_thresh: float,
    detections_per_img: int,
    candidates_per_img: int | None = None,
    box_convention: str = CONTINUOUS,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Detections of a batch: scores → (RoI, class) candidates → class-specific boxes → clip →
    small-box filter → NMS per (image, class) → top detections per image.

    Box deltas are computed for candidates only (``box_deltas``), so nothing of size
    [R, 4(K+1)] is built. K is the width of ``class_logits`` less the background column.

    Args:
        class_logits: float [R, K+1] of all RoIs of the batch.
        box_features: float [R, D], the box head's features of the same RoIs.
        proposals: float [R, 4], the RoIs (continuous).
        proposal_batch: int64 [R], each RoI's image.
        image_sizes: int64 [B, 2], (height, width) each image's boxes are clipped to.
        box_deltas: ``(features [N, D], labels [N]) -> deltas [N, 4]`` of each label's class
            (:meth:`model.predictors.ClassSpecificBoxPredictor.box_deltas`).
        box_coder: decodes deltas on the RoIs.
        score_thresh: candidates need a score above it (Detectron: ``> 0.05``).
        nms_thresh: per-class NMS IoU threshold.
        detections_per_img: detections kept per image, best first.
        candidates_per_img: cap on (RoI, class) candidates per image entering NMS, best
            first; None keeps all (torchvision, Detectron).
        box_convention: ``continuous`` clips to [0, W] and drops boxes under 1e-2 px;
            ``legacy`` clips as Detectron (:func:`model.boxes.clip_boxes`) and drops none.
    Returns:
        boxes float [N, 4] (continuous), scores float [N], labels int64 [N] in 1..K,
        batch int64 [N]; detections of one image contiguous, by score descending.
    """
    check_box_convention(box_convention)
    num_images = image_sizes.shape[0]
    num_classes = class_logits.shape[1] - 1  # K, derived here only
    flat = F.softmax(class_logits, -1)[:, 1:].reshape(-1)  # (RoI, class) pairs, class-minor
    cand = torch.where(flat > score_thresh)[0]
    roi = torch.div(cand, num_classes, rounding_mode="floor")
    if candidates_per_img is not None:
        # The best candidates_per_img of each image, kept in (RoI, class) order.
        keep = top_per_group(flat[cand], proposal_batch[roi], num_images, candidates_per_img)
        cand, roi = cand[keep], roi[keep]
    labels = cand - roi * num_classes + 1
    scores = flat[cand]
    batch = proposal_batch[roi]
    deltas = box_deltas(box_features[roi], labels)
    boxes = box_coder.decode_single(deltas, proposals[roi])
    boxes = clip_boxes(boxes, image_sizes[batch], box_convention)
    if box_convention != LEGACY:
        keep = torch.where(wide_enough(boxes, DETECTION_MIN_SIZE))[0]
        boxes, scores, labels, batch = boxes[keep], scores[keep], labels[keep], batch[keep]
    keep = nms_in_rank_order(boxes, scores, batch * (num_classes + 1) + labels, nms_thresh)
    keep = keep[rank_within_group(batch[keep], num_images) < detections_per_img]
    # Group by image; a stable sort keeps each image's detections in NMS's (score) order.
    keep = keep[stable_argsort(batch[keep])]
    return boxes[keep], scores[keep], labels[keep], batch[keep]
