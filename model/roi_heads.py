"""RoI heads for Mask^X R-CNN: torchvision's ``RoIHeads`` with partial mask supervision and a
mask branch whose cost does not grow with the number of classes K.

Differences from torchvision, all deliberate:

* targets may carry masks for some instances only (``has_mask``) or none at all;
* the mask loss uses only foreground RoIs matched to instances with masks (``partial_mask_loss``),
  or, with ``mask_train_rois="gt"`` (Deep-MARC), only the ground-truth boxes of those instances;
* the mask predictor computes only each RoI's own class channel, and the box predictor regresses
  only the needed class (training: ground truth; inference: the candidates that pass the score
  threshold), so neither ``[N, K, M, M]`` nor ``[R, 4(K+1)]`` is ever built;
* inference caps the (RoI, class) candidates entering NMS (``candidates_per_img``): at K=3000
  and a low threshold there can be millions, and NMS is quadratic in them.
* inference post-processing is :func:`model.postprocess.select_detections`, the function the
  ONNX export runs, with a box convention (torchvision's or Detectron's "+1", see
  docs/detectron_conventions.md).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads

from .boxes import CONTINUOUS, check_box_convention, jitter_boxes
from .config import MASK_TRAIN_ROIS
from .losses import box_losses, partial_mask_loss
from .postprocess import select_detections
from .predictors import ClassSpecificBoxPredictor, MaskPredictor


class MaskXRoIHeads(RoIHeads):
    """Box and mask heads with partial supervision.

    Constructed like torchvision's ``RoIHeads`` (plus ``candidates_per_img`` and
    ``box_convention``, see :func:`model.postprocess.select_detections`, and
    ``mask_train_rois``: ``proposals``, Mask R-CNN's foreground proposals matched to an
    instance with a mask, or ``gt``, the ground-truth boxes of the instances with a mask, as
    Deep-MARC trains its mask head); requires a
    :class:`ClassSpecificBoxPredictor` and a :class:`MaskPredictor`. The RoI poolers carry their
    own box convention (:class:`model.pooling.MaskXRoIAlign`).

    Training returns ``{loss_classifier, loss_box_reg, loss_mask}``; inference returns per image
    ``boxes`` [N, 4], ``labels`` int64 [N], ``scores`` [N] and ``masks`` [N, 1, M, M]
    (box-local probabilities of each detection's class; the transform pastes them).
    """

    box_predictor: ClassSpecificBoxPredictor
    mask_predictor: MaskPredictor

    def __init__(
        self,
        *args,
        candidates_per_img: int | None = None,
        box_convention: str = CONTINUOUS,
        mask_train_rois: str = "proposals",
        mask_gt_jitter: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        check_box_convention(box_convention)
        if mask_train_rois not in MASK_TRAIN_ROIS:
            raise ValueError(
                f"mask_train_rois must be one of {list(MASK_TRAIN_ROIS)}, got {mask_train_rois!r}"
            )
        self.mask_train_rois = mask_train_rois
        self.mask_gt_jitter = float(mask_gt_jitter)
        if not isinstance(self.box_predictor, ClassSpecificBoxPredictor):
            raise TypeError(
                "box_predictor must be a ClassSpecificBoxPredictor, "
                f"got {type(self.box_predictor).__name__}"
            )
        if not isinstance(self.mask_predictor, MaskPredictor):
            raise TypeError(
                f"mask_predictor must be a MaskPredictor, got {type(self.mask_predictor).__name__}"
            )
        self.candidates_per_img = candidates_per_img
        self.box_convention = box_convention

    # ------------------------------------------------------------------------------ training
    def check_targets(self, targets: list[dict[str, Tensor]] | None) -> None:
        if targets is None:
            raise ValueError("targets should not be None in training")
        for i, t in enumerate(targets):
            for key in ("boxes", "labels"):
                if key not in t:
                    raise ValueError(f"targets[{i}] has no {key!r} key")
            if not t["boxes"].is_floating_point():
                raise TypeError(f"targets[{i}]['boxes'] must be float, got {t['boxes'].dtype}")
            if t["labels"].dtype != torch.int64:
                raise TypeError(f"targets[{i}]['labels'] must be int64, got {t['labels'].dtype}")

    @staticmethod
    def instance_has_mask(target: dict[str, Tensor]) -> Tensor:
        """bool [G]: which instances of a target carry mask supervision (see docs/contracts.md)."""
        n = target["labels"].shape[0]
        device = target["labels"].device
        if "masks" not in target:
            return torch.zeros(n, dtype=torch.bool, device=device)
        if "has_mask" not in target:
            return torch.ones(n, dtype=torch.bool, device=device)
        return target["has_mask"].to(device=device, dtype=torch.bool)

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training:
            return [], self._forward_train(features, proposals, image_shapes, targets)
        return self._forward_inference(features, proposals, image_shapes), {}

    def _forward_train(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None,
    ) -> dict[str, Tensor]:
        self.check_targets(targets)
        assert targets is not None
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(
            proposals, targets
        )
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits = self.box_predictor.class_logits(box_features)
        all_labels = torch.cat(labels)
        pos = torch.where(all_labels > 0)[0]
        pos_deltas = self.box_predictor.box_deltas(box_features[pos], all_labels[pos])
        loss_classifier, loss_box_reg = box_losses(
            class_logits, pos_deltas, all_labels, torch.cat(regression_targets)
        )

        if self.mask_train_rois == "gt":
            mask_proposals, mask_matched_idxs, mask_labels, gt_masks = self.gt_mask_rois(
                targets, image_shapes
            )
        else:
            mask_proposals, mask_matched_idxs, mask_labels, gt_masks = self.proposal_mask_rois(
                proposals, matched_idxs, labels, targets
            )
        mask_features = self.mask_head(self.mask_roi_pool(features, mask_proposals, image_shapes))
        mask_logits = self.mask_predictor(mask_features, torch.cat(mask_labels), self.box_predictor)
        loss_mask = partial_mask_loss(mask_logits, mask_proposals, gt_masks, mask_matched_idxs)
        return {
            "loss_classifier": loss_classifier,
            "loss_box_reg": loss_box_reg,
            "loss_mask": loss_mask,
        }

    def gt_mask_rois(
        self,
        targets: list[dict[str, Tensor]],
        image_shapes: list[tuple[int, int]] | None = None,
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor | None]]:
        """Mask RoIs of ``mask_train_rois="gt"``: per image, the ground-truth boxes [P_i, 4] of
        the instances with a mask (jittered in training when ``mask_gt_jitter`` > 0, clipped
        to ``image_shapes``' (h, w)), their instance indices int64 [P_i], their labels int64
        [P_i] and the image's masks (or None). No proposal enters the mask loss."""
        rois, idxs, labels, masks = [], [], [], []
        for i, target in enumerate(targets):
            keep = torch.where(self.instance_has_mask(target))[0]
            boxes = target["boxes"][keep]
            if self.training and self.mask_gt_jitter > 0:
                if image_shapes is None:
                    raise ValueError("mask_gt_jitter needs the image sizes to clip the boxes")
                boxes = jitter_boxes(boxes, self.mask_gt_jitter, image_shapes[i])
            rois.append(boxes)
            idxs.append(keep)
            labels.append(target["labels"][keep])
            masks.append(target.get("masks"))
        return rois, idxs, labels, masks

    def proposal_mask_rois(
        self,
        proposals: list[Tensor],
        matched_idxs: list[Tensor],
        labels: list[Tensor],
        targets: list[dict[str, Tensor]],
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor | None]]:
        """Mask RoIs of ``mask_train_rois="proposals"`` (Mask R-CNN): the sampled foreground
        proposals whose matched instance has a mask; same return as :meth:`gt_mask_rois`."""
        mask_proposals, mask_matched_idxs, mask_labels, gt_masks = [], [], [], []
        for props, idxs, labs, target in zip(proposals, matched_idxs, labels, targets, strict=True):
            has_mask = self.instance_has_mask(target)
            # An image without instances has has_mask of length 0 and every RoI is background.
            keep = (
                (labs > 0) & has_mask[idxs] if has_mask.numel() > 0 else torch.zeros_like(labs > 0)
            )
            keep = torch.where(keep)[0]
            mask_proposals.append(props[keep])
            mask_matched_idxs.append(idxs[keep])
            mask_labels.append(labs[keep])
            gt_masks.append(target.get("masks"))
        return mask_proposals, mask_matched_idxs, mask_labels, gt_masks

    # ----------------------------------------------------------------------------- inference
    def _forward_inference(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits = self.box_predictor.class_logits(box_features)
        boxes, scores, labels = self.postprocess_detections(
            class_logits, box_features, proposals, image_shapes
        )
        result = [
            {"boxes": b, "labels": lab, "scores": s}
            for b, s, lab in zip(boxes, scores, labels, strict=True)
        ]
        mask_probs = self.predict_masks(features, boxes, labels, image_shapes)
        for r, m in zip(result, mask_probs, strict=True):
            r["masks"] = m[:, None]
        return result

    def predict_masks(
        self,
        features: dict[str, Tensor],
        boxes: list[Tensor],
        labels: list[Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> list[Tensor]:
        """Box-local mask probabilities [N_i, M, M] of each detection's class, per image."""
        mask_features = self.mask_head(self.mask_roi_pool(features, boxes, image_shapes))
        logits = self.mask_predictor(mask_features, torch.cat(labels), self.box_predictor)
        return list(logits.sigmoid().split([len(b) for b in boxes]))

    def select_detections(
        self,
        class_logits: Tensor,
        box_features: Tensor,
        proposals: Tensor,
        proposal_batch: Tensor,
        image_sizes: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """:func:`model.postprocess.select_detections` with these heads' settings (the eager
        inference below runs it per image, the export adapter batch-wide)."""
        return select_detections(
            class_logits,
            box_features,
            proposals,
            proposal_batch,
            image_sizes,
            box_deltas=self.box_predictor.box_deltas,
            box_coder=self.box_coder,
            score_thresh=self.score_thresh,
            nms_thresh=self.nms_thresh,
            detections_per_img=self.detections_per_img,
            candidates_per_img=self.candidates_per_img,
            box_convention=self.box_convention,
        )

    def postprocess_detections(  # type: ignore[override]
        self,
        class_logits: Tensor,
        box_features: Tensor,
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Scores → candidates → class-specific boxes → per-class NMS → top detections, by
        :func:`model.postprocess.select_detections` (the function the ONNX export runs).

        Same result as torchvision's ``postprocess_detections`` when ``candidates_per_img`` is
        None and the box convention continuous (up to float rounding), but box deltas are
        computed only for candidates.

        Args:
            class_logits: [R, K+1] for all RoIs of the batch.
            box_features: [R, D] box-head features of the same RoIs.
            proposals: per image, [R_i, 4].
            image_shapes: per image, (H, W) of the resized image.
        Returns:
            per image: boxes [N, 4], scores [N], labels int64 [N] (1..K), N ≤ detections_per_img.
        """
        per_image = [p.shape[0] for p in proposals]
        sizes = torch.as_tensor(image_shapes, dtype=torch.int64, device=class_logits.device)
        all_boxes, all_scores, all_labels = [], [], []
        # One image at a time: NMS groups then hold one image's classes, as in torchvision.
        for i, (logits, feats, props) in enumerate(
            zip(
                class_logits.split(per_image), box_features.split(per_image), proposals, strict=True
            )
        ):
            boxes, scores, labels, _ = self.select_detections(
                logits,
                feats,
                props,
                torch.zeros(props.shape[0], dtype=torch.int64, device=props.device),
                sizes[i : i + 1],
            )
            all_boxes.append(boxes)
            all_scores.append(scores)
            all_labels.append(labels)
        return all_boxes, all_scores, all_labels
