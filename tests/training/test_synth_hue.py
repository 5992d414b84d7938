"""The ``hue_ring`` preset: each instance's pixels carry its class's hue; the shifted ring
(``hue_offset``) is a class set disjoint from the default one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.synth_hue import HueRingConfig, class_hue, class_names, generate_hue_ring


def _pixel_hue(pixels: np.ndarray) -> np.ndarray:
    """Hue in degrees of RGB pixels [N, 3] (uint8)."""
    rgb = pixels.astype(np.float64) / 255.0
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    mx, mn = rgb.max(axis=1), rgb.min(axis=1)
    d = np.where(mx > mn, mx - mn, 1.0)
    h = np.where(mx == r, (g - b) / d % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4))
    return h * 60.0


def _instance_hues(root: Path) -> list[tuple[str, float]]:
    """(class name, circular mean hue of its pixels) for every training instance."""
    from pycocotools import mask as mask_utils

    data = json.loads((root / "annotations" / "instances_train.json").read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    files = {i["id"]: i["file_name"] for i in data["images"]}
    out = []
    for a in data["annotations"]:
        image = np.asarray(Image.open(root / "images" / "train" / files[a["image_id"]]))
        m = mask_utils.decode(a["segmentation"]).astype(bool)
        angle = np.radians(_pixel_hue(image[m]))
        mean = np.degrees(np.arctan2(np.sin(angle).mean(), np.cos(angle).mean())) % 360
        out.append((names[a["category_id"]], float(mean)))
    return out


def _ring_distance(a: float, b: float) -> float:
    d = abs(a - b) % 360.0
    return min(d, 360.0 - d)


@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_every_instance_shows_its_class_hue(tmp_path: Path, offset: float) -> None:
    cfg = HueRingConfig(train_images=12, val_images=2, hue_offset=offset)
    generate_hue_ring(tmp_path, cfg)
    hue_of = {n: class_hue(cfg, c) for c, n in enumerate(class_names(cfg))}
    found = _instance_hues(tmp_path)
    assert len(found) >= 12
    step = 360.0 / cfg.num_classes
    for name, hue in found:
        # jitter (0.2 step) plus texture and 8-bit rounding: well inside half a step
        assert _ring_distance(hue, hue_of[name]) < 0.4 * step, (name, hue)


def test_shifted_ring_is_a_disjoint_class_set() -> None:
    ring, shifted = HueRingConfig(), HueRingConfig(hue_offset=0.5, seed=1)
    step = 360.0 / ring.num_classes
    assert class_names(shifted)[:3] == ["hue005", "hue015", "hue025"]
    assert not set(class_names(ring)) & set(class_names(shifted))
    # every hue a C instance can take is further than any A/B instance's jitter allows
    for c in range(shifted.num_classes):
        nearest = min(_ring_distance(class_hue(shifted, c), class_hue(ring, k))
                      for k in range(ring.num_classes))  # fmt: skip
        assert nearest - 2 * ring.hue_jitter * step > 0.05 * step


def test_shifted_ring_attributes_follow_the_hues(tmp_path: Path) -> None:
    cfg = HueRingConfig(train_images=2, val_images=1, hue_offset=0.5)
    generate_hue_ring(tmp_path, cfg)
    attrs = json.loads((tmp_path / "class_attributes.json").read_text())
    angle = np.radians(class_hue(cfg, 3))
    assert np.allclose(attrs["vectors"][3], [np.cos(angle), np.sin(angle)], atol=1e-6)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["config"]["hue_offset"] == 0.5


@pytest.mark.parametrize("offset", [-0.1, 1.0])
def test_hue_offset_out_of_range_is_refused(offset: float) -> None:
    with pytest.raises(ValueError, match="hue_offset"):
        HueRingConfig(hue_offset=offset).validate()


def test_cli_hue_offset_writes_the_shifted_ring_and_refuses_a_bad_one(
    tmp_path: Path, capsys
) -> None:
    from maskx.cli import main as cli_main

    out = tmp_path / "c"
    argv = ["synth", "--preset", "hue_ring", "--out", str(out), "--images", "2",
            "--val-images", "1", "--hue-offset", "0.5", "--seed", "1", "--preview", "0",
            "--no-progress"]  # fmt: skip
    assert cli_main(argv) == 0
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["config"]["hue_offset"] == 0.5 and meta["config"]["seed"] == 1
    names = [c["name"] for c in json.loads(
        (out / "annotations" / "instances_val.json").read_text())["categories"]]  # fmt: skip
    assert names[:2] == ["hue005", "hue015"]
    bad = ["synth", "--preset", "hue_ring", "--out", str(tmp_path / "x"), "--hue-offset", "1.5"]
    assert cli_main(bad) == 2
    assert "hue_offset=1.5" in capsys.readouterr().err
