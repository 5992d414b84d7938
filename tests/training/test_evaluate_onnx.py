"""``maskx evaluate --model FILE.onnx``: an exported graph scored as the service answers, with the
AP ``maskx evaluate --checkpoint`` gives the checkpoint it came from."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tests.helpers import export_checkpoint
from training import evaluate_cli

# The 40-step test model scores next to nothing at its own threshold; keeping every detection
# (as COCO evaluation usually does) gives pycocotools something to rank on both sides.
SCORE_THRESHOLD = 0.0


@pytest.fixture(scope="module")
def exported(trained_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_checkpoint(
        trained_checkpoint,
        tmp_path_factory.mktemp("onnx") / "tiny.onnx",
        score_thresh=SCORE_THRESHOLD,
    )


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="maskx evaluate")
    evaluate_cli.add_arguments(parser)
    return parser.parse_args(argv)


def _class_agnostic_mask_ap(annotations: Path, results: list[dict]) -> float:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotations))
        evaluator = COCOeval(gt, gt.loadRes(results), iouType="segm")
        evaluator.params.useCats = 0
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return max(float(evaluator.stats[0]), 0.0)


def test_onnx_evaluation_scores_like_the_checkpoint(
    trained_checkpoint: Path, exported: Path, synth_root: Path, tmp_path: Path, capsys
) -> None:
    annotations = synth_root / "annotations" / "instances_val.json"
    images = synth_root / "images" / "val"
    eager_out = tmp_path / "eager" / "metrics.json"
    onnx_out = tmp_path / "onnx" / "metrics.json"
    common = [
        "--annotations", str(annotations), "--images", str(images), "--no-progress",
        "--score-threshold", str(SCORE_THRESHOLD),
    ]  # fmt: skip
    eager_args = ["--checkpoint", str(trained_checkpoint), "--device", "cpu", "--workers", "0"]
    assert evaluate_cli.main(parse([*eager_args, "--out", str(eager_out), *common])) == 0
    assert (
        evaluate_cli.main(parse(["--model", str(exported), "--out", str(onnx_out), *common])) == 0
    )
    assert "segm B" in capsys.readouterr().out

    eager = json.loads(eager_out.read_text())
    served = json.loads(onnx_out.read_text())
    eager_results = json.loads((eager_out.parent / "coco_instances_results.json").read_text())
    onnx_results = json.loads((onnx_out.parent / "coco_instances_results.json").read_text())
    # The same A / B / all subsets from the graph's metadata as from the checkpoint.
    for iou in ("segm", "bbox"):
        for subset in ("A", "B", "all"):
            a, b = eager[iou][subset]["AP"], served[iou][subset]["AP"]
            assert (a is None) == (b is None), (iou, subset)
            if a is not None:
                assert abs(a - b) <= 0.002, (iou, subset, a, b)
    # The tiny model barely tells its classes apart, so per-class AP is near 0 on both sides;
    # class-agnostic its masks do match objects: a non-zero AP both paths must agree on.
    agnostic = _class_agnostic_mask_ap(annotations, eager_results)
    assert agnostic > 0, "nothing found: the comparison would be vacuous"
    assert abs(_class_agnostic_mask_ap(annotations, onnx_results) - agnostic) <= 0.002
    assert abs(len(onnx_results) - len(eager_results)) <= 0.02 * len(eager_results)
    ids = {d["image_id"] for d in onnx_results}
    assert ids <= {d["image_id"] for d in eager_results} and len(ids) > 1


def test_onnx_evaluation_names_a_missing_image(
    exported: Path, synth_root: Path, tmp_path: Path, capsys
) -> None:
    annotations = synth_root / "annotations" / "instances_val.json"
    argv = [
        "--model", str(exported), "--annotations", str(annotations),
        "--images", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.json"), "--no-progress",
    ]  # fmt: skip
    assert evaluate_cli.main(parse(argv)) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "no file" in err
    assert not (tmp_path / "m.json").exists()


def test_checkpoint_and_model_are_exclusive(capsys) -> None:
    argv = ["--checkpoint", "a.pt", "--model", "a.onnx", "--annotations", "x", "--images", "y"]
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 2
    assert "not allowed with" in capsys.readouterr().err
