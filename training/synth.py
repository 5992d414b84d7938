"""Synthetic COCO-format dataset whose mask shape is predictable from the class.

A class is a *shape* (a family such as ``ring`` or ``arrow`` and a variant such as ``thick`` or
``left``) times an *appearance* (a colour and a texture). Every instance of a class is the same
canonical shape up to scale, aspect and a small rotation, so the class tells the mask; the
appearance (plus the outline) tells the class, so detection is learnable. Images are cluttered on
purpose so that a mask head that ignores the class has to guess which pixels of its box are the
object: textured backgrounds, distractor strokes and blobs in the objects' own colours, shapes
with holes that show what lies behind them, objects placed inside holes and overlapping each
other. Masks are the *visible* parts (COCO style): no pixel belongs to two instances.

The reasoning and the measured class prior are in ``docs/synthetic.md``.

Layout written by :func:`generate_dataset`::

    DIR/images/train/000001.png ...      COCO ``file_name`` is relative to images/<split>/
    DIR/images/val/000001.png ...
    DIR/annotations/instances_train.json
    DIR/annotations/instances_val.json
    DIR/mask_classes_A.txt               default A split, one class name per line
    DIR/dataset.json                     generator parameters, seed and version

Everything is a pure function of the configuration: the same seed gives byte-identical files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from tqdm import tqdm

GENERATOR_VERSION = 1

# family -> its two variants. Each (family, variant) is one canonical mask shape; two variants per
# family make the class (not just the family) carry shape information.
FAMILY_VARIANTS: dict[str, tuple[str, str]] = {
    "disk": ("round", "half"),
    "ring": ("thin", "thick"),
    "square_frame": ("thin", "thick"),
    "triangle": ("up", "down"),
    "star": ("5pt", "8pt"),
    "cross": ("plus", "x"),
    "heart": ("up", "down"),
    "crescent": ("left", "right"),
    "L": ("normal", "mirrored"),
    "arrow": ("right", "left"),
    "hexagon": ("flat", "pointy"),
    "U": ("up", "down"),
}
FAMILIES: tuple[str, ...] = tuple(FAMILY_VARIANTS)

# Saturated object colours; backgrounds are desaturated so colour stays informative, while
# distractor strokes and blobs reuse these colours so that colour alone never means "object".
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (240, 130, 20),
    "yellow": (230, 205, 30),
    "green": (30, 150, 60),
    "cyan": (30, 180, 200),
    "blue": (40, 70, 210),
    "purple": (130, 50, 190),
    "magenta": (220, 50, 170),
    "brown": (125, 75, 35),
    "black": (35, 35, 35),
}
TEXTURES: tuple[str, ...] = ("flat", "stripes", "dots", "checker")

SPLITS: tuple[str, ...] = ("train", "val")

# Shapes that a horizontal flip turns into another shape of their family (every other shape is
# its own mirror image), and textures that a flip turns into a pattern no class has (the 45°
# stripes become 135° stripes).
MIRROR_VARIANTS: dict[str, dict[str, str]] = {
    "crescent": {"left": "right", "right": "left"},
    "L": {"normal": "mirrored", "mirrored": "normal"},
    "arrow": {"right": "left", "left": "right"},
}
UNMIRRORED_TEXTURES: tuple[str, ...] = ("stripes",)


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of the generator; all of them are recorded in ``dataset.json``.

    Sizes are in pixels of the square images. ``object_size`` is the range of an object's long
    side as a fraction of ``image_size``; ``min_visible_fraction`` is the least part of an
    instance that later objects may leave visible.
    """

    num_classes: int = 120
    train_images: int = 2000
    val_images: int = 500
    image_size: int = 160
    min_objects: int = 2
    max_objects: int = 8
    families: tuple[str, ...] = FAMILIES
    seed: int = 0
    a_fraction: float = 0.25
    object_size: tuple[float, float] = (0.16, 0.45)
    max_rotation_deg: float = 15.0
    min_visible_fraction: float = 0.5
    min_area: int = 30
    near_probability: float = 0.5
    in_hole_probability: float = 0.35
    same_appearance_probability: float = 0.4
    strokes: tuple[int, int] = (3, 10)
    blobs: tuple[int, int] = (0, 3)
    # 0: every colour x texture; k > 0: only k appearances, each shared by more classes, so
    # that classes of one appearance differ only by shape.
    appearances: int = 0
    # The A split also covers every appearance in use (where its budget allows).
    a_covers_appearances: bool = False
    # 0: the default class table; k > 0: the k-th table disjoint from table 0 and from each
    # other (same shapes and palette, other colour x texture per shape) drawn in images of its
    # own: a pretraining set C of classes that are none of A and B.
    class_set: int = 0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        unknown = [f for f in self.families if f not in FAMILY_VARIANTS]
        if unknown:
            raise ValueError(f"families: unknown {unknown}; known are {list(FAMILIES)}")
        if len(set(self.families)) != len(self.families) or not self.families:
            raise ValueError(f"families: need distinct names, got {list(self.families)}")
        all_appearances = len(COLOURS) * len(TEXTURES)
        if not 0 <= self.appearances <= all_appearances:
            raise ValueError(
                f"appearances={self.appearances}: must be 0 (all) or 1..{all_appearances} "
                f"({len(COLOURS)} colours x {len(TEXTURES)} textures)"
            )
        per_shape = self.appearances or all_appearances
        capacity = len(self.families) * 2 * per_shape
        if not len(self.families) <= self.num_classes <= capacity:
            raise ValueError(
                f"num_classes={self.num_classes}: must be between the number of families "
                f"({len(self.families)}) and families x 2 variants x {per_shape} appearances "
                f"({capacity})"
            )
        if self.class_set < 0:
            raise ValueError(f"class_set={self.class_set}: must be >= 0")
        per_table = self.appearances_per_table
        if (self.class_set + 1) * per_table > per_shape:
            raise ValueError(
                f"class_set={self.class_set}: {self.num_classes} classes take {per_table} "
                f"appearances per shape, so only tables 0..{per_shape // per_table - 1} are "
                f"disjoint ({per_shape} appearances per shape)"
            )
        if self.train_images < 0 or self.val_images < 0:
            raise ValueError(
                f"train_images={self.train_images}, val_images={self.val_images}: must be >= 0"
            )
        if self.image_size < 64:
            raise ValueError(f"image_size={self.image_size}: must be >= 64")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"min_objects={self.min_objects}, max_objects={self.max_objects}: "
                "need 1 <= min_objects <= max_objects"
            )
        if not 0.0 < self.a_fraction < 1.0:
            raise ValueError(f"a_fraction={self.a_fraction}: must be in (0, 1)")
        lo, hi = self.object_size
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"object_size={self.object_size}: need 0 < low <= high <= 1")
        if not 0.0 < self.min_visible_fraction <= 1.0:
            raise ValueError(f"min_visible_fraction={self.min_visible_fraction}: must be in (0, 1]")

    @property
    def appearances_per_table(self) -> int:
        """How many appearances of every shape's order one class table takes: the classes are
        dealt round-robin over the shapes (families x 2 variants), ceil(num_classes / shapes)."""
        return -(-self.num_classes // (len(self.families) * 2))

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.as_dict().items()}

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SynthClass:
    """One class: a canonical shape (family, variant) in one appearance (colour, texture)."""

    family: str
    variant: str
    colour: str
    texture: str

    @property
    def shape(self) -> str:
        return f"{self.family}-{self.variant}"

    @property
    def name(self) -> str:
        return f"{self.family}-{self.variant}-{self.colour}-{self.texture}"


