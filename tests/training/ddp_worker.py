"""Entry point of the DDP test: ``torchrun … ddp_worker.py CONFIG OUT section.field=value…``.

Trains with the Trainer, then every rank saves its own weights, the metrics it got and its own
losses of the last step so the tests can compare them.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from training.config import check_backbone_weights, load_config
from training.trainer import Trainer


def main() -> None:
    config, out, *overrides = sys.argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")  # as maskx train
    cfg = load_config(config, overrides)
    check_backbone_weights(cfg)  # as train() does
    trainer = Trainer(cfg, Path(out))
    result = trainer.train()
    rank = dist.get_rank()
    torch.save(result.model.state_dict(), Path(out) / f"rank{rank}.pt")
    (Path(out) / f"rank{rank}_metrics.json").write_text(json.dumps(result.metrics))
    (Path(out) / f"rank{rank}_losses.json").write_text(json.dumps(trainer.last_losses))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
