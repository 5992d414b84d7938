"""An imported Detectron model answers as Detectron's own test pipeline does.

A small Detectron-format file (the authors' blob names at reduced widths, random weights) is
imported with ``maskx import-detectron``; the same blobs go through :mod:`reference`, Detectron's
test-time forward written from the authors' code. maskx must give the same detections in eager
PyTorch, in the exported ONNX graph (ONNX Runtime), and over HTTP from the served graph, where
the masks are pasted by the model's ``mask_paste`` rule.

Tolerances: boxes 2e-3 px, scores 1e-5 (over HTTP, whose JSON rounds them, 7e-3 and 6e-5), box-local mask probabilities 1e-4 (float32 sums in
another order); pasted masks equal pixel for pixel (a pixel could flip only where a resized
probability lay within float rounding of the threshold; none does at this seed). The weights are drawn so that scores are well apart (no two detections of a class
within 1e-3) and the comparison is not decided by the order NMS breaks ties in.
"""

from __future__ import annotations

import io

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from maskx.cli import main as cli_main
from service.app import create_app
from service.settings import Settings
from tests.service.helpers import LiveServer
from tests.training.detectron import reference
from training.checkpoint import load_model_from_checkpoint
from training.detectron.writer import Spec, make_blobs, model_params, write_spec_file
from training.export.onnx_export import eager_reference

SPEC = Spec(blocks=(1, 1, 1, 1), width=8, num_classes=11, fpn_dim=16, box_dim=32, mask_dim=4)
H, W = 64, 80  # at the model's scale (short side = min_size): no resize; P2 has 960 < 1000 anchors
MIN_SIZE, MAX_SIZE = 64, 128


def trained_like_blobs(spec: Spec, seed: int, image_bgr: np.ndarray) -> dict[str, np.ndarray]:
    """Random blobs that behave like trained ones on ``image_bgr``: weights scaled by fan-in
    (the writer's 0.05 makes every score about 1/(K+1)), the stem scaled to Detectron's 0..255
    input, and the classifier centred on this image's RoI features, with a background bias, so
    that a few RoIs per class stand out with scores well apart (no comparison is decided by
    the order in which NMS or a cut breaks near-ties)."""
    blobs = make_blobs(spec, seed)
    rng = np.random.default_rng(seed + 100)
    for name, shape in model_params(spec).items():
        if name.endswith("_w"):
            fan_in = int(np.prod(shape[1:])) if name != "conv5_mask_w" else shape[0]
            blobs[name] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    blobs["conv1_w"] /= 100.0
    blobs["rpn_bbox_pred_fpn2_w"] *= 0.1
    blobs["bbox_pred_w"] *= 0.1
    cfg = reference.TestConfig()
    with torch.no_grad():
        blob, im_info = reference.image_blob(image_bgr, cfg)
        fpn = reference.resnet_fpn(blobs, blob)
        # Objectness logits with a spread of 2: apart, yet far from the sigmoid's 1.0.
        logits = torch.cat([reference.rpn_logits(blobs, f).flatten() for f in fpn])
        blobs["rpn_cls_logits_fpn2_w"] *= 2.0 / float(logits.std())
        blobs["rpn_cls_logits_fpn2_b"] -= float(logits.mean()) * 2.0 / float(logits.std())
        rois = reference.rpn_proposals(blobs, fpn, im_info, cfg)
        x = reference.box_features(blobs, fpn, rois).numpy()
    w = blobs["cls_score_w"]
    w *= 3.0 / ((x - x.mean(0)) @ w.T).std()
    blobs["cls_score_b"] = -(w @ x.mean(0)).astype(np.float32)
    blobs["cls_score_b"][0] += 11.0
    for name in ("cls_score_w", "cls_score_b", "bbox_pred_w", "bbox_pred_b"):
        blobs[name + "_jcvbackup"] = blobs[name].copy()
    return blobs


def scene(seed: int) -> np.ndarray:
    """uint8 RGB [H, W, 3]: a few flat rectangles on a gradient, so the trunk sees edges."""
    rng = np.random.default_rng(seed)
    img = np.linspace(30, 200, W, dtype=np.float32)[None, :, None].repeat(H, 0).repeat(3, 2)
    for _ in range(5):
        x0, y0 = rng.integers(0, W - 20), rng.integers(0, H - 20)
        x1, y1 = x0 + rng.integers(12, 60), y0 + rng.integers(12, 50)
        img[y0:y1, x0:x1] = rng.integers(0, 256, 3)
    return img.astype(np.uint8)


