"""Parity with torchvision's MaskRCNN: same weights, same eval outputs ."""

from __future__ import annotations

import torch
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

from model import build_model, mask_rcnn_arguments

from .helpers import tiny_config


def _torchvision_twin(cfg):
    # The same modules build_model gets (one function builds the arguments for both), with
    # torchvision's own predictors and RoIHeads in place of the Mask^X ones.
    k1, d = cfg.num_classes + 1, cfg.mask_head_dim
    return MaskRCNN(
        num_classes=None,
        box_predictor=FastRCNNPredictor(cfg.box_head_dim, k1),
        mask_predictor=MaskRCNNPredictor(d, d, k1),
        **mask_rcnn_arguments(cfg),
    )


def test_class_specific_eval_matches_torchvision():
    torch.manual_seed(0)
    cfg = tiny_config(
        mask_predictor="class_specific",
        box_candidates_per_img=None,
        box_score_thresh=0.0,
        box_head_dim=1024,  # torchvision's TwoMLPHead width
        mask_head_dim=256,  # torchvision's MaskRCNNPredictor width
    )
    ours = build_model(cfg).eval()
    theirs = _torchvision_twin(cfg).eval()
    # Same parameter names: torchvision's FastRCNNPredictor / MaskRCNNPredictor load as they are.
    theirs.load_state_dict(ours.state_dict(), strict=True)

    images = [torch.rand(3, 128, 160), torch.rand(3, 96, 200)]
    with torch.no_grad():
        a = ours(images)
        b = theirs(images)
    for ra, rb in zip(a, b, strict=True):
        assert ra["boxes"].shape[0] > 50  # threshold 0: plenty of detections to compare
        assert torch.equal(ra["labels"], rb["labels"])
        torch.testing.assert_close(ra["scores"], rb["scores"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ra["boxes"], rb["boxes"], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(ra["masks"], rb["masks"], rtol=1e-4, atol=1e-4)
