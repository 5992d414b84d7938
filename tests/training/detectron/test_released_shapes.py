"""A file of the released R-50 model's full shapes (K = 3001): written, imported, deleted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.checkpoint import load_model_from_checkpoint
from training.detectron.importer import import_detectron
from training.detectron.writer import Spec, write_spec_file


@pytest.mark.slow
def test_real_shape_r50_file_imports(tmp_path):
    """About 1.6 GB on disk (0.87 GB of weights, the rest the MLP's momentum and leftovers)."""
    spec = Spec(blocks=(3, 4, 6, 3), num_classes=3001)
    path = tmp_path / "33241332_model_final_coco2vg3k_seg.pkl"
    out = tmp_path / "r50.pt"
    classes = tmp_path / "vg3k.txt"
    classes.write_text("".join(f"synset_{i}\n" for i in range(3001)))
    try:
        _, blobs = write_spec_file(path, spec, protocol=2, seed=0)
        report = import_detectron(path, classes, out)
        assert report.floats == 218_079_489 and report.architecture.backbone == "resnet50"
        assert sum(len(v) for v in report.skipped.values()) == len(blobs) - len(report.loaded)
        samples = {
            k: blobs[k] for k in ("mask_mlp_logits_raw_w", "bbox_pred_w", "res4_5_branch2b_w")
        }
        del blobs
        path.unlink()
        model, vocab, _ = load_model_from_checkpoint(out)
        state = model.state_dict()
        np.testing.assert_array_equal(
            state["roi_heads.mask_predictor.mlp.fc.weight"].numpy(),
            samples["mask_mlp_logits_raw_w"],
        )
        np.testing.assert_array_equal(
            state["roi_heads.box_predictor.bbox_pred.weight"].numpy(), samples["bbox_pred_w"]
        )
        np.testing.assert_array_equal(
            state["backbone.body.layer3.5.conv2.weight"].numpy(), samples["res4_5_branch2b_w"]
        )
        assert sum(vocab.mask_classes) == 80
        model.transform.min_size, model.transform.max_size = (128,), 160
        with torch.no_grad():
            (pred,) = model([torch.rand(3, 120, 160)])
        assert pred["masks"].shape[1:] == (1, 120, 160)
    finally:
        path.unlink(missing_ok=True)
        out.unlink(missing_ok=True)
