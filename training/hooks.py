"""Side effects around the training loop (detectron2's hooks): periodic checkpoints, periodic
evaluation, and what the user reads — ``log.txt``, ``env.json``, ``metrics.jsonl``,
TensorBoard, a progress bar and ``curves.png``. The :class:`~training.trainer.Trainer` owns the
loop and calls them; each hook owns its files."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import torch.distributed as dist
from tqdm import tqdm

from model.config import ConfigError
from training.environment import (
    collect_environment,
    device_name,
    environment_summary,
    write_environment,
)
from training.events import (
    MetricsWriter,
    RunLogFile,
    StepTimes,
    format_eta,
    peak_memory,
    reduce_max,
    reduce_mean,
    timestamp,
)

if TYPE_CHECKING:
    from training.config import TrainConfig
    from training.trainer import Trainer

log = logging.getLogger("maskx.train")


class HookBase:
    """Side effects around the loop. The trainer calls, on every rank and in this order:
    ``before_train``; per step ``after_step``; ``after_eval(metrics)`` whenever it evaluated;
    ``after_train`` last, also when the loop raised."""

    trainer: Trainer

    def before_train(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def after_eval(self, metrics: dict[str, Any]) -> None:
        pass

    def after_train(self) -> None:
        pass


class PeriodicCheckpointer(HookBase):
    """Write a checkpoint every ``period`` steps (0: only the final one)."""

    def __init__(self, period: int) -> None:
        self.period = period

    def after_step(self) -> None:
        if self.period and self.trainer.iter % self.period == 0:
            self.trainer.save()


class PeriodicEvaluator(HookBase):
    """Evaluate every ``period`` steps before the last (the trainer evaluates at the end)."""

    def __init__(self, period: int) -> None:
        self.period = period

    def after_step(self) -> None:
        t = self.trainer
        if self.period and t.iter % self.period == 0 and t.iter < t.cfg.solver.max_iter:
            t.evaluate()


class TrainingLogger(HookBase):
    """What a user reads during a run.

    At the start (rank 0): ``log.txt`` opened (appending; the records logged while the run was
    built come first), ``env.json`` written and summarised in the log. Every ``log_period``
    steps (and at the first and the last of this run) one line in ``log.txt``::

        step 40/90000  eta 1 day, 2:03:04  loss 1.234 (loss_classifier 0.2, …)  lr 2.00e-02
        time 0.512 s  data 0.011 s  max_mem 5012 MiB (cuda allocated)

    and one record in ``metrics.jsonl`` (with ``time``: ISO 8601 UTC, ``unix``) and TensorBoard.
    Losses are averaged over the ranks; the times, ETA and memory are the largest over the
    ranks (the slowest sets the pace); times are medians of the last ``log_period`` steps and
    the ETA is the median step time of the last 1000 steps times the steps left (evaluation
    and checkpoints not counted). Every rank must run this hook: the reductions are
    collectives.
    """

    def __init__(self, *, log_period: int, tensorboard: bool, progress: bool) -> None:
        if log_period < 1:
            raise ConfigError(f"train.log_period must be >= 1 (steps), got {log_period}")
        self.log_period = log_period
        self.tensorboard = tensorboard
        self.progress = progress
        self.writer: MetricsWriter | None = None
        self.log_file: RunLogFile | None = None
        self.bar: tqdm | None = None
        self.times = StepTimes()
        self._redirect = contextlib.ExitStack()

    def before_train(self) -> None:
        t = self.trainer
        devices = [device_name(t.device)]
        if t.dist.enabled:
            gathered: list[Any] = [None] * t.dist.world_size
            dist.all_gather_object(gathered, devices[0])
            devices = [str(d) for d in gathered]
        self.times = StepTimes()
        self._t_last, self._images_since = None, 0
        if not t.dist.is_main:
            return
        self.log_file = RunLogFile(t.out)
        self.log_file.open(t.startup_records)
        env = collect_environment(
            world_size=t.dist.world_size, devices=devices,
            images_per_gpu=t.cfg.solver.batch_size, accumulate=t.cfg.solver.accumulate,
            seed=t.cfg.train.seed, extra={"started": timestamp(), "start_step": t.iter},
        )  # fmt: skip
        write_environment(env, t.out)
        for line in environment_summary(env).splitlines():
            log.info("%s", line)
        log.info("training %s: steps %d → %d", t.out, t.iter, t.stop_at)
        self.writer = MetricsWriter(t.out, self.tensorboard)
        self.bar = tqdm(
            total=t.cfg.solver.max_iter, initial=t.iter, desc="train", unit="step",
            disable=not self.progress, dynamic_ncols=True,
        )  # fmt: skip
        if self.progress:
            # The program's console handlers write through tqdm while the bar is shown, so
            # that a log line never lands in the middle of the bar.
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._redirect.enter_context(logging_redirect_tqdm())

    def after_step(self) -> None:
        t = self.trainer
        self.times.add(t.step_time, t.data_time)
        if self._t_last is None:
            self._t_last = time.perf_counter() - t.step_time
        self._images_since += t.cfg.solver.batch_size * t.cfg.solver.accumulate * t.dist.world_size
        if self.bar is not None:
            self.bar.update(1)
        if not (t.iter % self.log_period == 0 or t.iter == 1 or t.iter == t.stop_at):
            return
        losses = reduce_mean(t.last_losses, t.device)
        step_s, data_s = self.times.recent(self.log_period)
        eta_s = self.times.eta_seconds(t.cfg.solver.max_iter - t.iter)
        mem_mib, mem_kind = peak_memory(t.device)
        step_s, data_s, eta_s, mem_mib = reduce_max([step_s, data_s, eta_s, mem_mib], t.device)
        now = time.perf_counter()
        ips = self._images_since / max(now - self._t_last, 1e-9)
        self._t_last, self._images_since = now, 0
        if self.writer is None:
            return
        total = sum(losses[k] for k in t.loss_keys)
        parts = "  ".join(f"{k} {v:.4g}" for k, v in sorted(losses.items()))
        log.info(
            "step %d/%d  eta %s  loss %.4g (%s)  lr %.3e  time %.4f s  data %.4f s  "
            "max_mem %.0f MiB (%s)",
            t.iter, t.cfg.solver.max_iter, format_eta(eta_s), total, parts, t.lr, step_s,
            data_s, mem_mib, mem_kind,
        )  # fmt: skip
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{total:.3f}", lr=f"{t.lr:.2e}", img_s=f"{ips:.1f}")
        self.writer.write(
            {"step": t.iter, **timestamp(), "lr": t.lr, "loss": total, **losses,
             "images_per_s": ips, "step_time": step_s, "data_time": data_s, "eta_s": eta_s,
             "max_mem_mib": mem_mib, "max_mem_kind": mem_kind}
        )  # fmt: skip

    def after_eval(self, metrics: dict[str, Any]) -> None:
        if self.writer is not None and metrics:
            self.writer.write(
                {
                    "step": self.trainer.iter,
                    **timestamp(),
                    "eval": {k: v for k, v in metrics.items() if k != "step"},
                }
            )

    def after_train(self) -> None:
        self._redirect.close()
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                from training.curves import plot_curves

                plot_curves(self.writer.path, self.trainer.out / "curves.png")
        if self.log_file is not None:
            self.log_file.close()


def default_hooks(cfg: TrainConfig) -> list[HookBase]:
    """Logging, periodic checkpoints and periodic evaluation as ``cfg.train`` says."""
    return [
        TrainingLogger(
            log_period=cfg.train.log_period,
            tensorboard=cfg.train.tensorboard,
            progress=cfg.train.progress,
        ),
        PeriodicCheckpointer(cfg.train.checkpoint_period),
        PeriodicEvaluator(cfg.train.eval_period),
    ]
