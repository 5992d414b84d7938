"""Backbones with FPN: ResNet-50/101 (the paper's), ResNet-18, MobileNetV3 and a tiny trunk.

Weights come only from a local file the caller names; nothing is ever downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torchvision.models import mobilenet_v3_large, resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import misc as misc_nn_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool


class BasicBlock(nn.Module):
    """Residual block of the tiny trunk: 3×3 → BN → ReLU → 3×3 → BN, plus projection."""

    def __init__(self, cin: int, cout: int, stride: int, norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm(cout)
        self.relu = nn.ReLU(inplace=True)
        self.proj = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + self.proj(x))


class TinyTrunk(nn.Module):
    """A small ResNet-like trunk for CPU work: C2..C5 at strides 4, 8, 16, 32."""

    def __init__(self, widths: tuple[int, ...], norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"tiny_widths needs 4 stage widths, got {list(widths)}")
        stem = widths[0] // 2
        self.conv1 = nn.Conv2d(3, stem, 3, 2, 1, bias=False)
        self.bn1 = norm(stem)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = BasicBlock(stem, widths[0], 2, norm)
        self.layer2 = BasicBlock(widths[0], widths[1], 2, norm)
        self.layer3 = BasicBlock(widths[1], widths[2], 2, norm)
        self.layer4 = BasicBlock(widths[2], widths[3], 2, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # not used through IntermediateLayerGetter
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class ResNetTrunk(resnet.ResNet):
    """torchvision's ResNet with a chosen stem width (same layer names, same initialisation).

    torchvision fixes the stem at 64 channels; this builds the same modules for any ``width``
    (stage widths ``width × (1, 2, 4, 8)``, times the block's expansion at the outputs), so that
    tests can build small ResNets that carry the full-size names.
    """

    def __init__(
        self,
        block: type[resnet.BasicBlock] | type[resnet.Bottleneck],
        blocks: tuple[int, ...],
        width: int,
        norm_layer: Callable[[int], nn.Module],
    ) -> None:
        nn.Module.__init__(self)
        self._norm_layer = norm_layer
        self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, blocks[0])
        self.layer2 = self._make_layer(block, width * 2, blocks[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, blocks[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8 * block.expansion, 1000)
        for m in self.modules():  # torchvision ResNet's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


RESNET_BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}


def build_resnet_trunk(
    name: str,
    norm_layer: Callable[[int], nn.Module],
    *,
    width: int = 64,
    blocks: tuple[int, ...] | None = None,
    stride_in_1x1: bool = False,
) -> resnet.ResNet:
    """A torchvision ResNet (``resnet18``, ``resnet50``, ``resnet101``), optionally narrower,
    with other block counts, or with the stride on the first 1×1 conv of each stage.

    The defaults build exactly torchvision's ``resnet50(weights=None)`` (etc.). With
    ``stride_in_1x1`` (bottleneck ResNets only), the first block of layers 2..4 strides on
    ``conv1`` (1×1) and not on ``conv2`` (3×3): the original MSRA ResNet that Detectron's
    ImageNet weights were trained as (``RESNETS.STRIDE_1X1``); the ``downsample`` projection
    strides 2 either way.
    """
    if name not in RESNET_BLOCKS:
        raise ValueError(f"not a ResNet backbone: {name!r}; allowed: {sorted(RESNET_BLOCKS)}")
    if width == 64 and blocks is None:
        trunk = getattr(resnet, name)(weights=None, norm_layer=norm_layer)
    else:
        block = resnet.BasicBlock if name == "resnet18" else resnet.Bottleneck
        trunk = ResNetTrunk(block, tuple(blocks or RESNET_BLOCKS[name]), width, norm_layer)
    if stride_in_1x1:
        if name == "resnet18":
            raise ValueError("stride_in_1x1 needs a bottleneck ResNet (resnet50, resnet101)")
        for layer in (trunk.layer2, trunk.layer3, trunk.layer4):
            first = layer[0]
            first.conv1.stride, first.conv2.stride = first.conv2.stride, first.conv1.stride
    return trunk


def _freeze_resnet_layers(trunk: nn.Module, trainable_layers: int) -> None:
    layers_to_train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        layers_to_train.append("bn1")
    for name, parameter in trunk.named_parameters():
        if not any(name.startswith(layer) for layer in layers_to_train):
            parameter.requires_grad_(False)


def load_backbone_weights(trunk: nn.Module, path: str | Path) -> None:
    """Load a local state dict into the trunk; mismatches raise an error naming the keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone_weights: no such file {str(path)!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or non-torch file
        raise ValueError(f"backbone_weights: cannot read {str(path)!r}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"backbone_weights: {str(path)!r} does not hold a state dict")
    # Classification heads (fc, classifier) are not part of the detection trunk, and frozen BN
    # keeps no batch counter.
    state = {
        k: v
        for k, v in state.items()
        if not k.startswith(("fc.", "classifier.")) and not k.endswith("num_batches_tracked")
    }
    own = {k: v for k, v in trunk.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or bad_shape:
        raise ValueError(
            f"backbone_weights {str(path)!r} does not match the backbone: "
            f"missing={missing[:5]}{'…' if len(missing) > 5 else ''} "
            f"unexpected={unexpected[:5]}{'…' if len(unexpected) > 5 else ''} "
            f"wrong_shape={bad_shape[:5]}"
        )
    trunk.load_state_dict(state, strict=False)


def build_backbone(
    name: str,
    *,
    weights: str | Path | None = None,
    trainable_layers: int | None = None,
    norm: str | None = None,
    fpn_channels: int = 256,
    tiny_widths: tuple[int, ...] = (32, 64, 96, 128),
    stride_in_1x1: bool = False,
    resnet_width: int = 64,
    resnet_blocks: tuple[int, ...] | None = None,
) -> BackboneWithFPN:
    """Build ``name`` with an FPN on top (output levels '0'..'3' and 'pool').

    Args:
        name: ``resnet50``, ``resnet101``, ``resnet18``, ``mobilenet_v3`` or ``tiny``.
        weights: local state-dict file for the trunk (ImageNet classification weights), or None
            to start from scratch.
        trainable_layers: trunk stages left trainable (0..5); default 3 with weights, 5 without.
        norm: ``frozen_bn`` or ``bn``; default frozen with weights, plain BN from scratch.
        fpn_channels: FPN width (256 in the paper).
        stride_in_1x1, resnet_width, resnet_blocks: ResNet variants, see
            :func:`build_resnet_trunk` (the defaults are torchvision's ResNets).
    """
    pretrained = weights is not None
    if trainable_layers is None:
        trainable_layers = 3 if pretrained else 5
    if norm is None:
        norm = "frozen_bn" if pretrained else "bn"
    norm_layer = misc_nn_ops.FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d

    if name in ("resnet50", "resnet101", "resnet18"):
        trunk = build_resnet_trunk(
            name,
            norm_layer,
            width=resnet_width,
            blocks=resnet_blocks,
            stride_in_1x1=stride_in_1x1,
        )
        if weights is not None:
            load_backbone_weights(trunk, weights)
        _freeze_resnet_layers(trunk, trainable_layers)
        stage2 = trunk.inplanes // 8
        in_channels = [stage2 * 2 ** (i - 1) for i in (1, 2, 3, 4)]
        return_layers = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
        return BackboneWithFPN(
            trunk, return_layers, in_channels, fpn_channels, extra_blocks=LastLevelMaxPool()
        )
    if name == "tiny":
        trunk = TinyTrunk(tuple(tiny_widths), norm_layer)
        if weights is not None:
            load_backbone_weights(trunk, weights)
        _freeze_resnet_layers(trunk, trainable_layers)
        return_layers = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
        return BackboneWithFPN(
            trunk, return_layers, list(tiny_widths), fpn_channels, extra_blocks=LastLevelMaxPool()
        )
    if name == "mobilenet_v3":
        trunk = mobilenet_v3_large(weights=None, norm_layer=norm_layer)
        if weights is not None:
            load_backbone_weights(trunk, weights)
        features = trunk.features
        stage_indices = (
            [0]
            + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)]
            + [len(features) - 1]
        )
        num_stages = len(stage_indices)
        trainable_layers = min(trainable_layers, num_stages)
        freeze_before = (
            len(features) if trainable_layers == 0 else stage_indices[num_stages - trainable_layers]
        )
        for block in features[:freeze_before]:
            for p in block.parameters():
                p.requires_grad_(False)
        # Four levels (strides 4, 8, 16, 32) so that the FPN matches the ResNet layout.
        returned = [num_stages - 4, num_stages - 3, num_stages - 2, num_stages - 1]
        return_layers = {f"{stage_indices[k]}": str(v) for v, k in enumerate(returned)}
        in_channels = [features[stage_indices[i]].out_channels for i in returned]
        return BackboneWithFPN(
            features, return_layers, in_channels, fpn_channels, extra_blocks=LastLevelMaxPool()
        )
    raise ValueError(
        f"backbone={name!r} is not supported; allowed values: "
        "['resnet50', 'resnet101', 'resnet18', 'mobilenet_v3', 'tiny']"
    )
