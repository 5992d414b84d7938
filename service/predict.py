"""``maskx predict``: segment image files offline, writing an overlay PNG and the JSON per image.

The same torch-free path as the HTTP service (decode → resize → ONNX Runtime → box-local mask
paste → COCO RLE), without a server: ``DIR/<stem>.json`` is the body ``POST /segment`` would
answer for that file and ``DIR/<stem>.png`` draws it (see :mod:`service.overlay`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps
from pydantic import ValidationError

from service.errors import ServiceError
from service.flags import PREDICT_FLAGS, add_setting_flags, settings_from_args
from service.overlay import render_overlay
from service.pipeline import Pipeline, SegmentParams, request_params

# Offline the files are the user's own, so the pixel bound sits far above the service's default;
# it still turns a mistaken gigapixel scan into a message rather than a memory error.
MAX_PIXELS = 400_000_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``maskx predict``: image files, ``--out``, and the settings it shares with
    ``maskx serve`` (``--model``, ``--providers``, request defaults; see :mod:`service.flags`)."""
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    add_setting_flags(parser, PREDICT_FLAGS, required=("model_path",))
    parser.add_argument("--no-legend", action="store_true", help="omit the legend strip")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def segment_file(
    pipeline: Pipeline, path: Path, params: SegmentParams
) -> tuple[Image.Image, dict[str, Any]]:
    """Segment one image file.

    Returns the image as displayed (EXIF orientation applied, RGB) and the ``POST /segment``
    response body: ``model``, ``image`` (width, height), ``detections`` (box, score, label, name,
    mask_source, mask as COCO RLE) and ``timing_ms``. Raises ``ServiceError`` for unreadable
    images, as the service would answer 400.
    """
    result = pipeline.segment(path.read_bytes(), params)
    with Image.open(path) as opened:
        shown = ImageOps.exif_transpose(opened).convert("RGB")
    return shown, result.to_json(pipeline.info)


def predict_files(
    pipeline: Pipeline,
    paths: Sequence[Path],
    out_dir: Path,
    params: SegmentParams,
    *,
    legend: bool = True,
    progress: bool = True,
) -> list[Path]:
    """Write ``out_dir/<stem>.png`` and ``out_dir/<stem>.json`` for every path; return the PNGs.

    Two inputs with the same stem would overwrite each other's outputs, so that is refused
    before any work is done.
    """
    from tqdm import tqdm

    stems: dict[str, Path] = {}
    for path in paths:
        if path.stem in stems:
            raise ValueError(
                f"{path} and {stems[path.stem]} share the stem {path.stem!r}: their outputs "
                "would overwrite each other; predict them into different --out folders"
            )
        stems[path.stem] = path
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such image file")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in tqdm(paths, desc="predict", unit="img", disable=not progress):
        try:
            shown, response = segment_file(pipeline, path, params)
        except ServiceError as exc:
            raise ValueError(f"{path}: {exc.message}") from exc
        png = out_dir / f"{path.stem}.png"
        render_overlay(shown, response, legend=legend).save(png)
        (out_dir / f"{path.stem}.json").write_text(
            json.dumps(response, indent=2) + "\n", encoding="utf-8"
        )
        written.append(png)
    return written


def main(args: argparse.Namespace) -> int:
    """Run ``maskx predict``; returns the exit status (2 on bad settings, 1 on bad input)."""
    try:
        settings = settings_from_args(args, PREDICT_FLAGS, max_pixels=MAX_PIXELS)
    except ValidationError as exc:
        print(f"maskx predict: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    try:
        pipeline = Pipeline.from_model(
            settings.model_path,
            settings.provider_list,
            max_pixels=settings.max_pixels,
            allow_cpu_fallback=settings.allow_cpu_fallback,
        )
        params = request_params(settings, pipeline.info)
        written = predict_files(
            pipeline,
            list(args.images),
            args.out,
            params,
            legend=not args.no_legend,
            progress=not args.no_progress,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"maskx predict: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {len(written)} overlay(s) and JSON file(s) to {args.out}")
    return 0
