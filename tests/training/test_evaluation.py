"""COCO evaluation on all classes, A and B, judged by pycocotools itself."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from training.evaluation import (
    coco_evaluate,
    evaluate,
    predictions_to_coco_results,
    subset_category_ids,
    write_metrics_json,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 48, 64
# Non-contiguous dataset category ids, so a wrong label -> id mapping cannot score 1.0.
SOURCE_IDS = [5, 17, 42, 8]
MASK_CLASSES = [True, False, True, False]  # A = {5, 42}, B = {17, 8}


@dataclass
class StandInVocab:
    names: list[str] = field(default_factory=lambda: ["disk", "ring", "star", "cross"])
    mask_classes: list[bool] = field(default_factory=lambda: list(MASK_CLASSES))
    source_ids: list[int] = field(default_factory=lambda: list(SOURCE_IDS))


def _rect(x: int, y: int, w: int, h: int, hole: bool = False) -> np.ndarray:
    m = np.zeros((H, W), dtype=np.uint8)
    m[y : y + h, x : x + w] = 1
    if hole:  # a frame: the box holds pixels that are not the object
        m[y + 3 : y + h - 3, x + 3 : x + w - 3] = 0
    return m


def _ground_truth() -> COCO:
    """Three images, every class present; sizes small enough that APs/APm are defined."""
    layout = {
        1: [(5, _rect(2, 2, 20, 14)), (17, _rect(30, 5, 25, 30, hole=True))],
        2: [(42, _rect(10, 10, 12, 12)), (8, _rect(25, 20, 30, 20)), (5, _rect(1, 30, 9, 9))],
        3: [(17, _rect(5, 5, 40, 35, hole=True)), (8, _rect(50, 2, 10, 40))],
    }
    images, annotations = [], []
    for image_id, objects in layout.items():
        images.append({"id": image_id, "width": W, "height": H, "file_name": f"{image_id}.png"})
        for cat, m in objects:
            rle = mask_utils.encode(np.asfortranarray(m))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "segmentation": {"size": [H, W], "counts": rle["counts"].decode("ascii")},
                    "area": int(mask_utils.area(rle)),
                    "bbox": mask_utils.toBbox(rle).tolist(),
                    "iscrowd": 0,
                }
            )
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": f"c{i}"} for i in SOURCE_IDS],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


@pytest.fixture(scope="module")
def coco_gt() -> COCO:
    return _ground_truth()


def _perfect_predictions(
    coco: COCO, keep_cats: set[int] | None = None, as_torch: bool = False
) -> list[dict[str, Any]]:
    """Predictions equal to the ground truth, in torchvision's eval output format."""
    preds = []
    for image_id in coco.getImgIds():
        anns = [
            a
            for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
            if keep_cats is None or a["category_id"] in keep_cats
        ]
        boxes = np.array(
            [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], dtype=np.float32
        ).reshape(-1, 4)
        labels = np.array([SOURCE_IDS.index(a["category_id"]) + 1 for a in anns], dtype=np.int64)
        masks = np.stack([coco.annToMask(a) for a in anns]) if anns else np.zeros((0, H, W))
        pred = {
            "image_id": image_id,
            "boxes": boxes,
            "labels": labels,
            "scores": np.linspace(1.0, 0.9, len(anns), dtype=np.float32),
            "masks": masks.astype(np.uint8),
        }
        if as_torch:  # float probabilities [N, 1, H, W], as MaskRCNN returns them
            pred = {k: torch.as_tensor(v) for k, v in pred.items()}
            pred["masks"] = pred["masks"].float()[:, None] * 0.9
        preds.append(pred)
    return preds


def _ap(metrics: dict, iou_type: str, subset: str) -> float | None:
    return metrics[iou_type][subset]["AP"]


@pytest.mark.parametrize("as_torch", [False, True])
def test_perfect_predictions_score_one_everywhere(coco_gt: COCO, as_torch: bool) -> None:
    vocab = StandInVocab()
    results = predictions_to_coco_results(_perfect_predictions(coco_gt, as_torch=as_torch), vocab)
    metrics = coco_evaluate(coco_gt, results, vocab)
    for iou_type in ("bbox", "segm"):
        for subset in ("all", "A", "B"):
            stats = metrics[iou_type][subset]
            assert stats["AP"] == pytest.approx(1.0), (iou_type, subset)
            assert stats["AP50"] == pytest.approx(1.0) and stats["AP75"] == pytest.approx(1.0)
            assert stats["APl"] is None  # no object above 96^2 pixels: pycocotools says -1