# --------------------------------------------------------------------------------------------
# Class table and A split


def make_classes(config: SynthConfig) -> list[SynthClass]:
    """The ``num_classes`` classes, in category-id order (category id = index + 1).

    Classes are dealt round-robin over the shapes (family, variant) so every family gets
    ``num_classes / len(families)`` classes, give or take one; each shape draws distinct
    appearances from its own permutation, so an appearance recurs across shapes and the detector
    has to look at the outline as well as the colour.
    """
    config.validate()
    rng = np.random.default_rng([config.seed, 1])
    # Variant-major order: with fewer classes than shapes, every family still gets one.
    shapes = [(f, FAMILY_VARIANTS[f][v]) for v in range(2) for f in config.families]
    appearances = [(c, t) for c in COLOURS for t in TEXTURES]
    orders = {shape: rng.permutation(len(appearances)).tolist() for shape in shapes}
    if config.appearances:
        # A subset drawn from its own stream, so the default class table is unchanged.
        subset = np.random.default_rng([config.seed, 3]).permutation(len(appearances))
        appearances = [appearances[i] for i in sorted(subset[: config.appearances].tolist())]
        orders = {s: rng.permutation(len(appearances)).tolist() for s in shapes}
    # Table k starts each shape's order after the appearances tables 0..k-1 take.
    counts = dict.fromkeys(shapes, config.class_set * config.appearances_per_table)
    classes: list[SynthClass] = []
    for i in range(config.num_classes):
        shape = shapes[i % len(shapes)]
        colour, texture = appearances[orders[shape][counts[shape]]]
        counts[shape] += 1
        classes.append(SynthClass(shape[0], shape[1], colour, texture))
    # Sorted by name so that category ids group by family in the json (easier to read).
    return sorted(classes, key=lambda c: c.name)


