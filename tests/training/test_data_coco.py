"""COCO-format dataset on the tiny fixture.

The fixture (tests/fixtures/coco_tiny, made by its make_fixtures.py) holds 5 images and 14
annotations: 10 trainable instances, 1 crowd region, 2 degenerate boxes (ids 203, 204), 2
box-only annotations (202 without a segmentation key, 502 with ``[]``), one image without
annotations, categories 1, 18, 47, 62, 88, 90.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from training.datasets.coco import CocoDataset, decode_segmentation
from training.datasets.errors import DatasetError
from training.datasets.vocab import ClassVocabulary

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "coco_tiny"
ANN = FIXTURE / "annotations.json"


def _dataset(**kwargs) -> CocoDataset:
    return CocoDataset(ANN, FIXTURE, **kwargs)


def _item(ds: CocoDataset, image_id: int):
    return ds[ds.image_ids.index(image_id)]


def test_counts_vocabulary_and_flags() -> None:
    ds = _dataset(mask_classes="voc")
    assert len(ds) == 5
    assert ds.image_ids == [1, 2, 3, 4, 5]
    s = ds.stats
    assert (s.images, s.instances, s.crowd, s.box_only) == (5, 10, 1, 2)
    assert s.degenerate_ids == [203, 204]
    assert ds.vocab.names == ("person", "dog", "cup", "chair", "teddy bear", "toothbrush")
    assert ds.vocab.source_ids == (1, 18, 47, 62, 88, 90)
    assert ds.vocab.mask_classes == (True, True, False, True, False, False)
    assert ds.get_height_and_width(1) == (64, 48)  # portrait, from the json


def test_items_follow_the_training_target_contract() -> None:
    ds = _dataset(mask_classes="voc")
    total = 0
    for i in range(len(ds)):
        image, t = ds[i]
        h, w = ds.get_height_and_width(i)
        assert image.dtype == torch.float32 and image.shape == (3, h, w)
        assert image.min() >= 0.0 and image.max() <= 1.0
        g = len(t["labels"])
        total += g
        assert t["boxes"].dtype == torch.float32 and t["boxes"].shape == (g, 4)
        assert t["labels"].dtype == torch.int64
        assert ((t["labels"] >= 1) & (t["labels"] <= 6)).all()
        assert t["masks"].dtype == torch.uint8 and t["masks"].shape == (g, h, w)
        assert t["has_mask"].dtype == torch.bool and t["has_mask"].shape == (g,)
        assert t["iscrowd"].dtype == torch.int64 and not t["iscrowd"].any()
        assert t["area"].dtype == torch.float32 and t["area"].shape == (g,)
        assert t["image_id"].dtype == torch.int64 and t["image_id"].ndim == 0
        if g:
            assert (t["boxes"][:, 2] > t["boxes"][:, 0]).all()
            assert (t["boxes"][:, 3] > t["boxes"][:, 1]).all()
        # instances without a mask hold zeros
        assert not t["masks"][~t["has_mask"]].any()
    assert total == 10


def test_crowd_and_degenerate_are_not_instances_and_box_is_clipped() -> None:
    ds = _dataset()
    _, t1 = _item(ds, 1)
    assert t1["labels"].tolist() == [1, 3, 2]  # person, cup, dog; crowd person 104 left out
    _, t2 = _item(ds, 2)
    assert t2["labels"].tolist() == [4, 6]  # chair, toothbrush; 203 and 204 dropped
    _, t3 = _item(ds, 3)
    assert t3["boxes"][2].tolist() == [52.0, 2.0, 64.0, 14.0]  # [52, 2, 20, 12] clipped at 64
    _, t4 = _item(ds, 4)
    assert t4["boxes"].shape == (0, 4) and t4["masks"].shape == (0, 48, 64)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools vs NumPy 2
def test_masks_match_pycocotools_for_every_encoding() -> None:
    ds = _dataset(mask_classes="all")
    coco = COCO(str(ANN))
    # 101 polygon, 102 uncompressed RLE, 103 compressed RLE, 201 polygon (5 points),
    # 301 compressed RLE, 302 two-part polygon, 303 polygon.
    expected = {1: [101, 102, 103], 2: [201, None], 3: [301, 302, 303]}
    for image_id, ann_ids in expected.items():
        _, t = _item(ds, image_id)
        for k, ann_id in enumerate(ann_ids):
            if ann_id is None:
                assert not t["has_mask"][k] and not t["masks"][k].any()  # box-only
                continue
            assert t["has_mask"][k]
            ref = coco.annToMask(coco.loadAnns(ann_id)[0])
            np.testing.assert_array_equal(t["masks"][k].numpy(), ref)
            assert ref.sum() > 0


def test_classes_outside_a_lose_their_masks() -> None:
    _, t = _item(_dataset(mask_classes="voc"), 1)
    # person (VOC) keeps its polygon mask; cup (non-VOC) loses its RLE mask; dog keeps it
    assert t["has_mask"].tolist() == [True, False, True]
    assert t["masks"][0].any() and not t["masks"][1].any() and t["masks"][2].any()
    _, t = _item(_dataset(mask_classes="none"), 1)
    assert not t["has_mask"].any() and "masks" not in t


def test_image_modes_become_rgb() -> None:
    ds = _dataset()
    gray, _ = _item(ds, 2)  # mode L
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    rgba, _ = _item(ds, 3)  # mode RGBA, alpha dropped
    assert rgba.shape == (3, 48, 64)
    palette, _ = _item(ds, 4)  # mode P
    assert palette.shape == (3, 48, 64) and palette.std() > 0


def test_drop_empty() -> None:
    ds = _dataset(drop_empty=True)
    assert ds.image_ids == [1, 2, 3, 5]
    assert ds.stats.dropped_empty_image_ids == [4]


def test_horizontal_flip_moves_boxes_and_masks_together() -> None:
    plain, flipped = _dataset(), _dataset(hflip_prob=1.0)
    img, t = _item(plain, 3)
    fimg, ft = _item(flipped, 3)
    assert torch.equal(fimg, img.flip(-1))
    assert torch.equal(ft["masks"], t["masks"].flip(-1))
    assert ft["boxes"][2].tolist() == [0.0, 2.0, 12.0, 14.0]
    ys, xs = torch.nonzero(ft["masks"][1], as_tuple=True)  # mask inside its flipped box
    x1, y1, x2, y2 = ft["boxes"][1].tolist()
    assert xs.min() >= x1 and xs.max() < x2 and ys.min() >= y1 and ys.max() < y2


def test_coco_object_and_relabelling_into_another_vocabulary() -> None:
    ds = _dataset()
    assert sorted(ds.coco.getImgIds()) == [1, 2, 3, 4, 5]
    names = ("cat", "toothbrush", "teddy bear", "chair", "cup", "dog", "person")
    vocab = ClassVocabulary(names, (False,) * 6 + (True,), tuple(range(1, 8)))
    _, t = _item(CocoDataset(ANN, FIXTURE, vocab=vocab), 1)
    assert t["labels"].tolist() == [7, 5, 6]
    assert t["has_mask"].tolist() == [True, False, False]
    with pytest.raises(DatasetError, match=r"category id 90: category 'toothbrush' is not in"):
        CocoDataset(ANN, FIXTURE, vocab=ClassVocabulary(names[2:], (True,) * 5, range(5)))


def test_degenerate_boxes_are_logged_with_file_and_ids(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="training.datasets.coco"):
        _dataset()
    [record] = [r for r in caplog.records if "degenerate" in r.getMessage()]
    msg = record.getMessage()
    assert str(ANN) in msg and "dropped 2 annotations" in msg and "203, 204" in msg


# -- malformed inputs: each error names the file and the entry -------------------------------


def _mutated(tmp_path: Path, mutate) -> Path:
    root = tmp_path / "coco"
    shutil.copytree(FIXTURE, root)
    data = json.loads((root / "annotations.json").read_text())
    mutate(data)
    (root / "annotations.json").write_text(json.dumps(data))
    return root


def _ann(data: dict, ann_id: int) -> dict:
    return next(a for a in data["annotations"] if a["id"] == ann_id)


def _img(data: dict, image_id: int) -> dict:
    return next(i for i in data["images"] if i["id"] == image_id)


MALFORMED = {
    "missing image file": (
        lambda d: _img(d, 3).update(file_name="gone/nope.png"),
        r"image id 3: image file .*gone/nope\.png not found",
    ),
    "unknown category id": (
        lambda d: _ann(d, 301).update(category_id=5),
        r"annotation id 301: unknown category_id 5",
    ),
    "bbox of 3 numbers": (
        lambda d: _ann(d, 102).update(bbox=[1, 2, 3]),
        r"annotation id 102: 'bbox' must be 4 finite numbers",
    ),
    "bbox with a NaN": (
        lambda d: _ann(d, 102).update(bbox=[1, 2, 3, float("nan")]),
        r"annotation id 102: 'bbox' must be 4 finite numbers",
    ),
    "segmentation of the wrong type": (
        lambda d: _ann(d, 101).update(segmentation="polygon"),
        r"annotation id 101: segmentation must be a list of polygons or an RLE dict, got str",
    ),
    "odd polygon": (
        lambda d: _ann(d, 101).update(segmentation=[[1, 2, 3, 4, 5, 6, 7]]),
        r"annotation id 101: polygon segmentation must be",
    ),
    "RLE of another size": (
        lambda d: _ann(d, 103)["segmentation"].update(size=[10, 10]),
        r"annotation id 103: RLE size \[10, 10\] does not match",
    ),
    "RLE counts not summing to the image": (
        lambda d: _ann(d, 102)["segmentation"]["counts"].append(5),
        r"annotation id 102: uncompressed RLE counts sum to",
    ),
    "duplicate annotation id": (
        lambda d: _ann(d, 502).update(id=501),
        r"annotation id 501: duplicate annotation id",
    ),
    "duplicate image id": (
        lambda d: _img(d, 5).update(id=4),
        r"image id 4: duplicate image id",
    ),
    "unknown image id": (
        lambda d: _ann(d, 501).update(image_id=77),
        r"annotation id 501: unknown image_id 77",
    ),
    "missing file_name": (
        lambda d: _img(d, 2).pop("file_name"),
        r"image id 2: missing 'file_name'",
    ),
    "bad iscrowd": (
        lambda d: _ann(d, 101).update(iscrowd=2),
        r"annotation id 101: 'iscrowd' must be 0 or 1",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_entry_raises_naming_file_and_id(tmp_path, case) -> None:
    mutate, pattern = MALFORMED[case]
    root = _mutated(tmp_path, mutate)
    with pytest.raises(DatasetError, match=pattern) as info:
        CocoDataset(root / "annotations.json", root)
    assert str(root / "annotations.json") in str(info.value)


def test_truncated_json_names_the_file(tmp_path) -> None:
    f = tmp_path / "annotations.json"
    text = ANN.read_text()
    f.write_text(text[: len(text) // 2])
    with pytest.raises(DatasetError, match=r"annotations\.json: invalid or truncated JSON"):
        CocoDataset(f, FIXTURE)


def test_missing_annotation_file(tmp_path) -> None:
    with pytest.raises(DatasetError, match=r"nothere\.json: annotation file not found"):
        CocoDataset(tmp_path / "nothere.json", FIXTURE)


def test_files_checked_lazily_still_name_the_image(tmp_path) -> None:
    root = _mutated(tmp_path, lambda d: _img(d, 3).update(file_name="nope.png"))
    ds = CocoDataset(root / "annotations.json", root, check_files=False)
    with pytest.raises(DatasetError, match=r"annotations\.json: image id 3: image file .*nope"):
        ds[2]


def test_image_size_disagreeing_with_json(tmp_path) -> None:
    root = _mutated(tmp_path, lambda d: _img(d, 5).update(width=40))
    ds = CocoDataset(root / "annotations.json", root)
    with pytest.raises(DatasetError, match=r"image id 5: image file .* is 32x64 .* says 40x64"):
        ds[4]


def test_decode_segmentation_of_each_encoding_agrees() -> None:
    mask = np.zeros((6, 5), dtype=np.uint8)
    mask[1:4, 2:5] = 1
    polygon = [[2, 1, 5, 1, 5, 4, 2, 4]]
    flat = mask.flatten(order="F").tolist()
    counts, cur, run = [], 0, 0
    for v in flat:
        if v == cur:
            run += 1
        else:
            counts.append(run)
            cur, run = v, 1
    counts.append(run)
    uncompressed = {"size": [6, 5], "counts": counts}
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask))
    compressed = {"size": [6, 5], "counts": rle["counts"].decode()}
    for seg in (polygon, uncompressed, compressed):
        np.testing.assert_array_equal(decode_segmentation(seg, 6, 5), mask)
