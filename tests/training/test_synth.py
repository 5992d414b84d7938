"""The synthetic dataset: determinism, COCO validity (judged by pycocotools), the A split and
the premise that the class predicts the mask."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from maskx.cli import main as cli_main
from training.synth import (
    COLOURS,
    FAMILIES,
    FAMILY_VARIANTS,
    TEXTURES,
    SynthConfig,
    canonical_shape,
    choose_mask_classes,
    generate_dataset,
    make_classes,
    mask_prior_iou,
    render_image,
    render_preview,
)

# pycocotools' decode trips numpy 2's copy-keyword deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SMALL = SynthConfig(num_classes=48, train_images=24, val_images=8, image_size=128, seed=3)


def _load(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, SMALL, progress=False)
    return out


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path: Path) -> None:
    config = SynthConfig(num_classes=24, train_images=5, val_images=2, image_size=96, seed=11)
    generate_dataset(tmp_path / "a", config, progress=False)
    generate_dataset(tmp_path / "b", config, progress=False)
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert sorted(a) == sorted(b)
    # images, 2 annotation files, A list, dataset.json, flip_map.json, class_attributes.json
    assert len(a) == 5 + 2 + 6
    for name in a:
        assert a[name] == b[name], name
    generate_dataset(
        tmp_path / "c", SynthConfig(**{**config.as_dict(), "seed": 12}), progress=False
    )
    c = _tree(tmp_path / "c")
    assert c["images/train/000001.png"] != a["images/train/000001.png"]
    assert c["annotations/instances_train.json"] != a["annotations/instances_train.json"]


def test_layout_counts_and_metadata(dataset: Path) -> None:
    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["config"]["seed"] == SMALL.seed
    assert meta["version"] >= 1
    assert meta["num_images"] == {"train": 24, "val": 8}
    for split, n in (("train", 24), ("val", 8)):
        coco = _load(dataset / "annotations" / f"instances_{split}.json")
        assert len(coco.getImgIds()) == n
        assert len(coco.getCatIds()) == SMALL.num_classes
        assert len(coco.getAnnIds()) == meta["num_annotations"][split]
        for img in coco.loadImgs(coco.getImgIds()):
            with Image.open(dataset / "images" / split / img["file_name"]) as im:
                assert im.size == (img["width"], img["height"]) == (128, 128)
                assert im.mode == "RGB"
    # Objects per image stay within the requested range (placement may drop a few).
    coco = _load(dataset / "annotations" / "instances_train.json")
    per_image = [len(coco.getAnnIds(imgIds=[i])) for i in coco.getImgIds()]
    assert max(per_image) <= SMALL.max_objects
    assert np.mean(per_image) >= 3.0


def test_categories_are_shapes_times_appearances(dataset: Path) -> None:
    data = json.loads((dataset / "annotations" / "instances_train.json").read_text())
    cats = data["categories"]
    assert [c["id"] for c in cats] == list(range(1, SMALL.num_classes + 1))
    assert len({c["name"] for c in cats}) == len(cats)
    assert {c["supercategory"] for c in cats} == set(FAMILIES)
    for c in cats:
        family, variant, colour, texture = c["name"].split("-")
        assert c["supercategory"] == family and variant in FAMILY_VARIANTS[family]
        assert (c["colour"], c["texture"]) == (colour, texture)
    # 48 classes over 24 shapes: two appearances each.
    shapes = [c["shape"] for c in cats]
    assert {shapes.count(s) for s in shapes} == {2}


def test_default_a_split_is_a_minority_covering_every_family(dataset: Path) -> None:
    data = json.loads((dataset / "annotations" / "instances_train.json").read_text())
    by_name = {c["name"]: c for c in data["categories"]}
    a_names = (dataset / "mask_classes_A.txt").read_text().split()
    assert len(set(a_names)) == len(a_names) == round(0.25 * len(by_name))
    assert all(n in by_name for n in a_names)
    assert {by_name[n]["supercategory"] for n in a_names} == set(FAMILIES)


def test_default_a_split_covers_every_shape_when_the_budget_allows() -> None:
    config = SynthConfig(num_classes=120, seed=7)
    classes = make_classes(config)
    a_names = choose_mask_classes(classes, config)
    assert len(a_names) == 30
    by_name = {c.name: c for c in classes}
    assert {by_name[n].shape for n in a_names} == {c.shape for c in classes}
    assert a_names == choose_mask_classes(make_classes(config), config)  # deterministic


def test_few_appearances_make_shape_the_only_difference_and_a_covers_them() -> None:
    # 4 appearances x 24 shapes: every appearance is shared by 24 classes, and split A covers
    # every shape and every appearance.
    config = SynthConfig(num_classes=96, appearances=4, a_covers_appearances=True)
    classes = make_classes(config)
    appearances = {(c.colour, c.texture) for c in classes}
    assert len(classes) == 96 and len(appearances) == 4
    assert len({c.name for c in classes}) == 96
    a = {c.name for c in classes} & set(choose_mask_classes(classes, config))
    a_classes = [c for c in classes if c.name in a]
    assert {c.shape for c in a_classes} == {c.shape for c in classes}
    assert {(c.colour, c.texture) for c in a_classes} == appearances
    # Without the option the default class table stays as it was (datasets are reproducible).
    default = SynthConfig(num_classes=96)
    assert make_classes(default) == make_classes(SynthConfig(num_classes=96, appearances=0))
    with pytest.raises(ValueError, match="appearances"):
        SynthConfig(appearances=41).validate()
    with pytest.raises(ValueError, match="num_classes"):
        SynthConfig(num_classes=120, appearances=4).validate()  # 24 shapes x 4 = 96 at most


def test_annotations_are_valid_visible_disjoint_masks(dataset: Path) -> None:
    for split in ("train", "val"):
        coco = _load(dataset / "annotations" / f"instances_{split}.json")
        for image_id in coco.getImgIds():
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
            owner = np.zeros((128, 128), dtype=np.int32)
            for ann in anns:
                seg = ann["segmentation"]
                assert isinstance(seg["counts"], str)
                assert mask_utils.area(seg) == ann["area"] >= SMALL.min_area
                assert np.allclose(mask_utils.toBbox(seg), ann["bbox"])
                assert ann["iscrowd"] == 0
                m = coco.annToMask(ann)
                assert m.shape == (128, 128)
                owner += m
            # Visible parts only: no pixel belongs to two instances.
            assert owner.max() <= 1, f"{split} image {image_id} has overlapping masks"


def test_render_image_contract() -> None:
    classes = make_classes(SMALL)
    rng = np.random.default_rng(0)
    image, instances = render_image(rng, SMALL, classes)
    assert image.dtype == np.uint8 and image.shape == (128, 128, 3)
    assert instances
    for class_index, mask in instances:
        assert 0 <= class_index < len(classes)
        assert mask.dtype == bool and mask.shape == (128, 128)


@pytest.mark.parametrize("family", FAMILIES)
def test_canonical_shapes_fill_their_frame(family: str) -> None:
    for variant in FAMILY_VARIANTS[family]:
        polys, hole = canonical_shape(family, variant)
        pts = np.concatenate([p for p, fill in polys if fill == 1])
        if family != "crescent":  # its bite is cut out by a hole polygon beyond the outline
            assert np.allclose(pts.min(axis=0), -1.0) and np.allclose(pts.max(axis=0), 1.0)
        if family in ("ring", "square_frame", "U"):
            assert hole is not None


def test_variants_of_a_family_have_different_masks() -> None:
    from training.synth import _polygon_mask

    for family, variants in FAMILY_VARIANTS.items():
        masks = [
            _polygon_mask(canonical_shape(family, v)[0], 64, (32, 32), (28, 28), 0.0)[0]
            for v in variants
        ]
        iou = (masks[0] & masks[1]).sum() / (masks[0] | masks[1]).sum()
        # A disk and a half-disk both fill their box the most; every other pair differs more.
        assert iou < 0.85, (family, iou)


def test_class_predicts_the_mask(tmp_path: Path) -> None:
    """The premise of the method: a class-aware predictor has a measurable edge.

    Every instance's visible mask, cut to its box at 28x28, is compared with the thresholded
    mean mask of its class and with that of all classes together. Measured on this setting
    (seed 5, 48 classes, 160 images): class 0.72, shape 0.71, family 0.61, all 0.52.
    """
    config = SynthConfig(num_classes=48, train_images=160, val_images=0, seed=5)
    generate_dataset(tmp_path, config, progress=False)
    coco = json.loads((tmp_path / "annotations" / "instances_train.json").read_text())
    iou = mask_prior_iou(coco)
    print("mask prior IoU:", {k: round(v, 3) for k, v in iou.items()})
    assert iou["class"] > iou["all"] + 0.12
    assert iou["class"] > iou["family"] + 0.05
    assert iou["class"] < 0.9  # occlusion and clutter: the class prior alone is not enough


def test_render_preview_writes_a_grid(dataset: Path, tmp_path: Path) -> None:
    out = render_preview(dataset, tmp_path / "p.png", n=4, scale=1)
    with Image.open(out) as im:
        # 4 image pairs (image | overlay) in a 2x2 grid with 4-pixel gutters.
        assert im.size == (2 * (2 * 128 + 2) + 3 * 4, 2 * 128 + 3 * 4)
    with pytest.raises(FileNotFoundError, match=r"instances_train\.json"):
        render_preview(tmp_path / "nothing", tmp_path / "q.png")


def test_cli_writes_dataset_and_rejects_bad_options(tmp_path: Path, capsys) -> None:
    out = tmp_path / "ds"
    argv = [
        "synth",
        "--out",
        str(out),
        "--classes",
        "24",
        "--images",
        "3",
        "--val-images",
        "1",
        "--image-size",
        "96",
        "--families",
        "12",
        "--preview",
        "2",
        "--no-progress",
    ]
    assert cli_main(argv) == 0
    assert (out / "preview.png").is_file()
    assert len(list((out / "images" / "train").glob("*.png"))) == 3
    assert cli_main(argv) == 2  # refuses to overwrite silently
    assert "--overwrite" in capsys.readouterr().err
    assert cli_main([*argv, "--overwrite"]) == 0
    assert cli_main(["synth", "--out", str(tmp_path / "x"), "--classes", "5"]) == 2
    assert "num_classes=5" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["synth", "--out", str(tmp_path / "x"), "--families", "disk,blob"])
    assert "blob" in capsys.readouterr().err


def test_families_option_restricts_the_classes(tmp_path: Path) -> None:
    config = SynthConfig(
        num_classes=8, families=("disk", "ring"), train_images=2, val_images=0, image_size=96
    )
    classes = make_classes(config)
    assert {c.family for c in classes} == {"disk", "ring"}
    assert len({c.name for c in classes}) == 8


def test_class_sets_are_disjoint_tables_of_the_same_shapes_and_palette() -> None:
    """Table 1 (a pretraining set C) has none of table 0's classes but every one of its shapes;
    table 0 is the default table unchanged; a table past the palette is refused by name."""
    default = make_classes(SynthConfig(num_classes=100))
    assert make_classes(SynthConfig(num_classes=100, class_set=0)) == default
    c = make_classes(SynthConfig(num_classes=100, class_set=1))
    assert len(c) == 100 and not {x.name for x in c} & {x.name for x in default}
    assert {x.shape for x in c} == {x.shape for x in default}
    assert {x.colour for x in c} <= set(COLOURS) and {x.texture for x in c} <= set(TEXTURES)
    # 100 classes over 24 shapes take 5 of each shape's 40 appearances: tables 0..7.
    SynthConfig(num_classes=100, class_set=7).validate()
    with pytest.raises(ValueError, match="class_set"):
        SynthConfig(num_classes=100, class_set=8).validate()
    with pytest.raises(ValueError, match="class_set"):
        SynthConfig(class_set=-1).validate()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_classes", 3),
        ("num_classes", 10_000),
        ("families", ("disk", "blob")),
        ("max_objects", 0),
        ("a_fraction", 1.0),
        ("image_size", 32),
    ],
)
def test_config_errors_name_the_field(field: str, value: object) -> None:
    config = SynthConfig(**{**SynthConfig().as_dict(), field: value})
    with pytest.raises(ValueError, match=field):
        config.validate()
