"""Package data tables: the COCO class list with its Visual Genome synsets, the VOC class list.

The tables are plain files next to this module (``coco_vg_synsets.json``, ``voc_classes.txt``)
so that other tools can read them too; these helpers parse them once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

__all__ = ["CocoClass", "coco_classes", "synset_to_coco_name", "voc_class_names"]


@dataclass(frozen=True)
class CocoClass:
    """One of the 80 COCO classes: its category id, name and Visual Genome synsets."""

    coco_id: int
    name: str
    synset: str
    aliases: tuple[str, ...] = ()
    reference: str = "by_name"
    """How the Mask^X R-CNN reference maps the class to a synset: ``manual`` (its hand-written
    table: ``synset``) or ``by_name`` (the most frequent top-K synset named like the class)."""

    @property
    def synsets(self) -> tuple[str, ...]:
        """The main synset first, then the aliases."""
        return (self.synset, *self.aliases)


@cache
def coco_classes() -> tuple[CocoClass, ...]:
    """The 80 COCO classes in COCO category order (ids 1..90 with gaps)."""
    text = resources.files(__package__).joinpath("coco_vg_synsets.json").read_text("utf-8")
    rows = json.loads(text)["classes"]
    return tuple(
        CocoClass(
            int(r["coco_id"]),
            r["name"],
            r["synset"],
            tuple(r.get("aliases", ())),
            r.get("reference", "by_name"),
        )
        for r in rows
    )


@cache
def synset_to_coco_name() -> dict[str, str]:
    """Every synset of the table (main and aliases) → the COCO class name it labels."""
    return {s: c.name for c in coco_classes() for s in c.synsets}


@cache
def voc_class_names() -> tuple[str, ...]:
    """The 20 PASCAL VOC classes in COCO's names (the paper's ``voc`` split)."""
    text = resources.files(__package__).joinpath("voc_classes.txt").read_text("utf-8")
    lines = (line.strip() for line in text.splitlines())
    return tuple(line for line in lines if line and not line.startswith("#"))
