"""A synthetic ONNX file that honours the graph contract (:mod:`service.contract`), and test
images. In the package, not under tests/, because ``maskx bench service`` builds its model of
known cost with it at run time; the service and deployment tests use it too. Test-only doubles
(fake runtime, live server) live in ``tests/service/helpers.py``.

The test graph returns, for every image ``b`` of a batch, ``len(SCORES)`` detections whose boxes
are fixed fractions of that image's own ``image_sizes[b]`` (so routing results to the wrong
request shows), fixed scores and labels, and fixed 28×28 mask probabilities. An optional stack of
3×3 convolutions over ``images`` gives it a realistic, tunable compute cost for benchmarks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from service.contract import METADATA_KEY, ModelMetadata
from service.runtime import RawDetections

CLASSES = ("circle-red", "square-blue", "triangle-green", "ring-yellow")
MASK_CLASSES = (True, False, True, False)
CATEGORY_IDS = (10, 20, 30, 40)  # dataset ids, unlike the model labels 1..4
# x1, y1, x2, y2 as fractions of the valid input width/height
BOX_FRACTIONS = np.array(
    [[0.10, 0.20, 0.60, 0.70], [0.50, 0.05, 0.95, 0.45], [0.02, 0.55, 0.30, 0.98]],
    dtype=np.float32,
)
SCORES = np.array([0.92, 0.71, 0.35], dtype=np.float32)
LABELS = np.array([1, 2, 4], dtype=np.int64)
MASK_RESOLUTION = 28


def mask_probabilities(m: int = MASK_RESOLUTION) -> np.ndarray:
    """float32 ``[3, m, m]``: a soft disc, a soft square and a diagonal ramp (all with
    gradients, so that bilinear resizing and thresholds matter)."""
    yy, xx = np.mgrid[0:m, 0:m].astype(np.float32) / (m - 1)
    disc = 1.0 / (1.0 + np.exp(12.0 * (np.hypot(xx - 0.5, yy - 0.5) - 0.35)))
    square = 1.0 / (1.0 + np.exp(12.0 * (np.maximum(abs(xx - 0.45), abs(yy - 0.55)) - 0.3)))
    ramp = np.clip(xx * 0.7 + yy * 0.6 - 0.2, 0.0, 1.0)
    return np.stack([disc, square, ramp]).astype(np.float32)


def default_metadata(**overrides: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "format_version": 1,
        "name": "maskx-test",
        "version": "0.0.1",
        "classes": list(CLASSES),
        "mask_classes": list(MASK_CLASSES),
        "source_ids": list(CATEGORY_IDS),
        "min_size": 320,
        "max_size": 512,
        "size_divisible": 32,
        "mask_resolution": MASK_RESOLUTION,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        "mask_predictor": "transfer",
        "checkpoint_sha256": "0" * 64,
        "training_config": {},
        "model_config": {},
    }
    meta.update(overrides)
    return meta


def expected_outputs(image_sizes: np.ndarray) -> RawDetections:
    """What the test graph returns for ``image_sizes`` int64 ``[B, 2]`` (numpy reference)."""
    sizes = np.asarray(image_sizes, dtype=np.float32).reshape(-1, 2)
    b, d = len(sizes), len(SCORES)
    scale = sizes[:, [1, 0, 1, 0]]  # w, h, w, h
    boxes = (BOX_FRACTIONS[None] * scale[:, None, :]).reshape(-1, 4)
    return RawDetections(
        boxes=boxes.astype(np.float32),
        scores=np.tile(SCORES, b),
        labels=np.tile(LABELS, b),
        batch_index=np.repeat(np.arange(b, dtype=np.int64), d),
        mask_probs=np.tile(mask_probabilities(), (b, 1, 1)),
    )


def build_test_model(
    path: str | Path,
    *,
    metadata: dict[str, Any] | None = None,
    conv_layers: int = 0,
    conv_channels: int = 16,
    seed: int = 0,
) -> Path:
    """Write an ONNX file honouring the graph contract (docs/contracts.md) to ``path``.

    ``conv_layers`` > 0 adds that many 3×3 convolutions (the first with stride 2) over the
    normalised image whose result enters the scores multiplied by zero: the outputs stay exactly
    :func:`expected_outputs`, but inference costs what a small backbone costs.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    d = len(SCORES)
    m = MASK_RESOLUTION
    inits = [
        numpy_helper.from_array(BOX_FRACTIONS[None], "box_fractions"),
        numpy_helper.from_array(SCORES[None], "scores_const"),
        numpy_helper.from_array(LABELS[None], "labels_const"),
        numpy_helper.from_array(mask_probabilities()[None], "masks_const"),
        numpy_helper.from_array(np.array([1, 0, 1, 0], dtype=np.int64), "whwh_index"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "zero1"),
        numpy_helper.from_array(np.array([d], dtype=np.int64), "num_det"),
        numpy_helper.from_array(np.array([d, m, m], dtype=np.int64), "det_mask_shape"),
        numpy_helper.from_array(np.array([-1, 4], dtype=np.int64), "shape_n4"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "shape_n"),
        numpy_helper.from_array(np.array([-1, m, m], dtype=np.int64), "shape_nmm"),
        numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
        numpy_helper.from_array(np.array(1, dtype=np.int64), "one"),
    ]
    nodes = [
        helper.make_node("Cast", ["image_sizes"], ["sizes_f"], to=TensorProto.FLOAT),
        helper.make_node("Gather", ["sizes_f", "whwh_index"], ["whwh"], axis=1),
        helper.make_node("Unsqueeze", ["whwh", "axis1"], ["whwh3"]),
        helper.make_node("Mul", ["box_fractions", "whwh3"], ["boxes3"]),
        helper.make_node("Reshape", ["boxes3", "shape_n4"], ["boxes"]),
        helper.make_node("Shape", ["image_sizes"], ["sizes_shape"]),
        helper.make_node("Slice", ["sizes_shape", "zero1", "axis1"], ["batch1"]),
        helper.make_node("Concat", ["batch1", "num_det"], ["bd_shape"], axis=0),
        helper.make_node("Expand", ["scores_const", "bd_shape"], ["scores2"]),
        helper.make_node("Reshape", ["scores2", "shape_n"], ["scores_raw"]),
        helper.make_node("Expand", ["labels_const", "bd_shape"], ["labels2"]),
        helper.make_node("Reshape", ["labels2", "shape_n"], ["labels"]),
        helper.make_node("Squeeze", ["batch1"], ["batch"]),
        helper.make_node("Range", ["zero", "batch", "one"], ["range_b"]),
        helper.make_node("Unsqueeze", ["range_b", "axis1"], ["range_b1"]),
        helper.make_node("Expand", ["range_b1", "bd_shape"], ["bi2"]),
        helper.make_node("Reshape", ["bi2", "shape_n"], ["batch_index"]),
        helper.make_node("Concat", ["batch1", "det_mask_shape"], ["mask_shape"], axis=0),
        helper.make_node("Expand", ["masks_const", "mask_shape"], ["masks4"]),
        helper.make_node("Reshape", ["masks4", "shape_nmm"], ["mask_probs"]),
    ]
    if conv_layers > 0:
        inits.append(numpy_helper.from_array(np.array(1 / 255.0, dtype=np.float32), "inv255"))
        inits.append(numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero_f"))
        nodes += [
            helper.make_node("Cast", ["images"], ["images_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["images_f", "inv255"], ["x0"]),
        ]
        c_in = 3
        for i in range(conv_layers):
            w = rng.normal(0, (2.0 / (9 * c_in)) ** 0.5, (conv_channels, c_in, 3, 3))
            inits.append(numpy_helper.from_array(w.astype(np.float32), f"conv{i}_w"))
            inits.append(numpy_helper.from_array(np.zeros(conv_channels, np.float32), f"conv{i}_b"))
            nodes += [
                helper.make_node(
                    "Conv",
                    [f"x{i}", f"conv{i}_w", f"conv{i}_b"],
                    [f"c{i}"],
                    pads=[1, 1, 1, 1],
                    strides=[2, 2] if i == 0 else [1, 1],
                ),
                helper.make_node("Relu", [f"c{i}"], [f"x{i + 1}"]),
            ]
            c_in = conv_channels
        nodes += [
            helper.make_node("ReduceMean", [f"x{conv_layers}"], ["feat"], keepdims=0),
            helper.make_node("Mul", ["feat", "zero_f"], ["feat0"]),
            helper.make_node("Add", ["scores_raw", "feat0"], ["scores"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["scores_raw"], ["scores"]))

    graph = helper.make_graph(
        nodes,
        "maskx_test",
        [
            helper.make_tensor_value_info("images", TensorProto.UINT8, ["B", 3, "H", "W"]),
            helper.make_tensor_value_info("image_sizes", TensorProto.INT64, ["B", 2]),
        ],
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("labels", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("batch_index", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("mask_probs", TensorProto.FLOAT, ["N", m, m]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key = METADATA_KEY
    # A given dict is written as is (tests write broken metadata on purpose).
    entry.value = (
        ModelMetadata.from_dict(default_metadata(), "test model").to_json()
        if metadata is None
        else json.dumps(metadata)
    )
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def make_image(
    width: int = 640,
    height: int = 480,
    fmt: str = "JPEG",
    mode: str = "RGB",
    seed: int = 0,
    **save: Any,
) -> bytes:
    """Encoded image bytes (``fmt`` as Pillow names it) with smooth random content."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(height // 16, 1), max(width // 16, 1), 3), dtype=np.uint8)
    img = Image.fromarray(small, "RGB").resize((width, height), Image.Resampling.BILINEAR)
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()