def test_shifted_boxes_lower_box_ap_but_not_mask_ap(coco_gt: COCO) -> None:
    vocab = StandInVocab()
    preds = _perfect_predictions(coco_gt)
    for p in preds:
        widths = p["boxes"][:, 2] - p["boxes"][:, 0]
        p["boxes"] = p["boxes"] + np.stack([widths * 0.3, 0 * widths] * 2, axis=1)
    metrics = coco_evaluate(coco_gt, predictions_to_coco_results(preds, vocab), vocab)
    for subset in ("all", "A", "B"):
        assert _ap(metrics, "bbox", subset) < 0.7
        # segm AP reads the masks, and (without the bbox) their own area: still perfect.
        assert _ap(metrics, "segm", subset) == pytest.approx(1.0)


def test_empty_predictions_give_zero_and_empty_subset_gives_none(coco_gt: COCO) -> None:
    vocab = StandInVocab()
    empty = [
        {
            "image_id": 1,
            "boxes": np.zeros((0, 4)),
            "labels": np.zeros(0, np.int64),
            "scores": np.zeros(0),
            "masks": np.zeros((0, 1, H, W), np.float32),
        }
    ]
    results = predictions_to_coco_results(empty, vocab)
    assert results == []
    metrics = coco_evaluate(coco_gt, results, vocab)
    for iou_type in ("bbox", "segm"):
        for subset in ("all", "A", "B"):
            assert metrics[iou_type][subset]["AP"] == 0.0
    all_a = StandInVocab(mask_classes=[True] * 4)
    metrics = coco_evaluate(coco_gt, [], all_a)
    assert metrics["segm"]["B"] == dict.fromkeys(("AP", "AP50", "AP75", "APs", "APm", "APl"))
    perfect = predictions_to_coco_results(_perfect_predictions(coco_gt), all_a)
    metrics = coco_evaluate(coco_gt, perfect, all_a)
    assert metrics["segm"]["B"]["AP"] is None
    assert metrics["segm"]["A"]["AP"] == pytest.approx(1.0)


def test_subsets_use_the_right_category_ids(coco_gt: COCO) -> None:
    vocab = StandInVocab()
    assert subset_category_ids(vocab) == {"all": [5, 17, 42, 8], "A": [5, 42], "B": [17, 8]}
    # Perfect detections of the A classes only: A is solved, B is missed entirely.
    preds = _perfect_predictions(coco_gt, keep_cats={5, 42})
    metrics = coco_evaluate(coco_gt, predictions_to_coco_results(preds, vocab), vocab)
    for iou_type in ("bbox", "segm"):
        assert _ap(metrics, iou_type, "A") == pytest.approx(1.0)
        assert _ap(metrics, iou_type, "B") == 0.0
        assert _ap(metrics, iou_type, "all") == pytest.approx(0.5)  # mean over 4 categories
    # Swapping the flags swaps the answers.
    swapped = StandInVocab(mask_classes=[not f for f in MASK_CLASSES])
    metrics = coco_evaluate(coco_gt, predictions_to_coco_results(preds, swapped), swapped)
    assert _ap(metrics, "segm", "B") == pytest.approx(1.0)
    assert _ap(metrics, "segm", "A") == 0.0


def test_label_mapping_goes_through_source_ids(coco_gt: COCO) -> None:
    vocab = StandInVocab()
    preds = _perfect_predictions(coco_gt)
    results = predictions_to_coco_results(preds, vocab)
    assert {r["category_id"] for r in results} == set(SOURCE_IDS)
    # A vocabulary in another order maps the same labels to other ids: AP collapses.
    shuffled = StandInVocab(source_ids=[17, 5, 8, 42])
    metrics = coco_evaluate(coco_gt, predictions_to_coco_results(preds, shuffled), vocab)
    assert _ap(metrics, "segm", "all") == 0.0


def test_results_carry_xywh_boxes_and_string_rle() -> None:
    vocab = StandInVocab()
    probs = np.zeros((2, 1, H, W), dtype=np.float32)
    probs[0, 0, 5:10, 6:20] = 0.51
    probs[1, 0, 5:10, 6:20] = 0.5  # not above the threshold: empty mask
    pred = {
        "image_id": torch.tensor(7),
        "boxes": torch.tensor([[6.0, 5.0, 20.0, 10.0]] * 2),
        "labels": torch.tensor([3, 2]),
        "scores": torch.tensor([0.8, 0.7]),
        "masks": torch.from_numpy(probs),
    }
    r = predictions_to_coco_results([pred], vocab)
    assert [x["category_id"] for x in r] == [42, 17]
    assert r[0]["image_id"] == 7 and r[0]["bbox"] == [6.0, 5.0, 14.0, 5.0]
    assert r[0]["score"] == pytest.approx(0.8)
    assert isinstance(r[0]["segmentation"]["counts"], str)
    decoded = mask_utils.decode(r[0]["segmentation"])
    assert decoded.shape == (H, W) and decoded.sum() == 5 * 14
    assert np.array_equal(decoded, (probs[0, 0] > 0.5).astype(np.uint8))
    assert mask_utils.area(r[1]["segmentation"]) == 0
    assert mask_utils.area(predictions_to_coco_results([pred], vocab, 0.4)[1]["segmentation"]) == 70
    json.dumps(r)  # plain JSON types only


