"""Training data: COCO-format and Visual Genome datasets, the class vocabulary, data loaders.

Every dataset item is ``(image, target)`` as docs/contracts.md ("Training targets") states.
"""

from training.datasets.coco import CocoDataset, LoadStats
from training.datasets.errors import DatasetError
from training.datasets.loader import (
    GroupedBatchSampler,
    InferenceSampler,
    build_data_loader,
    collate_fn,
    compute_aspect_ratios,
    create_aspect_ratio_groups,
    set_epoch,
)
from training.datasets.mixed import MixedDataset, coco_in_vocabulary
from training.datasets.visual_genome import VisualGenomeDataset, build_vg_vocabulary
from training.datasets.vocab import MASK_SPLITS, ClassVocabulary, mask_split

__all__ = [
    "MASK_SPLITS",
    "ClassVocabulary",
    "CocoDataset",
    "DatasetError",
    "GroupedBatchSampler",
    "InferenceSampler",
    "LoadStats",
    "MixedDataset",
    "VisualGenomeDataset",
    "build_data_loader",
    "build_vg_vocabulary",
    "coco_in_vocabulary",
    "collate_fn",
    "compute_aspect_ratios",
    "create_aspect_ratio_groups",
    "mask_split",
    "set_epoch",
]