def choose_mask_classes(classes: Sequence[SynthClass], config: SynthConfig) -> list[str]:
    """The default A split: a minority of classes (``a_fraction``) covering every family.

    One class per family first, then one per shape (family, variant) not yet covered while the
    budget lasts, then random others. With the default 120 classes (30 in A, 24 shapes) every
    B class has an A class of the same canonical shape in another appearance: what weight
    transfer can exploit, and what a class-agnostic head trained on A cannot tell apart from
    clutter in the B appearance. The budget grows to the number of families if needed.
    Returns class names in class order.
    """
    rng = np.random.default_rng([config.seed, 2])
    families = sorted({c.family for c in classes})
    target = max(len(families), round(config.a_fraction * len(classes)))
    chosen: set[int] = set()
    seen: set[tuple[str, str]] = set()  # appearances in A so far

    def pick(members: list[int]) -> None:
        if config.a_covers_appearances:
            fresh = [i for i in members if (classes[i].colour, classes[i].texture) not in seen]
            members = fresh or members
        i = int(members[rng.integers(len(members))])
        chosen.add(i)
        seen.add((classes[i].colour, classes[i].texture))

    for family in families:
        pick([i for i, c in enumerate(classes) if c.family == family])
    covered = {classes[i].shape for i in chosen}
    shapes = sorted({c.shape for c in classes} - covered)
    for shape in (shapes[i] for i in rng.permutation(len(shapes))):
        if len(chosen) >= target:
            break
        pick([i for i, c in enumerate(classes) if c.shape == shape])
    rest = [i for i in range(len(classes)) if i not in chosen]
    for i in rng.permutation(rest)[: max(0, target - len(chosen))]:
        chosen.add(int(i))
    return [classes[i].name for i in sorted(chosen)]


def flip_map(classes: Sequence[SynthClass]) -> dict[str, Any]:
    """The dataset's flip map (``training.datasets.flip``): pairs of classes a horizontal flip
    swaps (mirror shapes of one appearance), and classes whose flip is no class of the table
    (a mirror shape whose partner in that appearance was not drawn, or a striped texture)."""
    names = {c.name for c in classes}
    pairs, unflippable = [], []
    for c in classes:
        mirror = MIRROR_VARIANTS.get(c.family, {}).get(c.variant)
        other = SynthClass(c.family, mirror, c.colour, c.texture).name if mirror else None
        if c.texture in UNMIRRORED_TEXTURES or (other is not None and other not in names):
            unflippable.append(c.name)
        elif other is not None and c.name < other:
            pairs.append([c.name, other])
    return {
        "pairs": pairs,
        "unflippable": unflippable,
        "reason": "a flipped arrow, L or crescent whose mirror class is not in the table, or "
        "a flipped striped texture, would be shown under a label it does not have",
    }


def class_attribute_vectors(classes: Sequence[SynthClass]) -> list[list[float]]:
    """One-hot shape, colour and texture of each class (the attribute τ control's input)."""
    shapes = sorted({c.shape for c in classes})
    colours, textures = list(COLOURS), list(TEXTURES)
    out = []
    for c in classes:
        v = [0.0] * (len(shapes) + len(colours) + len(textures))
        v[shapes.index(c.shape)] = 1.0
        v[len(shapes) + colours.index(c.colour)] = 1.0
        v[len(shapes) + len(colours) + textures.index(c.texture)] = 1.0
        out.append(v)
    return out


# --------------------------------------------------------------------------------------------
# Canonical shapes: polygons in a [-1, 1]^2 frame (x right, y down), fill 1 = object, 0 = hole


Polygons = list[tuple[np.ndarray, int]]


def _circle(r: float = 1.0, cx: float = 0.0, cy: float = 0.0, n: int = 48) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _regular(n: int, start_deg: float) -> np.ndarray:
    t = np.deg2rad(start_deg + 360.0 / n * np.arange(n))
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _flip(polys: Polygons, x: bool = False, y: bool = False) -> Polygons:
    s = np.array([-1.0 if x else 1.0, -1.0 if y else 1.0])
    return [(p * s, fill) for p, fill in polys]


def _normalise(polys: Polygons, bounds: tuple[tuple[float, float], ...] | None = None) -> Polygons:
    """Scale each axis so the object spans exactly [-1, 1].

    The extent is that of the fill-1 polygons unless ``bounds`` ``((x0, y0), (x1, y1))`` says
    otherwise (for shapes whose holes cut their outline).
    """
    if bounds is None:
        outer = np.concatenate([p for p, fill in polys if fill == 1])
        lo, hi = outer.min(axis=0), outer.max(axis=0)
    else:
        lo, hi = np.asarray(bounds[0], dtype=float), np.asarray(bounds[1], dtype=float)
    centre, half = (lo + hi) / 2.0, (hi - lo) / 2.0
    return [((p - centre) / half, fill) for p, fill in polys]


def _square(h: float) -> np.ndarray:
    return np.array([[-h, -h], [h, -h], [h, h], [-h, h]], dtype=float)


