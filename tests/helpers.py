"""Helpers every test package may import (fixtures stay in conftest.py)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "tiny_synth.yaml"


def tiny_train_overrides(data_root: Path, **extra: object) -> list[str]:
    """--set overrides that make the tiny synthetic config run in seconds on the CPU."""
    sets: dict[str, object] = {
        "data.root": str(data_root),
        "data.workers": 0,
        "model.tiny_widths": "[16, 32, 48, 64]",
        "model.fpn_channels": 32,
        "model.min_size": 96,
        "model.max_size": 96,
        "model.box_head_dim": 64,
        "model.mask_head_dim": 32,
        "model.transfer_hidden": 32,
        "model.rpn_batch_size_per_image": 64,
        "model.box_batch_size_per_image": 64,
        "solver.batch_size": 2,
        "solver.warmup_iters": 2,
        "solver.steps": "[]",
        "train.progress": "false",
        "train.tensorboard": "false",
        "train.log_period": 1,
    }
    sets.update(extra)
    return [f"{k}={v}" for k, v in sets.items()]
