"""Mask^X R-CNN: torchvision's Mask R-CNN with a weight-transfer mask predictor.

``MaskXRCNN`` composes injected modules, as torchvision's ``MaskRCNN`` does; configuration
stops at :func:`build_model`, which turns a :class:`ModelConfig` into one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNN

from .anchors import DetectronAnchorGenerator
from .backbones import build_backbone
from .boxes import CONTINUOUS
from .config import ConfigError, ModelConfig
from .mask_heads import build_mask_head
from .pooling import MaskXRoIAlign
from .predictors import (
    ClassAgnosticMaskPredictor,
    ClassSpecificBoxPredictor,
    ClassSpecificMaskPredictor,
    MaskPredictor,
    MLPMaskBranch,
    WeightTransferMaskPredictor,
    embedding_dim,
)
from .roi_heads import MaskXRoIHeads
from .rpn import MaskXRPN

FPN_STRIDES = (4, 8, 16, 32, 64)
"""Strides of the FPN levels '0'..'3' and 'pool' of the ResNet and tiny backbones (P2..P6)."""


class MaskXRCNN(MaskRCNN):
    """Mask R-CNN whose mask branch can segment classes that had no mask supervision.

    Args:
        backbone: a module with ``out_channels`` returning an ordered dict of feature maps.
        box_predictor: :class:`ClassSpecificBoxPredictor` with K+1 outputs.
        mask_predictor: a :class:`MaskPredictor` (class-specific, class-agnostic or transfer).
        candidates_per_img: cap on (RoI, class) candidates entering NMS at inference.
        box_convention: ``continuous`` or Detectron's ``legacy`` "+1" boxes, for proposal and
            detection clipping and the detection small-box filter (see :mod:`model.boxes`;
            the RoI poolers carry their own, :class:`model.pooling.MaskXRoIAlign`).
        rpn_min_size: the RPN drops proposals narrower or lower than this (input pixels).
        clip_proposals_to_padded: clip proposals to the padded image (Detectron), not the
            valid region.
        mask_train_rois: ``proposals`` or ``gt``, the RoIs of the mask loss
            (``mask_gt_jitter``: how far ``gt`` boxes are jittered in training)
            (:class:`MaskXRoIHeads`).
        **kwargs: every other ``torchvision.models.detection.MaskRCNN`` argument.

    Inputs (as torchvision): ``images`` a list of float [3, H, W] in 0..1; in training,
    ``targets`` a list of dicts with ``boxes`` float [G, 4] (x1, y1, x2, y2), ``labels`` int64
    [G] in 1..K and, optionally, ``masks`` uint8 [G, H, W] and ``has_mask`` bool [G] (instances of
    classes outside the mask set A have ``has_mask=False``; see docs/contracts.md).

    Returns: in training, ``{loss_objectness, loss_rpn_box_reg, loss_classifier, loss_box_reg,
    loss_mask}``; in eval, per image ``boxes`` [N, 4] in input-image pixels, ``labels`` int64
    [N], ``scores`` [N], ``masks`` float [N, 1, H, W] probabilities pasted into the image.
    Boxes are continuous (x1, y1, x2, y2) with either box convention: a Detectron legacy box
    (x1, y1, x2, y2) comes out as (x1, y1, x2 + 1, y2 + 1).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        box_predictor: ClassSpecificBoxPredictor,
        mask_predictor: MaskPredictor,
        candidates_per_img: int | None = None,
        box_convention: str = CONTINUOUS,
        rpn_min_size: float = 1e-3,
        clip_proposals_to_padded: bool = False,
        mask_train_rois: str = "proposals",
        mask_gt_jitter: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            backbone,
            num_classes=None,
            box_predictor=box_predictor,
            mask_predictor=mask_predictor,
            **kwargs,
        )
        old = self.roi_heads
        heads = MaskXRoIHeads(
            old.box_roi_pool,
            old.box_head,
            old.box_predictor,
            old.proposal_matcher.high_threshold,
            old.proposal_matcher.low_threshold,
            old.fg_bg_sampler.batch_size_per_image,
            old.fg_bg_sampler.positive_fraction,
            old.box_coder.weights,
            old.score_thresh,
            old.nms_thresh,
            old.detections_per_img,
            mask_roi_pool=old.mask_roi_pool,
            mask_head=old.mask_head,
            mask_predictor=old.mask_predictor,
            candidates_per_img=candidates_per_img,
            box_convention=box_convention,
            mask_train_rois=mask_train_rois,
            mask_gt_jitter=mask_gt_jitter,
        )
        self.roi_heads = heads
        rpn = self.rpn
        self.rpn = MaskXRPN(
            rpn.anchor_generator,
            rpn.head,
            rpn.proposal_matcher.high_threshold,
            rpn.proposal_matcher.low_threshold,
            rpn.fg_bg_sampler.batch_size_per_image,
            rpn.fg_bg_sampler.positive_fraction,
            rpn._pre_nms_top_n,
            rpn._post_nms_top_n,
            rpn.nms_thresh,
            rpn.score_thresh,
            min_size=rpn_min_size,
            box_convention=box_convention,
            clip_to_padded=clip_proposals_to_padded,
            size_divisible=self.transform.size_divisible,
        )

    @property
    def num_classes(self) -> int:
        """K (background excluded)."""
        return self.roi_heads.box_predictor.num_classes - 1