def canonical_shape(family: str, variant: str) -> tuple[Polygons, tuple[float, ...] | None]:
    """Polygons of a shape in its canonical frame and its hole ``(cx, cy, half_w, half_h)``.

    The hole (None for solid shapes) is where :func:`render_image` may put another object, so
    that the holder's box contains a whole other object.
    """
    hole: tuple[float, ...] | None = None
    if family == "disk":
        if variant == "round":
            polys: Polygons = [(_circle(), 1)]
        else:
            t = np.linspace(0.0, math.pi, 25)
            polys = [(np.stack([np.cos(t), 1.0 - 2.0 * np.sin(t)], axis=1), 1)]
    elif family == "ring":
        inner = 0.72 if variant == "thin" else 0.45
        polys = [(_circle(), 1), (_circle(inner), 0)]
        hole = (0.0, 0.0, inner * 0.7, inner * 0.7)
    elif family == "square_frame":
        inner = 0.72 if variant == "thin" else 0.45
        polys = [(_square(1.0), 1), (_square(inner), 0)]
        hole = (0.0, 0.0, inner, inner)
    elif family == "triangle":
        polys = _flip([(np.array([[0.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]), 1)], y=variant == "down")
    elif family == "star":
        n = 5 if variant == "5pt" else 8
        t = np.deg2rad(-90.0 + 180.0 / n * np.arange(2 * n))
        r = np.where(np.arange(2 * n) % 2 == 0, 1.0, 0.45)
        polys = [(np.stack([r * np.cos(t), r * np.sin(t)], axis=1), 1)]
    elif family == "cross":
        w = 0.32
        plus = np.array(
            [
                [-w, -1],
                [w, -1],
                [w, -w],
                [1, -w],
                [1, w],
                [w, w],
                [w, 1],
                [-w, 1],
                [-w, w],
                [-1, w],
                [-1, -w],
                [-w, -w],
            ],
            dtype=float,
        )
        if variant == "x":
            c = s = math.sqrt(0.5)
            plus = plus @ np.array([[c, s], [-s, c]])
        polys = [(plus, 1)]
    elif family == "heart":
        t = np.linspace(0.0, 2.0 * math.pi, 48, endpoint=False)
        x = 16.0 * np.sin(t) ** 3
        y = -(13.0 * np.cos(t) - 5.0 * np.cos(2 * t) - 2.0 * np.cos(3 * t) - np.cos(4 * t))
        polys = _flip([(np.stack([x, y], axis=1), 1)], y=variant == "down")
    elif family == "crescent":
        # A disk with a bite (a second disk drawn as a hole). The lit part spans x from -1 to
        # where the two circles cross, so normalise on those bounds, not on the whole disk.
        a, r = 0.5, 0.85
        tip = (1.0 - r * r + a * a) / (2.0 * a)
        polys = [(_circle(), 1), (_circle(r, cx=a), 0)]
        polys = _flip(_normalise(polys, bounds=((-1.0, -1.0), (tip, 1.0))), x=variant == "right")
    elif family == "L":
        t = 0.4
        pts = np.array([[0, 0], [t, 0], [t, 1 - t], [1, 1 - t], [1, 1], [0, 1]], dtype=float)
        polys = _flip([(pts * 2.0 - 1.0, 1)], x=variant == "mirrored")
    elif family == "arrow":
        pts = np.array(
            [[-1, -0.3], [0.1, -0.3], [0.1, -1], [1, 0], [0.1, 1], [0.1, 0.3], [-1, 0.3]],
            dtype=float,
        )
        polys = _flip([(pts, 1)], x=variant == "left")
    elif family == "hexagon":
        polys = [(_regular(6, 0.0 if variant == "flat" else 30.0), 1)]
    elif family == "U":
        t = 0.4
        pts = np.array(
            [
                [-1, -1],
                [-1 + t, -1],
                [-1 + t, 1 - t],
                [1 - t, 1 - t],
                [1 - t, -1],
                [1, -1],
                [1, 1],
                [-1, 1],
            ],
            dtype=float,
        )
        polys = _flip([(pts, 1)], y=variant == "down")
        hole = (0.0, (-t / 2.0) * (-1.0 if variant == "down" else 1.0), 1 - t, 1 - t / 2.0)
    else:  # validated earlier; kept so a new family cannot be half-added
        raise ValueError(f"family {family!r} has no canonical shape")
    if family != "crescent":
        polys = _normalise(polys)
    return polys, hole


# --------------------------------------------------------------------------------------------
# Rendering


@dataclass
class _Placed:
    class_index: int
    area: int
    centre: tuple[float, float]
    half: tuple[float, float]
    angle: float
    hole: tuple[float, ...] | None
    light: float


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, dtype=np.float32) * 255.0


def _secondary(colour: np.ndarray) -> np.ndarray:
    """The second colour of a texture: a tint (dark colours) or a shade (light ones)."""
    luminance = float(colour @ np.array([0.299, 0.587, 0.114], dtype=np.float32))
    return colour * 0.45 + 255.0 * 0.55 if luminance < 150.0 else colour * 0.45


