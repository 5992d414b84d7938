"""ONNX export of the class-specific (oracle) and class-agnostic mask predictors equals eager
PyTorch. The other export tests use the weight-transfer predictor; the class-specific one keeps
a background row (channel 0) that the export must skip: class ``l``'s kernel is row ``l``."""

from __future__ import annotations

import onnxruntime as ort
import pytest
import torch

from model import build_model
from tests.model.helpers import tiny_config
from tests.training.export.helpers import assert_same_detections, split_outputs
from training.export.onnx_export import OUTPUT_NAMES, eager_reference, export_model, pad_batch


@pytest.mark.parametrize("predictor", ["class_specific", "class_agnostic"])
def test_export_equals_eager_for_the_other_mask_predictors(predictor: str, tmp_path) -> None:
    torch.manual_seed(0)
    cfg = tiny_config(
        mask_predictor=predictor, mlp=False, box_score_thresh=0.0, box_detections_per_img=20
    )
    model = build_model(cfg).eval()
    kernel = model.roi_heads.mask_predictor.mask_fcn_logits
    classifier = model.roi_heads.box_predictor.cls_score
    with torch.no_grad():
        # Kernels far apart from class to class (the initialisation makes them all near 0):
        # a mask computed with the neighbouring class's row is visibly wrong. A classifier
        # whose scores are spread too: at initialisation every class scores about 1/(K+1), and
        # near-ties (measured down to 4e-8 apart) may rank differently in the graph and in
        # eager; with these weights and 20 detections they are at least 1e-5 apart, 100 times
        # the graph's score error.
        kernel.weight.copy_(torch.randn(kernel.weight.shape) * 0.5)
        kernel.bias.copy_(torch.linspace(-2.0, 2.0, kernel.bias.numel()))
        classifier.weight.copy_(torch.randn(classifier.weight.shape) * 2.0)
    assert kernel.out_channels == (cfg.num_classes + 1 if predictor == "class_specific" else 1)
    path = export_model(model, tmp_path / f"{predictor}.onnx", {"name": predictor},
                        sample_size=(128, 160))  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(1)
    images = [torch.randint(0, 256, (3, 128, 160), dtype=torch.uint8, generator=g),
              torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8, generator=g)]  # fmt: skip
    batch, sizes = pad_batch(images)
    got = split_outputs(
        session.run(list(OUTPUT_NAMES), {"images": batch.numpy(), "image_sizes": sizes.numpy()}),
        len(images),
    )
    eager = eager_reference(model, images)
    for k in range(len(images)):
        ref = {key: v.numpy() for key, v in eager[k].items()}
        assert ref["labels"].shape[0] == 20
        assert_same_detections(f"{predictor}, image {k}", ref, got[k])
