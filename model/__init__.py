"""Mask^X R-CNN in pure PyTorch: config, builder, heads, predictors and losses.

Knows nothing about files, HTTP or datasets (backbone weights come from a path the caller names).
"""

from .config import ConfigError, ModelConfig
from .losses import box_losses, partial_mask_loss, project_masks_on_boxes
from .maskx_rcnn import MaskXRCNN, build_mask_predictor, build_model, mask_rcnn_arguments
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

__all__ = [
    "ClassAgnosticMaskPredictor",
    "ClassSpecificBoxPredictor",
    "ClassSpecificMaskPredictor",
    "ConfigError",
    "MLPMaskBranch",
    "MaskPredictor",
    "MaskXRCNN",
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
]
