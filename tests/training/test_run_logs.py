"""What a run writes for its user: ``log.txt`` (environment, a line with ETA every
``train.log_period`` steps), ``env.json`` (code, packages, world size, images per step) and
timestamps in ``metrics.jsonl``. The two-process versions are in test_distributed_eval.py."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
from datetime import UTC, datetime

import pytest
import torch

from tests.helpers import TINY_CONFIG, tiny_train_overrides
from training.environment import code_version, collect_environment, environment_summary
from training.events import RUN_LOGGERS, RunLogFile, StepTimes, format_eta, peak_memory

LINE = re.compile(
    r"step (\d+)/(\d+)  eta (\S+)  loss (\S+) \((.*)\)  lr (\S+)  time (\S+) s  "
    r"data (\S+) s  max_mem (\d+) MiB \((.+)\)$"
)


def step_lines(log_txt: str) -> list[re.Match[str]]:
    """The periodic lines of a log.txt, parsed."""
    return [m for line in log_txt.splitlines() if (m := LINE.search(line))]


def test_eta_is_the_median_step_time_times_the_steps_left():
    times = StepTimes(window=4)
    for s in (30.0, 1.0, 2.0, 1.0, 3.0):  # the slow first step falls out of the window
        times.add(s, 0.1 * s)
    assert times.eta_seconds(100) == pytest.approx(150.0)  # median(1, 2, 1, 3) = 1.5
    step, data = times.recent(2)
    assert step == pytest.approx(2.0) and data == pytest.approx(0.2)
    assert format_eta(93784.9) == "1 day, 2:03:04" and format_eta(0) == "0:00:00"
    assert StepTimes().eta_seconds(10) == 0.0


def test_peak_memory_says_which_memory():
    mib, kind = peak_memory(torch.device("cpu"))
    assert kind == "process max RSS" and 10 < mib < 1e6  # the RSS of this process, in MiB


def test_code_version_without_and_with_git(tmp_path):
    plain = code_version(tmp_path)  # not a git checkout: no commit, and no failure
    assert plain["maskx"] and plain["git_commit"] is None and plain["git_dirty"] is None
    if shutil.which("git") is None:
        pytest.skip("no git on this machine")
    repo = tmp_path / "src"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    (repo / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "a"], cwd=repo, check=True)
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True)
    clean = code_version(repo)
    assert clean["git_commit"] == sha.stdout.strip() and clean["git_dirty"] is False
    (repo / "a.py").write_text("x = 2\n")
    assert code_version(repo)["git_dirty"] is True


def test_images_per_step_is_per_gpu_times_world_times_accumulate():
    env = collect_environment(
        world_size=8, devices=["cuda:0 X"] * 8, images_per_gpu=2, accumulate=3, seed=5
    )
    assert env["images_per_step"] == 48 and env["packages"]["torch"] == torch.__version__
    assert "2 images per GPU × 8 × accumulate 3 = 48 images per step" in environment_summary(env)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_run_log_file_takes_info_and_leaves_the_programs_logging_as_it_was(tmp_path):
    logger = logging.getLogger("training.datasets.some_module")
    root, program = logging.getLogger(), _Collect()  # a program that shows warnings only
    saved_level, saved_levels = root.level, {n: logging.getLogger(n).level for n in RUN_LOGGERS}
    root.addHandler(program)
    root.setLevel(logging.WARNING)
    try:
        early = logging.LogRecord("maskx.train", logging.INFO, __file__, 1, "built", None, None)
        run_log = RunLogFile(tmp_path)
        run_log.open([early])
        logger.info("held out %d images", 3)
        logger.warning("a warning")
        run_log.close()
        logger.info("after the run")  # not written: the file is closed
        logger.warning("a second warning")
    finally:
        root.removeHandler(program)
        root.setLevel(saved_level)
    text = (tmp_path / "log.txt").read_text()
    assert text.index("built") < text.index("held out 3 images") < text.index("a warning")
    assert "after" not in text
    # The program saw what it saw before: its warnings, none of the run's INFO lines.
    assert program.messages == ["a warning", "a second warning"]
    assert {n: logging.getLogger(n).level for n in RUN_LOGGERS} == saved_levels
    assert logging.getLogger("training").propagate


def test_a_run_writes_log_txt_env_json_and_timestamps(synth_root, tmp_path):
    from training.config import load_config
    from training.trainer import train

    out = tmp_path / "run"
    sets = {"solver.max_iter": 3, "solver.accumulate": 2, "train.log_period": 2,
            "train.checkpoint_period": 0, "data.val_annotations": "null"}  # fmt: skip
    train(load_config(TINY_CONFIG, tiny_train_overrides(synth_root, **sets)), out)

    env = json.loads((out / "env.json").read_text())
    assert env["world_size"] == 1 and len(env["devices"]) == 1
    assert env["devices"][0].startswith("cpu")
    assert env["images_per_gpu"] == 2 and env["accumulate"] == 2 and env["images_per_step"] == 4
    assert env["seed"] == 0 and env["packages"]["torch"] == torch.__version__
    assert env["code"]["maskx"]

    text = (out / "log.txt").read_text()
    # What was logged while the run was built (before its folder existed) comes first.
    assert text.index("instances_train.json: 16 images") < text.index("images per step")
    assert "= 4 images per step; seed 0" in text
    lines = step_lines(text)
    # Steps 1 (the first), 2 (the period) and 3 (the last): total 3, an ETA that runs down.
    assert [(int(m[1]), int(m[2])) for m in lines] == [(1, 3), (2, 3), (3, 3)]
    assert lines[-1][3] == "0:00:00" and float(lines[0][7]) > 0
    assert lines[0][10] == "process max RSS"

    records = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for r, m in zip(records, lines, strict=True):
        stamp = datetime.fromisoformat(r["time"].replace("Z", "+00:00"))
        assert stamp.tzinfo == UTC and abs(stamp.timestamp() - r["unix"]) < 0.01
        # One process: the logged losses are this process's, as written to metrics.jsonl.
        assert float(m[4]) == pytest.approx(r["loss"], rel=1e-3)
        assert r["data_time"] <= r["step_time"] and r["max_mem_kind"] == "process max RSS"
    assert records[0]["unix"] <= records[-1]["unix"]


def test_a_log_period_below_one_is_refused_naming_the_field(synth_root, tmp_path, capsys):
    from maskx.cli import main as maskx

    argv = ["train", "--config", str(TINY_CONFIG), "--out", str(tmp_path / "run")]
    for s in tiny_train_overrides(synth_root, **{"train.log_period": 0}):
        argv += ["--set", s]
    assert maskx(argv) == 2
    assert "train.log_period" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