def by_class_then_score(boxes, scores, labels):
    """Detectron's cls_boxes order: class by class, each by score descending."""
    return np.lexsort((-np.asarray(scores), np.asarray(labels)))


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("e2e")
    blobs = trained_like_blobs(SPEC, 3, scene(0)[:, :, ::-1].copy())
    path, blobs = write_spec_file(folder / "model.pkl", SPEC, protocol=0, edits=blobs)
    classes = folder / "classes.txt"
    classes.write_text("".join(f"class_{i}\n" for i in range(SPEC.num_classes)))
    mask_classes = folder / "mask_classes.txt"
    mask_classes.write_text("class_0\nclass_1\nclass_2\n")
    ckpt = folder / "model.pt"
    assert cli_main(["import-detectron", str(path), "--classes", str(classes), "--out", str(ckpt),
                     "--mask-classes", str(mask_classes)]) == 0  # fmt: skip
    return folder, blobs, ckpt


@pytest.fixture(scope="module")
def expected(imported):
    _, blobs, _ = imported
    image = scene(0)
    det = reference.detect(blobs, image[:, :, ::-1].copy())  # Detectron reads BGR
    assert 5 <= len(det.scores) < 100, "the weights should give some, not capped, detections"
    return image, det


def continuous(legacy: np.ndarray) -> np.ndarray:
    return legacy + np.array([0, 0, 1, 1], dtype=np.float32)


def assert_same_detections(
    got_boxes, got_scores, got_labels, got_probs, det, *, box_atol=2e-3, score_atol=1e-5
) -> None:
    order = by_class_then_score(got_boxes, got_scores, got_labels)
    np.testing.assert_array_equal(np.asarray(got_labels)[order], det.labels)
    np.testing.assert_allclose(np.asarray(got_scores)[order], det.scores, atol=score_atol)
    np.testing.assert_allclose(np.asarray(got_boxes)[order], continuous(det.boxes), atol=box_atol)
    if got_probs is not None:
        np.testing.assert_allclose(np.asarray(got_probs)[order], det.mask_probs, atol=1e-4)


def test_eager_equals_detectrons_forward(imported, expected):
    _, _, ckpt = imported
    image, det = expected
    model, _, _ = load_model_from_checkpoint(ckpt)
    model.transform.min_size, model.transform.max_size = (MIN_SIZE,), MAX_SIZE
    (out,) = eager_reference(model, [torch.from_numpy(image).permute(2, 0, 1).contiguous()])
    assert_same_detections(
        out["boxes"].numpy(), out["scores"].numpy(), out["labels"].numpy(),
        out["mask_probs"].numpy(), det,
    )  # fmt: skip


@pytest.fixture(scope="module")
def exported(imported):
    folder, _, ckpt = imported
    onnx_path = folder / "model.onnx"
    assert cli_main(["export", "--checkpoint", str(ckpt), "--output", str(onnx_path),
                     "--min-size", str(MIN_SIZE), "--max-size", str(MAX_SIZE)]) == 0  # fmt: skip
    return onnx_path


def test_onnx_graph_equals_detectrons_forward(exported, expected):
    image, det = expected
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    ph, pw = -(-H // 32) * 32, -(-W // 32) * 32
    batch = np.zeros((1, 3, ph, pw), np.uint8)
    batch[0, :, :H, :W] = image.transpose(2, 0, 1)
    boxes, scores, labels, _, probs = session.run(
        None, {"images": batch, "image_sizes": np.array([[H, W]], np.int64)}
    )
    assert_same_detections(boxes, scores, labels, probs, det)


def test_served_graph_answers_with_detectrons_boxes_and_masks(exported, expected):
    image, det = expected
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    settings = Settings(model_path=exported, providers="cpu", warmup=False)
    with LiveServer(create_app(settings)) as live:
        live.wait_ready()
        model = httpx.get(live.url + "/v1/model").json()
        body = httpx.post(live.url + "/segment?score_threshold=0", content=buf.getvalue(),
                          headers={"content-type": "image/png"}, timeout=60).json()  # fmt: skip
    assert (model["resize_rule"], model["mask_paste"]) == ("detectron", "detectron")
    dets = body["detections"]
    boxes = np.array([d["box"] for d in dets], np.float32)
    scores = np.array([d["score"] for d in dets], np.float32)
    labels = np.array([d["label"] for d in dets])
    # The JSON rounds boxes to 0.01 px and scores to 1e-5.
    assert_same_detections(boxes, scores, labels, None, det, box_atol=7e-3, score_atol=6e-5)
    order = by_class_then_score(boxes, scores, labels)
    assert [dets[i]["name"] for i in order] == [f"class_{k - 1}" for k in det.labels]
    for rank, i in enumerate(order):
        got = mask_utils.decode(dets[i]["mask"])
        differ = got != det.masks[rank]
        # Pixels may flip only where the probability sits at the threshold (float32 rounding).
        print("DIFF", differ.sum())
        assert differ.sum() <= 0.001 * got.size, f"detection {rank}: {differ.sum()} pixels differ"
