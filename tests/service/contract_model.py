"""A tiny ONNX graph that honours the model contract (docs/contracts.md, "ONNX graph").

It runs in a real ONNX Runtime session and answers fixed detections, so the demo page and
``maskx predict`` can be tested end to end without a trained model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SAMPLES = Path(__file__).resolve().parents[2] / "maskx" / "service" / "static" / "samples"
CLASSES = ["disk-red", "ring-blue", "star-green"]
MASK_CLASSES = [True, False, True]
# Fixture detections: box as fractions of the input's (w, h, w, h), score, label.
FIXTURE_DETECTIONS = [
    ((0.10, 0.10, 0.45, 0.50), 0.90, 1),  # supervised (A)
    ((0.55, 0.50, 0.90, 0.90), 0.80, 2),  # transferred (B)
    ((0.60, 0.05, 0.90, 0.30), 0.30, 3),  # under the default score threshold
]
M = 28


def _disk(m: int) -> np.ndarray:
    yy, xx = np.mgrid[0:m, 0:m] + 0.5
    return (((yy - m / 2) ** 2 + (xx - m / 2) ** 2) < (0.42 * m) ** 2).astype(np.float32)


def make_fixture_model(path: Path, min_size: int = 128, max_size: int = 256) -> Path:
    """A tiny ONNX graph with the contract's inputs, outputs and metadata.

    Boxes are fixed fractions of the first image's valid size (read from ``image_sizes``), so
    they land at the same place of the displayed image whatever the resize; masks are disks.
    """
    n = len(FIXTURE_DETECTIONS)
    fracs = np.array([d[0] for d in FIXTURE_DETECTIONS], dtype=np.float32)
    nodes = [
        helper.make_node("Gather", ["image_sizes", "zero"], ["size0"], axis=0),  # (h, w)
        helper.make_node("Gather", ["size0", "whwh_index"], ["whwh_i"], axis=0),
        helper.make_node("Cast", ["whwh_i"], ["whwh"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["fracs", "whwh"], ["boxes"]),
        helper.make_node("Identity", ["scores_c"], ["scores"]),
        helper.make_node("Identity", ["labels_c"], ["labels"]),
        helper.make_node("Identity", ["batch_index_c"], ["batch_index"]),
        helper.make_node("Identity", ["mask_probs_c"], ["mask_probs"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
        numpy_helper.from_array(np.array([1, 0, 1, 0], dtype=np.int64), "whwh_index"),
        numpy_helper.from_array(fracs, "fracs"),
        numpy_helper.from_array(np.array([d[1] for d in FIXTURE_DETECTIONS], np.float32), "scores_c"),
        numpy_helper.from_array(np.array([d[2] for d in FIXTURE_DETECTIONS], np.int64), "labels_c"),
        numpy_helper.from_array(np.zeros(n, np.int64), "batch_index_c"),
        numpy_helper.from_array(np.stack([_disk(M)] * n), "mask_probs_c"),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "maskx_predict_fixture",
        [
            helper.make_tensor_value_info("images", TensorProto.UINT8, ["B", 3, "H", "W"]),
            helper.make_tensor_value_info("image_sizes", TensorProto.INT64, ["B", 2]),
        ],
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [n, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [n]),
            helper.make_tensor_value_info("labels", TensorProto.INT64, [n]),
            helper.make_tensor_value_info("batch_index", TensorProto.INT64, [n]),
            helper.make_tensor_value_info("mask_probs", TensorProto.FLOAT, [n, M, M]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {
        "format_version": 1, "name": "predict-fixture", "version": "0.0.1",
        "classes": CLASSES, "mask_classes": MASK_CLASSES,
        "min_size": min_size, "max_size": max_size, "size_divisible": 32,
        "mask_resolution": M,
    }  # fmt: skip
    helper.set_model_props(model, {"maskx": json.dumps(meta)})
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path
