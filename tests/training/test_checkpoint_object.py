"""The checkpoint as one typed object: ``Checkpoint.to_dict``/``from_dict`` round-trip, every
refusal names the entry (and the file), and files of the previous layout still read."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.config import ConfigError
from tests.helpers import TINY_CONFIG, tiny_train_overrides
from training.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
)

PREVIOUS = Path(__file__).resolve().parents[1] / "fixtures" / "previous_layout" / "checkpoint.pt"


def _small() -> Checkpoint:
    return Checkpoint(
        model={"w": torch.arange(3.0)},
        model_config={"num_classes": 2},
        vocab={"names": ["a", "b"], "mask_classes": [True, False]},
        step=7,
        train_config={"data": {"kind": "vg"}},
        rng=[{"torch": torch.zeros(2, dtype=torch.uint8)}],
        metrics={"step": 7},
    )


def test_round_trip_through_a_file(tmp_path):
    ckpt = _small()
    d = ckpt.to_dict()
    assert d["format"] == FORMAT and d["format_version"] == FORMAT_VERSION
    # None entries are left out, as the trainer and importer always wrote them.
    assert "optimizer" not in d and "scaler" not in d
    back = Checkpoint.load(ckpt.save(tmp_path / "c.pt"))
    assert back.step == 7 and back.data_kind == "vg" and back.optimizer is None
    assert torch.equal(back.model["w"], ckpt.model["w"])
    assert back.vocab == ckpt.vocab and back.metrics == {"step": 7}


@pytest.mark.parametrize("key", ["model", "model_config", "vocab"])
def test_a_missing_required_entry_is_named(key):
    d = _small().to_dict()
    del d[key]
    with pytest.raises(CheckpointError, match=f"has no '{key}' entry"):
        Checkpoint.from_dict(d, source="checkpoint 'x.pt'")


def test_an_unknown_entry_is_named_with_the_known_ones(tmp_path):
    d = {**_small().to_dict(), "epoch": 3}
    torch.save(d, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match=r"odd\.pt.*unknown entry 'epoch'.*holds .*vocab"):
        Checkpoint.load(tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="unknown entry 'epoch'"):
        load_checkpoint(tmp_path / "odd.pt")  # the dict reader checks alike


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("step", "7", "'step' should be an int, got str"),
        ("step", True, "'step' should be an int, got bool"),
        ("vocab", ["a", "b"], "'vocab' should be a dict"),
        ("rng", {"torch": 1}, "'rng' should be a list"),
        ("model", {"w": [1.0]}, "'model' holds non-tensors, e.g. 'w'"),
        ("train_config", "coco", "'train_config' should be a dict"),
    ],
)
def test_an_entry_of_the_wrong_type_is_named(key, value, expected):
    d = {**_small().to_dict(), key: value}
    with pytest.raises(CheckpointError, match=expected):
        Checkpoint.from_dict(d)


def test_format_and_version_are_checked():
    with pytest.raises(CheckpointError, match="not a maskx checkpoint"):
        Checkpoint.from_dict({"model": {}, "model_config": {}, "vocab": {}})
    d = {**_small().to_dict(), "format_version": FORMAT_VERSION + 1}
    with pytest.raises(CheckpointError, match=f"format_version {FORMAT_VERSION + 1} is newer"):
        Checkpoint.from_dict(d)


def test_the_previous_layout_reads_as_the_object_and_round_trips():
    ckpt = Checkpoint.load(PREVIOUS)
    assert ckpt.step == 4 and ckpt.format_version == 1 and ckpt.optimizer is not None
    assert ckpt.model_config["mlp"] is True and len(ckpt.rng) == 1
    raw = torch.load(PREVIOUS, map_location="cpu", weights_only=False)
    assert sorted(ckpt.to_dict()) == sorted(raw)  # every entry kept, none added


def test_resuming_from_a_checkpoint_without_training_state_is_refused(synth_root, tmp_path):
    from training.config import load_config
    from training.trainer import Trainer

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    # As 'maskx import-detectron' writes it: weights, configs and vocabulary only.
    full = Checkpoint.load(PREVIOUS)
    Checkpoint(full.model, full.model_config, full.vocab).save(out / "checkpoints" / "last.pt")
    cfg = load_config(
        TINY_CONFIG, tiny_train_overrides(synth_root, **{"data.val_annotations": "null"})
    )
    with pytest.raises(ConfigError, match=r"last\.pt holds no optimizer or RNG state"):
        Trainer(cfg, out, hooks=[])
