"""The training loop: a :class:`Trainer` whose ``step`` stays readable, with hooks for
checkpointing, evaluation and logging around it (detectron2's ``TrainerBase`` pattern).

``train(cfg, out_dir)`` runs single-process or under ``torchrun`` (DDP: NCCL on GPUs, gloo on
CPU). Rank 0 writes checkpoints, logs and metrics (the hooks of :mod:`training.hooks`; the
checkpoint is a :class:`~training.checkpoint.Checkpoint`). A run folder holds::

    config.yaml            the resolved config
    checkpoints/last.pt    the latest checkpoint (plus step_XXXXXXX.pt, the last few kept)
    checkpoints/model_final.pt
    log.txt                the run's log: the environment, a line every train.log_period steps
                           (step/total, ETA, losses averaged over ranks, lr, times, memory)
    env.json               code version, packages, world size, devices, images per step
    metrics.jsonl          one JSON line per logged step / evaluation, with timestamps
    metrics.json           the last evaluation (pycocotools AP on A, B and all classes)
    curves.png             training curves
    tb/                    TensorBoard scalars

A run resumes from ``checkpoints/last.pt`` when it exists (unless ``resume=False``), and only
when the folder's ``config.yaml`` equals the run's config (else ConfigError naming the fields);
``resume=False`` moves a previous run to ``previous/<time>/``. With deterministic settings a
resumed run ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.utils.data import DataLoader, Sampler

from model import MaskXRCNN, build_model
from model.config import ConfigError
from training.checkpoint import (
    Checkpoint,
    init_from_checkpoint,
    rng_state,
    set_rng_state,
)
from training.config import (
    FROM_SCRATCH,
    TrainConfig,
    check_backbone_weights,
    config_differences,
)
from training.datasets import build_data_loader, set_epoch
from training.datasets.build import build_datasets
from training.datasets.flip import flip_batch, flip_map_for
from training.distributed import init_distributed
from training.environment import ENV_FILE
from training.events import LOG_FILE, LogCapture
from training.hooks import HookBase, default_hooks
from training.schedule import get_lr

log = logging.getLogger("maskx.train")


# --------------------------------------------------------------------------------- helpers
class _SkipBatches(Sampler[list[int]]):
    """A batch sampler that skips the first ``skip`` batches (resuming mid-epoch)."""

    def __init__(self, batch_sampler: Sampler[list[int]], skip: int) -> None:
        self.batch_sampler = batch_sampler
        self.skip = skip

    def __iter__(self) -> Iterator[list[int]]:
        it = iter(self.batch_sampler)
        for _ in range(self.skip):
            next(it, None)
        yield from it

    def __len__(self) -> int:
        return max(len(self.batch_sampler) - self.skip, 0)  # type: ignore[arg-type]


def _epoch_batches(loader: DataLoader, epoch: int, skip: int) -> Iterator[Any]:
    set_epoch(loader, epoch)
    if skip == 0:
        yield from loader
        return
    resumed = DataLoader(
        loader.dataset,
        batch_sampler=_SkipBatches(loader.batch_sampler, skip),
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        generator=loader.generator,
    )
    yield from resumed


def set_trainable(model: MaskXRCNN, scheme: str) -> list[str]:
    """Freeze parameters according to the training scheme; return the loss keys to optimise.

    ``end_to_end``: everything (mask loss with stop-gradient, as configured). ``stage1``:
    Faster R-CNN on all boxes — the mask branch is frozen and its loss left out. ``stage2``:
    backbone, RPN and box branch frozen; only the mask head and predictor train, on the mask loss.
    """
    rh = model.roi_heads
    mask_params = {id(p) for p in [*rh.mask_head.parameters(), *rh.mask_predictor.parameters()]}
    if scheme == "stage1":
        for p in model.parameters():
            if id(p) in mask_params:
                p.requires_grad_(False)
        return ["loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"]
    if scheme == "stage2":
        for p in model.parameters():
            if id(p) not in mask_params:
                p.requires_grad_(False)
        return ["loss_mask"]
    return ["loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"]


def _frozen_modules_to_eval(model: MaskXRCNN, scheme: str) -> None:
    # BatchNorm statistics of frozen parts must not drift in stage 2.
    if scheme == "stage2":
        model.backbone.eval()
        model.rpn.eval()
        model.roi_heads.box_head.eval()


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.solver.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.solver.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.solver.lr)
    return torch.optim.SGD(groups, lr=cfg.solver.lr, momentum=cfg.solver.momentum)


def use_sync_batchnorm(
    model: nn.Module, norm: str | None, world_size: int, device: torch.device
) -> nn.Module:
    """``norm="sync_bn"`` on several processes: the model with every BatchNorm layer turned into
    ``SyncBatchNorm`` (same parameter and buffer tensors, so an optimizer built before still
    holds them); otherwise ``model`` unchanged. A checkpoint's state dict is the same either way.

    Raises ConfigError on the CPU: torch's SyncBatchNorm synchronises CUDA tensors only.
    """
    if norm != "sync_bn" or world_size <= 1:
        return model
    if device.type == "cpu":
        raise ConfigError(
            "model.norm=sync_bn needs GPU processes (torch's SyncBatchNorm does not run on the "
            "CPU); use --set model.norm=bn for a multi-process CPU run"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


# ---------------------------------------------------------------------------------- trainer
@dataclass
class TrainResult:
    model: MaskXRCNN
    metrics: dict[str, Any]
    step: int


def resolve_model_config(cfg: TrainConfig, num_classes: int) -> TrainConfig:
    """A copy of ``cfg`` whose model config is filled from the data (K) and has its defaults
    resolved, so that the checkpoint rebuilds the exact same modules without the backbone
    weights file (``backbone_weights: none``, from scratch on purpose, becomes None). ``cfg``
    itself is left as it was."""
    weights = cfg.model.backbone_weights
    if weights == FROM_SCRATCH:
        weights = None
    pretrained = weights is not None
    model_cfg = cfg.model.replace(
        num_classes=num_classes,
        backbone_weights=weights,
        norm=cfg.model.norm or ("frozen_bn" if pretrained else "bn"),
        trainable_backbone_layers=(
            cfg.model.trainable_backbone_layers
            if cfg.model.trainable_backbone_layers is not None
            else (3 if pretrained else 5)
        ),
    )
    return dataclasses.replace(cfg, model=model_cfg)


class Trainer:
    """Owns a run: model, optimizer, data, step counter, and the hooks around ``step``.

    ``Trainer(cfg, out_dir)`` builds everything and resumes from ``out_dir/checkpoints/last.pt``
    (unless ``resume=False``; only with the folder's own config); ``step()`` is one optimisation step; ``save()`` writes a
    checkpoint; ``evaluate()`` runs pycocotools AP on the validation set; ``train()`` loops
    ``step`` until ``solver.max_iter`` and finishes with an evaluation and ``model_final.pt``.
    ``hooks=None`` installs :func:`default_hooks`; pass ``[]`` for a bare loop (benchmarks).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        out_dir: str | os.PathLike,
        *,
        resume: bool = True,
        hooks: Sequence[HookBase] | None = None,
    ) -> None:
        # What is logged while the run is built (data, held-out images, backbone, resume)
        # goes to log.txt too, once the folder exists (TrainingLogger writes it first).
        with LogCapture() as capture:
            self._build(cfg, out_dir, resume=resume, hooks=hooks)
        self.startup_records: list[logging.LogRecord] = capture.records

    def _build(
        self,
        cfg: TrainConfig,
        out_dir: str | os.PathLike,
        *,
        resume: bool,
        hooks: Sequence[HookBase] | None,
    ) -> None:
        self.out = Path(out_dir)
        self.dist, self.device = init_distributed(cfg.train.device, cfg.train.dist_timeout_minutes)
        torch.manual_seed(cfg.train.seed + self.dist.rank)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False

        self.train_set, self.val_set, self.vocab = build_datasets(cfg)
        self.cfg = cfg = resolve_model_config(cfg, len(self.vocab))
        self.flip_map = flip_map_for(cfg.data.path(cfg.data.flip_map), self.vocab, log)
        self.model = build_model(cfg.model)
        self._log_backbone_choice()
        if cfg.train.min_size_train:
            # torchvision picks a random short side from the tuple in training; eval uses the last.
            self.model.transform.min_size = (*cfg.train.min_size_train, cfg.model.min_size)
        if cfg.train.init_checkpoint:
            init_from_checkpoint(self.model, cfg.train.init_checkpoint, cfg.train.init_parts, log)
        self.loss_keys = set_trainable(self.model, cfg.train.scheme)
        self.model.to(self.device)
        self.optimizer = build_optimizer(self.model, cfg)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.solver.amp == "fp16")
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.solver.amp)

        self.iter = 0
        self.lr = cfg.solver.lr
        self.last_losses: dict[str, float] = {}
        self.step_time = self.data_time = 0.0  # seconds, of the last step
        self.metrics: dict[str, Any] = {}
        last = self.out / "checkpoints" / "last.pt"
        if resume:
            ckpt = Checkpoint.load(last) if last.is_file() else None
            if ckpt is not None and (ckpt.optimizer is None or not ckpt.rng):
                raise ConfigError(
                    f"{last} holds no optimizer or RNG state (not written by a training run): "
                    "cannot resume from it; start from it with train.init_checkpoint instead"
                )
            self._check_same_run(ckpt, last)
            if ckpt is not None:
                self._resume_from(ckpt)

        self.ddp_model: nn.Module = self.model
        if self.dist.enabled:
            # After the weights are loaded: the conversion keeps them and the buffers.
            self.model = self.ddp_model = use_sync_batchnorm(
                self.model, cfg.model.norm, self.dist.world_size, self.device
            )
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        # Each rank's sampler holds ceil(N / world) images; a step takes batch × accumulate.
        per_rank = -(-len(self.train_set) // self.dist.world_size)
        if per_rank < cfg.solver.batch_size * cfg.solver.accumulate:
            raise ConfigError(
                f"the training set ({len(self.train_set)} images) is smaller than one step's "
                f"batch ({cfg.solver.batch_size} × {cfg.solver.accumulate} × "
                f"{self.dist.world_size})"
            )
        self.loader = build_data_loader(
            self.train_set,
            cfg.solver.batch_size,
            workers=cfg.data.workers,
            shuffle=True,
            distributed=self.dist.enabled,
            seed=cfg.train.seed,
            aspect_ratio_grouping=cfg.data.aspect_ratio_grouping,
        )
        self.batches_per_epoch = len(self.loader) // cfg.solver.accumulate
        self._epoch: int | None = None
        self._batches: Iterator[Any] = iter(())
        self.stop_at = cfg.solver.max_iter
        self.model.train()
        _frozen_modules_to_eval(self.model, cfg.train.scheme)
        self.hooks: list[HookBase] = list(default_hooks(cfg) if hooks is None else hooks)
        for hook in self.hooks:
            hook.trainer = self
        if self.dist.is_main:
            # Only now: a run that cannot start (data, config) leaves no half-made folder.
            self.out.mkdir(parents=True, exist_ok=True)
            if not resume:
                _move_previous_run(self.out)

    # ------------------------------------------------------------------ the three verbs
    def step(self) -> dict[str, float]:
        """One optimisation step over ``solver.accumulate`` micro-batches at the scheduled LR;
        advances ``self.iter`` and returns the mean losses (Python floats); ``step_time`` and
        ``data_time`` (seconds, this rank) are the step's wall time and the part of it spent
        waiting for batches."""
        t0 = time.perf_counter()
        cfg = self.cfg
        self.lr = get_lr(
            self.iter, cfg.solver.lr, steps=cfg.solver.steps, gamma=cfg.solver.gamma,
            warmup_iters=cfg.solver.warmup_iters, warmup_factor=cfg.solver.warmup_factor,
        )  # fmt: skip
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        batches = self._step_batches()
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        n = cfg.solver.accumulate
        data_time = 0.0
        for micro in range(n):
            t_data = time.perf_counter()
            images, targets = next(batches)
            data_time += time.perf_counter() - t_data
            losses = self._forward_backward(images, targets, micro, n)
            for k, v in losses.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach()) / n
        if cfg.solver.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(
                [p for g in self.optimizer.param_groups for p in g["params"]],
                cfg.solver.clip_grad_norm,
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.iter += 1
        self.last_losses = totals
        self.data_time, self.step_time = data_time, time.perf_counter() - t0
        return totals

    def save(self, *, final: bool = False) -> None:
        """Write ``step_XXXXXXX.pt`` and ``last.pt`` (and ``model_final.pt`` when ``final``);
        every rank must call it (the RNG states are gathered), rank 0 writes."""
        rngs = self._gather_rng()
        if not self.dist.is_main:
            return
        ckpt = Checkpoint(
            model=self.model.state_dict(),
            model_config=self.cfg.model.to_dict(),
            vocab=self.vocab.to_dict(),
            train_config=self.cfg.to_dict(),
            optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict(),
            step=self.iter,
            rng=rngs,
            metrics=self.metrics,
        )
        folder = self.out / "checkpoints"
        ckpt.save(folder / f"step_{self.iter:07d}.pt")
        ckpt.save(folder / "last.pt")
        if final:
            ckpt.save(folder / "model_final.pt")
        periodic = sorted(folder.glob("step_*.pt"))
        for old in periodic[: max(len(periodic) - self.cfg.train.keep_checkpoints, 0)]:
            old.unlink(missing_ok=True)

    def evaluate(self) -> dict[str, Any]:
        """pycocotools AP on A, B and all classes; writes ``metrics.json`` and tells the hooks.

        Every rank runs inference on its shard of the validation set (no rank idles while
        another predicts); rank 0 scores the gathered detections and every rank gets its
        metrics. Every rank must call it. Leaves the model in training mode.
        """
        metrics: dict[str, Any] = {}
        if self.val_set is not None:
            from training.evaluation import evaluate, write_metrics_json

            # Ranks predict with one model: BatchNorm statistics as in the checkpoint.
            self._sync_buffers()
            loader = build_data_loader(
                self.val_set, self.cfg.solver.batch_size, workers=self.cfg.data.workers,
                shuffle=False, distributed=self.dist.enabled,
            )  # fmt: skip
            iou_types = ("bbox",) if self.cfg.train.scheme == "stage1" else ("bbox", "segm")
            metrics = evaluate(
                self.model, loader, self.val_set.coco, self.vocab, device=str(self.device),
                progress=self.cfg.train.progress and self.dist.is_main, iou_types=iou_types,
                # A VG model on COCO val: only its COCO classes have ground truth there.
                skip_classes_without_ground_truth=self.cfg.data.kind != "coco",
            )  # fmt: skip
            metrics = {"step": self.iter, **metrics}
            if self.dist.is_main:
                write_metrics_json(metrics, self.out / "metrics.json")
                log.info("step %d: %s", self.iter, _summary(metrics))
        self.model.train()
        _frozen_modules_to_eval(self.model, self.cfg.train.scheme)
        self.metrics = metrics
        for hook in self.hooks:
            hook.after_eval(metrics)
        return metrics

    # ---------------------------------------------------------------------- the loop
    def train(self, max_steps_this_run: int | None = None) -> TrainResult:
        """Step until ``solver.max_iter`` (or ``max_steps_this_run`` more steps: tests, time
        slicing), then evaluate and write the final checkpoint; a stop before ``max_iter``
        writes ``last.pt`` so that the next run resumes."""
        max_iter = self.cfg.solver.max_iter
        self.stop_at = stop_at = (
            max_iter
            if max_steps_this_run is None
            else min(max_iter, self.iter + max_steps_this_run)
        )
        config_file = self.out / "config.yaml"
        # Written once per run: a resumed run's config equals it (checked at construction),
        # and a fresh start moved the old one away, so it is never overwritten.
        if self.dist.is_main and not config_file.exists():
            config_file.write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        try:
            for hook in self.hooks:
                hook.before_train()
            while self.iter < stop_at:
                self.step()
                for hook in self.hooks:
                    hook.after_step()
            self._sync_buffers()
            if self.iter >= max_iter:
                self.evaluate()
            self.save(final=self.iter >= max_iter)
            if self.dist.is_main:
                log.info(
                    "stopped at step %d of %d%s", self.iter, max_iter,
                    " (model_final.pt written)" if self.iter >= max_iter else " (resumable)",
                )  # fmt: skip
        finally:
            for hook in self.hooks:
                hook.after_train()
        return TrainResult(model=self.model, metrics=self.metrics, step=self.iter)

    # ------------------------------------------------------------------------ helpers
    def _check_same_run(self, ckpt: Checkpoint | None, last: Path) -> None:
        """Continue a run only with its own config: raise ConfigError naming the fields that
        differ between ``out/config.yaml`` (else the checkpoint's) and this command's."""
        saved_file = self.out / "config.yaml"
        if saved_file.is_file():
            saved = yaml.safe_load(saved_file.read_text(encoding="utf-8")) or {}
            where = str(saved_file)
        elif ckpt is not None:
            saved, where = ckpt.train_config or {}, str(last)
        else:
            return
        try:
            diffs = config_differences(saved, self.cfg.to_dict())
        except ConfigError as exc:
            raise ConfigError(f"{where}: cannot read the run's config to resume: {exc}") from exc
        if not diffs:
            return
        shown = "; ".join(f"{k}: {a!r} in the run, {b!r} now" for k, a, b in diffs[:8])
        more = f" (and {len(diffs) - 8} more)" if len(diffs) > 8 else ""
        raise ConfigError(
            f"{self.out} holds a run with another config ({where}): "
            f"{', '.join(k for k, _, _ in diffs)} differ — {shown}{more}. To continue that run, "
            "give its config again; for a new run, choose another --out, or pass --no-resume "
            f"to start afresh in {self.out} (the old run is moved to {self.out}/previous/)"
        )

    def _resume_from(self, ckpt: Checkpoint) -> None:
        # The caller refused a checkpoint without optimizer or RNG state.
        self.model.load_state_dict(ckpt.model)
        self.optimizer.load_state_dict(ckpt.optimizer or {})
        if ckpt.scaler is not None:
            self.scaler.load_state_dict(ckpt.scaler)
        self.iter = ckpt.step
        self.metrics = ckpt.metrics
        rank = self.dist.rank
        set_rng_state(ckpt.rng[rank] if rank < len(ckpt.rng) else ckpt.rng[0])
        if self.dist.is_main:
            log.info("resuming %s from step %d", self.out, self.iter)

    def _log_backbone_choice(self) -> None:
        m, world = self.cfg.model, self.dist.world_size
        if not self.dist.is_main:
            return
        source = m.backbone_weights or (
            f"train.init_checkpoint {self.cfg.train.init_checkpoint}"
            if self.cfg.train.init_checkpoint
            else "from scratch"
        )
        norm = m.norm
        if norm == "sync_bn" and world == 1:
            norm = "sync_bn (plain BN in one process)"
        log.info(
            "backbone %s: %s; norm %s; %d trainable stages; %d process(es) × %d images",
            m.backbone, source, norm, m.trainable_backbone_layers, world,
            self.cfg.solver.batch_size,
        )  # fmt: skip
        if m.norm == "bn" and world > 1 and m.backbone_weights is None:
            log.warning(
                "backbone from scratch with plain BN on %d processes: each BN layer normalises "
                "over one process's %d images; --set model.norm=sync_bn normalises over all %d",
                world, self.cfg.solver.batch_size, world * self.cfg.solver.batch_size,
            )  # fmt: skip

    def _sync_buffers(self) -> None:
        # DDP syncs buffers at the start of each forward; after the last one, BatchNorm
        # statistics differ per rank. Make every rank hold what the checkpoint holds.
        if self.dist.enabled:
            for buffer in self.model.buffers():
                dist.broadcast(buffer, 0)

    def _step_batches(self) -> Iterator[Any]:
        # Each epoch starts a fresh pass over the loader (skipping what a resumed run already
        # used); micro-batches left over at an epoch's end, fewer than one step, are dropped.
        epoch, in_epoch = divmod(self.iter, self.batches_per_epoch)
        if epoch != self._epoch:
            self._batches = _epoch_batches(
                self.loader, epoch, in_epoch * self.cfg.solver.accumulate
            )
            self._epoch = epoch
        return self._batches

    def _forward_backward(
        self, images: Any, targets: Any, micro: int, n: int
    ) -> dict[str, torch.Tensor]:
        cfg, device = self.cfg, self.device
        # Flips are a function of (seed, step, micro-batch, rank): a resumed run flips alike.
        g = torch.Generator().manual_seed(
            (cfg.train.seed * 1_000_003 + self.iter * 131 + micro) * 7 + self.dist.rank
        )
        flips = torch.rand(len(images), generator=g) < cfg.train.hflip_prob
        images, targets = list(images), [dict(t) for t in targets]
        flip_batch(images, targets, flips, self.flip_map)
        images = [img.to(device, non_blocking=True) for img in images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        sync = n == micro + 1 or not self.dist.enabled
        ctx = contextlib.nullcontext() if sync else self.ddp_model.no_sync()  # type: ignore[operator]
        with ctx:
            with torch.autocast(
                device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
            ):
                losses = self.ddp_model(images, targets)
            loss = sum(losses[k].float() for k in self.loss_keys) / n
            if not torch.isfinite(loss):
                values = {k: float(v) for k, v in losses.items()}
                raise FloatingPointError(
                    f"non-finite loss at step {self.iter}: {values}; lower solver.lr, enable "
                    "solver.clip_grad_norm, or check the data of this batch "
                    f"(image ids {[int(t['image_id']) for t in targets if 'image_id' in t]})"
                )
            self.scaler.scale(loss).backward()
        return losses

    def _gather_rng(self) -> list[dict[str, Any]]:
        state = rng_state()
        if not self.dist.enabled:
            return [state]
        states: list[Any] = [None] * self.dist.world_size
        dist.all_gather_object(states, state)
        return states


_RUN_FILES = (
    "config.yaml", "checkpoints", "metrics.jsonl", "metrics.json", "curves.png", "tb", LOG_FILE,
    ENV_FILE,
)  # fmt: skip


def _move_previous_run(out: Path) -> None:
    # A fresh start in a used folder (--no-resume) keeps the old run whole in previous/<time>/:
    # its config is never overwritten, its metrics.jsonl never appended to, and its step_*.pt
    # files never mistaken for this run's by the pruning of old checkpoints.
    present = [out / name for name in _RUN_FILES if (out / name).exists()]
    if not present:
        return
    dest = out / "previous" / time.strftime("%Y%m%d-%H%M%S")
    suffix = 0
    while dest.exists():
        suffix += 1
        dest = dest.with_name(f"{dest.name.split('.')[0]}.{suffix}")
    dest.mkdir(parents=True)
    for path in present:
        path.rename(dest / path.name)
    log.info("--no-resume: the previous run in %s was moved to %s", out, dest)


def train(
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = True,
    max_steps_this_run: int | None = None,
) -> TrainResult:
    """Train (or resume) a run in ``out_dir`` with the default hooks (``maskx train``).

    Refuses (:class:`~model.config.ConfigError`) a backbone that would silently train from
    scratch (:func:`training.config.check_backbone_weights`). Returns the trained model
    (unwrapped, on its device), the last evaluation and the step reached.
    """
    check_backbone_weights(cfg)
    return Trainer(cfg, out_dir, resume=resume).train(max_steps_this_run)


def _summary(metrics: dict[str, Any]) -> str:
    parts = []
    for iou in ("segm", "bbox"):
        for subset in ("A", "B", "all"):
            ap = metrics.get(iou, {}).get(subset, {}).get("AP")
            if ap is not None and not math.isnan(ap):
                parts.append(f"{iou}/{subset} AP={ap:.3f}")
    return ", ".join(parts)
