"""Datasets of a training config: train set, validation set and the class vocabulary."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from model.config import ConfigError
from training.config import TrainConfig
from training.datasets import (
    MASK_SPLITS,
    ClassVocabulary,
    CocoDataset,
    DatasetError,
    MixedDataset,
    VisualGenomeDataset,
    coco_in_vocabulary,
)
from training.datasets.coco import load_json

log = logging.getLogger(__name__)


def _need(cfg: TrainConfig, *fields: str) -> None:
    missing = [f"data.{f}" for f in fields if getattr(cfg.data, f) is None]
    if missing:
        raise ConfigError(
            f"data.kind={cfg.data.kind!r} needs {', '.join(missing)} "
            "(set them in the config or with --set data.FIELD=VALUE)"
        )


def _mask_spec(cfg: TrainConfig) -> str:
    spec = cfg.data.mask_classes
    if spec in MASK_SPLITS:
        return spec
    return str(cfg.data.path(spec))


# data fields that name files (the rest of the path fields name folders)
_FILE_FIELDS = ("train_annotations", "val_annotations", "vg_image_data", "vg_objects")


def check_data_paths(cfg: TrainConfig) -> None:
    """Raise :class:`DatasetError` naming the field and the path of the first data file or
    folder of ``cfg.data`` that the run would read and that does not exist, before anything is
    loaded or written."""
    d = cfg.data
    fields = ["train_annotations", "train_images", "val_annotations", "val_images"]
    if d.kind != "coco":
        fields = ["vg_image_data", "vg_objects", "vg_images", "val_annotations", "val_images"]
        if d.kind != "vg":
            fields += ["train_annotations", "train_images"]
    if d.flip_map:
        fields.append("flip_map")
    if d.kind == "coco" and d.mask_classes not in MASK_SPLITS:
        fields.append("mask_classes")
    for name in fields:
        value = getattr(d, name)
        if value is None or (name == "val_images" and d.val_annotations is None):
            continue
        path = d.path(value)
        is_file = name in _FILE_FIELDS or name in ("flip_map", "mask_classes")
        ok = path.is_file() if is_file else path.is_dir()
        if not ok:
            what = "file" if is_file else "folder"
            exists = " is not a " + what if path.exists() else " does not exist"
            raise DatasetError(f"data.{name}: {what} {path}{exists}")


def coco_image_ids(annotation_file: str | Path) -> list[int]:
    """The image ids of a COCO-format json (e.g. COCO val, to hold out of Visual Genome)."""
    data = load_json(Path(annotation_file))
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DatasetError(f"{annotation_file}: no 'images' list")
    ids = [img.get("id") for img in images if isinstance(img, dict)]
    if len(ids) != len(images) or not all(isinstance(i, int) for i in ids):
        raise DatasetError(f"{annotation_file}: every image needs an integer 'id'")
    return ids


def build_datasets(cfg: TrainConfig) -> tuple[Any, Any | None, ClassVocabulary]:
    """Build (train, val or None, vocabulary) for ``cfg.data``.

    ``coco``: a COCO-format json + images, A chosen by ``data.mask_classes``. ``vg``: Visual
    Genome boxes for all classes (stage 1 of the 3000-class model). ``coco_in_vg``: COCO
    relabelled into the Visual Genome vocabulary, masks for its 80 classes (stage 2).
    ``vg+coco``: both mixed (end-to-end). Validation for the VG kinds is COCO val relabelled
    into the VG vocabulary (masks exist only for COCO classes); the Visual Genome images that
    are COCO val images are held out of training (``data.vg_exclude_coco_val``).
    """
    d = cfg.data
    check_data_paths(cfg)
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
    held_out: list[int] = []
    if d.vg_exclude_coco_val:
        if d.val_annotations is None:
            raise ConfigError(
                "data.vg_exclude_coco_val holds out the Visual Genome images that are in COCO "
                "val, but data.val_annotations is not set; set it (COCO val2017 json) or set "
                "data.vg_exclude_coco_val=false"
            )
        held_out = coco_image_ids(d.path(d.val_annotations))
    vg = VisualGenomeDataset(
        d.path(d.vg_image_data), d.path(d.vg_objects), d.path(d.vg_images),
        num_classes=d.vg_num_classes, vocabulary_rule=d.vg_vocabulary,
        multi_synset=d.vg_multi_synset, exclude_coco_ids=held_out,
    )  # fmt: skip
    if d.vg_exclude_coco_val:
        log.info(
            "Visual Genome: held out %d images that are in COCO val (%s)",
            len(vg.stats.held_out_image_ids), d.path(d.val_annotations),
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
