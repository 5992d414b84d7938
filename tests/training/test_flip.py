"""Flips swap the labels of mirror-image classes; a dataset that declares classes no flip maps
is not flipped."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from training.datasets.errors import DatasetError
from training.datasets.flip import flip_batch, flip_map_for, load_flip_map
from training.datasets.vocab import ClassVocabulary

NAMES = ["arrow-right", "arrow-left", "disk", "L-normal", "L-mirrored"]


def _vocab() -> ClassVocabulary:
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(NAMES)]
    return ClassVocabulary.from_categories(cats)


def _batch():
    image = torch.zeros(3, 4, 6)
    image[:, :, 0] = 1.0  # a mark on the left edge
    target = {
        "boxes": torch.tensor([[0.0, 0.0, 2.0, 4.0], [1.0, 1.0, 3.0, 2.0], [2.0, 0.0, 6.0, 1.0]]),
        "labels": torch.tensor([1, 3, 5]),  # arrow-right, disk, L-mirrored
        "masks": torch.zeros(3, 4, 6, dtype=torch.uint8),
    }
    target["masks"][0, :, :2] = 1
    return [image], [target]


def test_flip_swaps_mirror_pairs_and_keeps_symmetric_classes(tmp_path):
    path = tmp_path / "flip.json"
    path.write_text(
        json.dumps({"pairs": [["arrow-right", "arrow-left"], ["L-normal", "L-mirrored"]]})
    )
    fm = load_flip_map(path, _vocab())
    assert fm.disabled is None
    images, targets = _batch()
    flip_batch(images, targets, torch.tensor([True]), fm)
    assert targets[0]["labels"].tolist() == [2, 3, 4]  # right→left, disk stays, mirrored→normal
    assert targets[0]["boxes"][0].tolist() == [4.0, 0.0, 6.0, 4.0]
    assert images[0][0, 0, -1] == 1.0 and images[0][0, 0, 0] == 0.0
    assert targets[0]["masks"][0, 0, -2:].tolist() == [1, 1]
    # Not flipped: nothing changes.
    images, targets = _batch()
    flip_batch(images, targets, torch.tensor([False]), fm)
    assert targets[0]["labels"].tolist() == [1, 3, 5]
    # A list of pairs alone is a valid file too; ids work as names.
    path.write_text(json.dumps([[1, 2]]))
    assert load_flip_map(path, _vocab()).labels.tolist() == [0, 2, 1, 3, 4, 5]


def test_dataset_with_unflippable_classes_is_not_flipped(tmp_path, caplog):
    path = tmp_path / "flip.json"
    path.write_text(json.dumps({"pairs": [], "unflippable": ["arrow-right"],
                                "reason": "its mirror class is not in the table"}))  # fmt: skip
    with caplog.at_level(logging.INFO):
        fm = flip_map_for(path, _vocab(), logging.getLogger("t"))
    assert fm.disabled and "arrow-right" in fm.disabled
    assert "horizontal flips disabled" in caplog.text and "not in the table" in caplog.text
    images, targets = _batch()
    before = targets[0]["boxes"].clone()
    flip_batch(images, targets, torch.tensor([True]), fm)
    assert torch.equal(targets[0]["boxes"], before) and images[0][0, 0, 0] == 1.0


@pytest.mark.parametrize(
    "content, message",
    [
        ({"pairs": [["arrow-right", "triangle"]]}, "'triangle' is not a class"),
        ({"pairs": [["arrow-right", "arrow-left"], ["arrow-left", "disk"]]}, "repeats a class"),
        ({"pairs": [["arrow-right"]]}, "two classes"),
    ],
)
def test_bad_flip_maps_are_named(tmp_path, content, message):
    path = tmp_path / "flip.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DatasetError, match=message):
        load_flip_map(path, _vocab())


def test_no_flip_map_means_every_class_is_its_own_mirror():
    fm = flip_map_for(None, _vocab())
    assert fm.disabled is None and fm.labels.tolist() == list(range(6))


def test_synthetic_generator_declares_its_mirror_pairs():
    from training.synth import SynthClass, flip_map

    classes = [
        SynthClass("arrow", "right", "red", "flat"),
        SynthClass("arrow", "left", "red", "flat"),
        SynthClass("L", "normal", "blue", "dots"),  # its mirror is not in the table
        SynthClass("disk", "round", "red", "stripes"),  # stripes change direction
        SynthClass("disk", "round", "red", "flat"),
    ]
    fm = flip_map(classes)
    assert fm["pairs"] == [["arrow-left-red-flat", "arrow-right-red-flat"]]
    assert sorted(fm["unflippable"]) == ["L-normal-blue-dots", "disk-round-red-stripes"]
