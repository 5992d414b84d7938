"""Mask^X R-CNN in pure PyTorch: config, builder, heads, predictors and losses.

Knows nothing about files, HTTP or datasets (backbone weights come from a path the caller names).
"""

try:
    import torch  # noqa: F401
except ModuleNotFoundError as exc:  # a serving-only install (`maskx[serve]`) has no torch
    raise ModuleNotFoundError(
        "the model package needs PyTorch: install the training extra, pip install 'maskx[train]'",
        name=exc.name,
    ) from exc


from .anchors import DetectronAnchorGenerator
from .config import ConfigError, ModelConfig
from .losses import box_losses, partial_mask_loss, project_masks_on_boxes
from .maskx_rcnn import MaskXRCNN, build_mask_predictor, build_model, mask_rcnn_arguments
from .pooling import MaskXRoIAlign
from .postprocess import select_detections, select_proposals
from .predictors import (
    ClassAgnosticMaskPredictor,
    ClassSpecificBoxPredictor,
    ClassSpecificMaskPredictor,
    MaskPredictor,
    MLPMaskBranch,
    WeightTransfer,
    WeightTransferMaskPredictor,
    embedding_dim,
)
from .roi_heads import MaskXRoIHeads
from .rpn import MaskXRPN

__all__ = [
    "ClassAgnosticMaskPredictor",
    "ClassSpecificBoxPredictor",
    "ClassSpecificMaskPredictor",
    "ConfigError",
    "DetectronAnchorGenerator",
    "MLPMaskBranch",
    "MaskPredictor",
    "MaskXRCNN",
    "MaskXRPN",
    "MaskXRoIAlign",
    "MaskXRoIHeads",
    "ModelConfig",
    "WeightTransfer",
    "WeightTransferMaskPredictor",
    "box_losses",
    "build_mask_predictor",
    "build_model",
    "embedding_dim",
    "mask_rcnn_arguments",
    "partial_mask_loss",
    "project_masks_on_boxes",
    "select_detections",
    "select_proposals",
]
