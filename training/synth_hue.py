"""The ``hue_ring`` preset of ``maskx synth``: a set built on weight transfer's mechanism.

In the paper a class's mask kernel reads "does this pixel look like class c", and τ maps the
class's detection prototype to that readout. Transfer should win where a box holds more than
one thing and only the class says which one is meant. This set makes exactly that hold, and
nothing else help:

* the class is one continuous attribute, the **hue** on a ring (class c of K has hue
  c·360°/K, jittered by ±``hue_jitter`` of a step); saturation, brightness and texture vary
  per instance and carry no class;
* shapes are **random blobs** drawn the same way for every class: no shape prior exists;
* A (masks in training) is **every third class**; B lies between A classes on the ring, so τ
  interpolates rather than extrapolates;
* most instances come with an **annotated partner**: the blob is cut in two interleaved parts
  by a random smooth field, one per instance, so the two boxes nearly coincide while the
  partner's hue is far away (120°–240°). From box geometry the two are the same RoI; only the
  class tells which part is meant;
* flips are safe by construction (blobs have no handedness; textures are flat, dots or
  checker, all mirror-symmetric), so ``flip_map.json`` declares no pairs.

Same layout as :func:`training.synth.generate_dataset` (``dataset.json``, ``annotations/``,
``images/``, ``mask_classes_A.txt``), plus ``class_attributes.json`` (per class
``[cos h, sin h]``: the attribute embedding for the ``attribute`` τ control) and
``flip_map.json``. A pure function of the configuration.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from training.synth import SPLITS, _annotations, _hsv_to_rgb, _paint, _write_json

HUE_GENERATOR_VERSION = 1
HUE_TEXTURES = ("flat", "dots", "checker")  # mirror-symmetric: a flip shows nothing new


@dataclass(frozen=True)
class HueRingConfig:
    """Parameters of the ``hue_ring`` preset (recorded in ``dataset.json``)."""

    num_classes: int = 36
    train_images: int = 1000
    val_images: int = 300
    image_size: int = 80
    min_groups: int = 1
    max_groups: int = 3
    pair_probability: float = 0.8
    """Share of groups that are a pair of instances (the rest are single instances)."""
    object_size: tuple[float, float] = (0.3, 0.55)
    """Long side of a group's blob as a fraction of the image side."""
    partner_offset: tuple[int, int] = (12, 24)
    """The partner's class is this many steps away on the ring (inclusive; 12..24 of 36 is
    120°-240°)."""
    hue_jitter: float = 0.2
    """Hue noise of an instance, in class steps (uniform ±)."""
    a_every: int = 3
    hue_offset: float = 0.0
    """Shift of every class's hue, in class steps: 0.5 puts the classes halfway between those
    of the default ring (a disjoint class set on the same attribute, for pretraining)."""
    seed: int = 0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        if self.num_classes < 6 or self.num_classes % self.a_every:
            raise ValueError(
                f"num_classes={self.num_classes}: need >= 6 and a multiple of a_every={self.a_every}"
            )
        if self.image_size < 48:
            raise ValueError(f"image_size={self.image_size}: must be >= 48")
        if not 1 <= self.min_groups <= self.max_groups:
            raise ValueError("need 1 <= min_groups <= max_groups")
        lo, hi = self.partner_offset
        if not 1 <= lo <= hi <= self.num_classes // 2 + self.num_classes // 4:
            raise ValueError(f"partner_offset={self.partner_offset}: out of range")
        if not 0.0 <= self.hue_jitter < 0.5:
            raise ValueError(f"hue_jitter={self.hue_jitter}: must be in [0, 0.5)")
        if not 0.0 <= self.pair_probability <= 1.0:
            raise ValueError(f"pair_probability={self.pair_probability}: must be in [0, 1]")
        if not 0.0 <= self.hue_offset < 1.0:
            raise ValueError(f"hue_offset={self.hue_offset}: must be in [0, 1)")

    def to_json(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


def class_hue(config: HueRingConfig, c: int) -> float:
    """Class ``c``'s hue in degrees."""
    return (c + config.hue_offset) * 360 / config.num_classes


def class_names(config: HueRingConfig) -> list[str]:
    """``hue000`` .. : the hue in degrees, category-id order."""
    return [f"hue{round(class_hue(config, c)):03d}" for c in range(config.num_classes)]


def _blob(rng: np.random.Generator, size: int, config: HueRingConfig) -> np.ndarray | None:
    """A random star-shaped blob (bool [S, S]) at a random place, or None if it does not fit."""
    lo, hi = config.object_size
    long_side = rng.uniform(lo, hi) * size
    aspect = rng.uniform(0.7, 1.0)
    rx, ry = long_side / 2, long_side / 2 * aspect
    if rng.random() < 0.5:
        rx, ry = ry, rx
    cx = rng.uniform(rx, size - rx)
    cy = rng.uniform(ry, size - ry)
    t = np.linspace(0.0, 2 * math.pi, 64, endpoint=False)
    r = np.ones_like(t)
    for k in (2, 3, 4):
        r += rng.uniform(0.0, 0.18) * np.cos(k * t + rng.uniform(0, 2 * math.pi))
    r = np.clip(r, 0.55, 1.0)
    angle = rng.uniform(0, 2 * math.pi)
    x, y = r * np.cos(t) * rx, r * np.sin(t) * ry
    c, s = math.cos(angle), math.sin(angle)
    pts = np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in pts.tolist()], fill=1)
    mask = np.asarray(canvas, dtype=bool)
    return mask if mask.sum() >= 60 else None


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def box_iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area if area else 0.0


