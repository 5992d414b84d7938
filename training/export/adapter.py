"""The export adapter: Mask^X R-CNN inference on plain tensors, batch-agnostic and traceable.

torchvision's detection models loop over the images of a batch in Python, which tracing
unrolls into a graph of fixed batch size, and paste every mask into a full-image canvas. This
adapter runs the model's own batch-wide post-processing functions (:mod:`model.postprocess`,
:meth:`model.pooling.MaskXRoIAlign.pool`: every box carries its ``batch_index``), so the
exported graph takes any batch size and follows the model's conventions
(``anchor_style``, ``box_convention``, ``rpn_min_size``, ``clip_proposals_to_padded``) as
eager inference does, and it stops at box-local mask probabilities.

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
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import concat_box_prediction_layers

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
        """RPN on the whole batch → proposals [P, 4] and their batch index [P]
        (:meth:`model.rpn.MaskXRPN.select`, as the eager RPN)."""
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
        valid = rpn.anchor_valid(feats, image_sizes, (int(x.shape[-2]), int(x.shape[-1])))
        boxes, _, batch = rpn.select(props, objectness, image_sizes, num_anchors_per_level, valid)
        return boxes, batch

    def detect(
        self,
        features: dict[str, Tensor],
        proposals: Tensor,
        batch: Tensor,
        x: Tensor,
        image_sizes: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Box head → :meth:`model.roi_heads.MaskXRoIHeads.select_detections`, as eager."""
        rh = self.model.roi_heads
        hw = [(int(x.shape[-2]), int(x.shape[-1]))]
        rois = torch.cat([batch[:, None].to(proposals.dtype), proposals], dim=1)
        feats = rh.box_head(rh.box_roi_pool.pool(features, rois, hw))
        return rh.select_detections(
            rh.box_predictor.class_logits(feats), feats, proposals, batch, image_sizes
        )

    def masks(
        self, features: dict[str, Tensor], boxes: Tensor, labels: Tensor, batch: Tensor, x: Tensor
    ) -> Tensor:
        """Box-local mask probabilities [N, M, M] of each detection's class."""
        rh = self.model.roi_heads
        pred = rh.mask_predictor
        hw = [(int(x.shape[-2]), int(x.shape[-1]))]
        rois = torch.cat([batch[:, None].to(boxes.dtype), boxes], dim=1)
        m = pred.mask_features(rh.mask_head(rh.mask_roi_pool.pool(features, rois, hw)))
        index = torch.zeros_like(labels) if self.class_agnostic else labels - 1
        weight = self.mask_weight[index]
        bias = self.mask_bias[index] if self.has_bias else None
        return pred.logits_from_features(m, weight, bias).sigmoid()
