"""Mask heads: the layers between the 14×14 RoIAlign features and the mask predictor.

``fcn`` is Mask R-CNN's stack of 3×3 convs (torchvision's ``MaskRCNNHeads``, unchanged, so
every existing state dict loads). ``resnet`` is the deeper head of Deep-MARC (Birodkar et al.,
"The surprising impact of mask-head architecture on novel class segmentation", ICCV 2021;
``ResNetMaskNetwork`` of the TF Object Detection API's ``deepmac_meta_arch``): a 1×1 input
projection, then basic residual blocks of two 3×3 convs each.

Both map ``[N, C_in, 14, 14]`` to ``[N, D, 14, 14]`` per RoI, with no dependence on the number
of classes K: the mask branch stays flat in K whichever head it has.
"""

from __future__ import annotations

import math

from torch import Tensor, nn
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads

from .config import ModelConfig


def _group_norm(channels: int) -> nn.GroupNorm:
    # 32 groups as Wu & He's GroupNorm (fewer when the width is not a multiple of 32).
    return nn.GroupNorm(math.gcd(32, channels), channels)


class BasicResidualBlock(nn.Module):
    """ResNet's basic block at stride 1: ``relu(x + GN(conv3x3(relu(GN(conv3x3(x))))))``.

    GroupNorm, not Deep-MARC's BatchNorm: the RoIs of a batch are not i.i.d. samples (one
    image's RoIs overlap), their number varies from 0 upwards with the mask classes present,
    and GroupNorm computes the same function in training, inference and the ONNX export.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm1 = _group_norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = _group_norm(channels)
        self.relu = nn.ReLU(inplace=False)
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """x: [N, D, H, W] → [N, D, H, W]."""
        y = self.relu(self.norm1(self.conv1(x)))
        return self.relu(x + self.norm2(self.conv2(y)))


class ResNetMaskHead(nn.Sequential):
    """Deep-MARC's ResNet mask head: ``proj`` (1×1 conv C_in → D) then ``layers / 2``
    :class:`BasicResidualBlock` of width D (``blocks.0`` … ``blocks.{n-1}``).

    Args:
        in_channels: C_in, the FPN width.
        dim: D, the width of every block (``ModelConfig.mask_head_dim``).
        layers: 3×3 convs in all (``ModelConfig.mask_head_layers``): an even number >= 2;
            Deep-MARC's ``resnet4`` / ``resnet8`` are 4 / 8.

    Input [N, C_in, 14, 14] → output [N, D, 14, 14] (float32, as the input).
    """

    def __init__(self, in_channels: int, dim: int, layers: int) -> None:
        if layers < 2 or layers % 2:
            raise ValueError(
                f"a ResNet mask head needs an even number >= 2 of layers, got {layers}"
            )
        proj = nn.Conv2d(in_channels, dim, 1)
        nn.init.kaiming_normal_(proj.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(proj.bias)
        super().__init__()
        self.add_module("proj", proj)
        self.add_module(
            "blocks", nn.Sequential(*(BasicResidualBlock(dim) for _ in range(layers // 2)))
        )

    @property
    def out_channels(self) -> int:
        return self.proj.out_channels

    @property
    def num_convs(self) -> int:
        """3×3 convs in the blocks (what ``mask_head_layers`` asked for)."""
        return 2 * len(self.blocks)


def build_mask_head(cfg: ModelConfig, in_channels: int) -> nn.Module:
    """The mask head ``cfg.mask_head_arch`` names, ``in_channels`` → ``cfg.mask_head_dim``."""
    if cfg.mask_head_arch == "resnet":
        return ResNetMaskHead(in_channels, cfg.mask_head_dim, cfg.mask_head_layers)
    return MaskRCNNHeads(in_channels, (cfg.mask_head_dim,) * cfg.mask_head_layers, 1)
