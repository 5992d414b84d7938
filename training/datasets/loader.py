"""Batching: collate, aspect-ratio-grouped batches, and the training/evaluation DataLoader.

Images of a batch are padded to a common size by the model transform, so batching images of
similar aspect ratio wastes less compute and memory (as torchvision's detection references and
Detectron do). Aspect ratios come from the annotation files, never from decoding images.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import (
    BatchSampler,
    ConcatDataset,
    DataLoader,
    Dataset,
    DistributedSampler,
    Sampler,
    Subset,
)

__all__ = [
    "GroupedBatchSampler",
    "InferenceSampler",
    "build_data_loader",
    "collate_fn",
    "compute_aspect_ratios",
    "create_aspect_ratio_groups",
    "set_epoch",
]


def collate_fn(
    batch: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]],
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """``[(image, target), ...]`` → ``([image, ...], [target, ...])``; sizes may differ."""
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets


def compute_aspect_ratios(dataset: Dataset) -> list[float]:
    """Width / height of every item, from ``get_height_and_width`` (no image decoding).

    Works through ``Subset`` and ``ConcatDataset`` wrappers.
    """
    if isinstance(dataset, Subset):
        ratios = compute_aspect_ratios(dataset.dataset)
        return [ratios[i] for i in dataset.indices]
    if isinstance(dataset, ConcatDataset) and not hasattr(dataset, "get_height_and_width"):
        return [r for part in dataset.datasets for r in compute_aspect_ratios(part)]
    if not hasattr(dataset, "get_height_and_width"):
        raise TypeError(
            f"{type(dataset).__name__} has no get_height_and_width(index); aspect-ratio "
            "grouping needs image sizes without decoding (pass aspect_ratio_grouping=False)"
        )
    ratios = []
    for i in range(len(dataset)):  # type: ignore[arg-type]
        h, w = dataset.get_height_and_width(i)
        ratios.append(float(w) / float(h))
    return ratios


def create_aspect_ratio_groups(aspect_ratios: Sequence[float], k: int = 0) -> list[int]:
    """Group id of each aspect ratio.

    ``k == 0`` gives two groups, portrait (w/h < 1 → 0) and landscape (→ 1), as Detectron does;
    ``k > 0`` gives ``2k + 2`` groups bounded by ratios ``2 ** linspace(-1, 1, 2k + 1)``
    (torchvision's references).
    """
    if k == 0:
        return [int(r >= 1.0) for r in aspect_ratios]
    bins = [2 ** (-1 + 2 * i / (2 * k)) for i in range(2 * k + 1)]
    return [bisect.bisect_right(bins, r) for r in aspect_ratios]


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches whose items all come from one group, drawn in the order of ``sampler``.

    Every epoch yields exactly ``len(sampler) // batch_size`` batches, so that the ranks of a
    distributed run (each with a ``DistributedSampler`` of equal length) take the same number
    of steps. Full single-group batches come first in sampler order; if the sampler runs out
    before that count, the remaining batches are made of the leftovers of all groups.

    Args:
        sampler: yields dataset indices (e.g. ``DistributedSampler``).
        group_ids: group of every dataset index.
        batch_size: items per batch.
    """

    def __init__(self, sampler: Sampler[int], group_ids: Sequence[int], batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(sampler) < batch_size:  # type: ignore[arg-type]
            raise ValueError(
                f"the sampler has {len(sampler)} items (per rank), fewer than batch_size="  # type: ignore[arg-type]
                f"{batch_size}: no full batch can be made"
            )
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        buffers: dict[int, list[int]] = defaultdict(list)
        yielded = 0
        expected = len(self)
        for idx in self.sampler:
            group = self.group_ids[idx]
            buffers[group].append(idx)
            if len(buffers[group]) == self.batch_size:
                yield buffers.pop(group)
                yielded += 1
                if yielded == expected:
                    return
        leftovers = [i for g in sorted(buffers) for i in buffers[g]]
        for start in range(0, (expected - yielded) * self.batch_size, self.batch_size):
            yield leftovers[start : start + self.batch_size]

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        """Pass the epoch to the sampler (reshuffles a ``DistributedSampler``)."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


class InferenceSampler(Sampler[int]):
    """This rank's contiguous shard of ``range(size)`` for evaluation (detectron2's rule).

    Unlike ``DistributedSampler``, no index is repeated to even out the shards (a repeated
    image would count its detections twice in COCOeval); shard sizes differ by at most one,
    and the shards concatenated in rank order are the dataset in its own order.
    """

    def __init__(self, size: int, num_replicas: int, rank: int) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        per, extra = divmod(size, num_replicas)
        self.start = rank * per + min(rank, extra)
        self.stop = self.start + per + (1 if rank < extra else 0)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


def build_data_loader(
    dataset: Dataset,
    batch_size: int,
    workers: int = 0,
    shuffle: bool = True,
    distributed: bool = False,
    seed: int = 0,
    aspect_ratio_grouping: bool = True,
    *,
    num_replicas: int | None = None,
    rank: int | None = None,
    group_k: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """The DataLoader of a training (``shuffle=True``) or evaluation run.

    Batches are ``(list of images [3, H, W], list of targets)`` (:func:`collate_fn`).

    The order is a function of ``seed`` and the epoch alone (a ``DistributedSampler`` is used
    even in a single process, for its seeded per-epoch permutation); call :func:`set_epoch`
    at the start of every epoch. A training loader yields ``len(sampler) // batch_size``
    batches per epoch, equal on every rank; an evaluation loader (``shuffle=False``) keeps the
    dataset order and the last partial batch, and a distributed one gives each rank a
    contiguous shard with no image repeated (:class:`InferenceSampler`).

    Args:
        dataset: a map-style dataset of ``(image, target)``.
        batch_size: images per batch (per process).
        workers: DataLoader worker processes (0: load in the main process).
        shuffle: shuffle (training) or keep the order (evaluation).
        distributed: split the data across the ranks of the initialised process group (or of
            ``num_replicas``/``rank`` when given).
        seed: seed of the shuffling and of the workers' random augmentation.
        aspect_ratio_grouping: batch images of similar aspect ratio (training only).
        num_replicas, rank: override the process group's world size and rank.
        group_k: aspect-ratio bins, see :func:`create_aspect_ratio_groups`.
        pin_memory: pin batches in page-locked memory (for CUDA training).
    """
    if distributed and not shuffle:
        if num_replicas is None or rank is None:
            import torch.distributed as dist

            num_replicas, rank = dist.get_world_size(), dist.get_rank()
        sampler: Sampler[int] = InferenceSampler(len(dataset), num_replicas, rank)  # type: ignore[arg-type]
    elif distributed:
        sampler = DistributedSampler(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
            drop_last=False,
        )  # fmt: skip
    else:
        sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=shuffle, seed=seed)
    if shuffle and aspect_ratio_grouping:
        groups = create_aspect_ratio_groups(compute_aspect_ratios(dataset), k=group_k)
        batch_sampler: Any = GroupedBatchSampler(sampler, groups, batch_size)
    else:
        batch_sampler = BatchSampler(sampler, batch_size, drop_last=shuffle)
    generator = torch.Generator()
    generator.manual_seed(seed)
    loader = DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        generator=generator,
        persistent_workers=False,
    )
    loader.maskx_seed = seed  # type: ignore[attr-defined]
    return loader


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Start epoch ``epoch``: reshuffle the sampler and reseed the workers' augmentation.

    The workers' torch seeds are drawn from the loader's generator when an epoch's iterator is
    created, so reseeding it from (seed, epoch) makes each epoch's flips reproducible for a
    given worker count, which lets a resumed run see the data of an uninterrupted one.
    """
    sampler = loader.batch_sampler
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    else:
        inner = getattr(sampler, "sampler", None)
        if hasattr(inner, "set_epoch"):
            inner.set_epoch(epoch)
    seed = getattr(loader, "maskx_seed", 0)
    if loader.generator is not None:
        # A large odd multiplier keeps (seed, epoch) pairs from colliding for small values.
        loader.generator.manual_seed((seed * 1_000_003 + epoch) % (2**63))
