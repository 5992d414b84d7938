"""Entry point of the DDP test: ``torchrun … ddp_worker.py CONFIG OUT section.field=value…``.

Trains with the Trainer, then every rank saves its own weights so the test can compare them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from training.config import load_config
from training.trainer import train


def main() -> None:
    config, out, *overrides = sys.argv[1:]
    result = train(load_config(config, overrides), Path(out))
    torch.save(result.model.state_dict(), Path(out) / f"rank{dist.get_rank()}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
