"""Comparisons the export tests share: graph outputs against eager PyTorch, per image."""

from __future__ import annotations

import numpy as np

# The tolerances `maskx export` verifies with (float32 graph against float32 eager).
BOX_RTOL = 1e-3
SCORE_ATOL = 1e-4
MASK_ATOL = 1e-3


def assert_same_detections(name: str, ref: dict[str, np.ndarray], got: dict[str, np.ndarray]):
    """Equal lists label for label, boxes within a relative 1e-3, scores and mask
    probabilities within an absolute 1e-4 and 1e-3."""
    assert got["labels"].shape[0] == ref["labels"].shape[0], (
        f"{name}: {got['labels'].shape[0]} detections, eager has {ref['labels'].shape[0]}"
    )
    np.testing.assert_array_equal(got["labels"], ref["labels"], err_msg=name)
    scale = np.maximum(np.abs(ref["boxes"]), 1.0)
    box_rel = np.abs(got["boxes"] - ref["boxes"]) / scale
    assert box_rel.max(initial=0.0) <= BOX_RTOL, f"{name}: box relative diff {box_rel.max()}"
    np.testing.assert_allclose(got["scores"], ref["scores"], rtol=0, atol=SCORE_ATOL, err_msg=name)
    np.testing.assert_allclose(
        got["mask_probs"], ref["mask_probs"], rtol=0, atol=MASK_ATOL, err_msg=name
    )


def split_outputs(outputs: list[np.ndarray], n: int) -> list[dict[str, np.ndarray]]:
    """The graph's five outputs → one dict per image of the batch (``boxes``, ``scores``,
    ``labels``, ``mask_probs``), checking that each image's detections are contiguous."""
    boxes, scores, labels, batch, masks = outputs
    assert batch.dtype == np.int64 and set(np.unique(batch)) <= set(range(n))
    # the detections of one image are contiguous (the contract), image 0 first
    assert np.all(np.diff(batch) >= 0), batch
    return [
        {"boxes": boxes[batch == i], "scores": scores[batch == i], "labels": labels[batch == i],
         "mask_probs": masks[batch == i]}
        for i in range(n)
    ]  # fmt: skip
