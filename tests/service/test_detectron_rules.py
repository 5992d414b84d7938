"""A model's ``resize_rule`` / ``mask_paste`` metadata, end to end: files without the keys serve
as before; a file with ``detectron`` for both serves Detectron's resize and paste through the
real app (uvicorn on loopback), ``format=coco`` and ``maskx predict``."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from service import predict
from service.app import create_app
from service.contract import METADATA_KEY, ModelMetadata
from service.runtime import load_runtime
from service.settings import Settings
from service.testing import (
    BOX_FRACTIONS,
    LABELS,
    SCORES,
    build_test_model,
    default_metadata,
    mask_probabilities,
)
from tests.service.detectron_reference import prep_im_blob_size, prep_im_scale, segm_results
from tests.service.helpers import LiveServer

PREVIOUS_ONNX = Path(__file__).resolve().parents[1] / "fixtures" / "previous_layout" / "model.onnx"
DETECTRON = {"resize_rule": "detectron", "mask_paste": "detectron"}
H, W = 480, 640  # at 320 / 512: Detectron's rule gives 320 x 427, the floor rule 320 x 426


@pytest.fixture(scope="module")
def detectron_graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_test_model(
        tmp_path_factory.mktemp("model") / "detectron.onnx", metadata=default_metadata(**DETECTRON)
    )


def _png(seed: int = 0) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def _detectron_expected() -> tuple[np.ndarray, np.ndarray]:
    """Boxes (continuous, image pixels) and masks [3, H, W] Detectron's rules give for the
    test graph: its boxes are fractions of the input size prep_im_for_blob gives."""
    in_h, in_w = prep_im_blob_size((H, W), 320, 512)
    assert (in_h, in_w) == (320, 427)
    boxes_in = BOX_FRACTIONS * np.array([in_w, in_h, in_w, in_h], dtype=np.float32)
    # Legacy corners at the input scale, mapped back as Detectron maps its RoIs (/ im_scale),
    # clipped as clip_tiled_boxes clips.
    legacy = boxes_in - np.array([0, 0, 1, 1], dtype=np.float32)
    legacy = legacy / np.float32(prep_im_scale((H, W), 320, 512))
    legacy[:, 0::2] = legacy[:, 0::2].clip(0, W - 1)
    legacy[:, 1::2] = legacy[:, 1::2].clip(0, H - 1)
    masks = segm_results(mask_probabilities(), legacy, H, W, 0.5)
    return legacy + np.array([0, 0, 1, 1], dtype=np.float32), masks


def _decoded(detections: list[dict]) -> list[np.ndarray]:
    return [mask_utils.decode(d["mask"] if "mask" in d else d["segmentation"]) for d in detections]


def test_files_without_the_keys_get_the_defaults() -> None:
    raw = {p.key: p.value for p in onnx.load(str(PREVIOUS_ONNX)).metadata_props}
    stored = json.loads(raw[METADATA_KEY])
    assert "resize_rule" not in stored and "mask_paste" not in stored
    info = load_runtime(PREVIOUS_ONNX, ["cpu"]).info
    assert (info.resize_rule, info.mask_paste) == ("floor", "maskx")
    assert ModelMetadata.from_dict(default_metadata()).resize_rule == "floor"


@pytest.mark.parametrize(
    ("key", "value"), [("resize_rule", "round"), ("mask_paste", "torchvision"), ("mask_paste", 1)]
)
def test_unknown_rules_are_refused_naming_the_field(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"m.onnx: metadata field '{key}'={value!r}"):
        ModelMetadata.parse(json.dumps(default_metadata(**{key: value})), "m.onnx")


def test_detectron_model_serves_detectrons_resize_and_paste(
    detectron_graph: Path, model_path: Path
) -> None:
    boxes, masks = _detectron_expected()
    settings = Settings(model_path=detectron_graph, providers="cpu", warmup=False)
    with LiveServer(create_app(settings)) as live:
        live.wait_ready()
        described = httpx.get(live.url + "/v1/model").json()
        assert (described["resize_rule"], described["mask_paste"]) == ("detectron", "detectron")
        body = httpx.post(live.url + "/segment?score_threshold=0", content=_png(),
                          headers={"content-type": "image/png"}, timeout=60).json()  # fmt: skip
        coco = httpx.post(live.url + "/segment",
                          params={"score_threshold": 0, "format": "coco", "image_id": 7},
                          content=_png(), headers={"content-type": "image/png"},
                          timeout=60).json()  # fmt: skip
    dets = body["detections"]
    assert [d["label"] for d in dets] == LABELS.tolist() and len(SCORES) == 3
    np.testing.assert_allclose([d["box"] for d in dets], boxes, atol=0.006)
    for k, got in enumerate(_decoded(dets)):
        np.testing.assert_array_equal(got, masks[k], err_msg=f"detection {k}")
    for k, got in enumerate(_decoded(coco)):
        np.testing.assert_array_equal(got, masks[k], err_msg=f"coco result {k}")

    # The same graph with the default rules (the session's model file) answers differently.
    settings = Settings(model_path=model_path, providers="cpu", warmup=False)
    with LiveServer(create_app(settings)) as live:
        live.wait_ready()
        default = httpx.post(live.url + "/segment?score_threshold=0", content=_png(),
                             headers={"content-type": "image/png"}, timeout=60).json()  # fmt: skip
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(_decoded(default["detections"]), masks, strict=True)
    )


def test_predict_uses_the_models_rules(detectron_graph: Path, tmp_path: Path) -> None:
    _, masks = _detectron_expected()
    image = tmp_path / "img.png"
    image.write_bytes(_png())
    parser = argparse.ArgumentParser()
    predict.add_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args([str(image), "--model", str(detectron_graph), "--out", str(out),
                              "--no-progress", "--score-threshold", "0"])  # fmt: skip
    assert predict.main(args) == 0
    dets = json.loads((out / "img.json").read_text())["detections"]
    for k, got in enumerate(_decoded(dets)):
        np.testing.assert_array_equal(got, masks[k])
