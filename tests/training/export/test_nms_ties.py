"""NMS keeps the same boxes in eager PyTorch and in the exported graph where the two paths
round scores differently.

ONNX Runtime's ``Sigmoid`` is not monotonic in its last bit at large logits (8.00054 gives a
larger probability than 8.00060), while PyTorch's is; proposal NMS on probabilities then visits
two overlapping boxes in opposite orders in the two paths and keeps a different one (a
full-size R-101 export lost one of its 40 detections that way). Ranking by the logit keeps
the same box in both.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from model.postprocess import nms_in_rank_order, select_proposals

LOW, HIGH = 8.000539779663086, 8.00059986114502  # float32 logits, LOW < HIGH


class _Select(nn.Module):
    def forward(self, proposals: Tensor, objectness: Tensor, sizes: Tensor) -> tuple[Tensor, ...]:
        return select_proposals(
            proposals, objectness, [proposals.shape[1]], sizes, pre_nms_top_n=10,
            post_nms_top_n=10, nms_thresh=0.7, min_size=0.0,
        )  # fmt: skip


def _ort_sigmoid(x: np.ndarray) -> np.ndarray:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["x"], ["y"])], "sigmoid",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_the_logits_are_a_pair_the_two_paths_order_differently():
    """The premise: PyTorch ranks the pair by its logits, ONNX Runtime the other way round."""
    x = np.array([LOW, HIGH], np.float32)
    torch_p = torch.sigmoid(torch.from_numpy(x)).numpy()
    ort_p = _ort_sigmoid(x)
    assert torch_p[1] > torch_p[0]
    assert ort_p[0] > ort_p[1]


def test_overlapping_proposals_keep_the_higher_logit_in_eager_and_in_onnx(tmp_path):
    # Two boxes with IoU 0.91 (one suppresses the other) and a third apart from both.
    proposals = torch.tensor([[[0.0, 0.0, 40.0, 40.0], [0.0, 0.0, 40.0, 44.0],
                               [60.0, 60.0, 90.0, 90.0]]])  # fmt: skip
    objectness = torch.tensor([[LOW, HIGH, 1.0]])
    sizes = torch.tensor([[100, 100]])
    with torch.no_grad():
        eager = _Select()(proposals, objectness, sizes)
    assert eager[0].tolist() == [[0.0, 0.0, 40.0, 44.0], [60.0, 60.0, 90.0, 90.0]]
    path = tmp_path / "select.onnx"
    torch.onnx.export(_Select(), (proposals, objectness, sizes), str(path), dynamo=False,
                      opset_version=17, input_names=["proposals", "objectness", "sizes"])  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, scores, batch = session.run(
        None, {"proposals": proposals.numpy(), "objectness": objectness.numpy(),
               "sizes": sizes.numpy()},
    )  # fmt: skip
    np.testing.assert_array_equal(boxes, eager[0].numpy())
    np.testing.assert_array_equal(batch, eager[2].numpy())
    np.testing.assert_allclose(scores, eager[1].numpy(), rtol=1e-6)


def test_equal_keys_are_visited_by_index():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.5], [0.0, 0.0, 10.0, 11.0]])
    key = torch.tensor([1.0, 1.0, 1.0])
    assert nms_in_rank_order(boxes, key, torch.zeros(3, dtype=torch.int64), 0.5).tolist() == [0]
    key = torch.tensor([1.0, 2.0, 2.0])
    assert nms_in_rank_order(boxes, key, torch.zeros(3, dtype=torch.int64), 0.5).tolist() == [1]
