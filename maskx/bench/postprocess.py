"""``maskx bench postprocess``: box-local paste + RLE vs torchvision's full-image paste +
``pycocotools.mask.encode``, on the same random masks and boxes, side by side.

torch, torchvision and pycocotools are imported inside :func:`main` only (the ``maskx bench``
dispatcher imports this module to build its parser).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from maskx.cli import add_output_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--detections", type=int, default=50, help="masks per image (50)")
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each side (5)")
    parser.add_argument("--mask-threshold", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    # --out, as on every maskx command; --json, the earlier spelling, still works.
    add_output_argument(parser, dest="json", old=("--json",), type=Path, metavar="FILE.json",
                        help="write the figures to this JSON file")  # fmt: skip


def random_detections(n: int, height: int, width: int, seed: int) -> tuple[Any, Any]:
    """``n`` boxes (float32 [n, 4], 2–40% of the image side) and mask probabilities
    (float32 [n, 28, 28], smooth blobs)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    bw = rng.uniform(0.02, 0.4, n) * width
    bh = rng.uniform(0.02, 0.4, n) * height
    x1 = rng.uniform(0, width - bw)
    y1 = rng.uniform(0, height - bh)
    boxes = np.stack([x1, y1, x1 + bw, y1 + bh], axis=1).astype(np.float32)
    yy, xx = np.mgrid[0:28, 0:28] / 27.0
    cx, cy, r = rng.uniform(0.3, 0.7, (3, n, 1, 1))
    probs = 1 / (1 + np.exp(10 * (np.hypot(xx - cx, yy - cy) - r * 0.6)))
    return boxes, probs.astype(np.float32)


def _median_time(fn: Any, repeats: int) -> tuple[float, Any]:
    out = fn()  # warm caches and allocators
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from pycocotools import mask as mask_utils
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    from service.postprocess import (
        encode_regions,
        expand_boxes_for_paste,
        paste_masks_box_local,
    )

    h, w, thr = args.height, args.width, args.mask_threshold
    boxes, probs = random_detections(args.detections, h, w, args.seed)

    def ours() -> list[str]:
        int_boxes = expand_boxes_for_paste(boxes, probs.shape[-1])
        return encode_regions(paste_masks_box_local(probs, int_boxes, h, w, thr), h, w)

    def torchvision_side() -> list[str]:
        with torch.inference_mode():
            masks = paste_masks_in_image(
                torch.from_numpy(probs)[:, None], torch.from_numpy(boxes), (h, w)
            )[:, 0]
            binary = (masks >= thr).numpy().astype(np.uint8)
        rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
        return [r["counts"].decode() for r in rles]

    t_ours, rle_ours = _median_time(ours, args.repeats)
    t_ref, rle_ref = _median_time(torchvision_side, args.repeats)
    identical = sum(a == b for a, b in zip(rle_ours, rle_ref, strict=True))
    result = {
        "detections": args.detections,
        "image": [h, w],
        "ours_ms": t_ours * 1000,
        "torchvision_pycocotools_ms": t_ref * 1000,
        "speedup": t_ref / t_ours,
        "identical_rle": identical,
        "torch_threads": torch.get_num_threads(),
    }
    print(
        f"post-processing {args.detections} detections on a {w}x{h} image (median of {args.repeats})"
    )
    print(f"{'method':<44}{'ms':>10}")
    print(f"{'box-local paste + numpy RLE (maskx)':<44}{result['ours_ms']:>10.2f}")
    print(
        f"{'paste_masks_in_image + pycocotools.encode':<44}{result['torchvision_pycocotools_ms']:>10.2f}"
    )
    print(f"speed-up: {result['speedup']:.1f}x   identical RLE: {identical}/{args.detections}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if identical == args.detections else 1
