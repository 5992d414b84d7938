"""``maskx evaluate --checkpoint CKPT --annotations JSON --images DIR``: pycocotools AP on A, B
and all classes, printed as a table and written as JSON, with the detections beside it as a COCO
results file (``coco_instances_results.json``).

Under ``torchrun --nproc_per_node N`` every process predicts its shard of the set and rank 0
scores them all, with the AP a single process gets.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from training.distributed import DEFAULT_TIMEOUT_MINUTES

RESULTS_FILE = "coco_instances_results.json"
"""The detections of ``maskx evaluate``, as ``COCO.loadRes`` reads them (detectron2's name)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a maskx checkpoint (.pt)")
    parser.add_argument("--annotations", required=True, help="COCO-format json of the eval set")
    parser.add_argument("--images", required=True, help="image folder of the eval set")
    parser.add_argument(
        "--out",
        help="write the metrics JSON here (default: next to the checkpoint); the detections "
        f"go to {RESULTS_FILE} in the same folder",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--score-threshold", type=float, help="override the model's box_score_thresh"
    )
    parser.add_argument(
        "--mask-classes",
        metavar="SPEC",
        help="score A/B with this split instead of the checkpoint's own: all, voc, nonvoc, "
        "none or a file of class names/ids (e.g. an oracle, trained with every class as a "
        "mask class, scored on the B of a partially supervised split)",
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--dist-timeout-minutes",
        type=float,
        default=DEFAULT_TIMEOUT_MINUTES,
        help="under torchrun: how long a rank waits for the others (default: %(default)s)",
    )


def format_metrics(metrics: dict[str, Any]) -> str:
    """A small table: rows (iou type, subset), columns AP / AP50 / AP75."""
    lines = [f"{'':14}{'AP':>8}{'AP50':>8}{'AP75':>8}"]
    for iou in ("segm", "bbox"):
        for subset in ("A", "B", "all"):
            s = metrics.get(iou, {}).get(subset)
            if not s:
                continue
            # None: pycocotools had nothing to score (e.g. B when every class has masks).
            cells = "".join(
                f"{'-' if s.get(k) is None else format(s[k], '.3f'):>8}"
                for k in ("AP", "AP50", "AP75")
            )
            lines.append(f"{iou + ' ' + subset:14}{cells}")
    return "\n".join(lines)


def run_evaluation(
    checkpoint: str,
    annotations: str,
    images: str,
    *,
    device: str = "auto",
    batch_size: int = 2,
    workers: int = 0,
    progress: bool = True,
    score_threshold: float | None = None,
    mask_classes: str | None = None,
    results_path: str | os.PathLike[str] | None = None,
    dist_timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a COCO-format set labelled with the checkpoint's vocabulary.

    ``mask_classes``: the A/B split the subsets are scored on (a ``data.mask_classes`` spec);
    None keeps the checkpoint's own. ``results_path``: write the detections there as a COCO
    results file. Under ``torchrun`` (or inside an initialised process group) every rank
    predicts its shard and returns the same metrics. This is the one evaluation routine:
    ``maskx evaluate`` and ``maskx bench experiment`` both call it.
    """
    from training.checkpoint import load_model_from_checkpoint
    from training.datasets import CocoDataset, build_data_loader
    from training.distributed import init_distributed
    from training.evaluation import evaluate

    info, torch_device = init_distributed(device, dist_timeout_minutes)
    model, vocab, ckpt = load_model_from_checkpoint(checkpoint)
    # A Visual Genome model on COCO val: only its COCO classes have ground truth there.
    kind = ckpt.data_kind
    if mask_classes is not None:
        vocab = vocab.with_mask_split(mask_classes)
    if score_threshold is not None:
        model.roi_heads.score_thresh = score_threshold
    device = str(torch_device)
    model.to(device)
    dataset = CocoDataset(annotations, images, vocab=vocab)
    loader = build_data_loader(
        dataset, batch_size, workers=workers, shuffle=False, distributed=info.enabled
    )
    return evaluate(
        model, loader, dataset.coco, vocab, device=device, progress=progress and info.is_main,
        results_path=results_path, skip_classes_without_ground_truth=kind != "coco",
    )  # fmt: skip


def main(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from training.checkpoint import CheckpointError
    from training.datasets import DatasetError
    from training.distributed import dist_info
    from training.evaluation import write_metrics_json

    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".metrics.json")
    results = out.parent / RESULTS_FILE
    try:
        try:
            metrics = run_evaluation(
                args.checkpoint, args.annotations, args.images, device=args.device,
                batch_size=args.batch_size, workers=args.workers, progress=not args.no_progress,
                score_threshold=args.score_threshold, mask_classes=args.mask_classes,
                results_path=results, dist_timeout_minutes=args.dist_timeout_minutes,
            )  # fmt: skip
        except (CheckpointError, DatasetError, FileNotFoundError, ValueError) as exc:
            print(f"maskx evaluate: {exc}", file=sys.stderr)
            return 2
        if dist_info().is_main:
            write_metrics_json(metrics, out)
            print(format_metrics(metrics))
            print(f"metrics written to {out}, detections to {results}")
        return 0
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
