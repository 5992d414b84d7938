"""Deep-MARC's options: the mask loss on ground-truth boxes (``mask_train_rois``) and the
ResNet mask head (``mask_head_arch``), with every predictor; the mask branch stays flat in K."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from model import ConfigError, ModelConfig, build_model, project_masks_on_boxes
from model.boxes import jitter_boxes
from model.mask_heads import BasicResidualBlock, ResNetMaskHead

from .helpers import synthetic_batch, tiny_config

PREDICTORS = [
    {"mask_predictor": "class_agnostic", "mlp": True},
    {"mask_predictor": "transfer", "mlp": False},
    {"mask_predictor": "transfer", "mlp": True},
    {"mask_predictor": "class_specific", "mlp": True},
]


def _record_mask_rois(model) -> list:
    """Wrap the mask RoI pooler to record the boxes each call pools (the mask RoIs)."""
    seen: list = []
    pool = model.roi_heads.mask_roi_pool.forward

    def record(features, boxes, image_shapes):
        seen.append([b.detach().clone() for b in boxes])
        return pool(features, boxes, image_shapes)

    model.roi_heads.mask_roi_pool.forward = record
    return seen


def _roi_heads_step(model):
    """One training step of the RoI heads on proposals that are *not* the ground-truth boxes:
    each instance's box shifted by 3 px and scaled by 1.1 (IoU with it > 0.5, so foreground
    and matched), four per instance. Returns (losses, features, resized targets, proposals)."""
    images, targets = synthetic_batch()
    image_list, targets = model.transform(images, targets)
    features = model.backbone(image_list.tensors)
    proposals = []
    for t in targets:
        b = t["boxes"]
        c, wh = (b[:, :2] + b[:, 2:]) / 2, (b[:, 2:] - b[:, :2]) * 1.1
        shifted = [torch.cat([c + d - wh / 2, c + d + wh / 2], dim=1)
                   for d in (torch.tensor([3.0, 0.0]), torch.tensor([0.0, 3.0]),
                             torch.tensor([-3.0, 0.0]), torch.tensor([0.0, -3.0]))]  # fmt: skip
        proposals.append(torch.cat(shifted))
    losses = model.roi_heads(features, proposals, image_list.image_sizes, targets)[1]
    return losses, features, targets, proposals


def _independent_gt_loss(model, features, targets, boxes=None):
    """The mask loss a gt-trained head must give, computed here from scratch: RoIAlign on the
    ground-truth boxes of the instances with a mask (or on ``boxes``, per image), BCE against
    their masks projected on the same boxes."""
    rh = model.roi_heads
    if boxes is None:
        boxes = [t["boxes"][t["has_mask"]] for t in targets]
    labels = torch.cat([t["labels"][t["has_mask"]] for t in targets])
    hw = [tuple(t["masks"].shape[-2:]) for t in targets]
    logits = rh.mask_predictor(rh.mask_head(rh.mask_roi_pool(features, boxes, hw)), labels,
                               rh.box_predictor)  # fmt: skip
    target = torch.cat([
        project_masks_on_boxes(t["masks"], b, torch.where(t["has_mask"])[0], 28)
        for t, b in zip(targets, boxes, strict=True)
    ])  # fmt: skip
    return F.binary_cross_entropy_with_logits(logits, target)


@pytest.mark.parametrize("arch", ["fcn", "resnet"])
def test_gt_rois_compute_the_mask_loss_on_ground_truth_boxes_only(arch):
    torch.manual_seed(0)
    model = build_model(tiny_config(mask_train_rois="gt", mask_head_arch=arch)).train()
    seen = _record_mask_rois(model)
    losses, features, targets, _ = _roi_heads_step(model)
    (rois,) = seen
    for got, t in zip(rois, targets, strict=True):
        # exactly the boxes of the instances with a mask, in order; none of the proposals
        torch.testing.assert_close(got, t["boxes"][t["has_mask"]], rtol=0, atol=0)
    assert sum(len(r) for r in rois) == 4  # two masked instances per image
    with torch.no_grad():
        expected = _independent_gt_loss(model, features, targets)
    torch.testing.assert_close(losses["loss_mask"].detach(), expected, rtol=1e-5, atol=1e-6)


def test_jittered_gt_rois_move_each_side_within_the_ratio_and_crop_the_target_alike():
    ratio = 0.2
    torch.manual_seed(0)
    model = build_model(tiny_config(mask_train_rois="gt", mask_gt_jitter=ratio)).train()
    seen = _record_mask_rois(model)
    losses, features, targets, _ = _roi_heads_step(model)
    (rois,) = seen
    for got, t in zip(rois, targets, strict=True):
        gt = t["boxes"][t["has_mask"]]
        h, w = t["masks"].shape[-2:]
        centre, size = (gt[:, :2] + gt[:, 2:]) / 2, gt[:, 2:] - gt[:, :2]
        inner = torch.cat([centre - size * (1 - ratio) / 2, centre + size * (1 - ratio) / 2], 1)
        outer = torch.cat([centre - size * (1 + ratio) / 2, centre + size * (1 + ratio) / 2], 1)
        outer = torch.minimum(outer.clamp_min(0), outer.new_tensor([w, h, w, h]))
        # x1, y1 between the outer and inner bounds; x2, y2 between inner and outer
        assert bool(
            (got[:, :2] >= outer[:, :2] - 1e-4).all() & (got[:, :2] <= inner[:, :2] + 1e-4).all()
        )
        assert bool(
            (got[:, 2:] <= outer[:, 2:] + 1e-4).all() & (got[:, 2:] >= inner[:, 2:] - 1e-4).all()
        )
        assert (got - gt).abs().max() > 0.1, "no box moved"
    # The loss is the gt loss on those jittered boxes: features and target cropped alike.
    with torch.no_grad():
        expected = _independent_gt_loss(model, features, targets, boxes=rois)
        untouched = _independent_gt_loss(model, features, targets)
    torch.testing.assert_close(losses["loss_mask"].detach(), expected, rtol=1e-5, atol=1e-6)
    assert abs(float(expected) - float(untouched)) > 1e-5


def test_jitter_boxes_sides_move_independently_and_clip_to_the_image():
    torch.manual_seed(0)
    boxes = torch.tensor([[10.0, 20.0, 50.0, 40.0]]).repeat(2000, 1)
    out = jitter_boxes(boxes, 0.5, (100, 100))
    half = torch.cat(
        [
            (out[:, :2] - 30.0).neg().div(torch.tensor([20.0, 10.0])),
            (out[:, 2:] - torch.tensor([30.0, 30.0])).div(torch.tensor([20.0, 10.0])),
        ],
        1,
    )
    # (1 + u) for each side, u uniform in [-0.5, 0.5]: the full range is used, sides independent
    assert float(half.min()) < 0.52 and float(half.max()) > 1.48
    assert abs(float(torch.corrcoef(half.T)[0, 2])) < 0.1
    assert torch.equal(jitter_boxes(boxes, 0.0, (100, 100)), boxes)
    edge = jitter_boxes(torch.tensor([[0.0, 0.0, 100.0, 100.0]]).repeat(50, 1), 0.5, (100, 100))
    assert float(edge.min()) >= 0 and float(edge.max()) <= 100


def test_proposal_rois_differ_from_gt_rois_on_the_same_batch():
    """The counter-test: with ``proposals`` the mask RoIs are the sampled foreground proposals
    of masked instances (the shifted boxes besides the ground truth torchvision adds), and the
    loss is not the ground-truth-box loss of the same weights."""
    torch.manual_seed(0)
    model = build_model(tiny_config(mask_train_rois="proposals")).train()
    seen = _record_mask_rois(model)
    losses, features, targets, proposals = _roi_heads_step(model)
    (rois,) = seen
    got = torch.cat(rois)
    assert len(got) > 4
    shifted = torch.cat(proposals)
    assert any(((got - p).abs().max(dim=1).values < 1e-4).any() for p in shifted)
    with torch.no_grad():
        gt_only = _independent_gt_loss(model, features, targets)
    assert abs(float(losses["loss_mask"].detach()) - float(gt_only)) > 1e-4


def test_gt_rois_without_masked_instances_give_a_connected_zero_loss():
    torch.manual_seed(0)
    model = build_model(tiny_config(mask_train_rois="gt", mask_head_arch="resnet")).train()
    images, targets = synthetic_batch()
    for t in targets:
        t["has_mask"] = torch.zeros_like(t["has_mask"])
    losses = model(images, targets)
    assert float(losses["loss_mask"].detach()) == 0.0
    sum(losses.values()).backward()  # the graph reaches the mask head (DDP needs it)


@pytest.mark.parametrize("layers,dim", [(2, 16), (6, 40), (8, 32)])
def test_resnet_head_has_the_configured_depth_and_width(layers, dim):
    cfg = tiny_config(mask_head_arch="resnet", mask_head_layers=layers, mask_head_dim=dim)
    model = build_model(cfg)
    head = model.roi_heads.mask_head
    assert isinstance(head, ResNetMaskHead)
    convs3 = [m for m in head.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs3) == layers == head.num_convs
    assert all(c.in_channels == c.out_channels == dim for c in convs3)
    assert sum(isinstance(m, BasicResidualBlock) for m in head.modules()) == layers // 2
    assert head.proj.in_channels == cfg.fpn_channels and head.proj.out_channels == dim
    assert model.roi_heads.mask_predictor.conv5_mask.in_channels == dim
    out = head(torch.randn(3, cfg.fpn_channels, 14, 14))
    assert out.shape == (3, dim, 14, 14)


def test_fcn_head_is_unchanged_by_default():
    """Default config: torchvision's MaskRCNNHeads with its state-dict names, so every
    checkpoint trained before the option loads."""
    cfg = tiny_config()
    assert cfg.mask_head_arch == "fcn" and cfg.mask_train_rois == "proposals"
    keys = [k for k in build_model(cfg).state_dict() if k.startswith("roi_heads.mask_head.")]
    assert keys == [f"roi_heads.mask_head.{i}.0.{p}" for i in range(2) for p in ("weight", "bias")]


def test_residual_block_adds_its_input():
    block = BasicResidualBlock(32).eval()
    nn.init.zeros_(block.norm2.weight)  # the residual branch outputs exactly 0
    x = torch.randn(2, 32, 14, 14)
    torch.testing.assert_close(block(x), F.relu(x))


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"mask_head_arch": "resnet", "mask_head_layers": 3}, "mask_head_layers"),
        ({"mask_head_arch": "resnet", "mask_head_layers": 0}, "mask_head_layers"),
        ({"mask_head_arch": "hourglass"}, "mask_head_arch"),
        ({"mask_train_rois": "jittered"}, "mask_train_rois"),
        ({"mask_gt_jitter": 0.1}, "mask_gt_jitter"),  # needs mask_train_rois=gt
        ({"mask_train_rois": "gt", "mask_gt_jitter": 1.5}, "mask_gt_jitter"),
        ({"mask_train_rois": "gt", "mask_gt_jitter": -0.1}, "mask_gt_jitter"),
    ],
)
def test_bad_options_name_the_field(changes, field):
    with pytest.raises(ConfigError, match=field):
        tiny_config(**changes)


def test_options_round_trip_through_the_config_dict():
    cfg = tiny_config(mask_head_arch="resnet", mask_head_layers=8, mask_train_rois="gt")
    back = ModelConfig.from_dict(cfg.to_dict())
    assert (back.mask_head_arch, back.mask_head_layers, back.mask_train_rois) == ("resnet", 8, "gt")


@pytest.mark.parametrize(
    "predictor", PREDICTORS, ids=lambda p: f"{p['mask_predictor']}-mlp{p['mlp']}"
)
@pytest.mark.parametrize("arch,rois", [("fcn", "gt"), ("resnet", "gt"), ("resnet", "proposals")])
def test_options_compose_with_every_predictor(predictor, arch, rois):
    """A training step trains the head (every block gets a gradient) and inference returns one
    box-local mask per detection."""
    torch.manual_seed(0)
    cfg = tiny_config(mask_head_arch=arch, mask_head_layers=4, mask_train_rois=rois, **predictor)
    model = build_model(cfg).train()
    losses = model(*synthetic_batch())
    assert torch.isfinite(losses["loss_mask"]) and float(losses["loss_mask"]) > 0
    losses["loss_mask"].backward()
    grads = [p.grad for p in model.roi_heads.mask_head.parameters()]
    assert all(g is not None and torch.count_nonzero(g) > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        out = model(synthetic_batch()[0])
    for o in out:
        assert o["masks"].shape[0] == o["boxes"].shape[0]


def _mask_branch_flops(num_classes: int, train: bool, **changes) -> int:
    """FLOPs of the mask branch (RoIAlign → head → predictor, plus its backward in training)
    for 20 RoIs of fixed boxes and labels, at ``num_classes`` classes."""
    torch.manual_seed(0)
    cfg = tiny_config(num_classes=num_classes, box_head_dim=128, **changes)
    rh = build_model(cfg).roi_heads.train(train)
    g = torch.Generator().manual_seed(1)
    features = {k: torch.randn(1, cfg.fpn_channels, s, s, generator=g)
                for k, s in (("0", 32), ("1", 16), ("2", 8), ("3", 4))}  # fmt: skip
    xy = torch.rand(20, 2, generator=g) * 60
    boxes = [torch.cat([xy, xy + 20 + torch.rand(20, 2, generator=g) * 40], dim=1)]
    labels = torch.randint(1, 80, (20,), generator=g)  # the same labels at either K
    with FlopCounterMode(display=False) as counter:
        feats = rh.mask_head(rh.mask_roi_pool(features, boxes, [(128, 128)]))
        logits = rh.mask_predictor(feats, labels, rh.box_predictor)
        if train:
            logits.sigmoid().mean().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize(
    "predictor", PREDICTORS, ids=lambda p: f"{p['mask_predictor']}-mlp{p['mlp']}"
)
@pytest.mark.parametrize("arch", ["fcn", "resnet"])
@pytest.mark.parametrize("train", [False, True], ids=["inference", "train-step"])
def test_mask_branch_cost_at_k3000_equals_k80(predictor, arch, train):
    changes = dict(mask_head_arch=arch, mask_head_layers=8 if arch == "resnet" else 2,
                   mask_train_rois="gt", **predictor)  # fmt: skip
    k80 = _mask_branch_flops(80, train, **changes)
    k3000 = _mask_branch_flops(3000, train, **changes)
    assert k80 > 0
    assert k3000 == k80, (k80, k3000)


def test_deeper_head_costs_more_per_roi():
    """The counter-check of the flat-in-K test: FLOPs grow with the head's depth."""
    fcn = _mask_branch_flops(80, False, mask_head_layers=2)
    res4 = _mask_branch_flops(80, False, mask_head_arch="resnet", mask_head_layers=4)
    res8 = _mask_branch_flops(80, False, mask_head_arch="resnet", mask_head_layers=8)
    assert fcn < res4 < res8
