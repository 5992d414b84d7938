"""Visual Genome boxes: ``image_data.json`` + ``objects.json`` + image folders.

The vocabulary follows the Mask^X R-CNN reference (``ronghanghu/seg_every_thing``,
``lib/datasets/bbox2mask_dataset_processing/vg/step_1_build_vg3k_raw_json.py`` and
``step_2_build_vg3k_cocoaligned_json.py``): the K most frequent synsets (3000 by default); the 80
COCO classes first, in COCO category order, so that their weights can be sliced out and their
masks come from COCO (they are the mask set A); the other top-K synsets (B) after them, sorted by
synset name. A COCO class whose synset is not among the top K is still a class (with no Visual
Genome box), so the reference's vocabulary has 3001 classes for K = 3000. COCO classes are named
by their COCO name ("dining table"), the others by their synset ("tree.n.01"). Visual Genome
items carry boxes only (``has_mask`` all False). The rule maskx used before (``by_count``: COCO
classes and their alias synsets, then the others most frequent first) stays available.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import torch

from training.class_tables import coco_classes, synset_to_coco_name
from training.datasets.base import DetectionDataset, path_inside, summarise_ids
from training.datasets.coco import load_json, load_rgb_image
from training.datasets.errors import DatasetError
from training.datasets.vocab import ClassVocabulary

__all__ = [
    "MULTI_SYNSET_RULES",
    "VG_IMAGE_FOLDERS",
    "VG_SOURCE_ID_OFFSET",
    "VOCABULARY_RULES",
    "VgClasses",
    "VisualGenomeDataset",
    "VisualGenomeStats",
    "build_vg_vocabulary",
    "synset_labels",
    "vg_classes",
]

logger = logging.getLogger(__name__)

#: Image folders of the Visual Genome release, tried in this order.
VG_IMAGE_FOLDERS = ("VG_100K", "VG_100K_2")
#: ``source_ids`` of the non-COCO classes of a Visual Genome vocabulary are this + model label.
VG_SOURCE_ID_OFFSET = 1000
_MIN_BOX_SIZE = 1.0
#: ``reference``: the authors' rule (module docstring); ``by_count``: maskx's earlier rule.
VOCABULARY_RULES = ("reference", "by_count")
#: ``drop`` an object with several synsets (the reference: ``step_1_build_vg3k_raw_json.py``
#: skips ``len(synsets) > 1``), or label it by its ``first`` synset.
MULTI_SYNSET_RULES = ("drop", "first")


def _object_synsets(objects_data: Sequence[Mapping[str, Any]]) -> Iterable[str]:
    for entry in objects_data:
        for obj in entry.get("objects", ()):
            yield from obj.get("synsets", ())


@dataclass(frozen=True)
class VgClasses:
    """A Visual Genome vocabulary and how objects are labelled with it.

    ``label_of``: synset → model label (1..K) for every synset whose objects are kept;
    ``outside_top_k``: COCO class names whose synset is not among the top K (classes with no
    Visual Genome box under the reference rule).
    """

    vocab: ClassVocabulary
    label_of: dict[str, int]
    outside_top_k: tuple[str, ...] = ()


def _lemma_name(synset: str) -> str:
    # The reference's cleaning: "traffic_light.n.01" -> "traffic light".
    return synset.rsplit(".", 2)[0].replace("_", " ")


def _source_ids(num_coco: int, num_classes: int) -> tuple[int, ...]:
    coco = coco_classes()
    return (
        *(c.coco_id for c in coco[:num_coco]),
        *(VG_SOURCE_ID_OFFSET + label for label in range(num_coco + 1, num_classes + 1)),
    )


def vg_classes(
    objects_data: Sequence[Mapping[str, Any]], num_classes: int = 3000, rule: str = "reference"
) -> VgClasses:
    """The Visual Genome vocabulary of ``objects.json`` and its synset → label table.

    ``rule="reference"`` (the authors'): count every synset of every object (objects with
    several synsets count each), keep the ``num_classes`` most frequent (``Counter.most_common``:
    ties in first-seen order); map each COCO class to a synset — a ``manual`` class of the table
    to its synset, a ``by_name`` class to the most frequent kept synset named like it (else the
    table's); the 80 COCO classes first in COCO order, then the kept synsets that are not a COCO
    class's, sorted by name. Only kept synsets label objects: a COCO class whose synset is not
    kept has no Visual Genome box (its masks and boxes come from COCO), and makes the vocabulary
    one class longer than ``num_classes`` minus the COCO classes kept.

    ``rule="by_count"`` (maskx's earlier rule): the 80 COCO classes first (their synset and
    aliases label them), then the ``num_classes - 80`` most frequent other synsets (ties by
    name).

    ``source_ids``: the COCO category id for the COCO classes, so that predictions are scored
    against COCO annotations with the right ids; ``1000 + label`` for the others (Visual Genome
    has no category ids; this keeps clear of COCO's 1..90).
    """
    if rule not in VOCABULARY_RULES:
        raise ValueError(f"vocabulary rule must be one of {list(VOCABULARY_RULES)}, got {rule!r}")
    coco = coco_classes()
    if rule == "by_count":
        vocab = _by_count_vocabulary(objects_data, num_classes)
        return VgClasses(vocab, synset_labels(vocab))
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    counts = Counter(_object_synsets(objects_data))
    top = [synset for synset, _ in counts.most_common(num_classes)]
    by_name: dict[str, str] = {}
    for synset in top:  # most frequent first: it wins a shared name, as in the reference
        by_name.setdefault(_lemma_name(synset), synset)
    coco_synsets = [
        c.synset if c.reference == "manual" else by_name.get(c.name, c.synset) for c in coco
    ]
    others = sorted(set(top) - set(coco_synsets))
    names = [c.name for c in coco] + others
    kept = set(top)
    label_of = {s: i + 1 for i, s in enumerate(coco_synsets) if s in kept}
    label_of.update({s: len(coco) + i + 1 for i, s in enumerate(others)})
    outside = tuple(c.name for c, s in zip(coco, coco_synsets, strict=True) if s not in kept)
    vocab = ClassVocabulary(
        tuple(names),
        (True,) * len(coco) + (False,) * len(others),
        _source_ids(len(coco), len(names)),
    )
    return VgClasses(vocab, label_of, outside)


def build_vg_vocabulary(
    objects_data: Sequence[Mapping[str, Any]], num_classes: int = 3000, rule: str = "reference"
) -> ClassVocabulary:
    """The Visual Genome class vocabulary of ``objects.json`` (see :func:`vg_classes`).

    Args:
        objects_data: the parsed ``objects.json`` (a list of ``{"image_id", "objects": [...]}``).
        num_classes: K, the synsets kept by count (``reference``: the vocabulary has K classes
            plus one per COCO class whose synset is not among them); the vocabulary's size
            (``by_count``, at least 80).
        rule: ``reference`` (the authors') or ``by_count`` (maskx's earlier rule).
    """
    return vg_classes(objects_data, num_classes, rule).vocab


def _by_count_vocabulary(
    objects_data: Sequence[Mapping[str, Any]], num_classes: int
) -> ClassVocabulary:
    coco = coco_classes()
    if num_classes < len(coco):
        raise ValueError(
            f"num_classes={num_classes}: the Visual Genome vocabulary starts with the "
            f"{len(coco)} COCO classes, so it needs at least {len(coco)} classes"
        )
    coco_synsets = synset_to_coco_name()
    counts = Counter(s for s in _object_synsets(objects_data) if s not in coco_synsets)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    others = [s for s, _ in ranked[: num_classes - len(coco)]]
    names = [c.name for c in coco] + others
    flags = [True] * len(coco) + [False] * len(others)
    return ClassVocabulary(tuple(names), tuple(flags), _source_ids(len(coco), len(names)))


def synset_labels(vocab: ClassVocabulary) -> dict[str, int]:
    """Synset → model label for a Visual Genome vocabulary.

    Classes named by a COCO name take every synset of the COCO↔synset table (main and aliases);
    the other classes are named by their synset.
    """
    by_name = {c.name: c.synsets for c in coco_classes()}
    table: dict[str, int] = {}
    for i, name in enumerate(vocab.names):
        for synset in by_name.get(name, (name,)):
            table[synset] = i + 1
    return table


@dataclass
class VisualGenomeStats:
    """What loading kept and dropped; the ``*_ids`` lists hold object ids."""

    images: int = 0
    objects: int = 0
    no_synset_ids: list[int] = field(default_factory=list)
    out_of_vocabulary_ids: list[int] = field(default_factory=list)
    multi_synset_ids: list[int] = field(default_factory=list)
    degenerate_ids: list[int] = field(default_factory=list)
    held_out_image_ids: list[int] = field(default_factory=list)
    empty_image_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class _VgRecord:
    image_id: int
    url: str | None
    path: Path | None  # resolved at load when check_files, else on first access
    height: int
    width: int
    boxes: tuple[tuple[float, float, float, float], ...]
    labels: tuple[int, ...]


class VisualGenomeDataset(DetectionDataset):
    """Map-style dataset of Visual Genome boxes labelled by synset.

    Item ``i`` is ``(image, target)`` per docs/contracts.md: ``image`` float32 ``[3, H, W]``;
    ``target`` has ``boxes`` float32 ``[G, 4]`` (x1, y1, x2, y2), ``labels`` int64 ``[G]``
    (1..K), ``has_mask`` bool ``[G]`` (all False: no masks, so no ``masks`` key), ``image_id``
    (the Visual Genome image id), ``iscrowd`` int64 zeros and ``area`` float32 (box areas).

    An object with several synsets is left out (``multi_synset="drop"``, the reference's choice:
    ``step_1_build_vg3k_raw_json.py`` skips ``len(synsets) > 1``), or labelled by its first
    synset (``"first"``). Objects without synsets, with a synset outside the vocabulary, or
    with a box of at most 1 px in width or height after clipping are dropped and counted; a
    summary naming the file and the first object ids is logged, and each dropped object id at
    debug level.

    Args:
        image_data_file: ``image_data.json`` (``image_id``, ``url``, ``width``, ``height``,
            ``coco_id``).
        objects_file: ``objects.json``.
        image_root: folder holding ``VG_100K/`` and ``VG_100K_2/``; default: the folder of
            ``image_data_file``. An image is found through the last two parts of its ``url``,
            else as ``<image_id>.jpg`` in either folder.
        vocab: vocabulary to label with; default: :func:`vg_classes` of this
            ``objects.json`` with ``num_classes`` and ``vocabulary_rule``.
        num_classes: K when the vocabulary is built here (default 3000).
        vocabulary_rule: ``reference`` (the authors', default) or ``by_count``.
        exclude_image_ids: Visual Genome image ids to hold out.
        exclude_coco_ids: COCO image ids whose Visual Genome images to hold out (the
            ``coco_id`` field), e.g. those of COCO val.
        drop_empty: leave out images with no object left (default True: they teach nothing
            to a box-only dataset).
        hflip_prob: probability of a random horizontal flip (training augmentation).
        check_files: resolve every image file at load (errors name the image id).
    """

    def __init__(
        self,
        image_data_file: str | os.PathLike,
        objects_file: str | os.PathLike,
        image_root: str | os.PathLike | None = None,
        *,
        vocab: ClassVocabulary | None = None,
        num_classes: int = 3000,
        exclude_image_ids: Iterable[int] = (),
        exclude_coco_ids: Iterable[int] = (),
        multi_synset: Literal["drop", "first"] = "drop",
        vocabulary_rule: str = "reference",
        drop_empty: bool = True,
        hflip_prob: float = 0.0,
        check_files: bool = True,
    ) -> None:
        if multi_synset not in MULTI_SYNSET_RULES:
            raise ValueError(
                f"multi_synset must be one of {list(MULTI_SYNSET_RULES)}, got {multi_synset!r}"
            )
        super().__init__(hflip_prob=hflip_prob)
        self.image_data_file = Path(image_data_file)
        self.objects_file = Path(objects_file)
        self.image_root = Path(image_root) if image_root else self.image_data_file.parent
        self.stats = VisualGenomeStats()

        images = self._read_image_data(load_json(self.image_data_file))
        objects_data = load_json(self.objects_file)
        if not isinstance(objects_data, list):
            raise DatasetError(f"{self.objects_file}: top level must be a list of images")
        classes = vg_classes(objects_data, num_classes, vocabulary_rule)
        if vocab is None or vocab.names == classes.vocab.names:
            self.vocab, label_of = classes.vocab, classes.label_of
            self.outside_top_k = classes.outside_top_k
        else:  # a vocabulary from elsewhere: label through the table's synsets and aliases
            self.vocab, label_of, self.outside_top_k = vocab, synset_labels(vocab), ()
        held_out = set(exclude_image_ids)
        coco_held_out = set(exclude_coco_ids)

        records = []
        for entry in objects_data:
            image_id = entry.get("image_id", entry.get("id")) if isinstance(entry, dict) else None
            if not isinstance(image_id, int):
                raise DatasetError(
                    f"{self.objects_file}: entry without an integer 'image_id': {entry!r:.100}"
                )
            img = images.get(image_id)
            if img is None:
                raise DatasetError(
                    f"{self.objects_file}: image id {image_id} is not in {self.image_data_file}"
                )
            if image_id in held_out or (img.get("coco_id") in coco_held_out):
                self.stats.held_out_image_ids.append(image_id)
                continue
            record = self._read_objects(entry, img, label_of, multi_synset)
            if drop_empty and not record.labels:
                self.stats.empty_image_ids.append(image_id)
                continue
            if check_files:
                record = dataclasses.replace(record, path=self._resolve_image(img))
            records.append(record)
        self._records = records
        self.stats.images = len(records)
        self.stats.objects = sum(len(r.labels) for r in records)
        self._log_summary()

    # -- loading ------------------------------------------------------------------------------

    def _read_image_data(self, data: Any) -> dict[int, dict]:
        f = self.image_data_file
        if not isinstance(data, list):
            raise DatasetError(f"{f}: top level must be a list of images")
        images: dict[int, dict] = {}
        for img in data:
            # Release 1.0 names the id "id", later releases "image_id".
            image_id = img.get("image_id", img.get("id")) if isinstance(img, dict) else None
            if not isinstance(image_id, int):
                raise DatasetError(f"{f}: image without an integer 'image_id': {img!r:.100}")
            if image_id in images:
                raise DatasetError(f"{f}: image id {image_id}: duplicate image id")
            for key in ("width", "height"):
                if not isinstance(img.get(key), int) or img[key] <= 0:
                    raise DatasetError(
                        f"{f}: image id {image_id}: '{key}' must be a positive int, "
                        f"got {img.get(key)!r}"
                    )
            images[image_id] = img
        return images

    def _read_objects(
        self,
        entry: Mapping[str, Any],
        img: Mapping[str, Any],
        label_of: Mapping[str, int],
        multi_synset: str,
    ) -> _VgRecord:
        image_id = int(img.get("image_id", img.get("id")))
        h, w = img["height"], img["width"]
        boxes, labels = [], []
        s = self.stats
        for obj in entry.get("objects", ()):
            obj_id = obj.get("object_id", obj.get("id")) if isinstance(obj, dict) else None
            if not isinstance(obj_id, int):
                raise DatasetError(
                    f"{self.objects_file}: image id {image_id}: object without an integer "
                    f"'object_id': {obj!r:.100}"
                )
            where = f"{self.objects_file}: object id {obj_id} (image id {image_id})"
            xywh = [obj.get(k) for k in ("x", "y", "w", "h")]
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in xywh):
                raise DatasetError(f"{where}: 'x', 'y', 'w', 'h' must be numbers, got {xywh}")
            synsets = obj.get("synsets", [])
            if not isinstance(synsets, list):
                raise DatasetError(f"{where}: 'synsets' must be a list, got {synsets!r:.60}")
            if not synsets:
                s.no_synset_ids.append(obj_id)
                logger.debug("%s: dropped: no synsets (names %s)", where, obj.get("names"))
                continue
            if len(synsets) > 1 and multi_synset == "drop":
                s.multi_synset_ids.append(obj_id)
                logger.debug("%s: dropped: several synsets %s", where, synsets)
                continue
            label = label_of.get(synsets[0])
            if label is None:
                s.out_of_vocabulary_ids.append(obj_id)
                logger.debug("%s: dropped: synset %s not in the vocabulary", where, synsets[0])
                continue
            x, y, bw, bh = (float(v) for v in xywh)
            x1, y1 = min(max(x, 0.0), w), min(max(y, 0.0), h)
            x2, y2 = min(max(x + bw, 0.0), w), min(max(y + bh, 0.0), h)
            if bw < 0 or bh < 0 or x2 - x1 <= _MIN_BOX_SIZE or y2 - y1 <= _MIN_BOX_SIZE:
                s.degenerate_ids.append(obj_id)
                logger.debug("%s: dropped: degenerate box %s", where, xywh)
                continue
            boxes.append((x1, y1, x2, y2))
            labels.append(label)
        url = img.get("url") if isinstance(img.get("url"), str) else None
        return _VgRecord(image_id, url, None, h, w, tuple(boxes), tuple(labels))

    def _resolve_image(self, img: Mapping[str, Any]) -> Path:
        image_id = int(img.get("image_id", img.get("id")))
        candidates = []
        url = img.get("url")
        if isinstance(url, str) and url:
            parts = PurePosixPath(url).parts
            where = f"{self.image_data_file}: image id {image_id}"
            candidates.append(path_inside(self.image_root, PurePosixPath(*parts[-2:]), where))
        candidates += [self.image_root / folder / f"{image_id}.jpg" for folder in VG_IMAGE_FOLDERS]
        for path in candidates:
            if path.is_file():
                return path
        tried = ", ".join(str(p) for p in dict.fromkeys(candidates))
        raise DatasetError(
            f"{self.image_data_file}: image id {image_id}: image file not found (tried {tried})"
        )

    def _log_summary(self) -> None:
        s = self.stats
        f = self.objects_file
        logger.info(
            "%s: %d images, %d objects, %d classes (%d with COCO masks)",
            f,
            s.images,
            s.objects,
            self.vocab.num_classes,
            len(self.vocab.a_indices),
        )
        for ids, why in (
            (s.no_synset_ids, "objects without synsets"),
            (s.out_of_vocabulary_ids, "objects whose synset is outside the vocabulary"),
            (s.multi_synset_ids, "objects with several synsets"),
            (s.degenerate_ids, "objects with degenerate boxes"),
        ):
            if ids:
                logger.warning(
                    "%s: dropped %d %s: object ids %s", f, len(ids), why, summarise_ids(ids)
                )
        if self.outside_top_k:
            logger.info(
                "%s: COCO class(es) %s: synset not among the %d most frequent; a class with no "
                "Visual Genome box (as in the reference)",
                f,
                list(self.outside_top_k),
                self.vocab.num_classes - len(self.outside_top_k),
            )
        if s.held_out_image_ids:
            logger.info(
                "%s: held out %d images: image ids %s",
                f,
                len(s.held_out_image_ids),
                summarise_ids(s.held_out_image_ids),
            )
        if s.empty_image_ids:
            logger.info(
                "%s: left out %d images with no object left: image ids %s",
                f,
                len(s.empty_image_ids),
                summarise_ids(s.empty_image_ids),
            )

    # -- access -------------------------------------------------------------------------------

    def load(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        r = self._records[index]
        what = f"{self.image_data_file}: image id {r.image_id}"
        path = r.path or self._resolve_image({"image_id": r.image_id, "url": r.url})
        image = load_rgb_image(path, expected_hw=(r.height, r.width), what=what)
        g = len(r.labels)
        boxes = torch.tensor(r.boxes, dtype=torch.float32).reshape(g, 4)
        target = {
            "boxes": boxes,
            "labels": torch.tensor(r.labels, dtype=torch.int64),
            "has_mask": torch.zeros(g, dtype=torch.bool),
            "image_id": torch.tensor(r.image_id, dtype=torch.int64),
            "iscrowd": torch.zeros(g, dtype=torch.int64),
            "area": (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]),
        }
        return image, target
