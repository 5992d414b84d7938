"""Shared test fixtures: a small synthetic dataset and a briefly trained tiny checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import TINY_CONFIG, tiny_train_overrides

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic dataset (12 classes, 16 train / 8 val images of 96 px)."""
    from training.synth import SynthConfig, generate_dataset

    root = tmp_path_factory.mktemp("synth")
    cfg = SynthConfig(
        num_classes=12, train_images=16, val_images=8, image_size=96, min_objects=2,
        max_objects=4, seed=0,
    )  # fmt: skip
    generate_dataset(root, cfg, progress=False)
    return root


@pytest.fixture(scope="session")
def trained_checkpoint(synth_root, tmp_path_factory) -> Path:
    """A tiny Mask^X model (transfer + MLP) trained for 40 steps on ``synth_root``."""
    from training.config import load_config
    from training.trainer import train

    out = tmp_path_factory.mktemp("run")
    cfg = load_config(
        TINY_CONFIG,
        tiny_train_overrides(
            synth_root, **{"solver.max_iter": 40, "solver.lr": 0.003,
                           "train.checkpoint_period": 0, "data.val_annotations": "null"}
        ),
    )  # fmt: skip
    train(cfg, out)
    return out / "checkpoints" / "model_final.pt"
