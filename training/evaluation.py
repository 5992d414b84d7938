"""COCO evaluation (pycocotools) of boxes and masks on all classes, on A and on B.

The paper's headline metric is mask AP on the classes without mask supervision (B), computed
with pycocotools with ``params.catIds`` restricted to B; we report the same for A and for all
classes, for boxes and masks. The conversions and the scoring are pure functions; ``evaluate``
is the loop that runs a torchvision-style detection model and calls them.

The class vocabulary is duck-typed: anything with ``names``, ``mask_classes`` (list[bool]) and
``source_ids`` (list[int], the dataset's category id of each class) will do.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from service.postprocess import binarise_mask  # one mask rule for evaluation and serving
from training.fileio import atomic_path

IOU_TYPES: tuple[str, ...] = ("bbox", "segm")
SUBSETS: tuple[str, ...] = ("all", "A", "B")
# COCOeval.stats indices of the numbers we keep (AR is not reported).
STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl")

Metrics = dict[str, dict[str, dict[str, float | None]]]


class Vocabulary(Protocol):
    """What evaluation needs from ``training.datasets.vocab.ClassVocabulary``."""

    names: Sequence[str]
    mask_classes: Sequence[bool]
    source_ids: Sequence[int]


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def predictions_to_coco_results(
    predictions: Iterable[Mapping[str, Any]], vocab: Vocabulary, mask_threshold: float = 0.5
) -> list[dict[str, Any]]:
    """Convert per-image predictions to COCO result dicts.

    Each prediction is torchvision's ``MaskRCNN`` eval output plus the image id:
    ``{"image_id": int, "boxes": float [N, 4] (x1, y1, x2, y2, image pixels), "labels": int [N]
    (model labels 1..K), "scores": float [N], "masks": float [N, 1, H, W] probabilities or
    uint8/bool [N, H, W]}`` as numpy arrays or torch tensors; ``masks`` may be absent (boxes
    only). Probability masks are binarised with ``> mask_threshold``, the service's rule
    (:func:`service.postprocess.binarise_mask`); integer masks count as foreground where
    nonzero.

    Returns one dict per detection: ``image_id``, ``category_id`` (``vocab.source_ids[label -
    1]``), ``bbox`` ``[x, y, w, h]``, ``score`` and, with masks, ``segmentation`` as compressed
    RLE whose ``counts`` is a str.
    """
    source_ids = list(vocab.source_ids)
    results: list[dict[str, Any]] = []
    for k, pred in enumerate(predictions):
        if "image_id" not in pred:
            raise KeyError(f"predictions[{k}]: no 'image_id' key (keys: {sorted(pred)})")
        image_id = int(_to_numpy(pred["image_id"]).reshape(-1)[0])
        boxes = _to_numpy(pred["boxes"]).astype(np.float64).reshape(-1, 4)
        labels = _to_numpy(pred["labels"]).astype(np.int64).reshape(-1)
        scores = _to_numpy(pred["scores"]).astype(np.float64).reshape(-1)
        if not len(boxes) == len(labels) == len(scores):
            raise ValueError(
                f"predictions[{k}] (image {image_id}): boxes {len(boxes)}, labels "
                f"{len(labels)} and scores {len(scores)} differ in length"
            )
        bad = labels[(labels < 1) | (labels > len(source_ids))]
        if bad.size:
            raise ValueError(
                f"predictions[{k}] (image {image_id}): label {int(bad[0])} outside 1.."
                f"{len(source_ids)} (the vocabulary's size)"
            )
        rles: list[dict[str, Any]] | None = None
        if pred.get("masks") is not None:
            masks = _to_numpy(pred["masks"])
            if masks.ndim == 4:  # [N, 1, H, W]
                masks = masks[:, 0]
            if masks.ndim != 3 or masks.shape[0] != len(boxes):
                raise ValueError(
                    f"predictions[{k}] (image {image_id}): masks of shape "
                    f"{tuple(_to_numpy(pred['masks']).shape)} do not match {len(boxes)} boxes"
                )
            if np.issubdtype(masks.dtype, np.floating):
                binary = binarise_mask(masks, mask_threshold)
            else:
                binary = masks != 0
            # pycocotools wants [H, W, N] uint8 in Fortran order.
            rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0), np.uint8))
        for i in range(len(boxes)):
            x1, y1, x2, y2 = boxes[i].tolist()
            result: dict[str, Any] = {
                "image_id": image_id,
                "category_id": int(source_ids[labels[i] - 1]),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": float(scores[i]),
            }
            if rles is not None:
                rle = rles[i]
                result["segmentation"] = {
                    "size": [int(s) for s in rle["size"]],
                    "counts": rle["counts"].decode("ascii"),
                }
            results.append(result)
    return results


def subset_category_ids(vocab: Vocabulary) -> dict[str, list[int]]:
    """Dataset category ids of every class (``all``), of the mask classes (``A``), of the rest."""
    ids = [int(i) for i in vocab.source_ids]
    flags = [bool(f) for f in vocab.mask_classes]
    if len(ids) != len(flags):
        raise ValueError(f"vocabulary: {len(ids)} source_ids but {len(flags)} mask_classes flags")
    return {
        "all": ids,
        "A": [i for i, f in zip(ids, flags, strict=True) if f],
        "B": [i for i, f in zip(ids, flags, strict=True) if not f],
    }


def _empty_stats(value: float | None) -> dict[str, float | None]:
    return dict.fromkeys(STAT_NAMES, value)


def _stats(evaluator: COCOeval) -> dict[str, float | None]:
    # pycocotools writes -1 where a subset has no ground truth (e.g. no large objects).
    return {
        name: (None if float(v) < 0 else float(v))
        for name, v in zip(STAT_NAMES, evaluator.stats[: len(STAT_NAMES)], strict=True)
    }


def coco_evaluate(
    coco_gt: COCO,
    results: Sequence[Mapping[str, Any]],
    vocab: Vocabulary,
    iou_types: Sequence[str] = IOU_TYPES,
    skip_classes_without_ground_truth: bool = False,
) -> Metrics:
    """Score COCO results against ground truth on all classes, on A and on B.

    ``skip_classes_without_ground_truth``: leave out of every subset (and drop the detections
    of) the classes whose ``source_id`` is not a category of the ground truth — a Visual Genome
    model scored on COCO val, whose VG-only classes COCO does not label. Without it such a
    class is an error.

    Returns ``{iou_type: {"all" | "A" | "B": {"AP", "AP50", "AP75", "APs", "APm", "APl"}}}``
    with values in [0, 1]. A subset with no class gives None everywhere; a value pycocotools
    cannot compute (no ground truth of that subset or size) is None; with no results at all,
    every subset that has ground truth scores 0.0. pycocotools' prints are swallowed.
    """
    unknown = [t for t in iou_types if t not in IOU_TYPES]
    if unknown:
        raise ValueError(f"iou_types: unknown {unknown}; known are {list(IOU_TYPES)}")
    subsets = subset_category_ids(vocab)
    gt_cats = set(coco_gt.getCatIds())
    missing = [i for i in subsets["all"] if i not in gt_cats]
    if missing and not skip_classes_without_ground_truth:
        raise ValueError(
            f"vocabulary source_ids {missing[:5]} are not categories of the ground truth"
        )
    if missing:
        subsets = {k: [i for i in ids if i in gt_cats] for k, ids in subsets.items()}
        results = [r for r in results if int(r["category_id"]) in gt_cats]
    gt_images = set(coco_gt.getImgIds())
    stray = sorted({int(r["image_id"]) for r in results} - gt_images)
    if stray:
        raise ValueError(f"results: image ids {stray[:5]} are not in the ground truth")

    metrics: Metrics = {}
    for iou_type in iou_types:
        metrics[iou_type] = {}
        dets = _load_results(coco_gt, results, iou_type)
        for subset in SUBSETS:
            cat_ids = subsets[subset]
            has_gt = bool(cat_ids) and bool(coco_gt.getAnnIds(catIds=cat_ids))
            if not cat_ids:
                metrics[iou_type][subset] = _empty_stats(None)
            elif dets is None:
                # No detection at all: AP is 0 where there is something to find.
                metrics[iou_type][subset] = _empty_stats(0.0 if has_gt else None)
            else:
                evaluator = COCOeval(coco_gt, dets, iouType=iou_type)
                evaluator.params.catIds = cat_ids
                with contextlib.redirect_stdout(io.StringIO()):
                    evaluator.evaluate()
                    evaluator.accumulate()
                    evaluator.summarize()
                metrics[iou_type][subset] = _stats(evaluator)
    return metrics


def _load_results(
    coco_gt: COCO, results: Sequence[Mapping[str, Any]], iou_type: str
) -> COCO | None:
    """``coco_gt.loadRes`` on a copy of the results fit for ``iou_type``; None if empty."""
    if iou_type == "segm":
        missing = [k for k, r in enumerate(results) if "segmentation" not in r]
        if missing:
            raise ValueError(
                f"results[{missing[0]}]: no 'segmentation'; segm evaluation needs masks"
            )
        # Without a bbox, loadRes takes each detection's area from its mask, so small/medium/
        # large mean the same for detections as for ground truth (as in detectron2).
        dets = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    else:
        dets = [copy.deepcopy(dict(r)) for r in results]
    if not dets:
        return None
    with contextlib.redirect_stdout(io.StringIO()):
        return coco_gt.loadRes(dets)


def predict_coco_results(
    model: Any,
    data_loader: Iterable[tuple[Sequence[Any], Sequence[Mapping[str, Any]]]],
    vocab: Vocabulary,
    device: str = "cpu",
    progress: bool = True,
    mask_threshold: float = 0.5,
    iou_types: Sequence[str] = IOU_TYPES,
) -> list[dict[str, Any]]:
    """Run a torchvision-style detection model over a loader; return its COCO results.

    ``model(list_of_images)`` in eval mode must return one prediction dict per image
    (``boxes``, ``labels``, ``scores``, ``masks``; see :func:`predictions_to_coco_results`);
    the loader yields ``(images, targets)`` with ``images`` float ``[3, H, W]`` tensors and
    targets carrying ``image_id``. Masks are encoded only when ``"segm"`` is in
    ``iou_types``. The model's train/eval mode is restored afterwards.
    """
    import torch  # evaluation of a model needs torch; the pure functions above do not

    was_training = bool(getattr(model, "training", False))
    model.eval()
    results: list[dict[str, Any]] = []
    try:
        with torch.inference_mode():
            total = len(data_loader) if hasattr(data_loader, "__len__") else None
            for images, targets in tqdm(
                data_loader, total=total, desc="evaluate", unit="batch", disable=not progress
            ):
                outputs = model([img.to(device) for img in images])
                predictions = []
                for output, target in zip(outputs, targets, strict=True):
                    pred = {k: v.to("cpu") for k, v in output.items()}
                    pred["image_id"] = target["image_id"]
                    predictions.append(pred)
                if "segm" not in iou_types:
                    for pred in predictions:
                        pred.pop("masks", None)
                results += predictions_to_coco_results(predictions, vocab, mask_threshold)
    finally:
        model.train(was_training)
    return results


def evaluate(
    model: Any,
    data_loader: Iterable[tuple[Sequence[Any], Sequence[Mapping[str, Any]]]],
    coco_gt: COCO,
    vocab: Vocabulary,
    device: str = "cpu",
    progress: bool = True,
    mask_threshold: float = 0.5,
    iou_types: Sequence[str] = IOU_TYPES,
    results_path: str | os.PathLike[str] | None = None,
    skip_classes_without_ground_truth: bool = False,
) -> Metrics:
    """Run a detection model over a loader and score it with pycocotools.

    Under a process group every rank calls this with its own shard of the set (a loader built
    with ``distributed=True, shuffle=False``): each rank predicts its shard, the COCO results
    are gathered to rank 0, which alone runs COCOeval (and writes ``results_path``, the COCO
    results file, when given); every rank returns rank 0's metrics. Without a group, one
    process does it all. See :func:`predict_coco_results` for the model and loader contract,
    :func:`coco_evaluate` for ``skip_classes_without_ground_truth``.
    """
    from training.distributed import broadcast_from_main, gather_to_main

    results = predict_coco_results(
        model, data_loader, vocab, device=device, progress=progress,
        mask_threshold=mask_threshold, iou_types=iou_types,
    )  # fmt: skip
    shards = gather_to_main(results)
    metrics: Metrics | None = None
    if shards is not None:  # rank 0 (or the only process)
        # Shards come in rank order, each in dataset order: the single-process order.
        results = [r for shard in shards for r in shard]
        if results_path is not None:
            write_coco_results(results, results_path)
        metrics = coco_evaluate(
            coco_gt, results, vocab, iou_types, skip_classes_without_ground_truth
        )
    return broadcast_from_main(metrics)


def write_coco_results(results: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write COCO results (``coco_instances_results.json``, what ``COCO.loadRes`` reads)
    atomically."""
    target = Path(path)
    with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(list(results), f)
    return target


def write_metrics_json(metrics: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``metrics`` as indented JSON atomically (a reader never sees half a file)."""
    target = Path(path)
    text = json.dumps(metrics, indent=2, sort_keys=True, allow_nan=False, default=_jsonable)
    with atomic_path(target) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return target


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"metrics: {type(value).__name__} value {value!r} is not JSON-serialisable")