def _split(rng: np.random.Generator, blob: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Cut a blob into two interleaved parts whose boxes nearly coincide (IoU >= 0.6)."""
    size = blob.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    x0, y0, x1, y1 = _box(blob)
    extent = max(x1 - x0, y1 - y0)
    for _ in range(6):
        theta = rng.uniform(0, math.pi)
        periods = rng.uniform(1.3, 2.3)  # bands across the blob: both parts span its extent
        u = (xx * math.cos(theta) + yy * math.sin(theta)) * (2 * math.pi * periods / extent)
        field = np.sin(u + rng.uniform(0, 2 * math.pi))
        field += 0.6 * np.sin(
            (xx * math.cos(theta + 1.7) + yy * math.sin(theta + 1.7)) * (2 * math.pi / extent)
            + rng.uniform(0, 2 * math.pi)
        )
        one = blob & (field > 0)
        two = blob & ~(field > 0)
        if min(one.sum(), two.sum()) < 0.3 * blob.sum():
            continue
        if box_iou(_box(one), _box(two)) >= 0.6:
            return one, two
    return None


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Grey, faintly tinted, low-frequency blotches: no hue of an object class."""
    base = rng.uniform(90, 170)
    coarse = rng.random((5, 5)).astype(np.float32)
    blot = (
        np.asarray(
            Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR),
            dtype=np.float32,
        )
        / 255.0
    )
    grey = base + (blot - 0.5) * rng.uniform(20, 60)
    return np.repeat(grey[..., None], 3, axis=2).astype(np.float32)


