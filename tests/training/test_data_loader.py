"""Collate, aspect-ratio grouping and the distributed split of the data loader."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import ConcatDataset, Dataset, DistributedSampler, Subset

from training.datasets.coco import CocoDataset
from training.datasets.loader import (
    GroupedBatchSampler,
    build_data_loader,
    collate_fn,
    compute_aspect_ratios,
    create_aspect_ratio_groups,
    set_epoch,
)

COCO = Path(__file__).resolve().parents[1] / "fixtures" / "coco_tiny"


class Sizes(Dataset):
    """Items are their own index; sizes alternate landscape (even) and portrait (odd)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def get_height_and_width(self, i: int) -> tuple[int, int]:
        return (48, 64) if i % 2 == 0 else (64, 48)

    def __getitem__(self, i: int):
        return torch.zeros(3, *self.get_height_and_width(i)), {"index": torch.tensor(i)}


def _portrait(i: int) -> bool:
    return i % 2 == 1


def test_collate_keeps_lists() -> None:
    batch = [(torch.zeros(3, 2, 2), {"a": 1}), (torch.ones(3, 4, 5), {"a": 2})]
    images, targets = collate_fn(batch)
    assert [im.shape for im in images] == [(3, 2, 2), (3, 4, 5)]
    assert targets == [{"a": 1}, {"a": 2}]


def test_aspect_ratios_from_json_through_wrappers() -> None:
    ds = CocoDataset(COCO / "annotations.json", COCO)
    ratios = compute_aspect_ratios(ds)
    assert ratios == pytest.approx([64 / 48, 48 / 64, 64 / 48, 64 / 48, 32 / 64])
    assert compute_aspect_ratios(Subset(ds, [1, 4])) == pytest.approx([0.75, 0.5])
    assert len(compute_aspect_ratios(ConcatDataset([ds, Sizes(3)]))) == 8
    with pytest.raises(TypeError, match="get_height_and_width"):
        compute_aspect_ratios(torch.utils.data.TensorDataset(torch.zeros(2)))


def test_aspect_ratio_groups() -> None:
    assert create_aspect_ratio_groups([0.5, 1.0, 1.5, 0.99]) == [0, 1, 1, 0]
    groups = create_aspect_ratio_groups([0.3, 0.6, 0.9, 1.1, 1.9, 3.0], k=1)
    assert groups == [0, 1, 1, 2, 2, 3]  # bins at 0.5, 1, 2