def build_mask_predictor(
    cfg: ModelConfig, *, class_vectors: torch.Tensor | None = None
) -> MaskPredictor:
    """The mask predictor chosen by ``cfg.mask_predictor`` (with the MLP branch if enabled).

    ``class_vectors`` [K+1, E]: τ's fixed inputs of the ``random``/``attribute`` controls when
    they are at hand (a checkpoint's saved buffer), so that ``cfg.class_vectors`` is not read.
    """
    d = cfg.mask_head_dim
    mlp = MLPMaskBranch(d, cfg.mlp_input_size, cfg.mask_resolution) if cfg.mlp else None
    if cfg.mask_predictor == "class_specific":
        return ClassSpecificMaskPredictor(d, d, cfg.num_classes + 1, mlp=mlp)
    if cfg.mask_predictor == "class_agnostic":
        return ClassAgnosticMaskPredictor(d, d, mlp=mlp)
    return WeightTransferMaskPredictor(
        d,
        d,
        cfg.box_head_dim,
        transfer_input=cfg.transfer_input,
        num_layers=cfg.transfer_layers,
        hidden=cfg.transfer_hidden,
        activation=cfg.transfer_activation,
        stop_gradient=cfg.stop_gradient,
        mlp=mlp,
        class_vectors=class_vectors if class_vectors is not None else fixed_class_vectors(cfg),
    )


def fixed_class_vectors(cfg: ModelConfig) -> torch.Tensor | None:
    """τ's fixed per-class input for the ``random`` and ``attribute`` controls, [K+1, E].

    ``random``: N(0, 1/E) per class from torch's global generator (so the training seed
    chooses them; they are saved in the state dict), E = ``class_vectors_dim`` or w_det's
    cls+box width. ``attribute``: the rows of ``cfg.class_vectors`` (a JSON list of K vectors
    in category-id order, e.g. ``class_attributes.json`` of ``maskx synth``). Row 0
    (background) is zero. None for the other inputs.
    """
    if cfg.transfer_input == "random":
        dim = cfg.class_vectors_dim or embedding_dim("cls+box", cfg.box_head_dim)
        vectors = torch.randn(cfg.num_classes, dim) / dim**0.5
    elif cfg.transfer_input == "attribute":
        if not cfg.class_vectors:
            raise ConfigError("transfer_input='attribute' needs model.class_vectors (a JSON file)")
        path = Path(cfg.class_vectors)
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"model.class_vectors {str(path)!r} cannot be read: {exc}") from exc
        if isinstance(rows, dict):
            rows = rows.get("vectors")
        vectors = torch.tensor(rows, dtype=torch.float32) if rows else torch.zeros(0)
        if vectors.ndim != 2 or vectors.shape[0] != cfg.num_classes:
            raise ConfigError(
                f"model.class_vectors {str(path)!r} must hold {cfg.num_classes} vectors (one per "
                f"class, category-id order), got shape {tuple(vectors.shape)}"
            )
    else:
        return None
    return torch.cat([torch.zeros(1, vectors.shape[1]), vectors])