def _pattern(texture: str, u: np.ndarray, v: np.ndarray) -> np.ndarray | None:
    """Where a texture shows its second colour; ``u, v`` are object-local pixel coordinates."""
    if texture == "flat":
        return None
    if texture == "stripes":
        return np.floor((u + v) * (1.0 / 4.5)) % 2 == 0  # 45-degree stripes, ~6 px period
    if texture == "dots":
        du, dv = u % 6.0 - 3.0, v % 6.0 - 3.0
        return du * du + dv * dv < 3.2
    if texture == "checker":
        return (np.floor(u / 4.0) + np.floor(v / 4.0)) % 2 == 0
    raise ValueError(f"texture {texture!r} is unknown; known are {list(TEXTURES)}")


def _polygon_mask(
    polys: Polygons, size: int, centre: Sequence[float], half: Sequence[float], angle: float
) -> tuple[np.ndarray, int]:
    """Rasterise canonical polygons placed at ``centre`` with half-extents ``half``, rotated.

    Returns the bool ``[size, size]`` mask inside the image and the area the object would have
    on an unbounded canvas, so that cropping by the image border counts as occlusion.
    """
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, s], [-s, c]])
    pad = size // 2
    canvas = Image.new("L", (size + 2 * pad, size + 2 * pad), 0)
    draw = ImageDraw.Draw(canvas)
    for pts, fill in polys:
        xy = (pts * np.asarray(half)) @ rot + np.asarray(centre) + pad
        draw.polygon([tuple(p) for p in xy.tolist()], fill=fill)
    full = np.asarray(canvas, dtype=bool)
    return full[pad : pad + size, pad : pad + size], int(full.sum())


def _paint(image: np.ndarray, mask: np.ndarray, colour: np.ndarray, texture: str) -> None:
    """Paint ``mask`` pixels of ``image`` (float32 [H, W, 3]) in a colour and texture.

    Textures are anchored to the image, not to the object, so two touching objects of the
    same appearance show no seam: their border is known only from their shapes.
    """
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return
    pattern = _pattern(texture, xs.astype(np.float32), ys.astype(np.float32))
    if pattern is None:
        image[ys, xs] = colour
    else:
        image[ys, xs] = np.where(pattern[:, None], _secondary(colour), colour)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A desaturated textured background with low-frequency blotches: float32 [H, W, 3]."""
    base = _hsv_to_rgb(rng.random(), rng.uniform(0.05, 0.25), rng.uniform(0.5, 0.92))
    other = _hsv_to_rgb(rng.random(), rng.uniform(0.05, 0.3), rng.uniform(0.4, 0.95))
    coarse = rng.random((6, 6)).astype(np.float32)
    blend = (
        np.asarray(
            Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR),
            dtype=np.float32,
        )
        / 255.0
        * rng.uniform(0.2, 0.7)
    )
    image = base * (1.0 - blend[..., None]) + other * blend[..., None]
    kind = rng.integers(3)
    if kind > 0:  # faint large-scale pattern; never the objects' period, never their contrast
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        period = rng.uniform(10.0, 22.0)
        if kind == 1:
            theta = rng.uniform(0.0, math.pi)
            pat = np.floor((xx * math.cos(theta) + yy * math.sin(theta)) / period) % 2
        else:
            pat = (np.floor(xx / period) + np.floor(yy / period)) % 2
        image = image * (1.0 - 0.08 * pat[..., None])
    return image.astype(np.float32)


def _distractors(image: np.ndarray, rng: np.random.Generator, config: SynthConfig) -> np.ndarray:
    """Strokes and blobs in the objects' own colours and textures, behind the objects."""
    size = config.image_size
    palette = list(COLOURS.values())
    pil = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(rng.integers(config.strokes[0], config.strokes[1] + 1)):
        colour = palette[rng.integers(len(palette))]
        width = int(rng.integers(1, 4))
        if rng.random() < 0.5:
            pts = rng.uniform(-0.1 * size, 1.1 * size, (2, 2))
            draw.line([tuple(p) for p in pts.tolist()], fill=colour, width=width)
        else:
            x0, y0 = rng.uniform(-0.3 * size, 0.9 * size, 2)
            w, h = rng.uniform(0.2 * size, 0.8 * size, 2)
            start = float(rng.uniform(0, 360))
            draw.arc(
                [x0, y0, x0 + w, y0 + h],
                start,
                start + float(rng.uniform(60, 240)),
                fill=colour,
                width=width,
            )
    image = np.asarray(pil, dtype=np.float32).copy()
    names = list(COLOURS)
    for _ in range(rng.integers(config.blobs[0], config.blobs[1] + 1)):
        # Irregular star-convex blobs: an object's appearance on a shape that is no class.
        n = int(rng.integers(5, 9))
        t = np.sort(rng.uniform(0, 2 * math.pi, n))
        r = rng.uniform(0.45, 1.0, n)
        pts = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
        radius = rng.uniform(0.04, 0.1) * size
        centre = rng.uniform(0.0, size, 2)
        mask, _ = _polygon_mask([(pts, 1)], size, centre, (radius, radius), 0.0)
        colour = np.array(COLOURS[names[rng.integers(len(names))]], dtype=np.float32)
        _paint(image, mask, colour, TEXTURES[rng.integers(len(TEXTURES))])
    return image


