"""The candidate cap of the detection post-process: eager PyTorch's linear-time selection keeps
exactly the elements the exported graph's full ranking keeps, ties included."""

from __future__ import annotations

import torch

from model.postprocess import rank_within_group, stable_argsort, top_per_group


def _by_ranking(scores: torch.Tensor, group: torch.Tensor, groups: int, n: int) -> torch.Tensor:
    # The graph's rule, written out: every element ranked by score, ties by index, within its group.
    order = stable_argsort(scores, descending=True)
    ranked = rank_within_group(group[order], groups) < n
    return torch.zeros_like(ranked).scatter(0, order, ranked)


def test_eager_selection_equals_the_ranking_with_many_ties():
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        size = int(torch.randint(0, 60, (1,), generator=g))
        groups = int(torch.randint(1, 4, (1,), generator=g))
        n = int(torch.randint(1, 20, (1,), generator=g))
        scores = torch.randint(0, 6, (size,), generator=g).float() / 5  # six values: ties
        group = torch.randint(0, groups, (size,), generator=g)
        assert torch.equal(top_per_group(scores, group, groups, n),
                           _by_ranking(scores, group, groups, n))  # fmt: skip


def test_ties_at_the_cut_keep_the_lowest_indices():
    scores = torch.tensor([0.5, 0.9, 0.5, 0.5, 0.1])
    keep = top_per_group(scores, torch.zeros(5, dtype=torch.int64), 1, 3)
    assert keep.tolist() == [True, True, True, False, False]
