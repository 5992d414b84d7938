"""The trainer's resume path in the cases the SIGKILL comparison does not reach: a run folder
with a checkpoint but no ``config.yaml``, the wording of the two refusals of another config, the
metrics a resumed run carries on, and the GradScaler state of an fp16 run saved and restored."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from model.config import ConfigError
from tests.helpers import TINY_CONFIG, tiny_train_overrides
from training.checkpoint import Checkpoint
from training.config import TrainConfig, load_config
from training.trainer import Trainer, train

SETTINGS = {"solver.max_iter": 2, "train.checkpoint_period": 1, "data.val_annotations": "null"}


def _cfg(synth_root: Path, **extra: object) -> TrainConfig:
    return load_config(TINY_CONFIG, tiny_train_overrides(synth_root, **{**SETTINGS, **extra}))


@pytest.fixture(scope="module")
def stopped_run(synth_root, tmp_path_factory) -> Path:
    """A run folder stopped (resumably) at step 1 of 2; tests work on copies of it."""
    out = tmp_path_factory.mktemp("resume_path") / "run"
    train(_cfg(synth_root), out, max_steps_this_run=1)
    assert (out / "config.yaml").is_file() and (out / "checkpoints" / "last.pt").is_file()
    return out


@pytest.fixture
def run(stopped_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    return out


def test_without_config_yaml_the_checkpoint_config_decides(run, synth_root):
    # A folder from before config.yaml was written: the checkpoint's train config is the run's.
    (run / "config.yaml").unlink()
    last = run / "checkpoints" / "last.pt"
    # Its own config resumes at the saved step (the tiny config differs from the defaults in
    # many fields, so an empty saved config would refuse it).
    assert Trainer(_cfg(synth_root), run, hooks=[]).iter == 1
    with pytest.raises(ConfigError) as err:
        Trainer(_cfg(synth_root, **{"solver.lr": 0.5}), run, hooks=[])
    msg = str(err.value)
    assert f"{run} holds a run with another config ({last})" in msg
    assert "solver.lr differ — solver.lr: 0.001 in the run, 0.5 now." in msg


def test_an_unreadable_saved_config_is_refused_naming_the_file_and_the_cause(run, synth_root):
    saved = run / "config.yaml"
    saved.write_text(saved.read_text() + "\nextra_section: {x: 1}\n")
    with pytest.raises(ConfigError) as err:
        Trainer(_cfg(synth_root), run, hooks=[])
    msg = str(err.value)
    assert msg.startswith(f"{saved}: cannot read the run's config to resume: ")
    assert "extra_section" in msg  # the cause, from the config reader


def test_more_than_eight_differences_show_eight_and_count_the_rest(run, synth_root):
    changed = {
        "solver.lr": 0.5,
        "solver.momentum": 0.8,
        "solver.weight_decay": 0.002,
        "solver.gamma": 0.5,
        "solver.warmup_iters": 7,
        "solver.warmup_factor": 0.5,
        "train.seed": 3,
        "train.hflip_prob": 0.25,
        "solver.clip_grad_norm": 5.0,
    }
    with pytest.raises(ConfigError) as err:
        Trainer(_cfg(synth_root, **changed), run, hooks=[])
    msg = str(err.value)
    names = ", ".join(sorted(changed))
    assert f"{names} differ — " in msg
    shown = msg.split(" differ — ", 1)[1]
    # The eight first (sorted) are spelled out; the ninth is only counted.
    assert shown.startswith(
        "solver.clip_grad_norm: 10.0 in the run, 5.0 now; solver.gamma: 0.1 in the run, 0.5 now; "
    )
    assert shown.count(" in the run, ") == 8
    assert "train.hflip_prob: 0.5 in the run, 0.25 now (and 1 more). To continue" in shown
    assert "train.seed" not in shown
    assert msg.endswith(
        ". To continue that run, give its config again; for a new run, choose another --out, "
        f"or pass --no-resume to start afresh in {run} (the old run is moved to "
        f"{run}/previous/)"
    )
    # Exactly eight: all shown, nothing counted.
    del changed["train.seed"]
    with pytest.raises(ConfigError) as err:
        Trainer(_cfg(synth_root, **changed), run, hooks=[])
    assert "train.hflip_prob: 0.5 in the run, 0.25 now. To continue" in str(err.value)


def test_a_resumed_run_carries_the_last_evaluation_on(run, synth_root):
    last = run / "checkpoints" / "last.pt"
    ckpt = Checkpoint.load(last)
    metrics = {"step": 1, "bbox": {"AP": 0.125}, "segm": {"AP": 0.0625}}
    ckpt.metrics = metrics
    ckpt.save(last)
    trainer = Trainer(_cfg(synth_root), run, hooks=[])
    assert trainer.iter == 1 and trainer.metrics == metrics
    # ... and writes them into its next checkpoint until a new evaluation replaces them.
    trainer.save()
    assert Checkpoint.load(last).metrics == metrics


def test_the_grad_scaler_state_of_an_fp16_run_is_saved_and_restored(synth_root, tmp_path):
    # fp16 AMP runs on CUDA, but the GradScaler and its state dict work on the CPU too: enough
    # to check that the trainer writes the state and a resumed run reads it back.
    cfg = _cfg(synth_root, **{"solver.amp": "fp16"})
    out = tmp_path / "run"
    trainer = Trainer(cfg, out, hooks=[])
    assert trainer.scaler.is_enabled()
    trainer.scaler.scale(torch.ones(()))  # the scale is made on first use
    trainer.scaler.update(new_scale=256.0)
    trainer.save()
    saved = Checkpoint.load(out / "checkpoints" / "last.pt").scaler
    assert saved is not None and saved["scale"] == 256.0

    resumed = Trainer(cfg, out, hooks=[])
    assert resumed.iter == 0 and resumed.scaler.get_scale() == 256.0
    # Against a fresh scaler's 2**16: the state came from the file, not the default.
    assert Trainer(cfg, tmp_path / "fresh", hooks=[]).scaler.get_scale() == 2.0**16
