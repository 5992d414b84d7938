"""Detectron blob names ↔ maskx state-dict keys for Mask^X R-CNN with a ResNet-FPN backbone.

Names as the authors' Detectron code creates them (``ronghanghu/seg_every_thing``,
``lib/modeling/``):

* ``ResNet.py``: stem ``conv1_w`` (no bias) + AffineChannel ``res_conv1_bn_{s,b}``; block
  ``i`` of stage ``s`` (2..5) is ``res{s}_{i}_branch2{a,b,c}_w`` (1×1, 3×3, 1×1 convs, no
  bias) each followed by ``…_bn_{s,b}``; the first block's projection is
  ``res{s}_0_branch1_w`` + ``res{s}_0_branch1_bn_{s,b}``. AffineChannel computes x·s + b,
  which a frozen BN computes with weight s, bias b, mean 0 and variance 1 − eps.
* ``FPN.py``: ``fpn_inner_res5_{n}_sum_{w,b}`` (1×1 on C5), ``fpn_inner_res{4,3,2}_{n}_sum_
  lateral_{w,b}`` (1×1 laterals), ``fpn_res{5..2}_{n}_sum_{w,b}`` (3×3 outputs), with ``n``
  the stage's last block (R-50: res2_2, res3_3, res4_5, res5_2; R-101: res4_22). P6 is a
  1×1 stride-2 max pool (no weights), as torchvision's ``LastLevelMaxPool``. The FPN RPN
  creates ``conv_rpn_fpn2``, ``rpn_cls_logits_fpn2``, ``rpn_bbox_pred_fpn2`` at level 2 and
  shares them with levels 3..6 (``ConvShared``), as torchvision's single ``RPNHead`` does.
* ``fast_rcnn_heads.py``: ``fc6``, ``fc7`` (FC on the C,H,W-flattened 7×7 RoI features),
  ``cls_score`` [K+1, D], ``bbox_pred`` [4(K+1), D] (rows class-major, 4 deltas each).
* ``mask_rcnn_heads.py``: ``_[mask]_fcn{1..4}_{w,b}`` (3×3 convs, brackets part of the name),
  ``conv5_mask_{w,b}`` (ConvTranspose 2×2 stride 2; Caffe2 stores its filter
  (C_in, C_out, kH, kW), PyTorch's ``ConvTranspose2d`` layout); weight transfer τ =
  [``bbox2mask_mlp_l1`` → act → [``bbox2mask_mlp_l2`` → act →]] ``mask_fcn_logits_w_flat``
  (FC layers, [out, in] like ``nn.Linear``), whose output is a bias-free 1×1 conv kernel per
  class; τ's input is ``cls_score_w`` concatenated with ``bbox_pred_w`` reshaped row-major to
  [K+1, 4·D]; the fused class-agnostic MLP is one FC ``mask_mlp_logits_raw`` from the
  C,H,W-flattened 28×28 deconv output to 28·28 logits.

All shapes here are the blobs' shapes, which equal the maskx parameters' shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "LEFTOVER_RULES",
    "Architecture",
    "BlobEntry",
    "blob_manifest",
    "leftover_rule",
]

#: Block counts of the two depths the authors released.
DEPTHS = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101"}


@dataclass(frozen=True)
class Architecture:
    """What a Detectron Mask^X model file describes, read from its blobs' shapes.

    Attributes:
        resnet_blocks: blocks in res2..res5.
        resnet_width: stem width (64; stage ``s`` has width × 2^(s−2) inner channels and 4×
            that at its output).
        num_classes: K, background excluded (``cls_score_w`` has K + 1 rows).
        fpn_dim, box_head_dim, mask_head_dim: widths of the FPN, box head (D) and mask head.
        mask_head_layers: 3×3 convs of the mask head.
        transfer_input: τ's input, ``cls`` (D), ``box`` (4D) or ``cls+box`` (5D).
        transfer_layers, transfer_hidden: τ's FC layers and hidden width.
        mlp: whether the fused class-agnostic MLP (``mask_mlp_logits_raw``) is present.
        num_anchors: anchors per location of the RPN (3 aspect ratios).
    """

    resnet_blocks: tuple[int, int, int, int]
    resnet_width: int
    num_classes: int
    fpn_dim: int
    box_head_dim: int
    mask_head_dim: int
    mask_head_layers: int
    transfer_input: str
    transfer_layers: int
    transfer_hidden: int
    mlp: bool
    num_anchors: int = 3
    mask_resolution: int = 28

    @property
    def backbone(self) -> str:
        """maskx's backbone name: ``resnet101`` with 23 blocks in res4, else ``resnet50``."""
        return "resnet101" if self.resnet_blocks[2] >= 23 else "resnet50"

    @property
    def standard_blocks(self) -> bool:
        """Whether the blocks are those of :attr:`backbone` (no ``resnet_blocks`` needed)."""
        return DEPTHS.get(tuple(self.resnet_blocks)) == self.backbone


