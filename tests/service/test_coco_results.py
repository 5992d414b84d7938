"""``format=coco`` over real HTTP is a COCO results list that pycocotools scores like
``maskx evaluate`` scores the checkpoint the model was exported from."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import httpx
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from service.app import create_app
from service.settings import Settings
from tests.service.helpers import LiveServer

# The 40-step test model scores next to nothing at its own threshold; keeping every detection
# (as COCO evaluation usually does) gives pycocotools something to rank on both sides.
SCORE_THRESHOLD = 0.0


def _export(trained_checkpoint: Path, out: Path) -> Path:
    from training.checkpoint import load_model_from_checkpoint
    from training.export.onnx_export import build_metadata, export_model

    model, vocab, ckpt = load_model_from_checkpoint(trained_checkpoint)
    model.roi_heads.score_thresh = SCORE_THRESHOLD
    meta = build_metadata(
        model, vocab, model_config=ckpt["model_config"], train_config=ckpt["train_config"],
        checkpoint_sha256=None, name="tiny", version="test",
    )  # fmt: skip
    return export_model(model, out, meta)


def _mask_ap(coco_gt: COCO, results: list[dict], *, use_cats: bool = True) -> float:
    dets = coco_gt.loadRes(results)
    evaluator = COCOeval(coco_gt, dets, iouType="segm")
    evaluator.params.useCats = int(use_cats)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return max(float(evaluator.stats[0]), 0.0)


def test_coco_format_over_http_scores_like_maskx_evaluate(
    trained_checkpoint: Path, synth_root: Path, tmp_path: Path, monkeypatch
) -> None:
    from training import evaluation
    from training.evaluate_cli import run_evaluation

    annotations = synth_root / "annotations" / "instances_val.json"
    images = synth_root / "images" / "val"
    # maskx evaluate's own code path, keeping the results list it scores.
    captured: list[list[dict]] = []
    scorer = evaluation.coco_evaluate

    def keep(coco_gt, results, *args, **kwargs):  # type: ignore[no-untyped-def]
        captured.append(list(results))
        return scorer(coco_gt, results, *args, **kwargs)

    monkeypatch.setattr(evaluation, "coco_evaluate", keep)
    reference = run_evaluation(
        str(trained_checkpoint),
        str(annotations),
        str(images),
        device="cpu",
        progress=False,
        score_threshold=SCORE_THRESHOLD,
    )
    (eager,) = captured

    model = _export(trained_checkpoint, tmp_path / "tiny.onnx")
    settings = Settings(model_path=model, providers="cpu", warmup=False, max_batch_delay_ms=2)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(annotations))
    results: list[dict] = []
    with LiveServer(create_app(settings)) as live, httpx.Client(base_url=live.url) as client:
        live.wait_ready()
        categories = client.get("/v1/model").json()["category_ids"]
        assert sorted(categories) == sorted(coco_gt.getCatIds())
        for image_id in sorted(coco_gt.getImgIds()):
            path = images / coco_gt.imgs[image_id]["file_name"]
            # The graph already applies the model's score threshold and detection limit.
            query = {"format": "coco", "image_id": image_id, "score_threshold": 0,
                     "max_detections": 1000}  # fmt: skip
            r = client.post("/segment", params=query, content=path.read_bytes(),
                            headers={"content-type": "image/png"})  # fmt: skip
            assert r.status_code == 200, r.text
            answer = r.json()
            assert isinstance(answer, list)
            assert all(d["image_id"] == image_id for d in answer)
            results += answer
    assert results, "the model found nothing: the comparison would be empty"
    # What a user would do: write the list, load it with pycocotools.
    (tmp_path / "results.json").write_text(json.dumps(results))
    served = json.loads((tmp_path / "results.json").read_text())

    expected_ap = reference["segm"]["all"]["AP"] or 0.0
    assert _mask_ap(coco_gt, eager) == expected_ap  # the captured list is what was scored
    got_ap = _mask_ap(coco_gt, served)
    # The 40-step test model barely tells its 12 classes apart (mask AP 0.000 on both sides when
    # measured), so the comparison is also made class-agnostic, where some of its masks do match
    # objects (0.0031 on both sides when measured): a non-zero AP that both paths must agree on.
    eager_agnostic = _mask_ap(coco_gt, eager, use_cats=False)
    got_agnostic = _mask_ap(coco_gt, served, use_cats=False)
    print(
        f"mask AP: maskx evaluate {expected_ap:.4f}, HTTP format=coco {got_ap:.4f}; "
        f"class-agnostic {eager_agnostic:.4f} vs {got_agnostic:.4f}; "
        f"{len(eager)} vs {len(served)} detections"
    )
    assert abs(got_ap - expected_ap) <= 0.005  # 0.5 AP points
    assert eager_agnostic > 0, "nothing found: the comparison would be vacuous"
    assert abs(got_agnostic - eager_agnostic) <= 0.005
    assert abs(len(served) - len(eager)) <= 0.02 * len(eager)
