"""The full R-50/R-101 manifest (names and shapes, no arrays) against the authors' names."""

from __future__ import annotations

import numpy as np
import pytest

from training.detectron.importer import infer_architecture
from training.detectron.manifest import blob_manifest, leftover_rule
from training.detectron.writer import Spec, extra_blobs, model_params

# Floats of the released files' weights (every blob that maps to a maskx parameter or frozen-BN
# scale/shift; momentum, backups and ImageNet leftovers excluded).
RELEASED = {"resnet50": ((3, 4, 6, 3), 218_079_489), "resnet101": ((3, 4, 23, 3), 237_071_617)}


def _shape_only(shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Arrays of the right shapes that hold no memory (a broadcast zero)."""
    return {n: np.broadcast_to(np.float32(0), s) for n, s in shapes.items()}


@pytest.mark.parametrize("backbone", sorted(RELEASED))
def test_released_manifest_matches_the_authors_names_shapes_and_float_count(backbone):
    blocks, floats = RELEASED[backbone]
    spec = Spec(blocks=blocks, num_classes=3001)
    theirs = model_params(spec)
    arch = infer_architecture(_shape_only({**theirs, **extra_blobs(spec)}))
    assert arch.backbone == backbone and arch.standard_blocks
    assert (arch.num_classes, arch.transfer_input, arch.transfer_layers, arch.mlp) == (
        3001, "cls+box", 2, True
    )  # fmt: skip
    manifest = blob_manifest(arch)
    ours = {e.blob: e.shape for e in manifest}
    assert ours == theirs
    assert len({e.key for e in manifest}) == len(manifest)  # one parameter per blob
    assert sum(int(np.prod(s)) for s in ours.values()) == floats
    # Names read in the authors' ResNet.py, FPN.py and mask_rcnn_heads.py, spelled out.
    for name in (
        "fpn_inner_res5_2_sum_w",
        f"fpn_inner_res4_{blocks[2] - 1}_sum_lateral_w",
        f"fpn_res4_{blocks[2] - 1}_sum_b",
        "fpn_res2_2_sum_w",
        "conv_rpn_fpn2_w",
        "rpn_cls_logits_fpn2_b",
        "rpn_bbox_pred_fpn2_w",
        "res_conv1_bn_s",
        "res2_0_branch1_bn_b",
        "res5_2_branch2c_bn_s",
        "_[mask]_fcn4_w",
        "bbox2mask_mlp_l1_w",
        "mask_fcn_logits_w_flat_b",
        "mask_mlp_logits_raw_w",
    ):
        assert name in ours, name  # fmt: skip
    assert ours["mask_mlp_logits_raw_w"] == (784, 200704)
    assert ours["bbox2mask_mlp_l1_w"] == (256, 5120)
    # Every extra blob of the released file is skipped by a rule, none is a weight.
    weights = set(ours)
    assert all(leftover_rule(n, weights) for n in extra_blobs(spec))
    assert leftover_rule("res4_0_branch2b_w", weights) is None
    assert leftover_rule("fpn_inner_res5_2_sum_momentum_b", weights) is None


def test_key_mapping_of_a_few_blobs():
    arch = infer_architecture(_shape_only(model_params(Spec(blocks=(3, 4, 23, 3)))))
    keys = {e.blob: e.key for e in blob_manifest(arch)}
    assert keys["res4_22_branch2b_w"] == "backbone.body.layer3.22.conv2.weight"
    assert keys["res3_0_branch1_bn_s"] == "backbone.body.layer2.0.downsample.1.weight"
    assert keys["fpn_inner_res5_2_sum_w"] == "backbone.fpn.inner_blocks.3.0.weight"
    assert keys["fpn_inner_res2_2_sum_lateral_b"] == "backbone.fpn.inner_blocks.0.0.bias"
    assert keys["fpn_res3_3_sum_w"] == "backbone.fpn.layer_blocks.1.0.weight"
    assert keys["conv_rpn_fpn2_w"] == "rpn.head.conv.0.0.weight"
    assert keys["_[mask]_fcn1_w"] == "roi_heads.mask_head.0.0.weight"
    assert keys["bbox2mask_mlp_l1_w"] == "roi_heads.mask_predictor.weight_transfer.layers.0.weight"
    assert keys["mask_fcn_logits_w_flat_w"] == (
        "roi_heads.mask_predictor.weight_transfer.layers.2.weight"
    )
    assert keys["mask_mlp_logits_raw_b"] == "roi_heads.mask_predictor.mlp.fc.bias"


@pytest.mark.parametrize(("layers", "inputs"), [(1, "cls"), (3, "cls+box")])
def test_other_transfer_depths_and_inputs_are_read_from_the_blobs(layers, inputs):
    shapes = model_params(Spec(blocks=(1, 1, 1, 1), width=8, num_classes=4, box_dim=16,
                               mask_dim=8, fpn_dim=8, transfer_layers=layers, mlp=False))  # fmt: skip
    if inputs == "cls":
        first = "mask_fcn_logits_w_flat_w" if layers == 1 else "bbox2mask_mlp_l1_w"
        shapes[first] = (shapes[first][0], 16)
    arch = infer_architecture(_shape_only(shapes))
    assert (arch.transfer_layers, arch.transfer_input, arch.mlp) == (layers, inputs, False)
    assert {e.blob: e.shape for e in blob_manifest(arch)} == shapes
