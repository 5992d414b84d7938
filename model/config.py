"""Model configuration: one typed dataclass that round-trips through a plain dict.

The config is what checkpoints and ONNX metadata carry to rebuild a model; it stops at
:func:`model.build_model`, the model classes themselves never see it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

BACKBONES = ("resnet50", "resnet101", "resnet18", "mobilenet_v3", "tiny")
MASK_PREDICTORS = ("transfer", "class_agnostic", "class_specific")
TRANSFER_INPUTS = ("cls", "box", "cls+box", "random", "attribute")
HEAD_INITS = ("paper", "torch")
TRANSFER_ACTIVATIONS = ("leaky_relu", "relu")
NORMS = ("frozen_bn", "bn", "sync_bn")
ANCHOR_STYLES = ("torchvision", "detectron")
BOX_CONVENTIONS = ("continuous", "legacy")
RESIZE_RULES = ("floor", "detectron")
MASK_PASTES = ("maskx", "detectron")
MASK_TRAIN_ROIS = ("proposals", "gt")
MASK_HEAD_ARCHS = ("fcn", "resnet")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the allowed values."""


@dataclass
class ModelConfig:
    """Everything needed to build a Mask^X R-CNN model (no data paths, no training knobs).

    Defaults are the paper's R-50-FPN settings with the Mask^X predictor
    (``cls+box`` detection embedding, 2-layer LeakyReLU transfer, stop-gradient on).
    """

    num_classes: int = 80
    """K, the number of object classes (background excluded); model labels are 1..K."""

    # --- backbone -------------------------------------------------------------------------
    backbone: str = "resnet50"
    backbone_weights: str | None = None
    """Path of a local ``.pth`` state dict for the backbone trunk (never downloaded)."""
    trainable_backbone_layers: int | None = None
    """Backbone stages left trainable (0..5); default 3 with weights, 5 from scratch."""
    norm: str | None = None
    """``frozen_bn`` or ``bn``; default frozen with weights (torchvision's rule), bn otherwise."""
    fpn_channels: int = 256
    tiny_widths: tuple[int, ...] = (32, 64, 96, 128)
    """Stage widths of the ``tiny`` backbone (a small ResNet-like trunk for CPU work)."""
    stride_in_1x1: bool = False
    """ResNet-50/101: put each stage's stride 2 on the first bottleneck's 1×1 conv (``conv1``)
    instead of the 3×3 (``conv2``), as the original MSRA ResNet and Detectron (``STRIDE_1X1``)
    do; the projection shortcut keeps its stride 2 either way. False is torchvision's layout."""
    resnet_width: int = 64
    """ResNet stem width; stage widths are ×1, ×2, ×4, ×8 of it (bottleneck outputs ×4 more).
    64 is the standard ResNet; smaller values build small ResNets with the same layer names."""
    resnet_blocks: tuple[int, ...] | None = None
    """Blocks per ResNet stage (4 values); None: the depth's own ((3, 4, 6, 3) for resnet50,
    (3, 4, 23, 3) for resnet101, (2, 2, 2, 2) for resnet18)."""

    # --- input scale ------------------------------------------------------------------------
    min_size: int = 800
    max_size: int = 1333
    image_mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    image_std: tuple[float, ...] = (0.229, 0.224, 0.225)
    size_divisible: int = 32

    # --- RPN ----------------------------------------------------------------------------------
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    rpn_batch_size_per_image: int = 256
    rpn_nms_thresh: float = 0.7

    # --- box branch ---------------------------------------------------------------------------
    box_head_dim: int = 1024
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100
    box_candidates_per_img: int | None = 1000
    """Cap on (RoI, class) candidates entering NMS per image; ``None`` keeps all (torchvision)."""
    head_init: str = "paper"
    """``paper``: ``cls_score`` N(0, 0.01), ``bbox_pred`` N(0, 0.001), biases 0 (the authors'
    Detectron code); ``torch``: PyTorch's default Linear init (earlier versions)."""

    # --- inference conventions (docs/detectron_conventions.md) -----------------------------
    anchor_style: str = "torchvision"
    """``torchvision``: anchors centred on ``stride * i``, sides rounded per anchor;
    ``detectron``: Detectron's quantised anchors (``generate_anchors``), centred on
    ``stride * i + (stride - 1) / 2``, one stride of 2**level per FPN level."""
    box_convention: str = "continuous"
    """``continuous`` (torchvision) or ``legacy`` (Detectron's "+1" boxes, where a legacy
    (x1, y1, x2, y2) is the continuous (x1, y1, x2 + 1, y2 + 1)): clipping to [0, W - 1],
    RoIAlign fed the inclusive corner, FPN level mapping as ``map_rois_to_fpn_levels``, no
    small-box filter on detections. Boxes inside and out of the model stay continuous."""
    rpn_min_size: float = 1e-3
    """Proposals narrower or lower than this (input pixels) are dropped; 1e-3 is torchvision's
    fixed value, Detectron's ``RPN_MIN_SIZE`` is 0."""
    clip_proposals_to_padded: bool = False
    """Clip proposals to the image padded to ``size_divisible`` (Detectron's ``im_info`` is the
    padded blob's shape) instead of its valid region; final boxes are clipped to the image."""
    resize_rule: str = "floor"
    """How the service resizes an image for this model (``floor`` or ``detectron``)."""
    mask_paste: str = "maskx"
    """How the service pastes box-local masks for this model (``maskx`` or ``detectron``)."""

    # --- mask branch --------------------------------------------------------------------------
    mask_head_dim: int = 256
    """Width of the mask head (channels of every layer; ``resnet``: of every block)."""
    mask_head_layers: int = 4
    """3×3 convs of the mask head (``fcn``: that many conv + ReLU layers; ``resnet``: that many
    convs in basic residual blocks of two, so an even number)."""
    mask_head_arch: str = "fcn"
    """``fcn``: Mask R-CNN's stack of 3×3 convs (torchvision's ``MaskRCNNHeads``); ``resnet``: a
    1×1 input projection and ``mask_head_layers / 2`` basic residual blocks (Deep-MARC's
    ``resnetN`` mask networks, GroupNorm instead of BatchNorm)."""
    mask_train_rois: str = "proposals"
    """RoIs the mask loss is computed on: ``proposals`` (Mask R-CNN: foreground proposals matched
    to an instance with a mask) or ``gt`` (Deep-MARC: the ground-truth boxes of the instances
    with a mask, and nothing else). Inference always uses the detections."""
    mask_gt_jitter: float = 0.0
    """With ``mask_train_rois=gt``: in training, each side of a ground-truth box moves from the
    box's centre to ``(1 + u) / 2`` of the box's extent, ``u`` uniform in ``[-r, r]`` per side
    and box, then the box is clipped to the image (Deep-MARC's ``max_roi_jitter_ratio`` with
    ``jitter_mode: default``; 0, their default, leaves the boxes as they are). The mask target
    is cropped with the same jittered box."""
    mask_predictor: str = "transfer"
    transfer_input: str = "cls+box"
    """τ's input: w_det (``cls``, ``box``, ``cls+box``) or, as controls, a fixed ``random``
    vector per class or an ``attribute`` vector per class read from ``class_vectors``."""
    class_vectors: str | None = None
    """JSON file of K per-class vectors (category-id order) for ``transfer_input=attribute``;
    the vectors are saved in the checkpoint's state dict as well."""
    class_vectors_dim: int = 0
    """Width of the ``random`` control's vectors (0: w_det's cls+box width)."""
    transfer_layers: int = 2
    transfer_hidden: int = 256
    transfer_activation: str = "leaky_relu"
    stop_gradient: bool = True
    mlp: bool = False
    """Fuse the class-agnostic MLP mask branch (added to every class's FCN logits)."""
    mlp_input_size: int = 28
    """Spatial size the MLP reads (the 28×28 deconv map is average-pooled to this size; a
    divisor of 28)."""

    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes carried along (e.g. the model name); not used to build."""

    def __post_init__(self) -> None:
        self.validate()

    # -------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field."""
        _choice("backbone", self.backbone, BACKBONES)
        _choice("mask_predictor", self.mask_predictor, MASK_PREDICTORS)
        _choice("transfer_input", self.transfer_input, TRANSFER_INPUTS)
        _choice("transfer_activation", self.transfer_activation, TRANSFER_ACTIVATIONS)
        _choice("head_init", self.head_init, HEAD_INITS)
        if self.norm is not None:
            _choice("norm", self.norm, NORMS)
        _choice("anchor_style", self.anchor_style, ANCHOR_STYLES)
        _choice("box_convention", self.box_convention, BOX_CONVENTIONS)
        _choice("resize_rule", self.resize_rule, RESIZE_RULES)
        _choice("mask_paste", self.mask_paste, MASK_PASTES)
        _choice("mask_head_arch", self.mask_head_arch, MASK_HEAD_ARCHS)
        _choice("mask_train_rois", self.mask_train_rois, MASK_TRAIN_ROIS)
        if self.mask_head_arch == "resnet" and (
            not isinstance(self.mask_head_layers, int)
            or self.mask_head_layers < 2
            or self.mask_head_layers % 2
        ):
            raise ConfigError(
                "mask_head_arch='resnet' builds blocks of two 3x3 convs: mask_head_layers must "
                f"be an even integer >= 2, got {self.mask_head_layers!r}"
            )
        jitter = self.mask_gt_jitter
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter < 1:
            raise ConfigError(f"mask_gt_jitter must be a number in [0, 1), got {jitter!r}")
        if jitter > 0 and self.mask_train_rois != "gt":
            raise ConfigError(
                f"mask_gt_jitter={jitter} moves ground-truth mask RoIs: it needs "
                f"mask_train_rois='gt' (got {self.mask_train_rois!r})"
            )
        if not isinstance(self.rpn_min_size, (int, float)) or not self.rpn_min_size >= 0:
            raise ConfigError(f"rpn_min_size must be a number >= 0, got {self.rpn_min_size!r}")
        if not isinstance(self.clip_proposals_to_padded, bool):
            raise ConfigError(
                "clip_proposals_to_padded must be true or false, "
                f"got {self.clip_proposals_to_padded!r}"
            )
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ConfigError(f"num_classes must be an integer >= 1, got {self.num_classes!r}")
        if self.transfer_layers not in (1, 2, 3):
            raise ConfigError(f"transfer_layers must be 1, 2 or 3, got {self.transfer_layers!r}")
        if self.trainable_backbone_layers is not None and not (
            0 <= self.trainable_backbone_layers <= 5
        ):
            raise ConfigError(
                "trainable_backbone_layers must be in [0, 5], "
                f"got {self.trainable_backbone_layers!r}"
            )
        if self.min_size < 32 or self.max_size < self.min_size:
            raise ConfigError(
                f"need 32 <= min_size <= max_size, got min_size={self.min_size}, "
                f"max_size={self.max_size}"
            )
        if self.mlp_input_size not in (1, 2, 4, 7, 14, 28):
            raise ConfigError(
                "mlp_input_size must divide the 28×28 mask (1, 2, 4, 7, 14 or 28), "
                f"got {self.mlp_input_size!r}"
            )
        if self.box_candidates_per_img is not None and (
            self.box_candidates_per_img < self.box_detections_per_img
        ):
            raise ConfigError(
                "box_candidates_per_img must be None or >= box_detections_per_img "
                f"({self.box_detections_per_img}), got {self.box_candidates_per_img}"
            )
        for name in ("fpn_channels", "box_head_dim", "mask_head_dim", "transfer_hidden"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        self._validate_resnet()
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ConfigError("image_mean and image_std must have 3 values (RGB)")

    def _validate_resnet(self) -> None:
        resnets = ("resnet50", "resnet101", "resnet18")
        custom = self.resnet_width != 64 or self.resnet_blocks is not None
        if custom and self.backbone not in resnets:
            raise ConfigError(
                f"resnet_width and resnet_blocks apply to {list(resnets)}, not "
                f"backbone={self.backbone!r}"
            )
        if self.stride_in_1x1 and self.backbone not in ("resnet50", "resnet101"):
            raise ConfigError(
                "stride_in_1x1 applies to the bottleneck ResNets (resnet50, resnet101), not "
                f"backbone={self.backbone!r}"
            )
        if not isinstance(self.resnet_width, int) or self.resnet_width < 1:
            raise ConfigError(f"resnet_width must be an integer >= 1, got {self.resnet_width!r}")
        if self.resnet_blocks is not None and (
            len(self.resnet_blocks) != 4
            or not all(isinstance(n, int) and n >= 1 for n in self.resnet_blocks)
        ):
            raise ConfigError(
                "resnet_blocks must be None or 4 integers >= 1 (blocks per stage), "
                f"got {self.resnet_blocks!r}"
            )

    @property
    def mask_resolution(self) -> int:
        """Side M of the predicted box-local masks (RoIAlign 14 → deconv ×2)."""
        return 28

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise an error that names them."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown model config field(s) {unknown}; allowed fields: {sorted(known)}"
            )
        kwargs = {}
        for key, value in data.items():
            if isinstance(value, list) and key != "extra":
                value = tuple(value)
            kwargs[key] = value
        return cls(**kwargs)

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not supported; allowed values: {list(allowed)}")
