"""Visual Genome dataset and the VG + COCO mix on the tiny fixtures.

tests/fixtures/vg_tiny: 3 images, 16 objects; object 1003 has no synsets, 2005 has two
(shirt.n.01 first), 2006 is a rare synset, 2007 has a zero-width box; image 1 is COCO image 139.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from training.class_tables import coco_classes
from training.datasets.errors import DatasetError
from training.datasets.mixed import MixedDataset, coco_in_vocabulary
from training.datasets.visual_genome import VisualGenomeDataset, build_vg_vocabulary

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
VG = FIXTURES / "vg_tiny"
COCO = FIXTURES / "coco_tiny"


def _vg(root: Path = VG, **kwargs) -> VisualGenomeDataset:
    # These tests pin maskx's earlier rules (by_count vocabulary, first synset of several);
    # test_data_vg_reference.py pins the reference's, which are the defaults.
    kwargs.setdefault("num_classes", 83)
    kwargs.setdefault("vocabulary_rule", "by_count")
    kwargs.setdefault("multi_synset", "first")
    return VisualGenomeDataset(root / "image_data.json", root / "objects.json", **kwargs)


def test_vocabulary_puts_coco_classes_first_then_frequent_synsets() -> None:
    ds = _vg()
    v = ds.vocab
    coco_names = [c.name for c in coco_classes()]
    assert v.num_classes == 83
    assert list(v.names[:80]) == coco_names
    assert v.names[80:] == ("man.n.01", "tree.n.01", "window.n.01")  # by frequency 4, 3, 2
    assert v.mask_classes == (True,) * 80 + (False,) * 3
    # COCO classes keep their COCO ids (for scoring against COCO json), the others 1000 + label
    assert v.source_ids == (*(c.coco_id for c in coco_classes()), 1081, 1082, 1083)
    objects = json.loads((VG / "objects.json").read_text())
    assert build_vg_vocabulary(objects, 84, rule="by_count").names[-1] == (
        "shirt.n.01"  # shirt and zucchini tie at 1; names break the tie
    )
    with pytest.raises(ValueError, match="at least 80 classes"):
        build_vg_vocabulary([], 50, rule="by_count")


def test_counts_labels_and_drops() -> None:
    ds = _vg()
    s = ds.stats
    assert len(ds) == 3 and ds.image_ids == [1, 2, 3]
    assert s.objects == 12
    assert s.no_synset_ids == [1003]
    assert s.out_of_vocabulary_ids == [2005, 2006]  # shirt.n.01 (first synset), zucchini.n.02
    assert s.degenerate_ids == [2007]
    label = ds.vocab.label
    _, t1 = ds[0]
    assert t1["labels"].tolist() == [label("man.n.01"), label("person"), label("dog"),
                                     label("tree.n.01")]  # fmt: skip
    _, t2 = ds[1]
    assert t2["labels"].tolist() == [label("tree.n.01"), label("tv"), label("man.n.01"),
                                     label("window.n.01")]  # fmt: skip
    _, t3 = ds[2]  # sofa.n.01 is couch; the alias mouse.n.01 labels mouse
    assert t3["labels"].tolist() == [label("man.n.01"), label("couch"), label("tree.n.01"),
                                     label("mouse")]  # fmt: skip


def test_items_are_box_only_and_contract_shaped() -> None:
    ds = _vg()
    for i in range(len(ds)):
        image, t = ds[i]
        h, w = ds.get_height_and_width(i)
        assert image.shape == (3, h, w) and image.dtype == torch.float32
        g = len(t["labels"])
        assert t["boxes"].shape == (g, 4) and t["boxes"].dtype == torch.float32
        assert t["has_mask"].shape == (g,) and not t["has_mask"].any()
        assert "masks" not in t
        assert t["iscrowd"].dtype == torch.int64 and t["area"].dtype == torch.float32
    _, t1 = ds[0]
    assert t1["boxes"][0].tolist() == [2.0, 2.0, 22.0, 32.0]  # x, y, w, h -> x1, y1, x2, y2
    assert ds.get_height_and_width(1) == (64, 48)


def test_image_found_by_id_when_url_folder_is_wrong() -> None:
    ds = _vg()
    image, _ = ds[2]  # url says VG_100K_2/3.jpg; the file is VG_100K/3.jpg
    assert image.shape == (3, 48, 64)


def test_hold_out_by_coco_id_and_by_image_id() -> None:
    assert _vg(exclude_coco_ids={139}).image_ids == [2, 3]
    ds = _vg(exclude_image_ids=[2])
    assert ds.image_ids == [1, 3] and ds.stats.held_out_image_ids == [2]


def test_multi_synset_objects_can_be_dropped_as_in_the_reference() -> None:
    ds = _vg(num_classes=84, multi_synset="drop")  # shirt.n.01 now in the vocabulary
    assert ds.stats.multi_synset_ids == [2005]
    assert ds.stats.out_of_vocabulary_ids == [2006]
    assert _vg(num_classes=84).stats.out_of_vocabulary_ids == [2006]


def test_object_without_synsets_is_logged_with_file_and_id(caplog) -> None:
    with caplog.at_level(logging.DEBUG, logger="training.datasets.visual_genome"):
        _vg()
    messages = [r.getMessage() for r in caplog.records]
    summary = [m for m in messages if "without synsets" in m]
    assert summary and str(VG / "objects.json") in summary[0] and "1003" in summary[0]
    assert any("object id 1003" in m and "no synsets" in m for m in messages)  # debug line


def _mutated(tmp_path: Path, which: str, mutate) -> Path:
    root = tmp_path / "vg"
    shutil.copytree(VG, root)
    data = json.loads((root / which).read_text())
    mutate(data)
    (root / which).write_text(json.dumps(data))
    return root


@pytest.mark.parametrize(
    ("which", "mutate", "pattern"),
    [
        ("objects.json", lambda d: d[0]["objects"][0].pop("w"),
         r"objects\.json: object id 1001 \(image id 1\): 'x', 'y', 'w', 'h' must be numbers"),
        ("objects.json", lambda d: d[1]["objects"][0].update(synsets="tree.n.01"),
         r"objects\.json: object id 2001 \(image id 2\): 'synsets' must be a list"),
        ("objects.json", lambda d: d[2].update(image_id=99),
         r"objects\.json: image id 99 is not in .*image_data\.json"),
        ("image_data.json", lambda d: d[1].update(height=0),
         r"image_data\.json: image id 2: 'height' must be a positive int"),
        ("image_data.json", lambda d: d[2].update(image_id=1),
         r"image_data\.json: image id 1: duplicate image id"),
    ],
)  # fmt: skip
def test_malformed_vg_raises_naming_file_and_id(tmp_path, which, mutate, pattern) -> None:
    root = _mutated(tmp_path, which, mutate)
    with pytest.raises(DatasetError, match=pattern):
        _vg(root)


def test_missing_vg_image_names_the_id_and_paths(tmp_path) -> None:
    root = tmp_path / "vg"
    shutil.copytree(VG, root)
    (root / "VG_100K" / "3.jpg").unlink()
    with pytest.raises(DatasetError, match=r"image_data\.json: image id 3: image file not found"):
        _vg(root)


def test_truncated_objects_json(tmp_path) -> None:
    root = tmp_path / "vg"
    shutil.copytree(VG, root)
    text = (root / "objects.json").read_text()
    (root / "objects.json").write_text(text[:100])
    with pytest.raises(DatasetError, match=r"objects\.json: invalid or truncated JSON"):
        _vg(root)


def test_mixed_dataset_relabels_coco_into_the_vg_vocabulary() -> None:
    vg = _vg()
    coco = coco_in_vocabulary(COCO / "annotations.json", COCO, vg.vocab)
    mixed = MixedDataset(vg, coco)
    assert len(mixed) == 3 + 5 and mixed.vocab is vg.vocab
    assert [mixed.get_height_and_width(i) for i in (1, 4)] == [(64, 48), (64, 48)]
    _, t = mixed[3]  # COCO image 1: person, cup, dog — all COCO classes, all in A here
    label = vg.vocab.label
    assert t["labels"].tolist() == [label("person"), label("cup"), label("dog")]
    assert t["has_mask"].tolist() == [True, True, True]
    _, t = mixed[0]
    assert not t["has_mask"].any()
    foreign = coco_in_vocabulary(COCO / "annotations.json", COCO, _vg(num_classes=84).vocab)
    with pytest.raises(DatasetError, match="not labelled in the Visual Genome vocabulary"):
        MixedDataset(vg, foreign)
