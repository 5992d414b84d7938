"""``maskx predict``: a real ONNX Runtime session on the service's contract-shaped test graph."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

from maskx import cli
from service import predict
from service.overlay import class_color
from service.schemas import SegmentResponse
from service.testing import (
    BOX_FRACTIONS,
    CLASSES,
    LABELS,
    MASK_CLASSES,
    SCORES,
    build_test_model,
    default_metadata,
)

SAMPLES = Path(__file__).resolve().parents[2] / "service" / "static" / "samples"


@pytest.fixture(scope="module")
def graph_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic graph itself (not MASKX_TEST_MODEL): these tests pin its outputs."""
    return build_test_model(tmp_path_factory.mktemp("model") / "test.onnx")


def _expected(threshold: float) -> list[tuple[int, str, str, float]]:
    """(label, name, mask_source, score) the test graph answers above ``threshold``."""
    return [
        (int(label), CLASSES[label - 1], "supervised" if MASK_CLASSES[label - 1] else "transferred",
         float(score))
        for label, score in zip(LABELS, SCORES, strict=True)
        if score >= threshold
    ]  # fmt: skip


def _args(model: Path, images: list[Path], out: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    predict.add_arguments(parser)
    argv = ["--model", str(model), "--out", str(out), "--no-progress", *extra]
    return parser.parse_args([*map(str, images), *argv])


def test_predict_writes_overlay_and_json(graph_path: Path, tmp_path: Path) -> None:
    image_path = SAMPLES / "synth-1.png"
    out = tmp_path / "out"
    assert predict.main(_args(graph_path, [image_path], out)) == 0

    text = (out / "synth-1.json").read_text()
    SegmentResponse.model_validate_json(text, strict=True)  # the HTTP response schema
    response = json.loads(text)
    original = np.asarray(Image.open(image_path).convert("RGB")).astype(int)
    height, width = original.shape[:2]
    assert response["image"] == {"width": width, "height": height}
    meta = default_metadata()
    assert response["model"] == {
        "name": meta["name"], "version": meta["version"], "num_classes": len(CLASSES)
    }  # fmt: skip
    dets = response["detections"]
    expected = _expected(0.5)
    assert len(expected) == 2  # the third detection is under the default score threshold
    assert [(d["label"], d["name"], d["mask_source"]) for d in dets] == [e[:3] for e in expected]
    assert {d["mask_source"] for d in dets} == {"supervised", "transferred"}
    for det, fracs, (*_, score) in zip(dets, BOX_FRACTIONS, expected, strict=False):
        np.testing.assert_allclose(det["box"], fracs * [width, height, width, height], atol=1.0)
        assert det["score"] == pytest.approx(score, abs=1e-5)

    overlay = np.asarray(Image.open(out / "synth-1.png").convert("RGB")).astype(int)
    assert overlay.shape[1] >= width and overlay.shape[0] > height  # legend strip below
    drawn = overlay[:height, :width]
    outside = np.ones((height, width), dtype=bool)
    for det in dets:
        mask = mask_utils.decode(det["mask"]).astype(bool)
        assert mask.shape == (height, width)
        x1, y1, x2, y2 = det["box"]
        ys, xs = np.nonzero(mask)
        # The mask lies inside its box and fills a good part of it (a soft disc or square).
        assert xs.min() >= x1 - 1 and xs.max() <= x2 + 1 and ys.min() >= y1 - 1
        assert ys.max() <= y2 + 1
        assert mask.sum() > 0.25 * (x2 - x1) * (y2 - y1)
        colour = np.array(class_color(det["label"], det["mask_source"]))
        # Overlay colour inside the box: the mask's pixels moved towards the class colour.
        before = np.abs(original[mask] - colour).sum(axis=1).mean()
        after = np.abs(drawn[mask] - colour).sum(axis=1).mean()
        assert after < 0.7 * before, (det["name"], before, after)
        # The box outline is drawn in the class colour.
        edge = drawn[round((y1 + y2) / 2), int(x1)]
        assert np.abs(edge - colour).sum() < 30, (det["name"], edge.tolist(), colour.tolist())
        # Room for the label above the box (its text may be wider than the box).
        top, right = max(0, int(y1) - 24), max(int(x2) + 3, int(x1) + 100)
        outside[top : int(y2) + 3, max(0, int(x1) - 3) : right] = False
    # Far from every box (and its label) the image is unchanged.
    assert outside.sum() > 0.2 * height * width
    np.testing.assert_array_equal(drawn[outside], original[outside])


def test_predict_thresholds_and_cli(graph_path: Path, tmp_path: Path) -> None:
    images = [SAMPLES / "synth-2.png", SAMPLES / "synth-3.png"]
    argv = ["predict", "--model", str(graph_path), *map(str, images), "--out", str(tmp_path)]
    argv += ["--score-threshold", "0.2", "--mask-threshold", "0.9", "--no-progress"]
    assert cli.main(argv) == 0
    for image in images:
        response = json.loads((tmp_path / f"{image.stem}.json").read_text())
        assert [d["label"] for d in response["detections"]] == [e[0] for e in _expected(0.2)]
        assert len(response["detections"]) == 3
        assert (tmp_path / f"{image.stem}.png").is_file()
    # A higher mask threshold gives smaller masks than the default.
    strict = json.loads((tmp_path / "synth-2.json").read_text())["detections"][0]["mask"]
    assert predict.main(_args(graph_path, [images[0]], tmp_path / "default")) == 0
    default = json.loads((tmp_path / "default" / "synth-2.json").read_text())
    loose = default["detections"][0]["mask"]
    assert mask_utils.area(strict) < mask_utils.area(loose)


def test_predict_errors_name_the_file(
    graph_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    assert predict.main(_args(graph_path, [bad], tmp_path / "out")) == 1
    assert str(bad) in capsys.readouterr().err

    missing = tmp_path / "missing.png"
    assert predict.main(_args(graph_path, [missing], tmp_path / "out")) == 1
    assert str(missing) in capsys.readouterr().err

    twin = tmp_path / "other" / "synth-1.png"
    twin.parent.mkdir()
    twin.write_bytes((SAMPLES / "synth-1.png").read_bytes())
    assert predict.main(_args(graph_path, [SAMPLES / "synth-1.png", twin], tmp_path / "o")) == 1
    assert "synth-1" in capsys.readouterr().err

    assert predict.main(_args(tmp_path / "nope.onnx", [SAMPLES / "synth-1.png"], tmp_path)) == 1
    assert "nope.onnx" in capsys.readouterr().err

    # Flags are validated by the service's Settings, as MASKX_* variables are.
    args = _args(graph_path, [SAMPLES / "synth-1.png"], tmp_path, "--score-threshold", "1.5")
    assert predict.main(args) == 2
    assert "score_threshold" in capsys.readouterr().err
