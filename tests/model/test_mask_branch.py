"""Stop-gradient, partial supervision and K-independence of the mask branch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from model import (
    ClassSpecificBoxPredictor,
    ClassSpecificMaskPredictor,
    MLPMaskBranch,
    WeightTransfer,
    WeightTransferMaskPredictor,
    build_model,
    partial_mask_loss,
    project_masks_on_boxes,
)

from .helpers import synthetic_batch, tiny_config


def _mask_loss_grads(stop_gradient: bool):
    torch.manual_seed(0)
    model = build_model(tiny_config(stop_gradient=stop_gradient)).train()
    images, targets = synthetic_batch()
    losses = model(images, targets)
    assert losses["loss_mask"] > 0
    losses["loss_mask"].backward()
    rh = model.roi_heads
    return (
        rh.box_predictor.cls_score.weight.grad,
        rh.box_predictor.bbox_pred.weight.grad,
        [p.grad for p in rh.mask_predictor.weight_transfer.parameters()],
    )


def test_stop_gradient_on_blocks_detection_weights():
    cls_grad, box_grad, tau_grads = _mask_loss_grads(stop_gradient=True)
    assert cls_grad is None or torch.count_nonzero(cls_grad) == 0
    assert box_grad is None or torch.count_nonzero(box_grad) == 0
    assert all(g is not None and torch.count_nonzero(g) > 0 for g in tau_grads)


def test_stop_gradient_off_trains_detection_weights():
    cls_grad, box_grad, tau_grads = _mask_loss_grads(stop_gradient=False)
    assert cls_grad is not None and torch.count_nonzero(cls_grad) > 0
    assert box_grad is not None and torch.count_nonzero(box_grad) > 0
    assert all(g is not None and torch.count_nonzero(g) > 0 for g in tau_grads)


@pytest.mark.parametrize("predictor", ["transfer", "class_agnostic", "class_specific"])
def test_box_only_batch_gives_zero_mask_loss(predictor):
    torch.manual_seed(0)
    model = build_model(tiny_config(mask_predictor=predictor, mlp=True, mlp_input_size=7)).train()
    images, targets = synthetic_batch()
    for t in targets:  # every instance box-only: masks present but flagged, or absent
        t["has_mask"] = torch.zeros_like(t["has_mask"])
    del targets[1]["masks"], targets[1]["has_mask"]
    losses = model(images, targets)
    assert losses["loss_mask"].item() == 0.0
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()  # the step still runs
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_ignored_masks_do_not_change_the_loss():
    images, targets = synthetic_batch()
    torch.manual_seed(0)
    model = build_model(tiny_config()).train()
    state = model.state_dict()

    def loss_with(tgts):
        model.load_state_dict(state)
        torch.manual_seed(123)  # same proposals sampling
        return model(images, tgts)["loss_mask"].item()

    base = loss_with(targets)
    changed = [dict(t) for t in targets]
    for t in changed:
        m = t["masks"].clone()
        m[~t["has_mask"]] = 1 - m[~t["has_mask"]]  # flip the masks of box-only instances
        t["masks"] = m
    assert base > 0
    assert loss_with(changed) == base
    # …while changing a supervised mask does change it (the test can fail).
    changed[0]["masks"] = changed[0]["masks"].clone()
    changed[0]["masks"][0] = 1 - changed[0]["masks"][0]
    assert loss_with(changed) != base


def test_partial_mask_loss_empty_is_exact_zero_and_connected():
    logits = torch.zeros(0, 28, 28, requires_grad=True)
    loss = partial_mask_loss(
        logits, [torch.zeros(0, 4)], [None], [torch.zeros(0, dtype=torch.long)]
    )
    assert loss.item() == 0.0 and loss.requires_grad


def test_partial_mask_loss_matches_bce_on_projected_targets():
    masks = torch.zeros(2, 32, 32, dtype=torch.uint8)
    masks[0, 8:24, 8:24] = 1
    boxes = torch.tensor([[8.0, 8.0, 24.0, 24.0], [0.0, 0.0, 16.0, 16.0]])
    idxs = torch.tensor([0, 1])
    target = project_masks_on_boxes(masks, boxes, idxs, 28)
    assert target[0].mean() > 0.9 and target[1].max() == 0
    logits = torch.randn(2, 28, 28)
    loss = partial_mask_loss(logits, [boxes], [masks], [idxs])
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(logits, target))
    good = partial_mask_loss((target - 0.5) * 40, [boxes], [masks], [idxs])
    bad = partial_mask_loss((0.5 - target) * 40, [boxes], [masks], [idxs])
    assert good * 50 < bad


def test_partial_mask_loss_of_a_single_roi_over_images_without_rois():
    """One supervised RoI in the batch, beside an image with none and an image without masks:
    the loss is its BCE (log 2 for zero logits on an all-ones target), not the empty loss."""
    masks = torch.ones(1, 32, 32, dtype=torch.uint8)
    logits = torch.zeros(1, 28, 28)
    no_rois, no_idxs = torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
    loss = partial_mask_loss(
        logits,
        [no_rois, torch.tensor([[4.0, 4.0, 20.0, 20.0]]), no_rois],
        [masks, masks, None],
        [no_idxs, torch.tensor([0]), no_idxs],
    )
    torch.testing.assert_close(loss, torch.log(torch.tensor(2.0)))


def test_partial_mask_loss_refuses_per_image_lists_of_different_lengths():
    boxes, masks, idxs = (
        torch.tensor([[0.0, 0.0, 8.0, 8.0]]),
        torch.ones(1, 16, 16),
        torch.tensor([0]),
    )
    with pytest.raises(ValueError):
        partial_mask_loss(torch.zeros(1, 28, 28), [boxes], [masks], [idxs, idxs])


class _MaxNumel(TorchDispatchMode):
    """Records the largest tensor any aten op produces; with ``new_storage_only``, only those
    written to new memory (views of an input are not counted)."""

    def __init__(self, new_storage_only: bool = False):
        super().__init__()
        self.new_storage_only = new_storage_only
        self.max_numel = 0
        self.shape = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = (
            {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
            if self.new_storage_only
            else set()
        )
        for t in out if isinstance(out, tuple | list) else (out,):
            if not isinstance(t, torch.Tensor) or t.untyped_storage().data_ptr() in inputs:
                continue
            if t.numel() > self.max_numel:
                self.max_numel, self.shape = t.numel(), tuple(t.shape)
        return out


@pytest.mark.parametrize("mlp", [False, True])
def test_mask_predictor_never_builds_n_by_k_masks(mlp):
    """K=3000, 100 detections: no activation comes near [N, K, M, M] (235 M floats)."""
    k, n, d, m = 3000, 100, 256, 28
    box = ClassSpecificBoxPredictor(1024, k + 1)
    predictor = WeightTransferMaskPredictor(
        d, d, 1024, mlp=MLPMaskBranch(d, 14, m) if mlp else None
    ).eval()
    feats = torch.randn(n, d, 14, 14)
    labels = torch.randint(1, k + 1, (n,))
    with torch.no_grad(), _MaxNumel() as rec:
        logits = predictor(feats, labels, box)
    assert logits.shape == (n, m, m)
    # The largest tensor is a weight of the model or the [N, D, 28, 28] deconv map — bounded by
    # parameters and N, never by K × M².
    largest_param = max(p.numel() for p in [*predictor.parameters(), *box.parameters()])
    assert rec.max_numel <= max(n * d * m * m, largest_param), rec.shape
    assert rec.max_numel < n * k * m * m / 5


def test_training_step_cost_bounded_at_k3000():
    torch.manual_seed(0)
    model = build_model(tiny_config(num_classes=3000, box_head_dim=128)).train()
    images, targets = synthetic_batch()
    with _MaxNumel() as rec:
        losses = model(images, targets)
        sum(losses.values()).backward()
    r = 64 * 2  # sampled RoIs
    # Full regression [R, 4(K+1)] would be 1.5 M and [P, K, 28, 28] hundreds of millions;
    # the largest allowed is the bbox_pred weight itself ([4(K+1), D]).
    bbox_w = 4 * 3001 * 128
    assert rec.max_numel <= bbox_w, rec.shape
    assert rec.max_numel < r * 3000 * 28 * 28 / 100


def test_transfer_mlp_structure():
    tau = WeightTransfer(5120, 256, hidden=256, num_layers=2, activation="leaky_relu")
    kinds = [type(m).__name__ for m in tau.layers]
    assert kinds == ["Linear", "LeakyReLU", "Linear"]
    assert tau.layers[1].negative_slope == 0.1
    assert [type(m).__name__ for m in WeightTransfer(10, 4, num_layers=1).layers] == ["Linear"]
    assert len(WeightTransfer(10, 4, num_layers=3, activation="relu").layers) == 5


def test_all_class_kernels_equal_per_label_kernels():
    torch.manual_seed(0)
    box = ClassSpecificBoxPredictor(64, 51)
    pred = WeightTransferMaskPredictor(32, 32, 64).eval()
    w_all = pred.all_class_kernels(box)
    assert w_all.shape == (50, 32)
    labels = torch.tensor([3, 50, 1, 3])
    w, b = pred.class_kernels(labels, box)
    assert b is None
    torch.testing.assert_close(w, w_all[labels - 1])


@pytest.mark.parametrize("n", [0, 1, 7])
def test_per_roi_kernels_equal_the_channel_sum_without_copies(n):
    """The eager per-RoI 1×1 kernel: logits[i] = Σ_d x[i, d] · w[i, d] (+ b[i]), gradients
    included, and no [N, D, M, M]-sized tensor besides the features themselves in the forward
    pass (the broadcast form, kept for export, copies x and N·M·M expanded kernels)."""
    d, m = 16, 28
    predictor = ClassSpecificMaskPredictor(d, d, 5)
    x = torch.randn(n, d, m, m, requires_grad=True)
    w = torch.randn(n, d, requires_grad=True)
    b = torch.randn(n)
    with torch.no_grad(), _MaxNumel(new_storage_only=True) as rec:
        predictor.logits_from_features(x, w, b)
    assert rec.max_numel < max(n * d * m * m, 1), rec.shape
    logits = predictor.logits_from_features(x, w, b)
    expected = (x * w[:, :, None, None]).sum(1) + b[:, None, None]
    torch.testing.assert_close(logits, expected)
    upstream = torch.randn(n, m, m)
    got = torch.autograd.grad(logits, (x, w), upstream)
    want = torch.autograd.grad(expected, (x, w), upstream)
    for g, e in zip(got, want, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)  # sums of 784 products
