"""Resume that cannot surprise: a run folder continues only with its own config; otherwise
exit 2 naming the fields that differ, and ``--no-resume`` moves the old run aside."""

from __future__ import annotations

import json

from maskx.cli import main as maskx
from tests.helpers import TINY_CONFIG, tiny_train_overrides
from training.checkpoint import load_checkpoint
from training.config import config_differences, load_config
from training.trainer import train

SETTINGS = {"solver.max_iter": 2, "train.checkpoint_period": 1, "data.val_annotations": "null"}


def _argv(synth_root, out, **extra) -> list[str]:
    argv = ["train", "--config", str(TINY_CONFIG), "--out", str(out)]
    for s in tiny_train_overrides(synth_root, **{**SETTINGS, **extra}):
        argv += ["--set", s]
    return argv


def test_config_differences_name_the_fields():
    a = load_config(TINY_CONFIG).to_dict()
    b = load_config(TINY_CONFIG, ["solver.lr=0.5", "train.seed=3", "train.progress=false"])
    diffs = config_differences(a, b.to_dict())
    # train.progress changes only how the run reports: it may differ.
    assert [(k, x, y) for k, x, y in diffs] == [("solver.lr", 0.001, 0.5), ("train.seed", 0, 3)]
    # A config written before a field existed counts that field at its default.
    older = json.loads(json.dumps(a))
    del older["train"]["dist_timeout_minutes"]
    assert config_differences(older, a) == []


def test_rerun_with_another_config_is_refused_and_no_resume_moves_the_old_run(
    synth_root, tmp_path, capsys
):
    out = tmp_path / "run"
    cfg = load_config(TINY_CONFIG, tiny_train_overrides(synth_root, **SETTINGS))
    train(cfg, out, max_steps_this_run=1)  # a run stopped at step 1 of 2
    saved = (out / "config.yaml").read_bytes()

    assert maskx(_argv(synth_root, out, **{"solver.lr": 0.5, "train.seed": 3})) == 2
    err = capsys.readouterr().err
    assert "solver.lr, train.seed differ" in err and "0.5" in err
    assert "--no-resume" in err and "another --out" in err
    assert (out / "config.yaml").read_bytes() == saved  # never overwritten by another config
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 1

    # The same config continues the run (a reporting setting may change).
    assert maskx(_argv(synth_root, out, **{"train.log_period": 5})) == 0
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 2
    assert (out / "config.yaml").read_bytes() == saved

    # --no-resume with another config: a new run; the old one kept whole under previous/.
    assert maskx([*_argv(synth_root, out, **{"solver.lr": 0.5}), "--no-resume"]) == 0
    (previous,) = (out / "previous").iterdir()
    assert (previous / "config.yaml").read_bytes() == saved
    assert load_checkpoint(previous / "checkpoints" / "last.pt")["step"] == 2
    assert load_config(out / "config.yaml").solver.lr == 0.5
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2  # not appended to
    # log.txt: the old run's, with both of its starts, moved along; the new run's is its own.
    old_log = (previous / "log.txt").read_text()
    assert "steps 0 → 1" in old_log and "resuming" in old_log and "steps 1 → 2" in old_log
    new_log = (out / "log.txt").read_text()
    assert "steps 0 → 2" in new_log and "resuming" not in new_log
    assert (previous / "env.json").is_file() and (out / "env.json").is_file()
