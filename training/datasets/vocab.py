"""The class vocabulary: ordered class names, the mask set A, and the dataset's own ids.

Class ``i`` (0-based) is model label ``i + 1``; label 0 is background. ``mask_classes[i]`` says
whether class ``i`` is in A (trained with masks); the others form B (boxes only, masks by weight
transfer). The vocabulary travels inside checkpoints and ONNX metadata as
``{"names": [...], "mask_classes": [...], "source_ids": [...]}`` (docs/contracts.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from training.class_tables import coco_classes, voc_class_names

__all__ = ["MASK_SPLITS", "ClassVocabulary", "mask_split"]

#: The named mask splits; anything else given as a spec is read as a file path.
MASK_SPLITS = ("all", "voc", "nonvoc", "none")


@dataclass(frozen=True)
class ClassVocabulary:
    """An ordered list of K classes with their A/B flags and source (dataset) category ids.

    Args:
        names: K distinct class names; class ``i`` is model label ``i + 1``.
        mask_classes: K bools, True for classes in the mask set A.
        source_ids: K distinct ints, the dataset's own category id of each class (COCO
            ``category_id``; in the Visual Genome vocabulary, the COCO id of the COCO classes and
            ``1000 + label`` for the others).
    """

    names: tuple[str, ...]
    mask_classes: tuple[bool, ...]
    source_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "mask_classes", tuple(bool(m) for m in self.mask_classes))
        object.__setattr__(self, "source_ids", tuple(int(i) for i in self.source_ids))
        k = len(self.names)
        if k == 0:
            raise ValueError("a class vocabulary needs at least one class")
        if len(self.mask_classes) != k or len(self.source_ids) != k:
            raise ValueError(
                f"class vocabulary: {k} names but {len(self.mask_classes)} mask_classes flags "
                f"and {len(self.source_ids)} source_ids; all three must have one entry per class"
            )
        for what, values in (("name", self.names), ("source id", self.source_ids)):
            seen: set[Any] = set()
            for v in values:
                if v in seen:
                    raise ValueError(f"class vocabulary: duplicate class {what} {v!r}")
                seen.add(v)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_categories(
        cls, categories: Iterable[Mapping[str, Any]], mask_classes: str | os.PathLike | None = None
    ) -> ClassVocabulary:
        """Vocabulary of COCO-style ``categories`` (``{"id", "name"}``), ordered by id.

        ``mask_classes`` is a :func:`mask_split` spec (default ``"all"``).
        """
        cats = sorted(categories, key=lambda c: int(c["id"]))
        names = [str(c["name"]) for c in cats]
        ids = [int(c["id"]) for c in cats]
        flags = mask_split(list(zip(names, ids, strict=True)), mask_classes or "all")
        return cls(tuple(names), tuple(flags), tuple(ids))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassVocabulary:
        """Inverse of :meth:`to_dict`; ``source_ids`` defaults to 1..K when absent."""
        try:
            names = list(data["names"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"class vocabulary dict has no 'names' list: {data!r:.200}") from e
        flags = data.get("mask_classes")
        ids = data.get("source_ids")
        return cls(
            tuple(names),
            tuple(flags if flags is not None else [True] * len(names)),
            tuple(ids if ids is not None else range(1, len(names) + 1)),
        )

    def to_dict(self) -> dict[str, list]:
        """``{"names": [...], "mask_classes": [...], "source_ids": [...]}``, JSON-serialisable."""
        return {
            "names": list(self.names),
            "mask_classes": list(self.mask_classes),
            "source_ids": list(self.source_ids),
        }

    def with_mask_split(self, spec: str | os.PathLike) -> ClassVocabulary:
        """The same classes with A chosen by a :func:`mask_split` spec."""
        flags = mask_split(self, spec)
        return ClassVocabulary(self.names, tuple(flags), self.source_ids)

    # -- lookup -------------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        """K, the number of classes (background excluded)."""
        return len(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def index(self, key: str | int) -> int:
        """0-based class index of a class name, or of a source id when ``key`` is an int."""
        table = self._name_index if isinstance(key, str) else self._id_index
        try:
            return table[key]
        except KeyError:
            what = "name" if isinstance(key, str) else "source id"
            raise KeyError(f"class {what} {key!r} is not in the vocabulary") from None

    def label(self, key: str | int) -> int:
        """Model label (1..K) of a class name or source id."""
        return self.index(key) + 1

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            return key in self._name_index
        return isinstance(key, int) and key in self._id_index

    @property
    def a_indices(self) -> list[int]:
        """0-based indices of the classes in A (with mask supervision)."""
        return [i for i, m in enumerate(self.mask_classes) if m]

    @property
    def b_indices(self) -> list[int]:
        """0-based indices of the classes in B (boxes only)."""
        return [i for i, m in enumerate(self.mask_classes) if not m]

    # cached_property writes to the instance __dict__, which a frozen dataclass allows.
    @cached_property
    def _name_index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}

    @cached_property
    def _id_index(self) -> dict[int, int]:
        return {s: i for i, s in enumerate(self.source_ids)}


def mask_split(
    classes: ClassVocabulary | Sequence[tuple[str, int]], spec: str | os.PathLike
) -> list[bool]:
    """Which classes are in the mask set A, for each class of ``classes`` (in order).

    Args:
        classes: a vocabulary, or ``(name, source_id)`` pairs.
        spec: ``"all"`` (every class in A), ``"none"``, ``"voc"`` (the 20 PASCAL VOC classes,
            by COCO name), ``"nonvoc"`` (every class that is not a VOC class), or the path of a
            text file with one class name or source id per line (blank lines and ``#``
            comments ignored).

    Raises:
        ValueError: ``voc``/``nonvoc`` on a vocabulary without COCO class names; a file entry
            that names no class (the message gives the file, line and entry); a missing file.
    """
    if isinstance(classes, ClassVocabulary):
        pairs = list(zip(classes.names, classes.source_ids, strict=True))
    else:
        pairs = [(str(n), int(i)) for n, i in classes]
    names = [n for n, _ in pairs]
    spec_str = os.fspath(spec)
    if spec_str == "all":
        return [True] * len(pairs)
    if spec_str == "none":
        return [False] * len(pairs)
    if spec_str in ("voc", "nonvoc"):
        coco_names = {c.name for c in coco_classes()}
        if not any(n in coco_names for n in names):
            raise ValueError(
                f"mask split {spec_str!r} selects classes by their COCO names, but none of the "
                f"vocabulary's names is a COCO class name (first names: {names[:5]}); "
                "give a file of class names or ids instead"
            )
        voc = set(voc_class_names())
        return [(n in voc) == (spec_str == "voc") for n in names]
    path = Path(spec_str)
    if not path.is_file():
        raise ValueError(
            f"mask split {spec_str!r} is neither one of {', '.join(MASK_SPLITS)} nor an "
            "existing file of class names or ids"
        )
    by_name = {n: k for k, (n, _) in enumerate(pairs)}
    by_id = {i: k for k, (_, i) in enumerate(pairs)}
    flags = [False] * len(pairs)
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        k = by_name.get(entry)
        if k is None and entry.lstrip("-").isdigit():
            k = by_id.get(int(entry))
        if k is None:
            raise ValueError(
                f"{path}:{lineno}: mask class {entry!r} is neither a class name nor a category "
                f"id of the dataset (classes: {names[:10]}{'...' if len(names) > 10 else ''})"
            )
        flags[k] = True
    return flags
