"""Process group and device: the one place that turns ``train.device`` into a torch device,
and the few collectives the trainer and evaluation need (gather to rank 0, broadcast)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_MINUTES = 30.0
"""How long a collective waits for the slowest rank before the job is killed: detectron2's
30 minutes (PyTorch's default is 10 for NCCL), long enough for COCOeval on rank 0 of a large
validation set while the other ranks wait for its result."""


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a ``torchrun`` job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` → this rank's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for, but no CUDA device is visible")
        return torch.device("cuda", local_rank)
    return torch.device(name)


def init_distributed(
    device_name: str, timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES
) -> tuple[DistInfo, torch.device]:
    """Join the process group that ``torchrun`` describes in the environment, if any, and
    return this process's rank and device (NCCL on GPUs, gloo on the CPU).

    ``timeout_minutes``: the process group's timeout for every collective (see
    :data:`DEFAULT_TIMEOUT_MINUTES`); ignored when the group already exists.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), resolve_device(device_name)
    if timeout_minutes <= 0:
        raise ValueError(f"the process group timeout must be > 0 minutes, got {timeout_minutes}")
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_name, info.local_rank)
    if device.type == "cuda":
        # Before the group exists: NCCL's object collectives use the current device.
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        global _timeout
        _timeout = timedelta(minutes=timeout_minutes)
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo", timeout=_timeout
        )
    return info, device


_timeout: timedelta | None = None
_object_groups: dict[int, Any] = {}


def _object_group() -> Any:
    """The group for gathering Python objects: the default one under gloo; under NCCL a gloo
    group over the same ranks, so that detections are pickled into host memory rather than
    into GPU buffers of every rank's size on rank 0 (detectron2 does the same). Created on
    first use, which every rank reaches together (a collective)."""
    if dist.get_backend() == "gloo":
        return None
    key = id(dist.group.WORLD)
    if key not in _object_groups:
        kwargs = {"timeout": _timeout} if _timeout is not None else {}
        _object_groups[key] = dist.new_group(backend="gloo", **kwargs)
    return _object_groups[key]


def dist_info() -> DistInfo:
    """Rank and world size of the initialised process group (rank 0 of 1 without one)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` (picklable), in rank order, on rank 0; None on the other ranks.
    Without a process group: ``[obj]``."""
    info = dist_info()
    if not info.enabled:
        return [obj]
    out: list[Any] | None = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, out, dst=0, group=_object_group())
    return out


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (what the others pass is ignored)."""
    if not dist_info().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_object_group())
    return box[0]
