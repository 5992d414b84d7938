"""The heads start as in the authors' Detectron code: w_det is mostly what training wrote."""

from __future__ import annotations

import pytest
import torch

from model import ModelConfig, build_model
from model.predictors import ClassSpecificBoxPredictor, WeightTransfer, WeightTransferMaskPredictor


def _std(t: torch.Tensor) -> float:
    return float(t.detach().float().std())


def test_box_predictor_starts_with_the_papers_small_normals():
    torch.manual_seed(0)
    p = ClassSpecificBoxPredictor(1024, 301)
    # 301 x 1024 and 1204 x 1024 samples: the sample std is within 1 % of the target.
    assert _std(p.cls_score.weight) == pytest.approx(0.01, rel=0.02)
    assert _std(p.bbox_pred.weight) == pytest.approx(0.001, rel=0.02)
    assert float(p.cls_score.bias.detach().abs().max()) == 0.0
    assert float(p.bbox_pred.bias.detach().abs().max()) == 0.0
    # PyTorch's default (kept as head_init=torch) is uniform(±1/√D): std 1/√(3D) ≈ 0.018.
    legacy = ClassSpecificBoxPredictor(1024, 301, init="torch")
    assert _std(legacy.cls_score.weight) == pytest.approx((1 / (3 * 1024)) ** 0.5, rel=0.02)
    with pytest.raises(ValueError, match="init must be"):
        ClassSpecificBoxPredictor(8, 3, init="xavier")


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_weight_transfer_layers_are_msra_filled_from_their_own_size(layers):
    torch.manual_seed(0)
    tau = WeightTransfer(5120, 256, hidden=512, num_layers=layers)
    linears = [m for m in tau.layers if isinstance(m, torch.nn.Linear)]
    assert len(linears) == layers
    for lin in linears:
        # Caffe2 MSRAFill: N(0, 2 / fan_out), fan_out = out_features; biases zero.
        assert _std(lin.weight) == pytest.approx((2.0 / lin.out_features) ** 0.5, rel=0.03)
        assert float(lin.bias.detach().abs().max()) == 0.0
    if layers == 3:  # the middle layer: √(2/512) = 0.0625, not √(1/5120) = 0.014
        assert _std(linears[1].weight) == pytest.approx(0.0625, rel=0.03)


def test_built_model_uses_the_papers_init_and_the_class_agnostic_fcn_is_small():
    torch.manual_seed(0)
    cfg = ModelConfig(num_classes=50, backbone="tiny", box_head_dim=256, mask_head_dim=64,
                      mask_predictor="class_agnostic", mlp=True)  # fmt: skip
    m = build_model(cfg)
    bp = m.roi_heads.box_predictor
    assert _std(bp.cls_score.weight) == pytest.approx(0.01, rel=0.05)
    assert _std(bp.bbox_pred.weight) == pytest.approx(0.001, rel=0.05)
    mp = m.roi_heads.mask_predictor
    assert _std(mp.mask_fcn_logits.weight) == pytest.approx(0.001, rel=0.3)  # 64 samples
    assert _std(mp.mlp.fc.weight) == pytest.approx(0.001, rel=0.02)
    legacy = build_model(cfg.replace(head_init="torch")).roi_heads.box_predictor
    assert _std(legacy.cls_score.weight) > 2 * _std(bp.cls_score.weight)


def test_random_and_attribute_tau_read_fixed_class_vectors(tmp_path):
    import json

    torch.manual_seed(0)
    base = ModelConfig(num_classes=6, backbone="tiny", box_head_dim=32, mask_head_dim=16,
                       mask_predictor="transfer", transfer_hidden=8)  # fmt: skip
    m = build_model(base.replace(transfer_input="random", class_vectors_dim=12))
    p = m.roi_heads.mask_predictor
    assert tuple(p.class_vectors.shape) == (7, 12) and float(p.class_vectors[0].abs().max()) == 0
    # The kernels do not depend on the detector's weights.
    w1, _ = p.class_kernels(torch.tensor([1, 2]), m.roi_heads.box_predictor)
    with torch.no_grad():
        m.roi_heads.box_predictor.cls_score.weight.add_(1.0)
    w2, _ = p.class_kernels(torch.tensor([1, 2]), m.roi_heads.box_predictor)
    assert torch.equal(w1, w2)
    assert "roi_heads.mask_predictor.class_vectors" in m.state_dict()

    path = tmp_path / "attrs.json"
    path.write_text(json.dumps({"vectors": [[float(i), 1.0] for i in range(6)]}))
    m = build_model(base.replace(transfer_input="attribute", class_vectors=str(path)))
    cv = m.roi_heads.mask_predictor.class_vectors
    assert cv[3].tolist() == [2.0, 1.0]  # label 3 = category 3 = row 2 of the file
    path.write_text(json.dumps([[0.0, 1.0]] * 5))
    with pytest.raises(ValueError, match="must hold 6 vectors"):
        build_model(base.replace(transfer_input="attribute", class_vectors=str(path)))


def test_box_deltas_of_one_class_equal_the_full_regression_with_its_bias():
    """``box_deltas`` gathers each RoI's class rows of ``bbox_pred``: the same four numbers as
    the full [R, 4(K+1)] product, bias included (the paper's init sets it to zero, training does
    not keep it there)."""
    torch.manual_seed(0)
    predictor = ClassSpecificBoxPredictor(16, 5, init="torch")
    torch.nn.init.normal_(predictor.bbox_pred.bias)
    x = torch.randn(7, 16)
    labels = torch.tensor([0, 1, 4, 4, 2, 3, 1])
    full = predictor(x)[1].view(7, 5, 4)[torch.arange(7), labels]
    torch.testing.assert_close(predictor.box_deltas(x, labels), full)


def test_an_unknown_transfer_input_is_refused_naming_the_allowed_ones():
    with pytest.raises(ValueError, match=r"transfer_input='word'.*allowed values: \['cls', 'box'"):
        WeightTransferMaskPredictor(8, 8, 16, transfer_input="word")
