"""``maskx import-detectron FILE.pkl --classes VOCAB --out CHECKPOINT.pt [--mask-classes SPEC]``."""

from __future__ import annotations

import argparse
import logging
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("weights", metavar="FILE.pkl", help="a Detectron Mask^X weights file")
    parser.add_argument(
        "--classes",
        required=True,
        metavar="VOCAB",
        help="class names in model-label order: a COCO-format json (its 'categories', in list "
        "order, as Detectron reads them) or a text file with one name a line; K entries",
    )
    parser.add_argument("--out", required=True, metavar="CHECKPOINT.pt", help="checkpoint to write")
    parser.add_argument(
        "--mask-classes",
        metavar="SPEC",
        help="the mask set A: all, none, voc, nonvoc or a file of class names or ids "
        "(default: the first 80 classes when K = 3001, the authors' COCO classes; else all)",
    )
    parser.add_argument("--name", help="model name (default: the weights file's stem)")


def main(args: argparse.Namespace) -> int:
    from training.detectron import DetectronFileError, DetectronImportError, import_detectron

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        report = import_detectron(
            args.weights,
            args.classes,
            args.out,
            mask_classes=args.mask_classes,
            name=args.name,
        )
    except (DetectronFileError, DetectronImportError) as exc:
        print(f"maskx import-detectron: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the checkpoint cannot be written
        print(f"maskx import-detectron: cannot write {args.out!r}: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {report.architecture.backbone}-FPN Mask^X R-CNN, "
          f"{report.architecture.num_classes} classes, {report.floats:,} floats")  # fmt: skip
    return 0
