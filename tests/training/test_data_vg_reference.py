"""Visual Genome as the authors prepared it: their vocabulary rule, multi-synset objects
dropped, COCO val images held out, and no mask split for a VG kind.

The reference is ``ronghanghu/seg_every_thing``,
``lib/datasets/bbox2mask_dataset_processing/vg/step_1_build_vg3k_raw_json.py`` (top K synsets by
count, objects with several synsets skipped) and ``step_2_build_vg3k_cocoaligned_json.py`` (COCO
classes first in COCO order, the rest sorted by synset name).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from model.config import ConfigError
from training.class_tables import coco_classes
from training.config import load_config
from training.datasets.build import build_datasets
from training.datasets.visual_genome import VisualGenomeDataset, vg_classes

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

# Synset -> number of objects. The 79 COCO classes other than hair drier have 10 objects each
# (tie as tie.n.01 and mouse as mouse.n.01, the senses the data makes most frequent); the
# hair drier's synset (hand_blower.n.01) has 1, below the top K.
B_COUNTS = {"window.n.01": 9, "tree.n.01": 8, "necktie.n.01": 7, "man.n.01": 6}
BELOW = {"sky.n.01": 3, "mouse.n.04": 2, "hand_blower.n.01": 1}
K = 79 + len(B_COUNTS)  # every COCO synset but one, and the four B synsets


def _coco_synset(name: str, synset: str) -> str:
    return {"tie": "tie.n.01", "mouse": "mouse.n.01"}.get(name, synset)


def _write_vg(root: Path) -> tuple[Path, Path]:
    counts = {_coco_synset(c.name, c.synset): 10 for c in coco_classes() if c.name != "hair drier"}
    counts.update(B_COUNTS)
    counts.update(BELOW)
    images, objects, object_id = [], [], 0
    for image_id, (synset, n) in enumerate(counts.items(), start=1):
        images.append({"image_id": image_id, "url": f"x/VG_100K/{image_id}.jpg", "width": 64,
                       "height": 48, "coco_id": 500 + image_id if image_id <= 3 else None})  # fmt: skip
        objs = []
        for _ in range(n):
            object_id += 1
            objs.append({"object_id": object_id, "x": 1, "y": 1, "w": 20, "h": 20,
                         "synsets": [synset]})  # fmt: skip
        objects.append({"image_id": image_id, "objects": objs})
    # One object with two synsets: counted for both (window 10, sky 4), then dropped.
    objects[-1]["objects"].append({"object_id": 99999, "x": 1, "y": 1, "w": 20, "h": 20,
                                   "synsets": ["window.n.01", "sky.n.01"]})  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    (root / "image_data.json").write_text(json.dumps(images))
    (root / "objects.json").write_text(json.dumps(objects))
    return root / "image_data.json", root / "objects.json"


def test_reference_vocabulary_order_and_the_extra_coco_class(tmp_path):
    _, objects_file = _write_vg(tmp_path / "vg")
    classes = vg_classes(json.loads(objects_file.read_text()), K)
    v = classes.vocab
    coco = [c.name for c in coco_classes()]
    # K synsets kept, plus hair drier whose synset is not among them: K + 1 classes (3001 for
    # K = 3000 on Visual Genome).
    assert v.num_classes == K + 1 == 84
    assert classes.outside_top_k == ("hair drier",)
    assert list(v.names[:80]) == coco and v.mask_classes == (True,) * 80 + (False,) * 4
    # The rest sorted by synset name, not by count (window 10, tree 8, necktie 7, man 6);
    # necktie.n.01 is a class of its own: the reference maps COCO "tie" by name only.
    assert v.names[80:] == ("man.n.01", "necktie.n.01", "tree.n.01", "window.n.01")
    assert v.source_ids[:80] == tuple(c.coco_id for c in coco_classes())
    # Synsets that label objects: the data's sense for tie and mouse; nothing for hair drier.
    assert classes.label_of["tie.n.01"] == v.label("tie")
    assert classes.label_of["mouse.n.01"] == v.label("mouse")
    assert classes.label_of["necktie.n.01"] == v.label("necktie.n.01")
    assert "mouse.n.04" not in classes.label_of and "hand_blower.n.01" not in classes.label_of
    assert "sky.n.01" not in v.names
    # maskx's earlier rule, for contrast: aliases folded into COCO classes, the rest by count.
    old = vg_classes(json.loads(objects_file.read_text()), 83, rule="by_count").vocab
    assert old.names[80:] == ("window.n.01", "tree.n.01", "man.n.01")


def test_dataset_labels_with_the_reference_rule_and_drops_multi_synset(tmp_path):
    image_data, objects_file = _write_vg(tmp_path / "vg")
    ds = VisualGenomeDataset(image_data, objects_file, num_classes=K, check_files=False)
    assert ds.vocab.num_classes == 84
    assert ds.stats.multi_synset_ids == [99999]  # the reference's choice is the default
    # sky.n.01 (3 objects), mouse.n.04 (2) and hand_blower.n.01 (1) are outside the top K:
    # dropped, as in the reference's step 1, and their three images left empty.
    assert len(ds.stats.out_of_vocabulary_ids) == 3 + 2 + 1
    assert len(ds.stats.empty_image_ids) == 3
    label = ds.vocab.label
    by_image = {ds.image_ids[i]: ds._records[i].labels for i in range(len(ds))}
    tie_image = 1 + [_coco_synset(c.name, c.synset) for c in coco_classes()].index("tie.n.01")
    assert set(by_image[tie_image]) == {label("tie")}
    first = VisualGenomeDataset(image_data, objects_file, num_classes=K, check_files=False,
                                multi_synset="first")  # fmt: skip
    assert first.stats.multi_synset_ids == [] and first.stats.objects == ds.stats.objects + 1


def _vg_config(tmp_path: Path, *extra: str):
    # COCO val whose image 1 is COCO id 139: the vg_tiny fixture's image 1.
    data = json.loads((FIXTURES / "coco_tiny" / "annotations.json").read_text())
    data["images"][0]["id"] = 139
    for ann in data["annotations"]:
        if ann["image_id"] == 1:
            ann["image_id"] = 139
    val = tmp_path / "val.json"
    val.write_text(json.dumps(data))
    vg = FIXTURES / "vg_tiny"
    return load_config(None, [
        "data.kind=vg", f"data.vg_image_data={vg / 'image_data.json'}",
        f"data.vg_objects={vg / 'objects.json'}", f"data.vg_images={vg}", "data.vg_num_classes=83",
        f"data.val_annotations={val}", f"data.val_images={FIXTURES / 'coco_tiny'}", *extra,
    ])  # fmt: skip


def test_coco_val_images_are_held_out_of_vg_by_default(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        train, val, _ = build_datasets(_vg_config(tmp_path))
    assert train.stats.held_out_image_ids == [1] and train.image_ids == [2, 3]
    assert any("held out 1 images that are in COCO val" in r.getMessage() for r in caplog.records)
    assert val is not None and len(val) == 5
    train, _, _ = build_datasets(_vg_config(tmp_path, "data.vg_exclude_coco_val=false"))
    assert train.image_ids == [1, 2, 3]
    with pytest.raises(ValueError, match="data.val_annotations"):
        build_datasets(_vg_config(tmp_path, "data.val_annotations=null"))


def test_vg_config_fields_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="data.mask_classes='voc'.*data.kind='vg'"):
        _vg_config(tmp_path, "data.mask_classes=voc")
    with pytest.raises(ConfigError, match="data.vg_multi_synset='all'"):
        _vg_config(tmp_path, "data.vg_multi_synset=all")
    with pytest.raises(ConfigError, match="data.vg_vocabulary='frequency'"):
        _vg_config(tmp_path, "data.vg_vocabulary=frequency")
    cfg = _vg_config(tmp_path)
    assert (cfg.data.vg_vocabulary, cfg.data.vg_multi_synset, cfg.data.vg_exclude_coco_val) == (
        "reference", "drop", True,
    )  # fmt: skip


# The reference's hand-written COCO -> synset table (step_2_build_vg3k_cocoaligned_json.py).
REFERENCE_MANUAL = {
    "cell phone": "cellular_telephone.n.01", "couch": "sofa.n.01",
    "dining table": "dinner_table.n.01", "donut": "doughnut.n.02",
    "fire hydrant": "water_faucet.n.01", "hair drier": "hand_blower.n.01",
    "handbag": "bag.n.04", "hot dog": "hotdog.n.01", "orange": "orange.n.01",
    "potted plant": "plant.n.01", "remote": "remote_control.n.01", "skis": "ski.n.01",
    "sports ball": "ball.n.01", "stop sign": "sign.n.02", "suitcase": "bag.n.06",
    "teddy bear": "teddy.n.01", "tv": "television.n.01", "wine glass": "wineglass.n.01",
}  # fmt: skip


def test_the_synset_table_agrees_with_the_reference_class_by_class():
    manual = {c.name: c.synset for c in coco_classes() if c.reference == "manual"}
    assert manual == REFERENCE_MANUAL
    # Every other class is mapped by name: its synset's lemma is the COCO name ("tie" ->
    # tie.n.01, not necktie.n.01, which the reference leaves a class of its own).
    by_name = [c for c in coco_classes() if c.reference == "by_name"]
    assert len(by_name) == 62
    assert all(c.synset.rsplit(".", 2)[0].replace("_", " ") == c.name for c in by_name)
    assert next(c.synset for c in by_name if c.name == "tie") == "tie.n.01"
