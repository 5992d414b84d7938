"""The Trainer: resume after SIGKILL, DDP, checkpoints, schedule and configuration."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model.config import ConfigError
from tests.helpers import tiny_train_overrides
from training.checkpoint import CheckpointError, load_checkpoint, load_model_from_checkpoint
from training.config import TrainConfig, load_config
from training.datasets.flip import flip_batch
from training.schedule import get_lr
from training.trainer import train

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny_synth.yaml"
REPO = Path(__file__).resolve().parents[2]


def _cfg(synth_root, **extra) -> TrainConfig:
    return load_config(CONFIG, tiny_train_overrides(synth_root, **extra))


def test_lr_schedule_is_warmup_then_steps():
    kw = dict(steps=(10, 20), gamma=0.1, warmup_iters=4, warmup_factor=0.001)
    assert get_lr(0, 1.0, **kw) == pytest.approx(0.001)
    assert get_lr(2, 1.0, **kw) == pytest.approx(0.5005)
    assert get_lr(4, 1.0, **kw) == 1.0
    assert get_lr(10, 1.0, **kw) == pytest.approx(0.1)
    assert get_lr(25, 1.0, **kw) == pytest.approx(0.01)


def test_flip_batch_mirrors_boxes_and_masks():
    img = torch.zeros(3, 4, 10)
    img[:, :, 1] = 1
    masks = torch.zeros(1, 4, 10, dtype=torch.uint8)
    masks[0, :, 1:3] = 1
    images, targets = [img], [{"boxes": torch.tensor([[1.0, 0.0, 3.0, 4.0]]), "masks": masks}]
    flip_batch(images, targets, torch.tensor([True]))
    assert images[0][0, 0, 8] == 1
    assert targets[0]["boxes"].tolist() == [[7.0, 0.0, 9.0, 4.0]]
    assert targets[0]["masks"][0, 0].nonzero().flatten().tolist() == [7, 8]


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="solver.optimizer='adam'"):
        load_config(CONFIG, ["solver.optimizer=adam"])
    with pytest.raises(ConfigError, match="solver.lrr"):
        load_config(CONFIG, ["solver.lrr=0.1"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_train_writes_checkpoints_and_reloads(synth_root, tmp_path):
    cfg = _cfg(synth_root, **{"solver.max_iter": 3, "train.checkpoint_period": 2,
                              "data.val_annotations": "null"})  # fmt: skip
    train(cfg, tmp_path / "run")
    ckpts = tmp_path / "run" / "checkpoints"
    assert (ckpts / "model_final.pt").is_file() and (ckpts / "last.pt").is_file()
    ck = load_checkpoint(ckpts / "last.pt")
    assert (
        ck["step"] == 3 and ck["vocab"]["names"] and ck["train_config"]["solver"]["max_iter"] == 3
    )
    model, vocab, _ = load_model_from_checkpoint(ckpts / "model_final.pt")
    assert len(vocab) == model.num_classes == 12
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and "loss_mask" in lines[0]
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000


def test_corrupt_checkpoint_is_named(tmp_path):
    p = tmp_path / "broken.pt"
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="broken.pt"):
        load_checkpoint(p)
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a maskx checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def _train_cmd(synth_root: Path, out: Path, max_iter: int) -> list[str]:
    sets = tiny_train_overrides(
        synth_root,
        **{"solver.max_iter": max_iter, "train.checkpoint_period": 1, "train.deterministic": "true",
           "data.val_annotations": "null", "train.hflip_prob": 0.5},
    )  # fmt: skip
    cmd = [sys.executable, "-m", "maskx.cli", "train", "--config", str(CONFIG), "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_sigkill_and_resume_matches_uninterrupted_run(synth_root, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    steps = 8
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(synth_root, straight, steps), check=True, env=env, cwd=REPO,
                   capture_output=True)  # fmt: skip

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(synth_root, killed, steps), env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    marker = killed / "checkpoints" / "step_0000003.pt"
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "the run never reached step 3"
    assert not (killed / "checkpoints" / "model_final.pt").exists(), "killed too late"
    killed_at = load_checkpoint(killed / "checkpoints" / "last.pt")["step"]
    assert 2 <= killed_at < steps  # last.pt may still hold the step before the marker

    subprocess.run(_train_cmd(synth_root, killed, steps), check=True, env=env, cwd=REPO,
                   capture_output=True)  # fmt: skip
    a = _weights(straight / "checkpoints" / "model_final.pt")
    b = _weights(killed / "checkpoints" / "model_final.pt")
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert worst <= 1e-6, worst
    # …and the weights moved after the kill, so equality is not trivial.
    mid = _weights(killed / "checkpoints" / "step_0000006.pt")
    assert max((a[k].double() - mid[k].double()).abs().max().item() for k in a) > 1e-4


@pytest.mark.slow  # ten training steps of two micro-batches: about 30 s of CPU
def test_accumulation_and_resume_across_an_epoch_boundary_with_workers(synth_root, tmp_path):
    """``solver.accumulate=2`` with two loader workers: 16 images in micro-batches of 2 make 4
    steps an epoch. A run stopped at step 3 and resumed (into epoch 1 at step 4) ends with the
    weights of a run that never stopped, and every step used two micro-batches."""
    from training.trainer import Trainer

    cfg = _cfg(synth_root, **{"solver.max_iter": 5, "solver.accumulate": 2, "data.workers": 2,
                              "train.hflip_prob": 0.5, "train.checkpoint_period": 0,
                              "data.val_annotations": "null"})  # fmt: skip
    straight = Trainer(cfg, tmp_path / "straight", hooks=[])
    assert straight.batches_per_epoch == 4
    seen: list[int] = []
    real_step_batches = straight._step_batches

    def counting():  # type: ignore[no-untyped-def]
        batches = real_step_batches()
        seen.append(straight.iter)
        return batches

    straight._step_batches = counting  # type: ignore[method-assign]
    micro: list[int] = []
    real_forward = straight._forward_backward

    def forward(images, targets, i, n):  # type: ignore[no-untyped-def]
        micro.append(n)
        return real_forward(images, targets, i, n)

    straight._forward_backward = forward  # type: ignore[method-assign]
    straight.train()
    assert seen == list(range(5)) and micro == [2] * 10

    first = Trainer(cfg, tmp_path / "resumed", hooks=[])
    first.train(max_steps_this_run=3)
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["step"] == 3
    second = Trainer(cfg, tmp_path / "resumed", hooks=[])
    assert second.iter == 3
    second.train()
    a = _weights(tmp_path / "straight" / "checkpoints" / "model_final.pt")
    b = _weights(tmp_path / "resumed" / "checkpoints" / "model_final.pt")
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert worst <= 1e-6, worst
    # the steps after the resume moved the weights: equality is not trivial
    stop = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "step_0000003.pt")["model"]
    assert max((a[k].double() - stop[k].double()).abs().max().item() for k in a) > 1e-4


def test_two_process_ddp_keeps_ranks_identical(synth_root, tmp_path):
    out = tmp_path / "ddp"
    worker = Path(__file__).with_name("ddp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29531", str(worker), str(CONFIG), str(out)]  # fmt: skip
    cmd += tiny_train_overrides(
        synth_root,
        **{"solver.max_iter": 3, "data.val_annotations": "null", "train.checkpoint_period": 1},
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    r0 = torch.load(out / "rank0.pt")
    r1 = torch.load(out / "rank1.pt")
    init = _weights(out / "checkpoints" / "step_0000001.pt")
    assert max((r0[k] - r1[k]).abs().max().item() for k in r0) == 0.0
    moved = max((r0[k].float() - init[k].float()).abs().max().item() for k in r0)
    assert moved > 0, "DDP run did not train"
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 3
