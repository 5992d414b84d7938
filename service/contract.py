"""The ONNX graph contract between ``maskx export`` (the writer) and the service (the reader).

Defined once, here, by the part that reads it; the exporter (``training/export``) and the test
graph writer import it. Torch-free, so the serving image can import it. See docs/contracts.md
("ONNX graph").

* inputs :data:`INPUT_NAMES`: ``images`` uint8 ``[B, 3, H, W]`` RGB, zero-padded to multiples of
  ``size_divisible``; ``image_sizes`` int64 ``[B, 2]`` (height, width of each valid region);
* outputs :data:`OUTPUT_NAMES`: ``boxes`` float32 ``[N, 4]`` (x1, y1, x2, y2 in input pixels),
  ``scores`` float32 ``[N]``, ``labels`` int64 ``[N]`` (1..K), ``batch_index`` int64 ``[N]``,
  ``mask_probs`` float32 ``[N, M, M]``; detections of one image contiguous, best first;
* ``metadata_props`` key :data:`METADATA_KEY`: one JSON object, :class:`ModelMetadata`; its
  ``resize_rule`` and ``mask_paste`` name the rules (:data:`RESIZE_RULES`,
  :data:`MASK_PASTES`) by which the service brings an image to the model's scale
  (:mod:`service.resize`) and pastes the box-local masks (:mod:`service.postprocess`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

METADATA_KEY = "maskx"
FORMAT_VERSION = 1
INPUT_NAMES = ("images", "image_sizes")
OUTPUT_NAMES = ("boxes", "scores", "labels", "batch_index", "mask_probs")
RESIZE_RULES = ("floor", "detectron")
"""``floor``: torchvision's (every maskx-trained model); ``detectron``: Detectron's
``prep_im_for_blob`` (the authors' released models). The first is the default."""
MASK_PASTES = ("maskx", "detectron")
"""``maskx``: torchvision's ``paste_masks_in_image`` geometry; ``detectron``: Detectron's
``segm_results``. The first is the default."""

# JSON keys with a typed field below; every other key is kept, unread, in ``provenance``.
# ``source_ids`` is the file's name for the dataset category ids (kept for files already written).
_TYPED_KEYS = frozenset(
    {"format_version", "name", "version", "classes", "mask_classes", "source_ids", "min_size",
     "max_size", "size_divisible", "mask_resolution", "resize_rule", "mask_paste"}
)  # fmt: skip


@dataclass(frozen=True)
class ModelMetadata:
    """What a model file says about itself: the class table, the input scale, the mask size.

    ``classes[i]`` is model label ``i + 1``; ``mask_classes[i]`` is True for classes that had
    mask supervision (set A); ``category_ids[i]`` is that class's id in the dataset it was
    trained on (COCO ``category_id``; 1..K when the file does not say). ``provenance`` holds the
    exporter's other keys (normalisation, checkpoint hash, configs, ...) as written.
    ``resize_rule`` and ``mask_paste`` say how the service resizes images for this model and
    pastes its masks; files written before they existed get the defaults, which are what the
    service did for every file then.

    The model's identity (:attr:`checkpoint_sha256`, :attr:`precision`, :attr:`exported_at`,
    :attr:`maskx_version`, :attr:`score_floor`) is read from ``provenance``: None where a file
    written by an older exporter lacks the key.
    """

    name: str
    version: str
    classes: tuple[str, ...]
    mask_classes: tuple[bool, ...]
    min_size: int
    max_size: int
    category_ids: tuple[int, ...] = ()
    size_divisible: int = 32
    mask_resolution: int = 28
    resize_rule: str = RESIZE_RULES[0]
    mask_paste: str = MASK_PASTES[0]
    format_version: int = FORMAT_VERSION
    provenance: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.category_ids:
            object.__setattr__(self, "category_ids", tuple(range(1, len(self.classes) + 1)))
        if self.resize_rule not in RESIZE_RULES:
            raise ValueError(f"resize_rule={self.resize_rule!r} is not one of {RESIZE_RULES}")
        if self.mask_paste not in MASK_PASTES:
            raise ValueError(f"mask_paste={self.mask_paste!r} is not one of {MASK_PASTES}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def checkpoint_sha256(self) -> str | None:
        """sha256 (hex) of the training checkpoint the file was exported from."""
        value = self.provenance.get("checkpoint_sha256")
        return value if isinstance(value, str) else None

    @property
    def precision(self) -> str | None:
        """``fp32``, or ``fp16-backbone`` (``maskx export --fp16``)."""
        value = self.provenance.get("precision")
        return value if isinstance(value, str) else None

    @property
    def exported_at(self) -> str | None:
        """When ``maskx export`` wrote the file: ISO 8601, UTC (``2026-12-03T10:11:22Z``)."""
        value = self.provenance.get("exported_at")
        return value if isinstance(value, str) else None

    @property
    def maskx_version(self) -> str | None:
        """The maskx version that exported the file; for files that predate the field, read
        from the ``exporter`` line (``"maskx 0.1.0, torch 2.x, opset 17"``)."""
        value = self.provenance.get("maskx_version")
        if isinstance(value, str):
            return value
        exporter = self.provenance.get("exporter")
        if isinstance(exporter, str) and exporter.startswith("maskx "):
            return exporter.split(",")[0].removeprefix("maskx ").strip() or None
        return None

    @property
    def score_floor(self) -> float | None:
        """The graph's own score threshold (the model's ``box_score_thresh`` at export):
        detections scoring below it never leave the graph, so a request for less gets this.
        None when the file does not say (no floor is applied then)."""
        value = self.provenance.get("score_threshold")
        return float(value) if value is not None else None

    def class_name(self, label: int) -> str:
        """Name of model label ``label`` (1..K)."""
        return self.classes[label - 1]

    def category_id(self, label: int) -> int:
        """Dataset category id of model label ``label`` (1..K)."""
        return self.category_ids[label - 1]

    def mask_source(self, label: int) -> str:
        """``supervised`` for classes in the mask set A, ``transferred`` for classes in B."""
        return "supervised" if self.mask_classes[label - 1] else "transferred"

    def to_dict(self) -> dict[str, Any]:
        """The JSON object stored under :data:`METADATA_KEY` (provenance keys at top level)."""
        return {
            "format_version": self.format_version,
            "name": self.name,
            "version": self.version,
            "classes": list(self.classes),
            "mask_classes": list(self.mask_classes),
            "source_ids": list(self.category_ids),
            "min_size": self.min_size,
            "max_size": self.max_size,
            "size_divisible": self.size_divisible,
            "mask_resolution": self.mask_resolution,
            "resize_rule": self.resize_rule,
            "mask_paste": self.mask_paste,
            **{k: v for k, v in self.provenance.items() if k not in _TYPED_KEYS},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def parse(cls, raw: str, source: str = "model") -> ModelMetadata:
        """Parse the metadata JSON; errors name ``source`` and the field at fault."""
        try:
            meta = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{source}: metadata key {METADATA_KEY!r} is not valid JSON: {exc}"
            ) from exc
        return cls.from_dict(meta, source)

    @classmethod
    def from_dict(cls, meta: Any, source: str = "model") -> ModelMetadata:
        """Check and convert the decoded JSON object (see :meth:`parse`)."""
        if not isinstance(meta, dict):
            raise ValueError(f"{source}: metadata key {METADATA_KEY!r} must hold a JSON object")

        def need(key: str, kind: type) -> Any:
            if key not in meta:
                raise ValueError(f"{source}: metadata {METADATA_KEY!r} lacks field {key!r}")
            value = meta[key]
            if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
                raise ValueError(
                    f"{source}: metadata field {key!r}={value!r} should be of type {kind.__name__}"
                )
            return value

        version = meta.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{source}: metadata format_version={version!r} is not supported ({FORMAT_VERSION})"
            )
        classes = need("classes", list)
        if not classes or not all(isinstance(c, str) and c for c in classes):
            raise ValueError(
                f"{source}: metadata field 'classes' must be a non-empty list of names"
            )
        mask_classes = meta.get("mask_classes", [True] * len(classes))
        if len(mask_classes) != len(classes) or not all(isinstance(m, bool) for m in mask_classes):
            raise ValueError(
                f"{source}: metadata field 'mask_classes' must be {len(classes)} booleans "
                f"(one per class), got {len(mask_classes)} values"
            )
        category_ids = meta.get("source_ids") or list(range(1, len(classes) + 1))
        if len(category_ids) != len(classes) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in category_ids
        ):
            raise ValueError(
                f"{source}: metadata field 'source_ids' must be {len(classes)} integers "
                f"(the dataset category id of each class), got {category_ids!r:.80}"
            )
        min_size = need("min_size", int)
        max_size = need("max_size", int)
        if not 0 < min_size <= max_size:
            raise ValueError(
                f"{source}: metadata min_size={min_size}, max_size={max_size}: need 0 < min <= max"
            )
        size_divisible = meta.get("size_divisible", 32)
        mask_resolution = meta.get("mask_resolution", 28)
        for key, value in (
            ("size_divisible", size_divisible),
            ("mask_resolution", mask_resolution),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"{source}: metadata field {key!r}={value!r} must be a positive int"
                )
        floor = meta.get("score_threshold")
        if floor is not None and (
            not isinstance(floor, int | float) or isinstance(floor, bool) or not 0 <= floor <= 1
        ):
            raise ValueError(
                f"{source}: metadata field 'score_threshold'={floor!r} (the graph's score floor) "
                "must be a number in [0, 1]"
            )
        resize_rule = meta.get("resize_rule", RESIZE_RULES[0])
        mask_paste = meta.get("mask_paste", MASK_PASTES[0])
        for key, value, allowed in (
            ("resize_rule", resize_rule, RESIZE_RULES),
            ("mask_paste", mask_paste, MASK_PASTES),
        ):
            if value not in allowed:
                raise ValueError(
                    f"{source}: metadata field {key!r}={value!r} must be one of "
                    + ", ".join(repr(a) for a in allowed)
                )
        return cls(
            name=str(meta.get("name", "maskx")),
            version=str(meta.get("version", "0")),
            classes=tuple(classes),
            mask_classes=tuple(mask_classes),
            category_ids=tuple(category_ids),
            min_size=min_size,
            max_size=max_size,
            size_divisible=size_divisible,
            mask_resolution=mask_resolution,
            resize_rule=resize_rule,
            mask_paste=mask_paste,
            format_version=version,
            provenance={k: v for k, v in meta.items() if k not in _TYPED_KEYS},
        )