def _propose(
    rng: np.random.Generator,
    config: SynthConfig,
    placed: list[_Placed],
) -> tuple[tuple[float, float], tuple[float, float], float, int | None]:
    """Centre, half-extents, angle and host of a new object.

    The object is free (host None), inside the hole of a placed object, or overlapping one
    (host = that object's index in ``placed``).
    """
    size = config.image_size
    lo, hi = config.object_size
    long_side = math.exp(rng.uniform(math.log(lo), math.log(hi))) * size
    aspect = math.exp(rng.uniform(-0.35, 0.35))
    half = (long_side / 2.0 * min(1.0, aspect), long_side / 2.0 * min(1.0, 1.0 / aspect))
    angle = math.radians(rng.uniform(-config.max_rotation_deg, config.max_rotation_deg))
    holders = [k for k, p in enumerate(placed) if p.hole is not None]
    if holders and rng.random() < config.in_hole_probability:
        host_index = holders[rng.integers(len(holders))]
        host = placed[host_index]
        hx, hy, hw, hh = host.hole  # type: ignore[misc]
        c, s = math.cos(host.angle), math.sin(host.angle)
        ox, oy = hx * host.half[0], hy * host.half[1]
        centre = (host.centre[0] + c * ox - s * oy, host.centre[1] + s * ox + c * oy)
        room = min(hw * host.half[0], hh * host.half[1]) * rng.uniform(0.6, 0.9)
        if room >= 6.0:
            small = (room * min(1.0, aspect), room * min(1.0, 1.0 / aspect))
            return centre, small, angle, host_index
    if placed and rng.random() < config.near_probability:
        # Overlap a neighbour so that boxes contain pieces of other objects.
        host_index = int(rng.integers(len(placed)))
        host = placed[host_index]
        centre = (
            host.centre[0] + rng.uniform(-1.2, 1.2) * host.half[0],
            host.centre[1] + rng.uniform(-1.2, 1.2) * host.half[1],
        )
        return centre, half, angle, host_index
    margin = 0.6 * long_side / 2.0
    centre = (rng.uniform(margin, size - margin), rng.uniform(margin, size - margin))
    return centre, half, angle, None


