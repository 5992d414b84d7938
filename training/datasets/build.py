"""Datasets of a training config: train set, validation set and the class vocabulary."""

from __future__ import annotations

from typing import Any

from training.config import TrainConfig
from training.datasets import (
    MASK_SPLITS,
    ClassVocabulary,
    CocoDataset,
    MixedDataset,
    VisualGenomeDataset,
    coco_in_vocabulary,
)


def _need(cfg: TrainConfig, *fields: str) -> None:
    missing = [f"data.{f}" for f in fields if getattr(cfg.data, f) is None]
    if missing:
        raise ValueError(
            f"data.kind={cfg.data.kind!r} needs {', '.join(missing)} "
            "(set them in the config or with --set data.FIELD=VALUE)"
        )


def _mask_spec(cfg: TrainConfig) -> str:
    spec = cfg.data.mask_classes
    if spec in MASK_SPLITS:
        return spec
    return str(cfg.data.path(spec))


def build_datasets(cfg: TrainConfig) -> tuple[Any, Any | None, ClassVocabulary]:
    """Build (train, val or None, vocabulary) for ``cfg.data``.

    ``coco``: a COCO-format json + images, A chosen by ``data.mask_classes``. ``vg``: Visual
    Genome boxes for all classes (stage 1 of the 3000-class model). ``coco_in_vg``: COCO
    relabelled into the Visual Genome vocabulary, masks for its 80 classes (stage 2).
    ``vg+coco``: both mixed (end-to-end). Validation for the VG kinds is COCO val relabelled
    into the VG vocabulary (masks exist only for COCO classes).
    """
    d = cfg.data
    if d.kind == "coco":
        _need(cfg, "train_annotations", "train_images")
        train = CocoDataset(
            d.path(d.train_annotations), d.path(d.train_images),
            mask_classes=_mask_spec(cfg), drop_empty=d.drop_empty,
        )  # fmt: skip
        vocab = train.vocab
        val = None
        if d.val_annotations:
            _need(cfg, "val_images")
            val = CocoDataset(d.path(d.val_annotations), d.path(d.val_images), vocab=vocab)
        return train, val, vocab

    _need(cfg, "vg_image_data", "vg_objects")
    vg = VisualGenomeDataset(
        d.path(d.vg_image_data), d.path(d.vg_objects), d.path(d.vg_images),
        num_classes=d.vg_num_classes,
    )  # fmt: skip
    vocab = vg.vocab
    val = None
    if d.val_annotations:
        _need(cfg, "val_images")
        val = coco_in_vocabulary(d.path(d.val_annotations), d.path(d.val_images), vocab)
    if d.kind == "vg":
        return vg, val, vocab
    _need(cfg, "train_annotations", "train_images")
    coco = coco_in_vocabulary(
        d.path(d.train_annotations), d.path(d.train_images), vocab, drop_empty=d.drop_empty
    )
    if d.kind == "coco_in_vg":
        return coco, val, vocab
    return MixedDataset(vg, coco), val, vocab
