"""ResNet options: stride on the 1×1 conv (Detectron's STRIDE_1X1), width, blocks per stage."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import resnet
from torchvision.ops import misc as misc_nn_ops

from model import ConfigError, ModelConfig, build_model
from model.backbones import build_backbone, build_resnet_trunk

FROZEN = misc_nn_ops.FrozenBatchNorm2d


def _strides(trunk: torch.nn.Module) -> list[tuple]:
    """(conv1 stride, conv2 stride, downsample stride) of the first block of layers 1..4."""
    out = []
    for layer in (trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4):
        b = layer[0]
        out.append((b.conv1.stride, b.conv2.stride, b.downsample[0].stride))
    return out


def test_stride_in_1x1_moves_the_stride_to_the_first_conv_and_keeps_the_shortcuts():
    default = build_resnet_trunk("resnet50", FROZEN)
    moved = build_resnet_trunk("resnet50", FROZEN, stride_in_1x1=True)
    one, two = (1, 1), (2, 2)
    assert _strides(default) == [(one, one, one)] + [(one, two, two)] * 3
    assert _strides(moved) == [(one, one, one)] + [(two, one, two)] * 3
    # Only the first block of a stage strides.
    assert all(b.conv1.stride == one and b.conv2.stride == one for b in moved.layer3[1:])
    # Same output shapes (C2..C5 at strides 4..32), different numbers: the 3×3 conv now sees
    # the subsampled map.
    x = torch.randn(1, 3, 64, 96)
    moved.load_state_dict(default.state_dict())
    shapes, values = [], []
    for trunk in (default, moved):
        y = trunk.maxpool(trunk.relu(trunk.bn1(trunk.conv1(x))))
        feats = []
        for layer in (trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4):
            y = layer(y)
            feats.append(y)
        shapes.append([tuple(f.shape) for f in feats])
        values.append(feats[-1])
    assert shapes[0] == shapes[1] == [(1, 256, 16, 24), (1, 512, 8, 12), (1, 1024, 4, 6),
                                      (1, 2048, 2, 3)]  # fmt: skip
    assert not torch.allclose(values[0], values[1])


def test_default_resnets_are_torchvisions_exactly():
    for name in ("resnet50", "resnet101"):
        torch.manual_seed(0)
        ours = build_resnet_trunk(name, FROZEN).state_dict()
        torch.manual_seed(0)
        theirs = getattr(resnet, name)(weights=None, norm_layer=FROZEN).state_dict()
        assert list(ours) == list(theirs)
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_default_model_state_dict_keys_and_shapes_are_unchanged():
    """The defaults build what they built before the options existed."""
    cfg = ModelConfig(num_classes=3)
    got = {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}
    torch.manual_seed(0)
    trunk = resnet.resnet50(weights=None, norm_layer=torch.nn.BatchNorm2d)
    expected_trunk = {
        f"backbone.body.{k}": tuple(v.shape)
        for k, v in trunk.state_dict().items()
        if not k.startswith("fc.")
    }
    assert {k: v for k, v in got.items() if k.startswith("backbone.body.")} == expected_trunk
    assert got["backbone.fpn.inner_blocks.3.0.weight"] == (256, 2048, 1, 1)


def test_narrow_resnet_keeps_the_names_and_scales_every_width():
    trunk = build_resnet_trunk("resnet101", FROZEN, width=8, blocks=(1, 2, 1, 1))
    full = build_resnet_trunk("resnet101", FROZEN)
    names = set(trunk.state_dict())
    assert "layer2.1.conv3.weight" in names and "layer2.2.conv3.weight" not in names
    assert names <= set(full.state_dict())
    assert trunk.conv1.weight.shape == (8, 3, 7, 7)
    assert trunk.layer1[0].conv1.weight.shape == (8, 8, 1, 1)
    assert trunk.layer4[0].conv3.weight.shape == (256, 64, 1, 1)
    assert trunk.layer4[0].downsample[0].weight.shape == (256, 128, 1, 1)


def test_fpn_follows_a_narrow_resnet():
    backbone = build_backbone(
        "resnet50", norm="frozen_bn", fpn_channels=16, resnet_width=8, resnet_blocks=(1, 1, 1, 1)
    )
    inner = [b[0].weight.shape[1] for b in backbone.fpn.inner_blocks]
    assert inner == [32, 64, 128, 256]
    out = backbone(torch.randn(1, 3, 64, 64))
    assert [tuple(v.shape) for v in out.values()] == [
        (1, 16, 16, 16), (1, 16, 8, 8), (1, 16, 4, 4), (1, 16, 2, 2), (1, 16, 1, 1)
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"backbone": "tiny", "resnet_width": 8}, "resnet_width and resnet_blocks apply"),
        ({"backbone": "resnet18", "stride_in_1x1": True}, "stride_in_1x1 applies"),
        ({"resnet_width": 0}, "resnet_width must be"),
        ({"resnet_blocks": (1, 1, 1)}, "resnet_blocks must be"),
        ({"resnet_blocks": (1, 0, 1, 1)}, "resnet_blocks must be"),
    ],
)
def test_bad_resnet_options_are_refused_naming_the_field(changes, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**changes)


def test_resnet_options_round_trip_through_the_config_dict():
    cfg = ModelConfig(stride_in_1x1=True, resnet_width=16, resnet_blocks=(1, 2, 3, 1))
    again = ModelConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.resnet_blocks == (1, 2, 3, 1)
