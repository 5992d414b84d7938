"""``maskx evaluate --checkpoint CKPT --annotations JSON --images DIR``: pycocotools AP on A, B
and all classes, printed as a table and written as JSON, with the detections beside it as a COCO
results file (``coco_instances_results.json``).

Under ``torchrun --nproc_per_node N`` every process predicts its shard of the set and rank 0
scores them all, with the AP a single process gets.

``--model FILE.onnx`` instead of ``--checkpoint`` scores an exported graph exactly as the service
answers: its own decode, resize rule, ONNX Runtime, paste rule and RLE (``service.pipeline``),
one image at a time. For an imported Detectron model that is the authors' resize and paste,
where the eager checkpoint path resizes and pastes as torchvision does.
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
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a maskx checkpoint (.pt), run in PyTorch")
    source.add_argument(
        "--model",
        help="an exported ONNX graph, run through the service's own pipeline (resize and paste "
        "rules of the model, ONNX Runtime); one process",
    )
    parser.add_argument(
        "--providers",
        default="cpu",
        help="--model: ONNX Runtime providers, as MASKX_PROVIDERS (default: cpu)",
    )
    parser.add_argument("--annotations", required=True, help="COCO-format json of the eval set")
    parser.add_argument("--images", required=True, help="image folder of the eval set")
    parser.add_argument(
        "--out",
        help="write the metrics JSON here (default: next to the checkpoint or model); the "
        "detections "
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


MAX_DETECTIONS = 10_000
"""Per image, more than any graph keeps: the graph's own limit decides, as in COCO evaluation."""


def run_onnx_evaluation(
    model_path: str | os.PathLike[str],
    annotations: str | os.PathLike[str],
    images: str | os.PathLike[str],
    *,
    providers: str = "cpu",
    progress: bool = True,
    score_threshold: float | None = None,
    mask_classes: str | None = None,
    results_path: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Evaluate an exported graph on a COCO-format set the way the service answers.

    Every image of ``annotations`` is read from ``images`` as bytes and segmented by
    :class:`service.pipeline.Pipeline` (the model's ``resize_rule``, ONNX Runtime, the model's
    ``mask_paste``, COCO RLE; the stored pixels, with no EXIF rotation, since COCO annotations
    refer to them): the detections a client of ``POST /v1/segment?format=coco`` would get for
    an image without EXIF orientation, with every detection the graph keeps
    (``score_threshold`` None: the graph's own floor). The classes are the graph's metadata
    (names, COCO category ids, mask classes), ``mask_classes`` re-splits A/B. Classes whose
    category id is not in the ground truth (a Visual Genome model on COCO val) are left out of
    every subset, with a line saying how many.
    """
    import contextlib
    import io

    from pycocotools.coco import COCO
    from tqdm import tqdm

    from service.pipeline import Pipeline, request_params
    from service.settings import Settings
    from training.datasets.vocab import ClassVocabulary
    from training.evaluation import coco_evaluate, write_coco_results

    pipeline = Pipeline.from_model(model_path, [p.strip() for p in providers.split(",")])
    info = pipeline.info
    ids = info.category_ids or tuple(range(1, info.num_classes + 1))
    vocab = ClassVocabulary(info.classes, info.mask_classes, ids)
    if mask_classes is not None:
        vocab = vocab.with_mask_split(mask_classes)
    settings = Settings(model_path=Path(model_path), providers=providers, warmup=False)
    params = request_params(
        settings, info, score_threshold=0.0 if score_threshold is None else score_threshold,
        max_detections=MAX_DETECTIONS,
    )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(annotations))
    folder = Path(images)
    results: list[dict[str, Any]] = []
    for image_id in tqdm(
        sorted(coco_gt.getImgIds()), desc="evaluate", unit="image", disable=not progress
    ):
        entry = coco_gt.imgs[image_id]
        path = folder / entry["file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"image {image_id} of {annotations}: no file {str(path)!r}")
        # COCO annotations are in stored pixels: no EXIF rotation (as the eager path reads them).
        image = pipeline.prepare(path.read_bytes(), exif_orientation=False)
        if (image.height, image.width) != (entry.get("height"), entry.get("width")):
            raise ValueError(
                f"image {image_id}: {str(path)!r} is {image.width}x{image.height} (WxH) but "
                f"{annotations} says {entry.get('width')}x{entry.get('height')}"
            )
        (raw,) = pipeline.infer([image])
        results += [d.to_coco(image_id) for d in pipeline.finish(raw, image, params)]
    if results_path is not None:
        write_coco_results(results, results_path)
    gt_categories = set(coco_gt.getCatIds())
    unscored = [i for i in vocab.source_ids if i not in gt_categories]
    if unscored:
        print(
            f"maskx evaluate: {len(unscored)} of {len(vocab.source_ids)} classes have no "
            f"category in {annotations} and are not scored (e.g. category id {unscored[0]})",
            file=sys.stderr,
        )
    return coco_evaluate(coco_gt, results, vocab, skip_classes_without_ground_truth=bool(unscored))


def _report(metrics: dict[str, Any], out: Path, results: Path) -> None:
    from training.evaluation import write_metrics_json

    write_metrics_json(metrics, out)
    print(format_metrics(metrics))
    print(f"metrics written to {out}, detections to {results}")


def main(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from training.checkpoint import CheckpointError
    from training.datasets import DatasetError
    from training.distributed import dist_info

    source = args.checkpoint or args.model
    out = Path(args.out) if args.out else Path(source).with_suffix(".metrics.json")
    results = out.parent / RESULTS_FILE
    if args.model is not None:
        from service.errors import ServiceError

        try:
            metrics = run_onnx_evaluation(
                args.model, args.annotations, args.images, providers=args.providers,
                progress=not args.no_progress, score_threshold=args.score_threshold,
                mask_classes=args.mask_classes, results_path=results,
            )  # fmt: skip
        except (ServiceError, FileNotFoundError, ValueError, OSError) as exc:
            print(f"maskx evaluate: {exc}", file=sys.stderr)
            return 2
        _report(metrics, out, results)
        return 0
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
            _report(metrics, out, results)
        return 0
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