def test_bad_predictions_name_the_fault(coco_gt: COCO) -> None:
    vocab = StandInVocab()
    base = {"image_id": 1, "boxes": np.zeros((1, 4)), "scores": np.ones(1)}
    with pytest.raises(ValueError, match=r"label 5 outside 1\.\.4"):
        predictions_to_coco_results([{**base, "labels": np.array([5])}], vocab)
    with pytest.raises(KeyError, match="image_id"):
        predictions_to_coco_results([{"boxes": np.zeros((0, 4))}], vocab)
    with pytest.raises(ValueError, match="masks of shape"):
        predictions_to_coco_results(
            [{**base, "labels": np.array([1]), "masks": np.zeros((2, H, W))}], vocab
        )
    stray = [{"image_id": 99, "category_id": 5, "bbox": [0, 0, 1, 1], "score": 1.0}]
    with pytest.raises(ValueError, match="image ids \\[99\\]"):
        coco_evaluate(coco_gt, stray, vocab, iou_types=("bbox",))
    with pytest.raises(ValueError, match="no 'segmentation'"):
        coco_evaluate(coco_gt, [{**stray[0], "image_id": 1}], vocab)
    with pytest.raises(ValueError, match="source_ids \\[99\\]"):
        coco_evaluate(coco_gt, [], StandInVocab(source_ids=[5, 17, 42, 99]))
    with pytest.raises(ValueError, match="iou_types"):
        coco_evaluate(coco_gt, [], vocab, iou_types=("keypoints",))


def test_evaluation_is_quiet(coco_gt: COCO, capsys: pytest.CaptureFixture[str]) -> None:
    vocab = StandInVocab()
    coco_evaluate(coco_gt, predictions_to_coco_results(_perfect_predictions(coco_gt), vocab), vocab)
    assert capsys.readouterr().out == ""


class _OracleModel(torch.nn.Module):
    """Answers every image with the ground truth, looked up by the image's first pixel."""

    def __init__(self, preds: list[dict[str, Any]]) -> None:
        super().__init__()
        self.preds = {int(p["image_id"]): p for p in preds}
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        self.calls.append((self.training, torch.is_inference_mode_enabled()))
        return [self.preds[int(img[0, 0, 0].item())] for img in images]


def test_evaluate_runs_the_model_in_eval_and_inference_mode(coco_gt: COCO) -> None:
    vocab = StandInVocab()
    model = _OracleModel(_perfect_predictions(coco_gt, as_torch=True))
    model.train()
    ids = coco_gt.getImgIds()
    batches = [
        (
            [torch.full((3, H, W), float(i)) for i in ids[:2]],
            [{"image_id": torch.tensor(i)} for i in ids[:2]],
        ),
        ([torch.full((3, H, W), float(ids[2]))], [{"image_id": torch.tensor(ids[2])}]),
    ]
    metrics = evaluate(model, batches, coco_gt, vocab, progress=False)
    assert model.calls == [(False, True), (False, True)]
    assert model.training  # mode restored
    assert _ap(metrics, "segm", "B") == pytest.approx(1.0)
    assert _ap(metrics, "bbox", "A") == pytest.approx(1.0)
    box_only = evaluate(model, batches, coco_gt, vocab, progress=False, iou_types=("bbox",))
    assert set(box_only) == {"bbox"}