def render_image(
    rng: np.random.Generator,
    config: SynthConfig,
    classes: Sequence[SynthClass],
    shapes: dict[str, tuple[Polygons, tuple[float, ...] | None]] | None = None,
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Render one image and its instances.

    Returns ``(image, instances)``: ``image`` uint8 ``[S, S, 3]`` RGB and ``instances`` a list
    of ``(class_index, visible_mask)`` with ``visible_mask`` bool ``[S, S]``, in drawing order
    (back to front). Visible masks are disjoint; each keeps at least ``min_visible_fraction`` of
    its unoccluded area and at least ``min_area`` pixels.
    """
    size = config.image_size
    if shapes is None:
        shapes = {c.shape: canonical_shape(c.family, c.variant) for c in classes}
    image = _distractors(_background(rng, size), rng, config)
    owner = np.zeros((size, size), dtype=np.int16)  # 0 = no instance, i + 1 = instance i
    placed: list[_Placed] = []
    lookalikes: dict[tuple[str, str], list[int]] = {}
    for i, c in enumerate(classes):
        lookalikes.setdefault((c.colour, c.texture), []).append(i)
    n_objects = int(rng.integers(config.min_objects, config.max_objects + 1))
    for _ in range(n_objects):
        for _attempt in range(8):
            centre, half, angle, host = _propose(rng, config, placed)
            if host is not None and rng.random() < config.same_appearance_probability:
                # A neighbour in the host's exact colour, texture and lighting: the two merge
                # into one region, and only the shape of each class says where one ends.
                same = lookalikes[
                    (
                        classes[placed[host].class_index].colour,
                        classes[placed[host].class_index].texture,
                    )
                ]
                class_index = same[rng.integers(len(same))]
                light = placed[host].light
            else:
                class_index = int(rng.integers(len(classes)))
                light = float(rng.uniform(0.92, 1.06))  # lighting, small enough to keep hue
            cls = classes[class_index]
            polys, hole = shapes[cls.shape]
            mask, area = _polygon_mask(polys, size, centre, half, angle)
            inside = int(mask.sum())
            if inside < max(config.min_area, config.min_visible_fraction * area):
                continue
            # Visible pixels each earlier instance would keep once this one is on top of it.
            covered = np.bincount(owner[mask], minlength=len(placed) + 1)[1:]
            visible = np.bincount(owner.ravel(), minlength=len(placed) + 1)[1:] - covered
            if any(
                vis < max(config.min_area, config.min_visible_fraction * p.area)
                for vis, p in zip(visible, placed, strict=True)
            ):
                continue
            colour = np.array(COLOURS[cls.colour], dtype=np.float32) * light
            _paint(image, mask, np.clip(colour, 0, 255), cls.texture)
            owner[mask] = len(placed) + 1
            placed.append(_Placed(class_index, area, centre, half, angle, hole, light))
            break
    instances = [(p.class_index, owner == i + 1) for i, p in enumerate(placed)]
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), instances


# --------------------------------------------------------------------------------------------
# Dataset writing


def _image_rng(seed: int, split: str, index: int, class_set: int = 0) -> np.random.Generator:
    # One stream per image: images do not depend on each other or on how many are made. Another
    # class table draws other images (table 0 keeps the streams it always had).
    key = [seed, 1000 + SPLITS.index(split), index]
    return np.random.default_rng([*key, 2000 + class_set] if class_set else key)


def _annotations(
    instances: list[tuple[int, np.ndarray]], image_id: int, first_id: int
) -> list[dict[str, Any]]:
    if not instances:
        return []
    stack = np.asfortranarray(np.stack([m for _, m in instances], axis=2).astype(np.uint8))
    rles = mask_utils.encode(stack)
    areas = mask_utils.area(rles)
    boxes = mask_utils.toBbox(rles)
    out = []
    for k, ((class_index, _), rle) in enumerate(zip(instances, rles, strict=True)):
        out.append(
            {
                "id": first_id + k,
                "image_id": image_id,
                "category_id": class_index + 1,
                "segmentation": {
                    "size": [int(s) for s in rle["size"]],
                    "counts": rle["counts"].decode("ascii"),
                },
                "area": int(areas[k]),
                "bbox": [float(v) for v in boxes[k]],
                "iscrowd": 0,
            }
        )
    return out


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, separators=(",", ":")) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def generate_dataset(
    out_dir: str | os.PathLike[str], config: SynthConfig, progress: bool = True
) -> dict[str, Any]:
    """Write the dataset described in the module docstring and return ``dataset.json``'s dict."""
    config.validate()
    out = Path(out_dir)
    classes = make_classes(config)
    shapes = {c.shape: canonical_shape(c.family, c.variant) for c in classes}
    mask_classes = choose_mask_classes(classes, config)
    categories = [
        {
            "id": i + 1,
            "name": c.name,
            "supercategory": c.family,
            "shape": c.shape,
            "colour": c.colour,
            "texture": c.texture,
        }
        for i, c in enumerate(classes)
    ]
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    counts = {"train": config.train_images, "val": config.val_images}
    bar = tqdm(total=sum(counts.values()), desc="synth", unit="img", disable=not progress)
    num_annotations: dict[str, int] = {}
    for split in SPLITS:
        image_dir = out / "images" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index in range(counts[split]):
            image_id = index + 1
            pixels, instances = render_image(
                _image_rng(config.seed, split, index, config.class_set), config, classes, shapes
            )
            file_name = f"{image_id:06d}.png"
            Image.fromarray(pixels).save(image_dir / file_name, compress_level=1)
            images.append(
                {
                    "id": image_id,
                    "file_name": file_name,
                    "width": config.image_size,
                    "height": config.image_size,
                }
            )
            annotations += _annotations(instances, image_id, len(annotations) + 1)
            bar.update(1)
        num_annotations[split] = len(annotations)
        _write_json(
            out / "annotations" / f"instances_{split}.json",
            {
                "info": {
                    "description": "maskx synthetic shapes",
                    "version": GENERATOR_VERSION,
                    "seed": config.seed,
                },
                "licenses": [],
                "images": images,
                "annotations": annotations,
                "categories": categories,
            },
        )
    bar.close()
    (out / "mask_classes_A.txt").write_text("\n".join(mask_classes) + "\n", encoding="utf-8")
    _write_json(out / "flip_map.json", flip_map(classes))
    _write_json(out / "class_attributes.json", {
        "description": "per class one-hot shape, colour, texture (category-id order)",
        "names": [c.name for c in classes], "vectors": class_attribute_vectors(classes),
    })  # fmt: skip
    meta = {
        "generator": "training.synth",
        "version": GENERATOR_VERSION,
        "config": config.to_json(),
        "image_dirs": {s: f"images/{s}" for s in SPLITS},
        "annotations": {s: f"annotations/instances_{s}.json" for s in SPLITS},
        "mask_classes_file": "mask_classes_A.txt",
        "flip_map_file": "flip_map.json",
        "class_attributes_file": "class_attributes.json",
        "num_classes": len(classes),
        "num_mask_classes": len(mask_classes),
        "num_images": counts,
        "num_annotations": num_annotations,
    }
    _write_json(out / "dataset.json", meta)
    return meta


# --------------------------------------------------------------------------------------------
# Preview


def render_preview(
    dataset_dir: str | os.PathLike[str],
    out_png: str | os.PathLike[str],
    n: int = 16,
    split: str = "train",
    scale: int = 2,
) -> Path:
    """Write a grid PNG of the first ``n`` images of ``split`` with their masks overlaid.

    Each instance gets its own overlay colour and a one-pixel outline of its visible mask, so
    holes, occlusions and boxes holding other objects are easy to check by eye.
    """
    root = Path(dataset_dir)
    ann_path = root / "annotations" / f"instances_{split}.json"
    if not ann_path.is_file():
        raise FileNotFoundError(f"{ann_path}: no such annotation file; run `maskx synth` first")
    data = json.loads(ann_path.read_text(encoding="utf-8"))
    images = data["images"][:n]
    if not images:
        raise ValueError(f"{ann_path}: has no images to preview")
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    rng = np.random.default_rng(0)
    tiles = []
    for info in images:
        pixels = np.asarray(
            Image.open(root / "images" / split / info["file_name"]).convert("RGB"),
            dtype=np.float32,
        ).copy()
        left = pixels.copy()
        for ann in by_image.get(info["id"], []):
            m = mask_utils.decode(ann["segmentation"]).astype(bool)
            colour = rng.uniform(40, 255, 3).astype(np.float32)
            pixels[m] = 0.45 * pixels[m] + 0.55 * colour
            edge = m & ~(
                np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1)
            )
            pixels[edge] = colour
        pair = np.concatenate([left, np.full((left.shape[0], 2, 3), 255.0), pixels], axis=1)
        tiles.append(pair.astype(np.uint8))
    cols = max(1, math.ceil(math.sqrt(len(tiles) / 2.0)))
    rows = math.ceil(len(tiles) / cols)
    th, tw = tiles[0].shape[:2]
    pad = 4
    grid = np.full((rows * (th + pad) + pad, cols * (tw + pad) + pad, 3), 255, dtype=np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        y, x = pad + r * (th + pad), pad + c * (tw + pad)
        grid[y : y + th, x : x + tw] = tile
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(out)
    return out


# --------------------------------------------------------------------------------------------
# How much the class tells about the mask


def _box_masks(coco: dict[str, Any], resolution: int) -> tuple[np.ndarray, list[int]]:
    """Every annotation's mask cropped to its box and resized: bool ``[N, R, R]``, categories."""
    out = np.zeros((len(coco["annotations"]), resolution, resolution), dtype=bool)
    cats = []
    for k, ann in enumerate(coco["annotations"]):
        m = mask_utils.decode(ann["segmentation"])
        x, y, w, h = (round(v) for v in ann["bbox"])
        crop = Image.fromarray(m[y : y + h, x : x + w] * 255)
        resized = np.asarray(crop.resize((resolution, resolution), Image.BILINEAR))
        out[k] = resized >= 128
        cats.append(int(ann["category_id"]))
    return out, cats


def mask_prior_iou(coco: dict[str, Any], resolution: int = 28) -> dict[str, float]:
    """Mean IoU of each instance's box-local mask with the mean mask of its group.

    Each instance's visible mask is cropped to its box and resized to ``resolution``; a group's
    prediction is its mean mask thresholded at 0.5. Groups: the instance's class, its shape
    (family-variant), its family, and all classes together (what a predictor that ignores the
    class can at best do without looking at pixels). The gap between ``class`` and ``all`` is
    the edge a class-aware mask predictor has from the class alone.
    """
    masks, cats = _box_masks(coco, resolution)
    if not cats:
        raise ValueError("mask_prior_iou: the dataset has no annotations")
    info = {c["id"]: c for c in coco["categories"]}
    keys = {
        "class": [str(c) for c in cats],
        "shape": [info[c].get("shape", info[c]["name"]) for c in cats],
        "family": [info[c]["supercategory"] for c in cats],
        "all": ["all"] * len(cats),
    }
    flat = masks.reshape(len(cats), -1)
    result: dict[str, float] = {}
    for group, labels in keys.items():
        labels_arr = np.array(labels)
        ious = np.zeros(len(cats))
        for value in np.unique(labels_arr):
            members = labels_arr == value
            prior = flat[members].mean(axis=0) >= 0.5
            inter = (flat[members] & prior).sum(axis=1)
            union = (flat[members] | prior).sum(axis=1)
            ious[members] = inter / np.maximum(union, 1)
        result[group] = float(ious.mean())
    return result
