"""What the COCO-format and Visual Genome datasets share: record access and the optional flip.

A subclass reads its annotation files into ``self._records`` (objects with ``image_id``,
``height`` and ``width``) and implements :meth:`DetectionDataset.load`, which returns one
``(image, target)`` pair per docs/contracts.md ("Training targets").
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import Dataset

from training.datasets.errors import DatasetError
from training.datasets.flip import FlipMap, flip_batch

IDS_IN_SUMMARY = 10


def summarise_ids(ids: Sequence[int]) -> str:
    """The first few ids of a list, for log lines about what loading left out."""
    shown = ", ".join(str(i) for i in ids[:IDS_IN_SUMMARY])
    return shown + (", ..." if len(ids) > IDS_IN_SUMMARY else "")


def path_inside(root: Path, relative: str | os.PathLike, where: str) -> Path:
    """``root / relative``, refused unless it stays inside ``root``: an annotation file names
    its images relative to the image folder, and one that says ``/etc/…`` or ``../../…``
    would have training read any file the user can (symbolic links inside the folder are
    followed, as a user who made them meant)."""
    path = root / relative
    if Path(relative).is_absolute() or ".." in Path(relative).parts:
        raise DatasetError(
            f"{where}: image path {str(relative)!r} leaves the image folder {str(root)!r} "
            "(absolute or with '..'); paths must be relative to it"
        )
    return path


class ImageRecord(Protocol):
    image_id: int
    height: int
    width: int


class DetectionDataset(Dataset):
    """Map-style detection dataset: item ``i`` is ``(image float32 [3, H, W] in 0..1, target)``.

    Args:
        hflip_prob: probability of a random horizontal flip of the image and its target
            (boxes, masks, and the labels of mirror-image classes as ``flip_map`` says). The
            trainer flips batches itself (as a function of seed and step, so that a resumed run
            flips alike); this is for users of the dataset on its own.
        flip_map: mirror-image classes for the flip (None: every class is its own mirror).
    """

    _records: Sequence[ImageRecord]

    def __init__(self, *, hflip_prob: float = 0.0, flip_map: FlipMap | None = None) -> None:
        if not 0.0 <= hflip_prob <= 1.0:
            raise ValueError(f"hflip_prob must be in [0, 1], got {hflip_prob}")
        self.hflip_prob = float(hflip_prob)
        self.flip_map = flip_map

    def load(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Item ``index`` as stored (no augmentation)."""
        raise NotImplementedError

    @property
    def image_ids(self) -> list[int]:
        """The dataset's image ids, in dataset order."""
        return [r.image_id for r in self._records]

    def get_height_and_width(self, index: int) -> tuple[int, int]:
        """(height, width) of item ``index`` from the annotations, without decoding the image."""
        r = self._records[index]
        return r.height, r.width

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image, target = self.load(index)
        if self.hflip_prob > 0 and torch.rand(()).item() < self.hflip_prob:
            images, targets = [image], [dict(target)]
            flip_batch(images, targets, torch.ones(1, dtype=torch.bool), self.flip_map)
            image, target = images[0], targets[0]
        return image, target