@pytest.mark.parametrize(("n", "mixed_batches"), [(41, 0), (12, 1)])
def test_grouped_batches_are_single_group_and_counted(n: int, mixed_batches: int) -> None:
    # 41 items: 21 landscape + 20 portrait fill 10 single-group batches of 4. 12 items: 6 + 6
    # fill one batch each, and the third batch is made of the 2 + 2 leftovers.
    ds = Sizes(n)
    groups = create_aspect_ratio_groups(compute_aspect_ratios(ds))
    for epoch in range(4):
        sampler = DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=3)
        batch_sampler = GroupedBatchSampler(sampler, groups, 4)
        batch_sampler.set_epoch(epoch)
        batches = list(batch_sampler)
        assert len(batches) == len(batch_sampler) == n // 4
        assert all(len(b) == 4 for b in batches)
        mixed = [b for b in batches if len({_portrait(i) for i in b}) > 1]
        assert len(mixed) == mixed_batches
        flat = [i for b in batches for i in b]
        assert len(flat) == len(set(flat)) == 4 * (n // 4)


def test_fixture_batches_group_portrait_and_landscape() -> None:
    ds = CocoDataset(COCO / "annotations.json", COCO)
    loader = build_data_loader(ds, batch_size=2, seed=0)
    portrait = {2, 5}
    for epoch in range(5):
        set_epoch(loader, epoch)
        batches = list(loader.batch_sampler)
        assert len(batches) == 2
        for b in batches:
            ids = {ds.image_ids[i] for i in b}
            assert ids <= portrait or not ids & portrait, ids


def test_two_ranks_split_without_overlap_and_take_equal_steps() -> None:
    ds = Sizes(40)
    per_rank = []
    for rank in (0, 1):
        loader = build_data_loader(
            ds, batch_size=4, shuffle=True, distributed=True, seed=7, num_replicas=2, rank=rank
        )
        set_epoch(loader, 1)
        per_rank.append(list(loader.batch_sampler))
    assert len(per_rank[0]) == len(per_rank[1]) == 5
    seen = [{i for b in batches for i in b} for batches in per_rank]
    assert not seen[0] & seen[1]
    for batches in per_rank:
        assert all(len({_portrait(i) for i in b}) == 1 for b in batches[:-1])


def test_order_depends_on_seed_and_epoch_only() -> None:
    ds = Sizes(40)

    def order(seed: int, epoch: int) -> list[list[int]]:
        loader = build_data_loader(ds, batch_size=4, seed=seed)
        set_epoch(loader, epoch)
        return list(loader.batch_sampler)

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert order(1, 0) != order(2, 0)


def test_evaluation_loader_keeps_order_and_last_partial_batch() -> None:
    loader = build_data_loader(Sizes(5), batch_size=2, shuffle=False)
    assert list(loader.batch_sampler) == [[0, 1], [2, 3], [4]]


def test_batch_larger_than_dataset_is_refused() -> None:
    with pytest.raises(ValueError, match="fewer than batch_size=8"):
        build_data_loader(Sizes(5), batch_size=8)


def test_worker_processes_load_and_flips_repeat_per_epoch() -> None:
    ds = CocoDataset(COCO / "annotations.json", COCO, hflip_prob=0.5)
    loader = build_data_loader(ds, batch_size=2, workers=2, seed=5)
    loader.timeout = 60  # a worker that never answers fails the test instead of hanging it

    plain = CocoDataset(COCO / "annotations.json", COCO)  # never flipped
    upright: dict[int, torch.Tensor] = {}
    mirrored: dict[int, torch.Tensor] = {}
    for k in range(len(plain)):
        image, target = plain[k]
        w = image.shape[-1]
        boxes = target["boxes"]
        upright[int(target["image_id"])] = boxes
        mirrored[int(target["image_id"])] = torch.stack(
            [w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1
        )

    def epoch_boxes(epoch: int) -> list[tuple[int, list[list[float]]]]:
        set_epoch(loader, epoch)
        out = []
        for images, targets in loader:
            assert len(images) == len(targets) == 2
            out += [(int(t["image_id"]), t["boxes"].tolist()) for t in targets]
        return out

    def flipped(items: list[tuple[int, list[list[float]]]]) -> dict[int, bool]:
        """image id -> whether the loader gave it mirrored (each item is one or the other)."""
        out = {}
        for image_id, boxes in items:
            if not boxes:  # an image without boxes (id 4) shows no flip
                continue
            b = torch.tensor(boxes)
            is_upright = torch.allclose(b, upright[image_id])
            is_mirrored = torch.allclose(b, mirrored[image_id])
            assert is_upright != is_mirrored, (image_id, boxes)
            out[image_id] = is_mirrored
        return out

    # Three passes (each starts two worker processes): epochs 3 and 4, and 3 again.
    epochs = {epoch: epoch_boxes(epoch) for epoch in (3, 4)}
    assert epoch_boxes(3) == epochs[3]  # same epoch, same data and flips
    # Flips happen and are drawn anew each epoch: some image is flipped in one epoch and not in
    # the other (the seed is fixed, so the outcome is too).
    states = [flipped(items) for items in epochs.values()]
    draws = [v for s in states for v in s.values()]
    assert any(draws) and not all(draws), states
    assert any(s[i] != t[i] for s in states for t in states for i in s.keys() & t.keys()), states
