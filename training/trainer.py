"""The training loop: one readable step, with checkpointing, evaluation and logging around it.

``train(cfg, out_dir)`` runs single-process or under ``torchrun`` (DDP: NCCL on GPUs, gloo on
CPU). Rank 0 writes checkpoints, logs and metrics. A run folder holds::

    config.yaml            the resolved config
    checkpoints/last.pt    the latest checkpoint (plus step_XXXXXXX.pt, the last few kept)
    checkpoints/model_final.pt
    metrics.jsonl          one JSON line per logged step / evaluation
    metrics.json           the last evaluation (pycocotools AP on A, B and all classes)
    curves.png             training curves
    tb/                    TensorBoard scalars

A run resumes from ``checkpoints/last.pt`` when it exists (unless ``resume=False``); with
deterministic settings a resumed run ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from model import MaskXRCNN, build_model
from training.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    init_from_checkpoint,
    load_checkpoint,
    rng_state,
    save_atomic,
    set_rng_state,
)
from training.config import TrainConfig
from training.datasets import build_data_loader, set_epoch
from training.datasets.build import build_datasets
from training.datasets.flip import FlipMap, flip_batch, flip_map_for
from training.schedule import get_lr

log = logging.getLogger("maskx.train")


# ----------------------------------------------------------------------------- distributed
@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    if device_type == "cuda":
        torch.cuda.set_device(local)
    return DistInfo(rank, world, local)


def resolve_device(name: str, dist_info: DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", dist_info.local_rank)
    return torch.device(name)


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


class MetricsWriter:
    """JSON lines + TensorBoard scalars + a PNG of the curves (rank 0 only)."""

    def __init__(self, out_dir: Path, tensorboard: bool) -> None:
        self.path = out_dir / "metrics.jsonl"
        self.out_dir = out_dir
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tb"))
            except ImportError:  # tensorboard is optional at run time
                log.warning("tensorboard is not installed: no TensorBoard scalars")

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            step = record["step"]
            for k, v in _flatten(record).items():
                if k != "step" and isinstance(v, int | float) and v is not None:
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}/{k}" if prefix else k
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


# ------------------------------------------------------------------------------------ train
@dataclass
class TrainResult:
    model: MaskXRCNN
    metrics: dict[str, Any]
    step: int


def prepare_model_config(cfg: TrainConfig, num_classes: int) -> None:
    """Fill the model config from the data (K) and resolve defaults so that the checkpoint
    rebuilds the exact same modules without the backbone weights file."""
    pretrained = cfg.model.backbone_weights is not None
    cfg.model = cfg.model.replace(
        num_classes=num_classes,
        norm=cfg.model.norm or ("frozen_bn" if pretrained else "bn"),
        trainable_backbone_layers=(
            cfg.model.trainable_backbone_layers
            if cfg.model.trainable_backbone_layers is not None
            else (3 if pretrained else 5)
        ),
    )


def train(
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = True,
    max_steps_this_run: int | None = None,
) -> TrainResult:
    """Train (or resume) a run in ``out_dir``.

    Args:
        cfg: the training config.
        out_dir: run folder.
        resume: continue from ``out_dir/checkpoints/last.pt`` if it exists.
        max_steps_this_run: stop after this many steps of this process (tests, time slicing);
            a checkpoint is written at the stop.
    Returns:
        the trained model (unwrapped, on its device), the last evaluation and the step reached.
    """
    out = Path(out_dir)
    device_type = (
        "cuda" if cfg.train.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    )
    dist_info = init_distributed(device_type)
    device = resolve_device(cfg.train.device, dist_info)
    if dist_info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.train.seed + dist_info.rank)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False

    train_set, val_set, vocab = build_datasets(cfg)
    prepare_model_config(cfg, len(vocab))
    flip_map = flip_map_for(cfg.data.path(cfg.data.flip_map), vocab, log)
    model = build_model(cfg.model)
    if cfg.train.min_size_train:
        # torchvision picks a random short side from the tuple in training; eval uses the last.
        model.transform.min_size = (*cfg.train.min_size_train, cfg.model.min_size)
    if cfg.train.init_checkpoint:
        init_from_checkpoint(model, cfg.train.init_checkpoint, cfg.train.init_parts, log)
    loss_keys = set_trainable(model, cfg.train.scheme)
    model.to(device)
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device_type, enabled=cfg.solver.amp == "fp16")

    step = 0
    last = out / "checkpoints" / "last.pt"
    if resume and last.is_file():
        ckpt = load_checkpoint(last)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if "scaler" in ckpt:
            scaler.load_state_dict(ckpt["scaler"])
        step = int(ckpt["step"])
        rng = ckpt["rng"][dist_info.rank] if dist_info.rank < len(ckpt["rng"]) else ckpt["rng"][0]
        set_rng_state(rng)
        if dist_info.is_main:
            log.info("resuming %s from step %d", out, step)

    ddp_model: nn.Module = model
    if dist_info.enabled:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    loader = build_data_loader(
        train_set,
        cfg.solver.batch_size,
        workers=cfg.data.workers,
        shuffle=True,
        distributed=dist_info.enabled,
        seed=cfg.train.seed,
        aspect_ratio_grouping=cfg.data.aspect_ratio_grouping,
    )
    batches_per_epoch = len(loader) // cfg.solver.accumulate
    if batches_per_epoch == 0:
        raise ValueError(
            f"the training set ({len(train_set)} images) is smaller than one step's batch "
            f"({cfg.solver.batch_size} × {cfg.solver.accumulate} × {dist_info.world_size})"
        )

    writer = MetricsWriter(out, cfg.train.tensorboard) if dist_info.is_main else None
    if dist_info.is_main:
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.solver.amp)
    metrics: dict[str, Any] = {}
    max_iter = cfg.solver.max_iter
    stop_at = max_iter if max_steps_this_run is None else min(max_iter, step + max_steps_this_run)
    bar = tqdm(
        total=max_iter,
        initial=step,
        desc="train",
        unit="step",
        disable=not (dist_info.is_main and cfg.train.progress),
        dynamic_ncols=True,
    )
    model.train()
    _frozen_modules_to_eval(model, cfg.train.scheme)
    t_last, images_since = time.perf_counter(), 0
    try:
        while step < stop_at:
            epoch, in_epoch = divmod(step, batches_per_epoch)
            batches = _epoch_batches(loader, epoch, in_epoch * cfg.solver.accumulate)
            for _ in range(in_epoch, batches_per_epoch):
                if step >= stop_at:
                    break
                lr = get_lr(
                    step,
                    cfg.solver.lr,
                    steps=cfg.solver.steps,
                    gamma=cfg.solver.gamma,
                    warmup_iters=cfg.solver.warmup_iters,
                    warmup_factor=cfg.solver.warmup_factor,
                )
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss_dict = _train_step(
                    ddp_model, optimizer, scaler, batches, cfg, step, loss_keys, device,
                    autocast_dtype, dist_info, flip_map,
                )  # fmt: skip
                step += 1
                images_since += cfg.solver.batch_size * cfg.solver.accumulate * dist_info.world_size
                bar.update(1)
                if dist_info.is_main and (
                    step % cfg.train.log_period == 0 or step == stop_at or step == 1
                ):
                    now = time.perf_counter()
                    ips = images_since / max(now - t_last, 1e-9)
                    t_last, images_since = now, 0
                    total = sum(loss_dict[k] for k in loss_keys)
                    bar.set_postfix(loss=f"{total:.3f}", lr=f"{lr:.2e}", img_s=f"{ips:.1f}")
                    assert writer is not None
                    writer.write({"step": step, "lr": lr, "loss": total, **loss_dict,
                                  "images_per_s": ips})  # fmt: skip
                if cfg.train.checkpoint_period and step % cfg.train.checkpoint_period == 0:
                    _save(out, model, optimizer, scaler, cfg, vocab, step, dist_info, metrics)
                if cfg.train.eval_period and step % cfg.train.eval_period == 0 and step < max_iter:
                    metrics = _evaluate(model, val_set, vocab, cfg, device, dist_info, writer, step)
                    model.train()
                    _frozen_modules_to_eval(model, cfg.train.scheme)
        if dist_info.enabled:
            # DDP syncs buffers at the start of each forward; after the last one, BatchNorm
            # statistics differ per rank. Make every rank hold what the checkpoint holds.
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)
        if step >= max_iter:
            metrics = _evaluate(model, val_set, vocab, cfg, device, dist_info, writer, step)
        _save(out, model, optimizer, scaler, cfg, vocab, step, dist_info, metrics,
              final=step >= max_iter)  # fmt: skip
    finally:
        bar.close()
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                from training.curves import plot_curves

                plot_curves(out / "metrics.jsonl", out / "curves.png")
    return TrainResult(model=model, metrics=metrics, step=step)


def _train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    batches: Iterator[Any],
    cfg: TrainConfig,
    step: int,
    loss_keys: list[str],
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    dist_info: DistInfo,
    flip_map: FlipMap | None = None,
) -> dict[str, float]:
    """One optimisation step over ``accumulate`` micro-batches; returns the mean losses."""
    optimizer.zero_grad(set_to_none=True)
    totals: dict[str, float] = {}
    n = cfg.solver.accumulate
    for micro in range(n):
        images, targets = next(batches)
        # Flips are a function of (seed, step, micro-batch, rank): a resumed run flips alike.
        g = torch.Generator().manual_seed(
            (cfg.train.seed * 1_000_003 + step * 131 + micro) * 7 + dist_info.rank
        )
        flips = torch.rand(len(images), generator=g) < cfg.train.hflip_prob
        images, targets = list(images), [dict(t) for t in targets]
        flip_batch(images, targets, flips, flip_map)
        images = [img.to(device, non_blocking=True) for img in images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        sync = n == micro + 1 or not isinstance(model, nn.parallel.DistributedDataParallel)
        ctx = contextlib.nullcontext() if sync else model.no_sync()
        with ctx:
            with torch.autocast(
                device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None
            ):
                losses = model(images, targets)
            loss = sum(losses[k].float() for k in loss_keys) / n
            if not torch.isfinite(loss):
                values = {k: float(v) for k, v in losses.items()}
                raise FloatingPointError(
                    f"non-finite loss at step {step}: {values}; lower solver.lr, enable "
                    "solver.clip_grad_norm, or check the data of this batch "
                    f"(image ids {[int(t['image_id']) for t in targets if 'image_id' in t]})"
                )
            scaler.scale(loss).backward()
        for k, v in losses.items():
            totals[k] = totals.get(k, 0.0) + float(v.detach()) / n
    if cfg.solver.clip_grad_norm:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(
            [p for g in optimizer.param_groups for p in g["params"]], cfg.solver.clip_grad_norm
        )
    scaler.step(optimizer)
    scaler.update()
    return totals


def _gather_rng(dist_info: DistInfo) -> list[dict[str, Any]]:
    state = rng_state()
    if not dist_info.enabled:
        return [state]
    states: list[Any] = [None] * dist_info.world_size
    dist.all_gather_object(states, state)
    return states


def _save(
    out: Path,
    model: MaskXRCNN,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    cfg: TrainConfig,
    vocab: Any,
    step: int,
    dist_info: DistInfo,
    metrics: dict[str, Any],
    final: bool = False,
) -> None:
    rngs = _gather_rng(dist_info)  # every rank takes part in the collective
    if not dist_info.is_main:
        return
    ckpt = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model.state_dict(),
        "model_config": cfg.model.to_dict(),
        "vocab": vocab.to_dict(),
        "train_config": cfg.to_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "step": step,
        "rng": rngs,
        "metrics": metrics,
    }
    folder = out / "checkpoints"
    save_atomic(ckpt, folder / f"step_{step:07d}.pt")
    save_atomic(ckpt, folder / "last.pt")
    if final:
        save_atomic(ckpt, folder / "model_final.pt")
    periodic = sorted(folder.glob("step_*.pt"))
    for old in periodic[: max(len(periodic) - cfg.train.keep_checkpoints, 0)]:
        old.unlink(missing_ok=True)


def _evaluate(
    model: MaskXRCNN,
    val_set: Any,
    vocab: Any,
    cfg: TrainConfig,
    device: torch.device,
    dist_info: DistInfo,
    writer: MetricsWriter | None,
    step: int,
) -> dict[str, Any]:
    """pycocotools AP on A, B and all classes (rank 0; the others wait)."""
    metrics: dict[str, Any] = {}
    if val_set is not None and dist_info.is_main:
        from training.evaluation import evaluate, write_metrics_json

        loader = build_data_loader(
            val_set, cfg.solver.batch_size, workers=cfg.data.workers, shuffle=False
        )
        coco_gt = val_set.coco
        iou_types = ("bbox",) if cfg.train.scheme == "stage1" else ("bbox", "segm")
        metrics = evaluate(
            model, loader, coco_gt, vocab, device=str(device), progress=cfg.train.progress,
            iou_types=iou_types,
        )  # fmt: skip
        metrics = {"step": step, **metrics}
        write_metrics_json(metrics, Path(writer.out_dir if writer else ".") / "metrics.json")
        if writer is not None:
            writer.write({"step": step, "eval": {k: v for k, v in metrics.items() if k != "step"}})
        log.info("step %d: %s", step, _summary(metrics))
    if dist_info.enabled:
        dist.barrier()
    return metrics


def _summary(metrics: dict[str, Any]) -> str:
    parts = []
    for iou in ("segm", "bbox"):
        for subset in ("A", "B", "all"):
            ap = metrics.get(iou, {}).get(subset, {}).get("AP")
            if ap is not None and not math.isnan(ap):
                parts.append(f"{iou}/{subset} AP={ap:.3f}")
    return ", ".join(parts)