def mask_rcnn_arguments(cfg: ModelConfig, *, backbone_weights: str | None = None) -> dict[str, Any]:
    """The arguments of torchvision's ``MaskRCNN`` that ``cfg`` describes: the backbone, the
    transform's sizes and normalisation, the RPN (anchors of ``cfg.anchor_style``), the RoI
    pools (in ``cfg.box_convention``), and the box and mask *heads* (the mask head of
    ``cfg.mask_head_arch``, :func:`model.mask_heads.build_mask_head`).

    The predictors are the caller's: :func:`build_model` adds the Mask^X ones, a benchmark or a
    parity test adds torchvision's ``FastRCNNPredictor``/``MaskRCNNPredictor`` to the very same
    modules. ``backbone_weights`` overrides ``cfg.backbone_weights`` (a local state-dict file).
    """
    cfg.validate()
    backbone = build_backbone(
        cfg.backbone,
        weights=backbone_weights or cfg.backbone_weights,
        trainable_layers=cfg.trainable_backbone_layers,
        norm=cfg.norm,
        fpn_channels=cfg.fpn_channels,
        tiny_widths=cfg.tiny_widths,
        stride_in_1x1=cfg.stride_in_1x1,
        resnet_width=cfg.resnet_width,
        resnet_blocks=cfg.resnet_blocks,
    )
    levels = 5  # FPN '0'..'3' + 'pool'
    anchor_sizes = tuple((s,) for s in cfg.anchor_sizes)
    if len(anchor_sizes) != levels:
        raise ValueError(
            f"anchor_sizes needs {levels} values (one per FPN level), got {list(cfg.anchor_sizes)}"
        )
    ratios = (tuple(cfg.aspect_ratios),) * levels
    if cfg.anchor_style == "detectron":
        # The ResNet and tiny trunks give FPN levels P2..P6, Detectron's strides 2**level.
        strides = None if cfg.backbone == "mobilenet_v3" else FPN_STRIDES
        anchor_generator = DetectronAnchorGenerator(anchor_sizes, ratios, strides)
    else:
        anchor_generator = AnchorGenerator(anchor_sizes, ratios)
    c = backbone.out_channels
    names = ["0", "1", "2", "3"]
    return {
        "backbone": backbone,
        "min_size": cfg.min_size,
        "max_size": cfg.max_size,
        "size_divisible": cfg.size_divisible,
        "image_mean": list(cfg.image_mean),
        "image_std": list(cfg.image_std),
        "rpn_anchor_generator": anchor_generator,
        "rpn_pre_nms_top_n_train": cfg.rpn_pre_nms_top_n_train,
        "rpn_pre_nms_top_n_test": cfg.rpn_pre_nms_top_n_test,
        "rpn_post_nms_top_n_train": cfg.rpn_post_nms_top_n_train,
        "rpn_post_nms_top_n_test": cfg.rpn_post_nms_top_n_test,
        "rpn_nms_thresh": cfg.rpn_nms_thresh,
        "rpn_batch_size_per_image": cfg.rpn_batch_size_per_image,
        "box_roi_pool": MaskXRoIAlign(names, 7, 2, box_convention=cfg.box_convention),
        "box_head": TwoMLPHead(c * 7 * 7, cfg.box_head_dim),
        "box_score_thresh": cfg.box_score_thresh,
        "box_nms_thresh": cfg.box_nms_thresh,
        "box_detections_per_img": cfg.box_detections_per_img,
        "box_batch_size_per_image": cfg.box_batch_size_per_image,
        "box_positive_fraction": cfg.box_positive_fraction,
        "mask_roi_pool": MaskXRoIAlign(names, 14, 2, box_convention=cfg.box_convention),
        "mask_head": build_mask_head(cfg, c),
    }


def build_model(
    cfg: ModelConfig,
    *,
    backbone_weights: str | None = None,
    class_vectors: torch.Tensor | None = None,
) -> MaskXRCNN:
    """Build a Mask^X R-CNN from a config: :func:`mask_rcnn_arguments` plus the class-specific
    box predictor, the mask predictor ``cfg.mask_predictor`` names, the candidate cap and the
    inference conventions (``box_convention``, ``rpn_min_size``, ``clip_proposals_to_padded``)
    and the RoIs of the mask loss (``mask_train_rois``).

    Args:
        cfg: the model configuration (validated on construction).
        backbone_weights: overrides ``cfg.backbone_weights`` (a local state-dict file).
        class_vectors: τ's fixed inputs [K+1, E] for the controls, instead of reading
            ``cfg.class_vectors`` (:func:`build_mask_predictor`).
    """
    return MaskXRCNN(
        box_predictor=ClassSpecificBoxPredictor(
            cfg.box_head_dim, cfg.num_classes + 1, init=cfg.head_init
        ),
        mask_predictor=build_mask_predictor(cfg, class_vectors=class_vectors),
        candidates_per_img=cfg.box_candidates_per_img,
        box_convention=cfg.box_convention,
        rpn_min_size=cfg.rpn_min_size,
        clip_proposals_to_padded=cfg.clip_proposals_to_padded,
        mask_train_rois=cfg.mask_train_rois,
        mask_gt_jitter=cfg.mask_gt_jitter,
        **mask_rcnn_arguments(cfg, backbone_weights=backbone_weights),
    )