@dataclass(frozen=True)
class BlobEntry:
    """One weight blob: its Detectron name and shape, and the maskx state-dict key it fills.

    ``flip_bgr``: the blob's input channels are Detectron's BGR and become RGB (``conv1_w``).
    """

    blob: str
    shape: tuple[int, ...]
    key: str
    flip_bgr: bool = False


def _conv(blob: str, key: str, cout: int, cin: int, k: int, bias: bool) -> list[BlobEntry]:
    out = [BlobEntry(f"{blob}_w", (cout, cin, k, k), f"{key}.weight")]
    if bias:
        out.append(BlobEntry(f"{blob}_b", (cout,), f"{key}.bias"))
    return out


def _affine(blob: str, key: str, dim: int) -> list[BlobEntry]:
    return [
        BlobEntry(f"{blob}_s", (dim,), f"{key}.weight"),
        BlobEntry(f"{blob}_b", (dim,), f"{key}.bias"),
    ]


def _linear(blob: str, key: str, out: int, inp: int) -> list[BlobEntry]:
    return [
        BlobEntry(f"{blob}_w", (out, inp), f"{key}.weight"),
        BlobEntry(f"{blob}_b", (out,), f"{key}.bias"),
    ]


def stage_sum(stage: int, blocks: tuple[int, ...]) -> str:
    """Detectron's name of a stage's output, e.g. ``res4_5_sum`` (R-50) or ``res4_22_sum``."""
    return f"res{stage}_{blocks[stage - 2] - 1}_sum"


def resnet_entries(arch: Architecture) -> list[BlobEntry]:
    w, body = arch.resnet_width, "backbone.body"
    out = [BlobEntry("conv1_w", (w, 3, 7, 7), f"{body}.conv1.weight", flip_bgr=True)]
    out += _affine("res_conv1_bn", f"{body}.bn1", w)
    dim_in = w
    for stage, n in zip((2, 3, 4, 5), arch.resnet_blocks, strict=True):
        inner = w * 2 ** (stage - 2)
        dim_out = 4 * inner
        for i in range(n):
            blob, key = f"res{stage}_{i}", f"{body}.layer{stage - 1}.{i}"
            convs = (("a", dim_in, inner, 1), ("b", inner, inner, 3), ("c", inner, dim_out, 1))
            for j, (branch, cin, cout, k) in enumerate(convs, start=1):
                out += _conv(f"{blob}_branch2{branch}", f"{key}.conv{j}", cout, cin, k, False)
                out += _affine(f"{blob}_branch2{branch}_bn", f"{key}.bn{j}", cout)
            if i == 0:  # the projection shortcut (dim_in != dim_out in every first block)
                out += _conv(f"{blob}_branch1", f"{key}.downsample.0", dim_out, dim_in, 1, False)
                out += _affine(f"{blob}_branch1_bn", f"{key}.downsample.1", dim_out)
            dim_in = dim_out
    return out


def fpn_entries(arch: Architecture) -> list[BlobEntry]:
    f, blocks = arch.fpn_dim, arch.resnet_blocks
    out = []
    for stage in (5, 4, 3, 2):  # torchvision's index: 0 for C2 … 3 for C5
        level, c_in = stage - 2, 4 * arch.resnet_width * 2 ** (stage - 2)
        inner = f"fpn_inner_{stage_sum(stage, blocks)}" + ("" if stage == 5 else "_lateral")
        out += _conv(inner, f"backbone.fpn.inner_blocks.{level}.0", f, c_in, 1, True)
    for stage in (5, 4, 3, 2):
        level = stage - 2
        out += _conv(f"fpn_{stage_sum(stage, blocks)}", f"backbone.fpn.layer_blocks.{level}.0",
                     f, f, 3, True)  # fmt: skip
    a = arch.num_anchors
    out += _conv("conv_rpn_fpn2", "rpn.head.conv.0.0", f, f, 3, True)
    out += _conv("rpn_cls_logits_fpn2", "rpn.head.cls_logits", a, f, 1, True)
    out += _conv("rpn_bbox_pred_fpn2", "rpn.head.bbox_pred", 4 * a, f, 1, True)
    return out


