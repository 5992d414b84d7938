"""A COCO-format detection/segmentation dataset: a COCO json plus an image folder.

Items follow docs/contracts.md ("Training targets"). Everything the json says is validated at
load, so that a malformed entry fails at start-up with the file and the annotation (or image) id
in the message, not hours into training; images are decoded lazily in ``__getitem__`` so that
DataLoader workers do that work.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from training.datasets.base import DetectionDataset, path_inside, summarise_ids
from training.datasets.errors import DatasetError
from training.datasets.vocab import ClassVocabulary

__all__ = [
    "CocoDataset",
    "DatasetError",
    "LoadStats",
    "decode_segmentation",
    "load_json",
    "load_rgb_image",
]

logger = logging.getLogger(__name__)

#: Boxes whose width or height is at most this many pixels (after clipping) are dropped.
MIN_BOX_SIZE = 1.0
#: How many offending ids a logged summary lists before "...".


@dataclass
class LoadStats:
    """What loading kept and dropped; ``*_ids`` hold the annotation (or image) ids."""

    images: int = 0
    instances: int = 0
    crowd: int = 0
    box_only: int = 0
    degenerate_ids: list[int] = field(default_factory=list)
    dropped_empty_image_ids: list[int] = field(default_factory=list)

    @property
    def degenerate(self) -> int:
        return len(self.degenerate_ids)


@dataclass(frozen=True)
class _Instance:
    ann_id: int
    label: int  # model label, 1..K
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 after clipping
    area: float
    segmentation: Any  # polygons (list) or RLE (dict); None when box-only


@dataclass(frozen=True)
class _ImageRecord:
    image_id: int
    path: Path
    file_name: str
    height: int
    width: int
    instances: tuple[_Instance, ...]


def load_json(path: str | os.PathLike) -> Any:
    """``json.load`` whose errors name the file (truncated or invalid JSON, missing file)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: annotation file not found") from e
    except OSError as e:  # a folder, no permission, an I/O error
        raise DatasetError(f"{path}: cannot read the annotation file: {e.strerror or e}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: invalid or truncated JSON: {e}") from e


def load_rgb_image(path: Path, *, expected_hw: tuple[int, int], what: str) -> torch.Tensor:
    """Decode an image file to float32 ``[3, H, W]`` RGB in [0, 1].

    Grayscale, palette and RGBA images become RGB (alpha is dropped: annotations refer to the
    stored pixels). EXIF orientation is *not* applied, as COCO annotations are in stored pixels.
    ``expected_hw`` is the (height, width) the annotation file promises; a mismatch raises, as
    boxes and masks would not line up with the pixels.
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")
            rgb = im.convert("RGB")
    except FileNotFoundError as e:
        raise DatasetError(f"{what}: image file {path} not found") from e
    except OSError as e:
        raise DatasetError(f"{what}: cannot decode image file {path}: {e}") from e
    if (rgb.height, rgb.width) != tuple(expected_hw):
        raise DatasetError(
            f"{what}: image file {path} is {rgb.width}x{rgb.height} (WxH) but the annotation "
            f"file says {expected_hw[1]}x{expected_hw[0]}"
        )
    array = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _all_numbers(values: list) -> bool:
    """All finite ints/floats (not bools). Fast path: COCO train holds ~10^7 polygon numbers."""
    # type() rather than isinstance() excludes bool; a NaN or inf anywhere makes the sum so.
    return all(type(v) is float or type(v) is int for v in values) and math.isfinite(sum(values))


def _check_segmentation(seg: Any, height: int, width: int, where: str) -> Any:
    """Validate a COCO segmentation; return it, or None when it holds no mask (``[]``)."""
    if isinstance(seg, list):
        if not seg:
            return None
        for poly in seg:
            if (
                not isinstance(poly, list)
                or len(poly) < 6
                or len(poly) % 2
                or not _all_numbers(poly)
            ):
                raise DatasetError(
                    f"{where}: polygon segmentation must be lists of at least 3 (x, y) number "
                    f"pairs, got {poly!r:.80}"
                )
        return seg
    if isinstance(seg, dict):
        counts, size = seg.get("counts"), seg.get("size")
        if (
            not isinstance(size, list)
            or len(size) != 2
            or not all(isinstance(v, int) for v in size)
        ):
            raise DatasetError(f"{where}: RLE segmentation needs 'size': [height, width]")
        if list(size) != [height, width]:
            raise DatasetError(
                f"{where}: RLE size {size} does not match the image's [height, width] "
                f"[{height}, {width}]"
            )
        if isinstance(counts, str):
            return seg
        if isinstance(counts, list) and all(isinstance(v, int) and v >= 0 for v in counts):
            if sum(counts) != height * width:
                raise DatasetError(
                    f"{where}: uncompressed RLE counts sum to {sum(counts)}, not "
                    f"height*width = {height * width}"
                )
            return seg
        raise DatasetError(
            f"{where}: RLE 'counts' must be a string (compressed) or a list of non-negative "
            f"ints (uncompressed), got {type(counts).__name__}"
        )
    raise DatasetError(
        f"{where}: segmentation must be a list of polygons or an RLE dict, got {type(seg).__name__}"
    )


def decode_segmentation(seg: Any, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) → uint8 ``[H, W]`` 0/1."""
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        rle = seg
    with warnings.catch_warnings():
        # pycocotools' Cython decode trips NumPy 2's copy-keyword DeprecationWarning; harmless.
        warnings.simplefilter("ignore", DeprecationWarning)
        decoded = mask_utils.decode(rle)
    return np.ascontiguousarray(decoded, dtype=np.uint8)


