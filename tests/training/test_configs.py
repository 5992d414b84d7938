"""Every shipped config parses, validates and builds its model (tiny sizes for speed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import TrainConfig, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads(path):
    cfg = load_config(path)
    assert cfg.model.num_classes >= 1
    d = cfg.to_dict()
    assert set(d) == {"model", "data", "solver", "train"}
    assert TrainConfig.from_dict(d) == cfg  # round-trips through the checkpoint dict


def test_paper_settings_are_the_papers():
    cfg = load_config(Path(CONFIGS[0]).parent / "coco_r50_voc2nonvoc.yaml")
    assert (cfg.solver.lr, cfg.solver.max_iter, list(cfg.solver.steps)) == (
        0.02,
        90000,
        [60000, 80000],
    )
    assert (cfg.model.min_size, cfg.model.max_size, cfg.model.box_batch_size_per_image) == (
        800,
        1333,
        512,
    )
    assert cfg.model.transfer_input == "cls+box" and cfg.model.stop_gradient and cfg.model.mlp