@pytest.mark.parametrize("threshold", [0.0, 0.5, 0.3])
def test_one_mask_rule_for_evaluation_and_service(threshold: float) -> None:
    """A probability equal to the threshold is background in ``maskx evaluate`` and in the
    service alike (Detectron's and torchvision's ``>``); one above it is foreground."""
    from service.contract import ModelMetadata
    from service.postprocess import SegmentParams, binarise_mask, postprocess_detections
    from service.runtime import RawDetections
    from service.testing import default_metadata

    at = np.float32(threshold)
    above = np.nextafter(at, np.float32(1))
    row = np.array([at, above], dtype=np.float32)
    assert binarise_mask(row, threshold).tolist() == [False, True]

    # Evaluation: the left half exactly at the threshold, the right half one float above.
    probs = np.full((1, 1, H, W), at, dtype=np.float32)
    probs[..., W // 2 :] = above
    pred = {"image_id": 1, "boxes": np.array([[0.0, 0.0, W, H]]), "labels": np.array([1]),
            "scores": np.array([0.9]), "masks": probs}  # fmt: skip
    (result,) = predictions_to_coco_results([pred], StandInVocab(), threshold)
    decoded = mask_utils.decode(result["segmentation"])
    assert decoded[:, : W // 2].sum() == 0 and decoded[:, W // 2 :].all()

    # Service: a box-local mask at the threshold everywhere pastes to nothing. (Pasting
    # interpolates; only 0 stays exactly 0, so the uniform case is checked at threshold 0.)
    info = ModelMetadata.from_dict(default_metadata())

    def served(value: float) -> np.ndarray:
        raw = RawDetections(
            boxes=np.array([[8.0, 8.0, 40.0, 40.0]], dtype=np.float32),
            scores=np.array([0.9], dtype=np.float32), labels=np.array([1]),
            batch_index=np.array([0]),
            mask_probs=np.full((1, 28, 28), value, dtype=np.float32),
        )  # fmt: skip
        params = SegmentParams(score_threshold=0.0, mask_threshold=threshold)
        (det,) = postprocess_detections(
            raw, input_size=(48, 48), image_size=(48, 48), info=info, params=params
        )
        return mask_utils.decode(det.mask)

    if threshold == 0.0:
        assert served(0.0).sum() == 0  # not the whole expanded box
    inside = served(1.0)
    assert inside[12:36, 12:36].all() and inside.sum() < 48 * 48


def test_write_metrics_json_is_atomic_and_plain(tmp_path: Path) -> None:
    path = tmp_path / "run" / "metrics.json"
    metrics = {"segm": {"B": {"AP": np.float64(0.25), "APl": None}}, "steps": np.int64(3)}
    assert write_metrics_json(metrics, path) == path
    assert json.loads(path.read_text()) == {"segm": {"B": {"AP": 0.25, "APl": None}}, "steps": 3}
    write_metrics_json({"x": 1}, path)  # replaces
    assert json.loads(path.read_text()) == {"x": 1}
    with pytest.raises(TypeError, match="metrics"):
        write_metrics_json({"bad": object()}, path)
    assert json.loads(path.read_text()) == {"x": 1}  # a failed write leaves the old file
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]


def test_write_metrics_json_interrupted_mid_file_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write itself fails half-way (a full disk): the previous file is intact, no half
    file and no temporary file is left (the TypeError case above fails before any file opens)."""
    path = tmp_path / "metrics.json"
    write_metrics_json({"old": 1}, path)
    real_write_text = Path.write_text
    written: list[Path] = []

    def half_then_full_disk(self: Path, data: str, *args: object, **kwargs: object) -> int:
        written.append(self)
        real_write_text(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_full_disk)
    with pytest.raises(OSError, match="No space"):
        write_metrics_json({"new": list(range(100))}, path)
    monkeypatch.undo()
    assert written and written[0] != path  # the bytes went to a file beside it, not over it
    assert json.loads(path.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_metrics_table_shows_subsets_with_nothing_to_score_as_dashes() -> None:
    # Every class has masks (the oracle): pycocotools gives no AP for B, and the table must
    # still print instead of failing at the end of a finished training run.
    from training.evaluate_cli import format_metrics

    none = dict.fromkeys(("AP", "AP50", "AP75"))
    scored = {"AP": 0.28612, "AP50": 0.517, "AP75": 0.289}
    table = format_metrics({"segm": {"A": scored, "B": none, "all": scored}, "step": 750})
    lines = table.splitlines()
    assert lines[1].split() == ["segm", "A", "0.286", "0.517", "0.289"]
    assert lines[2].split() == ["segm", "B", "-", "-", "-"]


def test_classes_without_ground_truth_can_be_left_out(coco_gt: COCO) -> None:
    # A Visual Genome vocabulary scored on COCO val: a fifth class (source id 1085) that the
    # ground truth does not label, with a confident false detection on every image.
    vocab = StandInVocab(
        names=["disk", "ring", "star", "cross", "tree.n.01"],
        mask_classes=[*MASK_CLASSES, False],
        source_ids=[*SOURCE_IDS, 1085],
    )
    results = predictions_to_coco_results(_perfect_predictions(coco_gt), vocab)
    results += [{**r, "category_id": 1085, "score": 1.0} for r in results if r["category_id"] == 17]
    with pytest.raises(ValueError, match="source_ids \\[1085\\]"):
        coco_evaluate(coco_gt, results, vocab)
    metrics = coco_evaluate(coco_gt, results, vocab, skip_classes_without_ground_truth=True)
    for subset in ("all", "A", "B"):
        assert _ap(metrics, "segm", subset) == pytest.approx(1.0), subset