def box_entries(arch: Architecture) -> list[BlobEntry]:
    d, c = arch.box_head_dim, arch.num_classes + 1
    out = _linear("fc6", "roi_heads.box_head.fc6", d, arch.fpn_dim * 7 * 7)
    out += _linear("fc7", "roi_heads.box_head.fc7", d, d)
    out += _linear("cls_score", "roi_heads.box_predictor.cls_score", c, d)
    out += _linear("bbox_pred", "roi_heads.box_predictor.bbox_pred", 4 * c, d)
    return out


def transfer_blob_names(layers: int) -> list[str]:
    """τ's FC blobs in order (Detectron's ``bbox2mask_weight_transfer``)."""
    hidden = ["bbox2mask_mlp_l1", "bbox2mask_mlp_l2"][: layers - 1]
    return [*hidden, "mask_fcn_logits_w_flat"]


def mask_entries(arch: Architecture) -> list[BlobEntry]:
    m, dim_in = arch.mask_head_dim, arch.fpn_dim
    out = []
    for i in range(arch.mask_head_layers):
        out += _conv(f"_[mask]_fcn{i + 1}", f"roi_heads.mask_head.{i}.0", m, dim_in, 3, True)
        dim_in = m
    pred = "roi_heads.mask_predictor"
    out.append(BlobEntry("conv5_mask_w", (m, m, 2, 2), f"{pred}.conv5_mask.weight"))
    out.append(BlobEntry("conv5_mask_b", (m,), f"{pred}.conv5_mask.bias"))
    if arch.mlp:
        r2 = arch.mask_resolution**2
        out += _linear("mask_mlp_logits_raw", f"{pred}.mlp.fc", r2, m * r2)
    d = arch.box_head_dim
    width = {"cls": d, "box": 4 * d, "cls+box": 5 * d}[arch.transfer_input]
    names = transfer_blob_names(arch.transfer_layers)
    for i, name in enumerate(names):
        # nn.Sequential(Linear, act, Linear, …): the Linear layers are at 0, 2, 4.
        rows = m if i == len(names) - 1 else arch.transfer_hidden
        out += _linear(name, f"{pred}.weight_transfer.layers.{2 * i}", rows, width)
        width = rows
    return out


def blob_manifest(arch: Architecture) -> list[BlobEntry]:
    """Every weight blob a Mask^X R-CNN file of ``arch`` holds, each with the one maskx key
    it fills (names and keys unique)."""
    return resnet_entries(arch) + fpn_entries(arch) + box_entries(arch) + mask_entries(arch)


# -- blobs that are not weights of the model ----------------------------------------------------

#: rule → why blobs it matches are skipped.
LEFTOVER_RULES = {
    "momentum": "SGD momentum of a trained blob (optimizer state, not a weight)",
    "jcvbackup": "a copy of cls_score/bbox_pred kept by the authors' class-surgery scripts",
    "imagenet_classifier": "the ImageNet classifier (fc1000) of the backbone's initialisation",
    "imagenet_conv_bias": "a zero bias of a ResNet conv from the ImageNet file (the convs have "
    "no bias: AffineChannel follows)",
}
# The ImageNet leftovers come from Detectron's tools/pickle_caffe_blobs.py, which converted the
# MSRA Caffe ResNets: it adds a zero bias to every conv that has none (add_missing_biases),
# folds BatchNorm + Scale into ``…_bn_{s,b}`` and keeps the classifier ``fc1000``. Detectron
# keeps blobs a model does not use ("__preserve__/") and writes them back at every save.

_BACKUPS = ("cls_score_w", "cls_score_b", "bbox_pred_w", "bbox_pred_b")


def leftover_rule(name: str, weights: set[str]) -> str | None:
    """The :data:`LEFTOVER_RULES` rule that skips blob ``name``, or None (a weight or unknown).

    ``weights``: the names in the model's manifest.
    """
    if name in weights:
        return None
    if name.endswith("_momentum") and name[: -len("_momentum")] in weights:
        return "momentum"
    if name.endswith("_jcvbackup") and name[: -len("_jcvbackup")] in _BACKUPS:
        return "jcvbackup"
    if name in ("fc1000_w", "fc1000_b"):
        return "imagenet_classifier"
    if name.endswith("_b") and name[:-2] + "_w" in weights and _is_resnet_conv(name[:-2]):
        return "imagenet_conv_bias"
    return None


def _is_resnet_conv(base: str) -> bool:
    return base == "conv1" or (base.startswith("res") and "_branch" in base)


def nonzero(array: np.ndarray) -> bool:
    return bool(np.any(array != 0))