class CocoDataset(DetectionDataset):
    """Map-style dataset over a COCO json and its image folder.

    Item ``i`` is ``(image, target)``: ``image`` float32 ``[3, H, W]`` RGB in [0, 1]; ``target``
    holds ``boxes`` float32 ``[G, 4]`` (x1, y1, x2, y2, absolute pixels), ``labels`` int64
    ``[G]`` (1..K), ``masks`` uint8 ``[G, H, W]`` (present when the vocabulary has any class in
    A; zeros for instances without a mask), ``has_mask`` bool ``[G]`` (class in A **and** the
    annotation had a segmentation), ``image_id`` int64 scalar, ``iscrowd`` int64 ``[G]`` (zeros)
    and ``area`` float32 ``[G]`` (the annotation's ``area``, or the box area when absent).

    Crowd regions are not instances and are left out; boxes with a negative size, or of at
    most :data:`MIN_BOX_SIZE` pixels in width or height after clipping to the image, are
    dropped and counted (a summary is logged). Classes outside A lose their masks even when the
    file has them, which is how partial supervision is simulated on fully annotated data.

    Args:
        annotation_file: the COCO json.
        image_root: folder that ``file_name`` entries are relative to (sub-folders allowed).
        vocab: class vocabulary to label with. Default: the file's categories ordered by id.
            When given, each category is matched to a vocabulary class by name (e.g. COCO
            relabelled into the Visual Genome vocabulary); its ``mask_classes`` define A unless
            ``mask_classes`` is given too.
        mask_classes: a :func:`~training.datasets.vocab.mask_split` spec (``all``, ``voc``,
            ``nonvoc``, ``none`` or a file of class names/ids). Default ``all`` (or the
            vocabulary's own flags).
        drop_empty: leave out images with no trainable instance (for training).
        hflip_prob: probability of a random horizontal flip of image, boxes and masks (training
            augmentation; uses the torch RNG of the process or DataLoader worker).
        check_files: check at load that every image file exists.

    Attributes:
        vocab: the class vocabulary (with the A/B flags in use).
        stats: a :class:`LoadStats` of what was kept and dropped.
        coco: the pycocotools ``COCO`` object of the file (built on first use), for evaluation.
    """

    def __init__(
        self,
        annotation_file: str | os.PathLike,
        image_root: str | os.PathLike,
        *,
        vocab: ClassVocabulary | None = None,
        mask_classes: str | os.PathLike | None = None,
        drop_empty: bool = False,
        hflip_prob: float = 0.0,
        check_files: bool = True,
    ) -> None:
        super().__init__(hflip_prob=hflip_prob)
        self.annotation_file = Path(annotation_file)
        self.image_root = Path(image_root)
        self._coco = None
        data = load_json(self.annotation_file)
        categories = self._read_categories(data)
        self.vocab, self._label_of_category = self._make_vocabulary(categories, vocab, mask_classes)
        self.stats = LoadStats()
        self._records = self._read_records(data, check_files=check_files, drop_empty=drop_empty)
        self.stats.images = len(self._records)
        self.stats.instances = sum(len(r.instances) for r in self._records)
        self._log_summary()

    # -- loading ------------------------------------------------------------------------------

    def _where(self, kind: str, ident: Any) -> str:
        return f"{self.annotation_file}: {kind} id {ident}"

    def _read_categories(self, data: Any) -> list[dict]:
        f = self.annotation_file
        if not isinstance(data, dict):
            raise DatasetError(
                f"{f}: top level must be a JSON object with 'images', "
                "'annotations' and 'categories'"
            )
        for key in ("images", "categories"):
            if not isinstance(data.get(key), list):
                raise DatasetError(f"{f}: missing or non-list '{key}'")
        if not isinstance(data.get("annotations", []), list):
            raise DatasetError(f"{f}: 'annotations' must be a list")
        seen: set[int] = set()
        cats = []
        for c in data["categories"]:
            if not isinstance(c, dict) or not isinstance(c.get("id"), int):
                raise DatasetError(f"{f}: category without an integer 'id': {c!r:.100}")
            if not isinstance(c.get("name"), str):
                raise DatasetError(f"{self._where('category', c['id'])}: missing 'name'")
            if c["id"] in seen:
                raise DatasetError(f"{self._where('category', c['id'])}: duplicate category id")
            seen.add(c["id"])
            cats.append(c)
        if not cats:
            raise DatasetError(f"{f}: no categories")
        return cats

    def _make_vocabulary(
        self,
        categories: list[dict],
        vocab: ClassVocabulary | None,
        mask_classes: str | os.PathLike | None,
    ) -> tuple[ClassVocabulary, dict[int, int]]:
        if vocab is None:
            try:
                vocab = ClassVocabulary.from_categories(categories, mask_classes)
            except ValueError as e:
                raise DatasetError(f"{self.annotation_file}: {e}") from e
            return vocab, {sid: i + 1 for i, sid in enumerate(vocab.source_ids)}
        if mask_classes is not None:
            vocab = vocab.with_mask_split(mask_classes)
        label_of = {}
        for c in categories:
            if c["name"] not in vocab:
                raise DatasetError(
                    f"{self._where('category', c['id'])}: category {c['name']!r} is not in the "
                    f"class vocabulary ({vocab.num_classes} classes)"
                )
            label_of[c["id"]] = vocab.label(c["name"])
        return vocab, label_of

    def _read_records(
        self, data: dict, *, check_files: bool, drop_empty: bool
    ) -> list[_ImageRecord]:
        images: dict[int, dict] = {}
        for img in data["images"]:
            if not isinstance(img, dict) or not isinstance(img.get("id"), int):
                raise DatasetError(
                    f"{self.annotation_file}: image without an integer 'id': {img!r:.100}"
                )
            where = self._where("image", img["id"])
            if img["id"] in images:
                raise DatasetError(f"{where}: duplicate image id")
            if not isinstance(img.get("file_name"), str) or not img["file_name"]:
                raise DatasetError(f"{where}: missing 'file_name'")
            path_inside(self.image_root, img["file_name"], where)
            for key in ("height", "width"):
                if not isinstance(img.get(key), int) or img[key] <= 0:
                    raise DatasetError(
                        f"{where}: '{key}' must be a positive int, got {img.get(key)!r}"
                    )
            if check_files and not (self.image_root / img["file_name"]).is_file():
                raise DatasetError(
                    f"{where}: image file {self.image_root / img['file_name']} not found"
                )
            images[img["id"]] = img

        per_image: dict[int, list[_Instance]] = {i: [] for i in images}
        seen_ann: set[int] = set()
        for ann in data.get("annotations", []):
            inst = self._read_annotation(ann, images, seen_ann)
            if inst is not None:
                per_image[ann["image_id"]].append(inst)

        records = []
        for image_id, img in images.items():
            instances = tuple(per_image[image_id])
            if drop_empty and not instances:
                self.stats.dropped_empty_image_ids.append(image_id)
                continue
            records.append(
                _ImageRecord(
                    image_id=image_id,
                    path=self.image_root / img["file_name"],
                    file_name=img["file_name"],
                    height=img["height"],
                    width=img["width"],
                    instances=instances,
                )
            )
        return records

    def _read_annotation(
        self, ann: Any, images: Mapping[int, dict], seen: set[int]
    ) -> _Instance | None:
        if not isinstance(ann, dict) or not isinstance(ann.get("id"), int):
            raise DatasetError(
                f"{self.annotation_file}: annotation without an integer 'id': {ann!r:.100}"
            )
        where = self._where("annotation", ann["id"])
        if ann["id"] in seen:
            raise DatasetError(f"{where}: duplicate annotation id")
        seen.add(ann["id"])
        img = images.get(ann.get("image_id"))  # type: ignore[arg-type]
        if img is None:
            raise DatasetError(f"{where}: unknown image_id {ann.get('image_id')!r}")
        cat = ann.get("category_id")
        if cat not in self._label_of_category:
            raise DatasetError(f"{where}: unknown category_id {cat!r}")
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not _all_numbers(bbox):
            raise DatasetError(
                f"{where}: 'bbox' must be 4 finite numbers [x, y, w, h], got {bbox!r:.80}"
            )
        iscrowd = ann.get("iscrowd", 0)
        if iscrowd not in (0, 1):
            raise DatasetError(f"{where}: 'iscrowd' must be 0 or 1, got {iscrowd!r}")
        h, w = img["height"], img["width"]
        seg = ann.get("segmentation")
        if seg is not None:
            seg = _check_segmentation(seg, h, w, where)
        if iscrowd:
            self.stats.crowd += 1
            return None
        x, y, bw, bh = (float(v) for v in bbox)
        x1, y1 = min(max(x, 0.0), w), min(max(y, 0.0), h)
        x2, y2 = min(max(x + bw, 0.0), w), min(max(y + bh, 0.0), h)
        if bw < 0 or bh < 0 or x2 - x1 <= MIN_BOX_SIZE or y2 - y1 <= MIN_BOX_SIZE:
            self.stats.degenerate_ids.append(ann["id"])
            return None
        if seg is None:
            self.stats.box_only += 1
        area = ann.get("area")
        area = float(area) if _is_number(area) else (x2 - x1) * (y2 - y1)
        return _Instance(ann["id"], self._label_of_category[cat], (x1, y1, x2, y2), area, seg)

    def _log_summary(self) -> None:
        s = self.stats
        logger.info(
            "%s: %d images, %d instances (%d box-only), %d crowd regions left out",
            self.annotation_file,
            s.images,
            s.instances,
            s.box_only,
            s.crowd,
        )
        if s.degenerate_ids:
            logger.warning(
                "%s: dropped %d annotations with degenerate boxes (negative size, or width or "
                "height <= %g px after clipping to the image): annotation ids %s",
                self.annotation_file,
                s.degenerate,
                MIN_BOX_SIZE,
                summarise_ids(s.degenerate_ids),
            )
        if s.dropped_empty_image_ids:
            logger.info(
                "%s: left out %d images with no trainable instance: image ids %s",
                self.annotation_file,
                len(s.dropped_empty_image_ids),
                summarise_ids(s.dropped_empty_image_ids),
            )

    # -- access -------------------------------------------------------------------------------

    @property
    def coco(self) -> Any:
        """The pycocotools ``COCO`` object of the annotation file (built on first use)."""
        if self._coco is None:
            from pycocotools.coco import COCO

            # COCO() prints progress to stdout; keep the CLI's output clean.
            with contextlib.redirect_stdout(io.StringIO()):
                self._coco = COCO(str(self.annotation_file))
        return self._coco

    def load(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        r = self._records[index]
        image = load_rgb_image(
            r.path, expected_hw=(r.height, r.width), what=self._where("image", r.image_id)
        )
        return image, self._target(r)

    def _target(self, r: _ImageRecord) -> dict[str, torch.Tensor]:
        g = len(r.instances)
        in_a = self.vocab.mask_classes
        boxes = torch.tensor([i.box for i in r.instances], dtype=torch.float32).reshape(g, 4)
        labels = torch.tensor([i.label for i in r.instances], dtype=torch.int64)
        has_mask = torch.tensor(
            [in_a[i.label - 1] and i.segmentation is not None for i in r.instances],
            dtype=torch.bool,
        )
        target = {
            "boxes": boxes,
            "labels": labels,
            "has_mask": has_mask,
            "image_id": torch.tensor(r.image_id, dtype=torch.int64),
            "iscrowd": torch.zeros(g, dtype=torch.int64),
            "area": torch.tensor([i.area for i in r.instances], dtype=torch.float32),
        }
        if any(in_a):
            masks = np.zeros((g, r.height, r.width), dtype=np.uint8)
            for k, inst in enumerate(r.instances):
                if has_mask[k]:
                    try:
                        masks[k] = decode_segmentation(inst.segmentation, r.height, r.width)
                    except Exception as e:  # pycocotools raises bare Exceptions
                        raise DatasetError(
                            f"{self._where('annotation', inst.ann_id)}: cannot decode "
                            f"segmentation: {e}"
                        ) from e
            target["masks"] = torch.from_numpy(masks)
        return target
