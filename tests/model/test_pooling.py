"""The multi-level RoIAlign of both box conventions: the continuous one is torchvision's pooler,
and in eager mode it writes its output once, as torchvision's does."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.ops import MultiScaleRoIAlign

from model.pooling import MaskXRoIAlign


class _FullSizeWrites(TorchDispatchMode):
    """Counts ops that put a tensor of ``numel`` elements in new memory (not a view or an
    in-place write into one of their inputs)."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel = numel
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
        for t in out if isinstance(out, tuple | list) else (out,):
            if (
                isinstance(t, torch.Tensor)
                and t.numel() == self.numel
                and t.untyped_storage().data_ptr() not in inputs
            ):
                self.ops.append(str(func))
        return out


def _inputs():
    g = torch.Generator().manual_seed(0)
    h, w = 256, 320
    feats = {str(i): torch.randn(2, 8, h >> (i + 2), w >> (i + 2), generator=g) for i in range(4)}
    boxes = []
    for _ in range(2):  # sizes from 4 to ~260 px: every level gets RoIs
        xy = torch.rand(30, 2, generator=g) * 200
        wh = torch.rand(30, 2, generator=g) ** 2 * 250 + 4
        boxes.append(torch.cat([xy, xy + wh], dim=1))
    return feats, boxes, [(h, w), (h, w)]


def test_continuous_pooler_is_torchvisions_forward_and_backward():
    feats, boxes, sizes = _inputs()
    results = []
    for pooler in (
        MaskXRoIAlign(["0", "1", "2", "3"], 7, 2),
        MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2),
    ):
        leaves = {k: v.clone().requires_grad_() for k, v in feats.items()}
        out = pooler(leaves, boxes, sizes)
        upstream = torch.linspace(-1, 1, out.numel()).view_as(out)
        grads = torch.autograd.grad(out, list(leaves.values()), upstream)
        results.append((out, grads))
    (ours, our_grads), (theirs, their_grads) = results
    assert torch.equal(ours, theirs)
    for a, b in zip(our_grads, their_grads, strict=True):
        assert torch.equal(a, b)


def test_eager_pooler_writes_its_output_once():
    feats, boxes, sizes = _inputs()
    pooler = MaskXRoIAlign(["0", "1", "2", "3"], 7, 2)
    n = sum(len(b) for b in boxes)
    with torch.no_grad(), _FullSizeWrites(n * 8 * 7 * 7) as rec:
        pooler(feats, boxes, sizes)
    # One zero-filled output; a per-level out-of-place scatter would add one copy per level.
    assert len(rec.ops) == 1, rec.ops
