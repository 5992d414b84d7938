"""Horizontal flips that know about mirror-image classes.

A horizontal flip turns a "left arrow" into a right arrow. Detection libraries handle this
with a *flip map*: pairs of classes whose labels swap when an image is flipped. A dataset
declares it in a JSON file (``data.flip_map``)::

    {"pairs": [["arrow-right", "arrow-left"], ...],
     "unflippable": ["stripes-red", ...],        # optional: classes no flip maps to a class
     "reason": "diagonal stripes change direction"}  # optional, logged

or just a list of pairs (``[["a", "b"], ...]``). Names (or category ids) must be classes of
the vocabulary; every class outside the pairs is its own mirror image. A dataset that declares
``unflippable`` classes is not flipped at all, with the reason in the log: a flipped image of
such a class would show something that is not in the vocabulary under its label.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from training.datasets.errors import DatasetError


@dataclass(frozen=True)
class FlipMap:
    """``labels[l]``: the model label (0..K, 0 = background) a flip turns label ``l`` into.

    ``disabled`` names why flipping is off for this dataset (None: flipping allowed).
    """

    labels: torch.Tensor
    disabled: str | None = None

    @classmethod
    def identity(cls, num_classes: int) -> FlipMap:
        return cls(torch.arange(num_classes + 1))


def load_flip_map(path: str | os.PathLike, vocab: Any) -> FlipMap:
    """Read a flip-map file (module docstring) against a :class:`ClassVocabulary`.

    Raises:
        DatasetError: unreadable file, unknown class, a class in two pairs.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"flip map {str(path)!r} cannot be read: {exc}") from exc
    if isinstance(data, list):
        data = {"pairs": data}
    if not isinstance(data, dict) or not isinstance(data.get("pairs", []), list):
        raise DatasetError(f"flip map {str(path)!r}: expected {{'pairs': [[a, b], ...]}}")

    def label(key: Any) -> int:
        try:
            return vocab.label(key)
        except (KeyError, ValueError) as exc:
            raise DatasetError(f"flip map {str(path)!r}: {key!r} is not a class") from exc

    labels = torch.arange(len(vocab) + 1)
    seen: set[int] = set()
    for pair in data.get("pairs", []):
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise DatasetError(
                f"flip map {str(path)!r}: a pair must hold two classes, got {pair!r}"
            )
        a, b = label(pair[0]), label(pair[1])
        if a in seen or b in seen or a == b:
            raise DatasetError(f"flip map {str(path)!r}: {pair!r} repeats a class")
        seen |= {a, b}
        labels[a], labels[b] = b, a
    unflippable = [str(n) for n in data.get("unflippable", [])]
    for name in unflippable:
        label(name)
    disabled = None
    if unflippable:
        reason = data.get("reason") or "a flip maps them to no class of the vocabulary"
        disabled = (
            f"{len(unflippable)} class(es) have no mirror image in the vocabulary "
            f"({', '.join(unflippable[:3])}{', ...' if len(unflippable) > 3 else ''}): {reason}"
        )
    return FlipMap(labels, disabled)


def flip_map_for(
    path: str | os.PathLike | None, vocab: Any, log: logging.Logger | None = None
) -> FlipMap:
    """The flip map of a training set: ``path`` (``data.flip_map``) or the identity; logs
    when flipping is disabled and how many pairs swap."""
    if path is None:
        return FlipMap.identity(len(vocab))
    fm = load_flip_map(path, vocab)
    if log is not None:
        if fm.disabled:
            log.info("horizontal flips disabled: %s", fm.disabled)
        else:
            swaps = int((fm.labels != torch.arange(len(fm.labels))).sum()) // 2
            log.info("horizontal flips swap %d mirror pair(s) of classes (%s)", swaps, path)
    return fm


def flip_batch(
    images: list[torch.Tensor],
    targets: list[dict[str, torch.Tensor]],
    flips: torch.Tensor,
    flip_map: FlipMap | None = None,
) -> None:
    """Horizontally flip, in place, the images (boxes, masks, and labels of mirror pairs)
    where ``flips``; nothing when ``flip_map.disabled``."""
    if flip_map is not None and flip_map.disabled:
        return
    for i in torch.where(flips)[0].tolist():
        w = images[i].shape[-1]
        images[i] = images[i].flip(-1)
        t = targets[i]
        boxes = t["boxes"].clone()
        boxes[:, 0], boxes[:, 2] = w - t["boxes"][:, 2], w - t["boxes"][:, 0]
        t["boxes"] = boxes
        if "masks" in t:
            t["masks"] = t["masks"].flip(-1)
        if flip_map is not None and "labels" in t:
            t["labels"] = flip_map.labels.to(t["labels"].device)[t["labels"]]
