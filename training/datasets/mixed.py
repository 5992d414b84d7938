"""Visual Genome boxes + COCO masks: the data of the paper's 3000-class model.

The COCO dataset is relabelled into the Visual Genome vocabulary (its 80 classes are that
vocabulary's first classes, under their COCO names; they form A and keep their masks) and
concatenated with the Visual Genome dataset (boxes of all classes, no masks). Mixed end-to-end
training samples both; stage 2 of stage-wise training uses the relabelled COCO dataset alone.
"""

from __future__ import annotations

import os
from typing import Any

from torch.utils.data import ConcatDataset

from training.datasets.coco import CocoDataset
from training.datasets.errors import DatasetError
from training.datasets.visual_genome import VisualGenomeDataset
from training.datasets.vocab import ClassVocabulary

__all__ = ["MixedDataset", "coco_in_vocabulary"]


def coco_in_vocabulary(
    annotation_file: str | os.PathLike,
    image_root: str | os.PathLike,
    vocab: ClassVocabulary,
    **kwargs: Any,
) -> CocoDataset:
    """A COCO-format dataset labelled with ``vocab`` (e.g. the Visual Genome vocabulary).

    Categories are matched to classes by name; masks are kept for the classes that ``vocab``
    marks as A. ``kwargs`` go to :class:`CocoDataset` (``drop_empty``, ``hflip_prob``, ...).
    Used alone for stage 2 of stage-wise training.
    """
    return CocoDataset(annotation_file, image_root, vocab=vocab, **kwargs)


class MixedDataset(ConcatDataset):
    """Visual Genome items followed by COCO items, all labelled in one vocabulary.

    Items are those of the parts (docs/contracts.md): Visual Genome items have ``has_mask`` all
    False and no ``masks``; COCO items have ``masks`` and ``has_mask`` True for instances of A.

    Args:
        vg: the Visual Genome dataset; its vocabulary is the vocabulary of the mix.
        coco: a COCO-format dataset labelled with the same vocabulary
            (see :func:`coco_in_vocabulary`).
    """

    def __init__(self, vg: VisualGenomeDataset, coco: CocoDataset) -> None:
        if vg.vocab.names != coco.vocab.names:
            raise DatasetError(
                f"{coco.annotation_file}: the COCO dataset is not labelled in the Visual Genome "
                f"vocabulary of {vg.objects_file}; build it with coco_in_vocabulary(..., "
                "vocab=vg.vocab)"
            )
        super().__init__([vg, coco])
        self.vg = vg
        self.coco = coco
        self.vocab = vg.vocab

    def get_height_and_width(self, index: int) -> tuple[int, int]:
        """(height, width) of item ``index``, without decoding the image."""
        if index < 0:
            index += len(self)
        n_vg = len(self.vg)
        if index < n_vg:
            return self.vg.get_height_and_width(index)
        return self.coco.get_height_and_width(index - n_vg)
