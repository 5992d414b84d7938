"""The export adapter: Mask^X R-CNN inference on plain tensors, batch-agnostic and traceable.

torchvision's detection models loop over the images of a batch in Python, which tracing
unrolls into a graph of fixed batch size, and paste every mask into a full-image canvas. This
adapter computes the same detections with tensor operations over the whole batch (every box
carries its ``batch_index``; per-image NMS is class-and-image-offset NMS; per-image top-k is a
rank computed with a cumulative sum), so the exported graph takes any batch size, and it stops
at box-local mask probabilities.

The mask weights of all K classes are baked: ``W_seg = τ(W_det)`` is computed once here and
stored as a constant ``[K, D]`` (no weight-transfer MLP in the graph).

Contract (docs/contracts.md, "ONNX graph")::

    images       uint8  [B, 3, H, W]  RGB, zero-padded, H and W multiples of 32
    image_sizes  int64  [B, 2]        (height, width) of each image's valid region
    →
    boxes        float32 [N, 4]   x1, y1, x2, y2 in input pixels
    scores       float32 [N]
    labels       int64   [N]      1..K
    batch_index  int64   [N]      detections of one image contiguous, by score descending
    mask_probs   float32 [N, M, M]
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops import boxes as box_ops
from torchvision.ops.poolers import _filter_input, _setup_scales

from model import (
    ClassAgnosticMaskPredictor,
    ClassSpecificMaskPredictor,
    MaskXRCNN,
    WeightTransferMaskPredictor,
)


def baked_mask_weights(model: MaskXRCNN) -> tuple[Tensor, Tensor | None]:
    """Per-class 1×1 mask kernels of every class 1..K: (weight [K', D], bias [K'] or None).

    K' = K for class-specific and transfer predictors, 1 for the class-agnostic one.
    """
    pred = model.roi_heads.mask_predictor
    box = model.roi_heads.box_predictor
    with torch.no_grad():
        if isinstance(pred, WeightTransferMaskPredictor):
            return pred.all_class_kernels(box).clone(), None
        if isinstance(pred, ClassSpecificMaskPredictor):
            w = pred.mask_fcn_logits.weight.flatten(1)[1:].clone()
            return w, pred.mask_fcn_logits.bias[1:].clone()
        if isinstance(pred, ClassAgnosticMaskPredictor):
            return pred.mask_fcn_logits.weight.flatten(1).clone(), pred.mask_fcn_logits.bias.clone()
    raise TypeError(f"cannot export mask predictor {type(pred).__name__}")


def rank_within_group(group: Tensor, num_groups: Tensor | int) -> Tensor:
    """0-based position of each element among the elements of its group, in input order.

    ``group`` int64 [N] with values in [0, num_groups). Traceable (one-hot cumulative sum).
    """
    onehot = (group[:, None] == torch.arange(num_groups, device=group.device)[None, :]).to(
        torch.int64
    )
    return (onehot.cumsum(0) * onehot).sum(1) - 1


def pool_rois(
    pooler: MultiScaleRoIAlign, features: dict[str, Tensor], rois: Tensor, image_hw: tuple[int, int]
) -> Tensor:
    """Multi-scale RoIAlign of rois [N, 5] (batch index, x1, y1, x2, y2) → [N, C, S, S]."""
    x = _filter_input(features, pooler.featmap_names)
    if pooler.scales is None or pooler.map_levels is None:
        pooler.scales, pooler.map_levels = _setup_scales(
            x, [image_hw], pooler.canonical_scale, pooler.canonical_level
        )
    levels = pooler.map_levels([rois[:, 1:]])
    out = torch.zeros(
        (rois.shape[0], x[0].shape[1], *pooler.output_size), dtype=x[0].dtype, device=x[0].device
    )
    for level, (feature, scale) in enumerate(zip(x, pooler.scales, strict=True)):
        idx = torch.where(levels == level)[0]
        pooled = roi_align(
            feature,
            rois[idx],
            output_size=pooler.output_size,
            spatial_scale=scale,
            sampling_ratio=pooler.sampling_ratio,
        )
        index = idx.view(-1, 1, 1, 1).expand(-1, pooled.shape[1], pooled.shape[2], pooled.shape[3])
        out = out.scatter(0, index, pooled)
    return out


def _clip(boxes: Tensor, sizes: Tensor) -> Tensor:
    """Clip boxes [N, 4] to per-box (height, width) sizes [N, 2]."""
    h = sizes[:, 0:1].to(boxes.dtype)
    w = sizes[:, 1:2].to(boxes.dtype)
    zero = torch.zeros_like(h)
    x = torch.min(torch.max(boxes[:, 0::2], zero), w)
    y = torch.min(torch.max(boxes[:, 1::2], zero), h)
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)


class ExportAdapter(nn.Module):
    """Wraps a trained :class:`MaskXRCNN` (in eval mode) for export; see the module docstring."""

    def __init__(self, model: MaskXRCNN, *, fp16_backbone: bool = False) -> None:
        super().__init__()
        if model.training:
            raise ValueError("put the model in eval mode before exporting it")
        self.model = model
        # float16 backbone + FPN (most of the arithmetic); heads and every box computation stay
        # float32: coordinates near 1333 px lose whole pixels in float16, and ONNX Runtime's
        # NonMaxSuppression takes float32 only. A copy, so the caller's model stays float32.
        self.half_backbone = copy.deepcopy(model.backbone).half() if fp16_backbone else None
        rh = model.roi_heads
        t = model.transform
        self.register_buffer("mean", torch.tensor(t.image_mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(t.image_std).view(1, 3, 1, 1) * 255.0)
        weight, bias = baked_mask_weights(model)
        self.register_buffer("mask_weight", weight)  # [K', D]: W_seg baked for every class
        self.register_buffer("mask_bias", bias if bias is not None else torch.zeros(0))
        self.has_bias = bias is not None
        self.class_agnostic = isinstance(rh.mask_predictor, ClassAgnosticMaskPredictor)
        self.num_classes = model.num_classes

    # ---------------------------------------------------------------------------------------
    def forward(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, ...]:
        x = self.normalise(images, image_sizes)
        if self.half_backbone is not None:
            features = {k: v.float() for k, v in self.half_backbone(x.half()).items()}
        else:
            features = self.model.backbone(x)
        proposals, proposal_batch = self.propose(x, features, image_sizes)
        boxes, scores, labels, batch = self.detect(
            features, proposals, proposal_batch, x, image_sizes
        )
        masks = self.masks(features, boxes, labels, batch, x)
        return boxes, scores, labels, batch, masks

    def normalise(self, images: Tensor, image_sizes: Tensor) -> Tensor:
        """uint8 → (x - mean) / std, with the padding set to 0 as torchvision's batching does."""
        x = (images.to(torch.float32) - self.mean) / self.std
        h = torch.arange(x.shape[2], device=x.device)[None, :, None]
        w = torch.arange(x.shape[3], device=x.device)[None, None, :]
        valid = (h < image_sizes[:, 0, None, None]) & (w < image_sizes[:, 1, None, None])
        return x * valid[:, None].to(x.dtype)

    def propose(
        self, x: Tensor, features: dict[str, Tensor], image_sizes: Tensor
    ) -> tuple[Tensor, Tensor]:
        """RPN on the whole batch → proposals [P, 4] and their batch index [P]."""
        rpn = self.model.rpn
        feats = list(features.values())
        objectness, deltas = rpn.head(feats)
        image_list = ImageList(x[:1], [(int(x.shape[-2]), int(x.shape[-1]))])
        anchors = rpn.anchor_generator(image_list, feats)[0]  # [A, 4], same for every image
        num_anchors_per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        b = x.shape[0]
        props = rpn.box_coder.decode_single(
            deltas.detach(), anchors[None].expand(b, -1, -1).reshape(-1, 4)
        ).view(b, -1, 4)
        objectness = objectness.detach().reshape(b, -1)
        levels = torch.cat(
            [torch.full((n,), i, dtype=torch.int64, device=x.device)
             for i, n in enumerate(num_anchors_per_level)]
        )  # fmt: skip
        top = rpn._get_top_n_idx(objectness, num_anchors_per_level)  # [B, T]
        bidx = torch.arange(b, device=x.device)[:, None].expand_as(top)
        scores = objectness.gather(1, top).sigmoid().reshape(-1)
        props = props[bidx, top].reshape(-1, 4)
        lvl = levels[top].reshape(-1)
        bidx = bidx.reshape(-1)
        props = _clip(props, image_sizes[bidx])
        keep = torch.where(
            ((props[:, 2] - props[:, 0]) >= rpn.min_size)
            & ((props[:, 3] - props[:, 1]) >= rpn.min_size)
            & (scores >= rpn.score_thresh)
        )[0]
        props, scores, lvl, bidx = props[keep], scores[keep], lvl[keep], bidx[keep]
        keep = box_ops.batched_nms(
            props, scores, bidx * len(num_anchors_per_level) + lvl, rpn.nms_thresh
        )
        keep = keep[rank_within_group(bidx[keep], b) < rpn.post_nms_top_n()]
        return props[keep], bidx[keep]

    def detect(
        self,
        features: dict[str, Tensor],
        proposals: Tensor,
        batch: Tensor,
        x: Tensor,
        image_sizes: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Box head → candidates → class-specific boxes → NMS per (image, class) → top-N."""
        rh = self.model.roi_heads
        hw = (int(x.shape[-2]), int(x.shape[-1]))
        rois = torch.cat([batch[:, None].to(proposals.dtype), proposals], dim=1)
        feats = rh.box_head(pool_rois(rh.box_roi_pool, features, rois, hw))
        scores = F.softmax(rh.box_predictor.class_logits(feats), -1)[:, 1:]  # [R, K]
        k = scores.shape[1]
        flat = scores.reshape(-1)
        cand = torch.where(flat > rh.score_thresh)[0]
        roi = torch.div(cand, k, rounding_mode="floor")
        if rh.candidates_per_img is not None:
            order = flat[cand].argsort(descending=True)
            cand, roi = cand[order], roi[order]
            keep = rank_within_group(batch[roi], x.shape[0]) < rh.candidates_per_img
            cand, roi = cand[keep], roi[keep]
        labels = cand - roi * k + 1
        cand_scores = flat[cand]
        cand_batch = batch[roi]
        deltas = rh.box_predictor.box_deltas(feats[roi], labels)
        boxes = rh.box_coder.decode_single(deltas, proposals[roi])
        boxes = _clip(boxes, image_sizes[cand_batch])
        keep = torch.where(
            ((boxes[:, 2] - boxes[:, 0]) >= 1e-2) & ((boxes[:, 3] - boxes[:, 1]) >= 1e-2)
        )[0]
        boxes, cand_scores, labels, cand_batch = (
            boxes[keep],
            cand_scores[keep],
            labels[keep],
            cand_batch[keep],
        )
        keep = box_ops.batched_nms(boxes, cand_scores, cand_batch * (k + 1) + labels, rh.nms_thresh)
        keep = keep[rank_within_group(cand_batch[keep], x.shape[0]) < rh.detections_per_img]
        # Group by image, each by score descending (scores are in [0, 1]).
        keep = keep[(cand_batch[keep].to(cand_scores.dtype) * 2.0 - cand_scores[keep]).argsort()]
        return boxes[keep], cand_scores[keep], labels[keep], cand_batch[keep]

    def masks(
        self, features: dict[str, Tensor], boxes: Tensor, labels: Tensor, batch: Tensor, x: Tensor
    ) -> Tensor:
        """Box-local mask probabilities [N, M, M] of each detection's class."""
        rh = self.model.roi_heads
        pred = rh.mask_predictor
        hw = (int(x.shape[-2]), int(x.shape[-1]))
        rois = torch.cat([batch[:, None].to(boxes.dtype), boxes], dim=1)
        m = pred.mask_features(rh.mask_head(pool_rois(rh.mask_roi_pool, features, rois, hw)))
        index = torch.zeros_like(labels) if self.class_agnostic else labels - 1
        weight = self.mask_weight[index]
        bias = self.mask_bias[index] if self.has_bias else None
        return pred.logits_from_features(m, weight, bias).sigmoid()
