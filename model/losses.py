"""Losses of the RoI heads as pure functions (unit-tested without a model).

``partial_mask_loss`` is the paper's partially supervised mask loss: it is computed only on
foreground RoIs whose matched ground truth has a mask (a class in A), on that class's channel
only; with no such RoI it is exactly zero and still connected to the graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align


def box_losses(
    class_logits: Tensor,
    pos_box_deltas: Tensor,
    labels: Tensor,
    regression_targets: Tensor,
) -> tuple[Tensor, Tensor]:
    """Fast R-CNN classification and box-regression losses.

    Same values as torchvision's ``fastrcnn_loss`` but takes the deltas of the positive RoIs'
    ground-truth class only (see ``ClassSpecificBoxPredictor.box_deltas``).

    Args:
        class_logits: [R, K+1] for all sampled RoIs of the batch.
        pos_box_deltas: [P, 4], deltas of the P RoIs with ``labels > 0`` (in order), for their label.
        labels: int64 [R], 0 = background.
        regression_targets: [R, 4] encoded targets.
    Returns:
        (loss_classifier, loss_box_reg), scalars.
    """
    loss_classifier = F.cross_entropy(class_logits, labels)
    pos = torch.where(labels > 0)[0]
    loss_box_reg = F.smooth_l1_loss(
        pos_box_deltas, regression_targets[pos], beta=1 / 9, reduction="sum"
    ) / max(labels.numel(), 1)
    return loss_classifier, loss_box_reg


def project_masks_on_boxes(gt_masks: Tensor, boxes: Tensor, matched_idxs: Tensor, m: int) -> Tensor:
    """Crop and resize ground-truth masks [G, H, W] to each RoI: → float [P, m, m] in [0, 1]."""
    matched_idxs = matched_idxs.to(boxes)
    rois = torch.cat([matched_idxs[:, None], boxes], dim=1)
    return roi_align(gt_masks[:, None].to(rois), rois, (m, m), 1.0)[:, 0]


def partial_mask_loss(
    mask_logits: Tensor,
    mask_proposals: list[Tensor],
    gt_masks: list[Tensor | None],
    mask_matched_idxs: list[Tensor],
) -> Tensor:
    """Binary cross-entropy between each RoI's class mask logits and its projected target.

    Args:
        mask_logits: [P, M, M], the logits of each mask RoI for its ground-truth class (already
            gathered: one channel per RoI). P may be 0.
        mask_proposals: per image, [P_i, 4] boxes of the RoIs that carry mask supervision
            (foreground and matched to an instance with a mask); Σ P_i = P.
        gt_masks: per image, [G_i, H, W] instance masks, or None for an image without masks
            (then P_i must be 0).
        mask_matched_idxs: per image, int64 [P_i] index of each RoI's matched instance.
    Returns:
        scalar loss; exactly 0 (with gradient paths intact) when P == 0.
    """
    m = mask_logits.shape[-1]
    targets = [
        project_masks_on_boxes(masks, boxes, idxs, m)
        for masks, boxes, idxs in zip(gt_masks, mask_proposals, mask_matched_idxs, strict=True)
        if boxes.shape[0] > 0 and masks is not None
    ]
    if mask_logits.shape[0] == 0 or not targets:
        # Multiplying keeps every parameter in the graph, which DDP needs on all ranks.
        return mask_logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(mask_logits, torch.cat(targets, dim=0))
