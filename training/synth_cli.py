"""``maskx synth``: write a synthetic COCO-format dataset (see ``docs/synthetic.md``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.synth import FAMILIES, SynthConfig


def _families(value: str) -> tuple[str, ...]:
    """``--families``: a count (the first N families) or comma-separated names."""
    value = value.strip()
    if value.isdigit():
        n = int(value)
        if not 1 <= n <= len(FAMILIES):
            raise argparse.ArgumentTypeError(f"{n}: must be between 1 and {len(FAMILIES)}")
        return FAMILIES[:n]
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [n for n in names if n not in FAMILIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown families {unknown or [value]}; known are {','.join(FAMILIES)}"
        )
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = SynthConfig()
    parser.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    parser.add_argument(
        "--preset",
        choices=("shapes", "hue_ring"),
        default="shapes",
        help="shapes: classes = shape x appearance (the options below); hue_ring: 36 hue "
        "classes on random blobs with annotated partners, A = every third class (only "
        "--classes, --images, --val-images, --image-size, --seed, --hue-offset apply; "
        "docs/synthetic.md)",
    )
    parser.add_argument(
        "--hue-offset",
        type=float,
        default=0.0,
        help="hue_ring: shift every class's hue by this many class steps (0.5: classes halfway "
        "between the default ones, a disjoint set for pretraining)",
    )
    parser.add_argument("--classes", type=int, help=f"number of classes K ({d.num_classes})")
    parser.add_argument("--images", type=int, help=f"training images ({d.train_images})")
    parser.add_argument("--val-images", type=int, help=f"validation images ({d.val_images})")
    parser.add_argument("--image-size", type=int, help=f"side in pixels ({d.image_size})")
    parser.add_argument("--min-objects", type=int, default=d.min_objects)
    parser.add_argument("--max-objects", type=int, default=d.max_objects)
    parser.add_argument(
        "--families",
        type=_families,
        default=d.families,
        help=f"a count or comma-separated names among {','.join(FAMILIES)} (default: all)",
    )
    parser.add_argument(
        "--a-fraction",
        type=float,
        default=d.a_fraction,
        help="share of classes in the default mask split A (mask_classes_A.txt)",
    )
    parser.add_argument(
        "--appearances",
        type=int,
        default=d.appearances,
        help="use only this many colour x texture appearances, each shared by more classes "
        "(0: all 40)",
    )
    parser.add_argument(
        "--a-covers-appearances",
        action="store_true",
        help="choose split A to cover every appearance in use as well as every shape",
    )
    parser.add_argument(
        "--class-set",
        type=int,
        default=d.class_set,
        help="shapes preset: 0 the default class table; k > 0 the k-th table with none of "
        "table 0's classes (same shapes and palette), in other images: a pretraining set",
    )
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument(
        "--preview", type=int, default=16, help="images in DIR/preview.png (0: no preview)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="write into a folder that holds a dataset"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def main(args: argparse.Namespace) -> int:
    from training.synth import generate_dataset

    if args.preset == "hue_ring":
        return _hue_ring(args)
    d = SynthConfig()
    config = SynthConfig(
        num_classes=d.num_classes if args.classes is None else args.classes,
        train_images=d.train_images if args.images is None else args.images,
        val_images=d.val_images if args.val_images is None else args.val_images,
        image_size=d.image_size if args.image_size is None else args.image_size,
        min_objects=args.min_objects,
        max_objects=args.max_objects,
        families=tuple(args.families),
        seed=args.seed,
        a_fraction=args.a_fraction,
        appearances=args.appearances,
        a_covers_appearances=args.a_covers_appearances,
        class_set=args.class_set,
    )
    return _write(args, config, generate_dataset, lambda meta: "")


def _hue_ring(args: argparse.Namespace) -> int:
    from training.synth_hue import HueRingConfig, generate_hue_ring

    sizes = {"num_classes": args.classes, "train_images": args.images,
             "val_images": args.val_images, "image_size": args.image_size}  # fmt: skip
    config = HueRingConfig(
        seed=args.seed,
        hue_offset=args.hue_offset,
        **{k: v for k, v in sizes.items() if v is not None},
    )

    def partners(meta: dict) -> str:
        share = meta["val_share_with_partner_box_iou_ge_0.6"]
        return f"; {100 * share:.0f} % of val instances have a partner box with IoU >= 0.6"

    return _write(args, config, generate_hue_ring, partners, preset="hue_ring, ")


def _write(
    args: argparse.Namespace,
    config: Any,
    generate: Callable[..., dict],
    extra: Callable[[dict], str],
    preset: str = "",
) -> int:
    """Validate ``config``, refuse to overwrite unless asked, generate, preview, summarise."""
    from training.synth import render_preview

    try:
        config.validate()
    except ValueError as exc:
        print(f"maskx synth: {exc}", file=sys.stderr)
        return 2
    out: Path = args.out
    if (out / "dataset.json").exists() and not args.overwrite:
        print(
            f"maskx synth: {out / 'dataset.json'} exists; pass --overwrite to replace it",
            file=sys.stderr,
        )
        return 2
    meta = generate(out, config, progress=not args.no_progress)
    if args.preview > 0 and config.train_images > 0:
        render_preview(out, out / "preview.png", n=args.preview)
    print(
        f"wrote {out}: {preset}{meta['num_classes']} classes ({meta['num_mask_classes']} in A), "
        f"{meta['num_images']['train']} train / {meta['num_images']['val']} val images, "
        f"{meta['num_annotations']['train']} / {meta['num_annotations']['val']} instances"
        + extra(meta)
    )
    return 0
