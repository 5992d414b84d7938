"""Seeded golden losses and a one-batch overfit (model point 5), plus config handling."""

from __future__ import annotations

import pytest
import torch

from model import ConfigError, ModelConfig, build_model

from .helpers import synthetic_batch, tiny_config

# Losses of the seeded tiny model on the seeded batch (torch 2.14.1, CPU). A change here means
# the model computes something else: check why before updating the numbers. Last update: the
# authors' init of cls_score N(0, 0.01) / bbox_pred N(0, 0.001) starts the logits near zero, so
# the classifier loss is ln(K + 1) = ln 11 = 2.398 and the box deltas (and their loss) near 0.
# torchvision's MaskRCNN on the same weights computes the same five values (the test below).
GOLDEN = {
    "loss_classifier": 2.402201,
    "loss_box_reg": 0.000007,
    "loss_mask": 0.699314,
    "loss_objectness": 0.693429,
    "loss_rpn_box_reg": 0.03192,
}


def _seeded_losses():
    torch.manual_seed(0)
    model = build_model(tiny_config()).train()
    images, targets = synthetic_batch(seed=0)
    torch.manual_seed(1)
    with torch.no_grad():
        return {k: v.item() for k, v in model(images, targets).items()}


def test_golden_losses():
    losses = _seeded_losses()
    assert set(losses) == set(GOLDEN)
    for key, value in GOLDEN.items():
        assert losses[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_golden_losses_are_torchvisions_on_the_same_weights(monkeypatch):
    """Where the golden values come from: torchvision's ``MaskRCNN`` with the same modules and
    weights computes them. Its class-specific mask predictor gets the transfer's kernels
    ``τ(W_det)`` (a zero row for the background, no bias), and its mask loss is restricted to
    the RoIs of instances with masks, as Mask^X's partial loss is; the same seed draws the
    same RoI samples on both sides."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection import roi_heads as tv_roi_heads
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

    from model import mask_rcnn_arguments

    cfg = tiny_config()
    torch.manual_seed(0)
    ours = build_model(cfg)
    k1, d = cfg.num_classes + 1, cfg.mask_head_dim
    theirs = MaskRCNN(num_classes=None, box_predictor=FastRCNNPredictor(cfg.box_head_dim, k1),
                      mask_predictor=MaskRCNNPredictor(d, d, k1), **mask_rcnn_arguments(cfg))  # fmt: skip
    state = {k: v for k, v in ours.state_dict().items() if ".weight_transfer." not in k}
    with torch.no_grad():
        kernels = ours.roi_heads.mask_predictor.all_class_kernels(ours.roi_heads.box_predictor)
    state["roi_heads.mask_predictor.mask_fcn_logits.weight"] = torch.cat(
        [torch.zeros(1, d), kernels]
    )[:, :, None, None]
    state["roi_heads.mask_predictor.mask_fcn_logits.bias"] = torch.zeros(k1)
    theirs.load_state_dict(state, strict=True)

    images, targets = synthetic_batch(seed=0)
    has_mask = [t.pop("has_mask") for t in targets]
    assert not all(bool(h.all()) for h in has_mask)  # a partial mask loss to derive
    full_loss = tv_roi_heads.maskrcnn_loss

    def partial_loss(mask_logits, proposals, gt_masks, gt_labels, matched):  # type: ignore[no-untyped-def]
        logits = mask_logits.split([len(p) for p in proposals])
        keep = [h[m] for h, m in zip(has_mask, matched, strict=True)]
        return full_loss(
            torch.cat([x[k] for x, k in zip(logits, keep, strict=True)]),
            [p[k] for p, k in zip(proposals, keep, strict=True)],
            gt_masks, gt_labels,
            [m[k] for m, k in zip(matched, keep, strict=True)],
        )  # fmt: skip

    monkeypatch.setattr(tv_roi_heads, "maskrcnn_loss", partial_loss)
    torch.manual_seed(1)
    with torch.no_grad():
        derived = {k: v.item() for k, v in theirs.train()(images, targets).items()}
    assert set(derived) == set(GOLDEN)
    for key, value in GOLDEN.items():
        assert derived[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("predictor", ["transfer", "class_agnostic"])
def test_tiny_model_overfits_one_batch(predictor):
    torch.manual_seed(0)
    model = build_model(tiny_config(mask_predictor=predictor, mlp=True, mlp_input_size=7)).train()
    images, targets = synthetic_batch(seed=3)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    history = []
    for _ in range(40):
        losses = model(images, targets)
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append({k: v.item() for k, v in losses.items()})
    first, last = history[0], history[-1]
    assert sum(last.values()) < 0.35 * sum(first.values()), (first, last)
    assert last["loss_mask"] < 0.6 * first["loss_mask"], (first, last)


def test_config_round_trips_through_dict():
    cfg = tiny_config(mask_predictor="class_agnostic", mlp=True, anchor_sizes=(8, 16, 32, 64, 128))
    again = ModelConfig.from_dict(cfg.to_dict())
    assert again == cfg
    import json

    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"transfer_input": "cls+mask"}, "transfer_input='cls+mask'"),
        ({"num_classes": 0}, "num_classes"),
        ({"backbone": "vgg16"}, "allowed values"),
        ({"transfer_layers": 4}, "transfer_layers"),
        ({"mask_predictor": "fcn"}, "mask_predictor"),
    ],
)
def test_bad_config_names_the_field(change, needle):
    with pytest.raises(ConfigError, match=needle.replace("+", r"\+")):
        tiny_config(**change)


def test_unknown_config_key_is_named():
    with pytest.raises(ConfigError, match="num_clases"):
        ModelConfig.from_dict({"num_clases": 3})


def test_backbone_weights_file_that_does_not_match(tmp_path):
    bad = tmp_path / "r18.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="does not match the backbone"):
        build_model(tiny_config(), backbone_weights=str(bad))
    with pytest.raises(FileNotFoundError, match=r"no-such\.pth"):
        build_model(tiny_config(), backbone_weights=str(tmp_path / "no-such.pth"))


def test_backbone_weights_from_a_local_file_load(tmp_path):
    torch.manual_seed(0)
    src = build_model(tiny_config())
    path = tmp_path / "trunk.pth"
    torch.save(src.backbone.body.state_dict(), path)
    model = build_model(tiny_config(), backbone_weights=str(path))
    for k, v in src.backbone.body.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        torch.testing.assert_close(model.backbone.body.state_dict()[k], v)
    # pretrained → frozen BN and the default 3 trainable stages
    assert not model.backbone.body.conv1.weight.requires_grad
    assert model.backbone.body.layer4.conv1.weight.requires_grad


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3"])
def test_small_real_backbones_build_and_run(name):
    torch.manual_seed(0)
    model = build_model(tiny_config(backbone=name, fpn_channels=32)).eval()
    with torch.no_grad():
        out = model([torch.rand(3, 128, 128)])
    assert out[0]["masks"].shape[1:] == (1, 128, 128)