def render_hue_image(
    rng: np.random.Generator, config: HueRingConfig
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One image and its instances ``(class_index, visible_mask)``, masks disjoint."""
    size, k = config.image_size, config.num_classes
    image = _background(rng, size)
    taken = np.zeros((size, size), dtype=bool)
    instances: list[tuple[int, np.ndarray]] = []
    for _ in range(int(rng.integers(config.min_groups, config.max_groups + 1))):
        for _attempt in range(10):
            blob = _blob(rng, size, config)
            if blob is None or (blob & taken).sum() > 0:
                continue
            first = int(rng.integers(k))
            parts: list[tuple[int, np.ndarray]]
            if rng.random() < config.pair_probability:
                split = _split(rng, blob)
                if split is None:
                    continue
                lo, hi = config.partner_offset
                second = (first + int(rng.choice([-1, 1])) * int(rng.integers(lo, hi + 1))) % k
                parts = [(first, split[0]), (second, split[1])]
            else:
                parts = [(first, blob)]
            for cls, mask in parts:
                jitter = rng.uniform(-config.hue_jitter, config.hue_jitter)
                hue = (cls + config.hue_offset + jitter) / k % 1.0
                colour = _hsv_to_rgb(hue, rng.uniform(0.65, 1.0), rng.uniform(0.7, 1.0))
                _paint(image, mask, colour, HUE_TEXTURES[int(rng.integers(len(HUE_TEXTURES)))])
                instances.append((cls, mask))
            taken |= blob
            break
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), instances


def generate_hue_ring(
    out_dir: str | os.PathLike[str], config: HueRingConfig, progress: bool = False
) -> dict[str, Any]:
    """Write the preset's dataset (module docstring) and return ``dataset.json``'s dict."""
    config.validate()
    out = Path(out_dir)
    names = class_names(config)
    k = config.num_classes
    categories = [
        {"id": c + 1, "name": names[c], "supercategory": "blob", "hue": class_hue(config, c)}
        for c in range(k)
    ]
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    counts = {"train": config.train_images, "val": config.val_images}
    num_annotations: dict[str, int] = {}
    pair_ious: list[float] = []
    for split in SPLITS:
        image_dir = out / "images" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index in range(counts[split]):
            rng = np.random.default_rng([config.seed, 7000 + SPLITS.index(split), index])
            pixels, instances = render_hue_image(rng, config)
            file_name = f"{index + 1:06d}.png"
            Image.fromarray(pixels).save(image_dir / file_name, compress_level=1)
            images.append({"id": index + 1, "file_name": file_name, "width": config.image_size,
                           "height": config.image_size})  # fmt: skip
            annotations += _annotations(instances, index + 1, len(annotations) + 1)
            if split == "val":
                boxes = [_box(m) for _, m in instances]
                for i in range(len(boxes)):
                    best = max((box_iou(boxes[i], b) for j, b in enumerate(boxes) if j != i),
                               default=0.0)  # fmt: skip
                    pair_ious.append(best)
        num_annotations[split] = len(annotations)
        _write_json(out / "annotations" / f"instances_{split}.json", {
            "info": {"description": "maskx synthetic hue ring", "version": HUE_GENERATOR_VERSION,
                     "seed": config.seed},
            "licenses": [], "images": images, "annotations": annotations,
            "categories": categories,
        })  # fmt: skip
    a_names = [names[c] for c in range(0, k, config.a_every)]
    (out / "mask_classes_A.txt").write_text("\n".join(a_names) + "\n", encoding="utf-8")
    angles = [math.radians(class_hue(config, c)) for c in range(k)]
    vectors = [[round(math.cos(a), 6), round(math.sin(a), 6)] for a in angles]
    _write_json(out / "class_attributes.json", {
        "description": "per class [cos h, sin h] of its hue h (category-id order)",
        "names": names, "vectors": vectors,
    })  # fmt: skip
    _write_json(out / "flip_map.json", {"pairs": [], "unflippable": [],
                                       "reason": "blobs and textures are mirror-symmetric"})  # fmt: skip
    with_partner = sum(v >= 0.6 for v in pair_ious) / max(len(pair_ious), 1)
    meta = {
        "generator": "training.synth_hue",
        "preset": "hue_ring",
        "version": HUE_GENERATOR_VERSION,
        "config": config.to_json(),
        "image_dirs": {s: f"images/{s}" for s in SPLITS},
        "annotations": {s: f"annotations/instances_{s}.json" for s in SPLITS},
        "mask_classes_file": "mask_classes_A.txt",
        "class_attributes_file": "class_attributes.json",
        "flip_map_file": "flip_map.json",
        "num_classes": k,
        "num_mask_classes": len(a_names),
        "num_images": counts,
        "num_annotations": num_annotations,
        "val_share_with_partner_box_iou_ge_0.6": round(with_partner, 3),
    }
    _write_json(out / "dataset.json", meta)
    return meta


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))
