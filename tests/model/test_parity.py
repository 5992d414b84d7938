"""Parity with torchvision's MaskRCNN: same weights, same eval outputs (issue: model point 1)."""

from __future__ import annotations

import torch
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads

from model import build_model
from model.backbones import build_backbone

from .conftest import tiny_config


def _torchvision_twin(cfg):
    backbone = build_backbone("tiny", fpn_channels=cfg.fpn_channels, tiny_widths=cfg.tiny_widths)
    return MaskRCNN(
        backbone,
        num_classes=cfg.num_classes + 1,
        min_size=cfg.min_size,
        max_size=cfg.max_size,
        rpn_anchor_generator=AnchorGenerator(
            tuple((s,) for s in cfg.anchor_sizes), ((0.5, 1.0, 2.0),) * 5
        ),
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        box_score_thresh=cfg.box_score_thresh,
        representation_size=None,
        mask_head=MaskRCNNHeads(cfg.fpn_channels, (cfg.mask_head_dim,) * cfg.mask_head_layers, 1),
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
