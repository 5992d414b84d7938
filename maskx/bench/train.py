"""``maskx bench train``: training images/s of a config on this machine.

Builds the model, optimiser and data loader the way :func:`training.trainer.train` does and
times the trainer's own optimisation step (data loading included, as in a real run) for
``--steps`` steps after ``--warmup`` untimed ones. Without ``--data-root`` the benchmark writes a
small synthetic dataset (``maskx synth``) into a temporary folder first.

torch is imported inside :func:`main` only (the ``maskx bench`` dispatcher imports this module to
build its parser).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from maskx.cli import add_output_argument

DEFAULT_CONFIG = "configs/tiny_synth.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from training.config import add_override_argument  # `maskx bench --help` imports no torch

    parser.add_argument(
        "--config", default=DEFAULT_CONFIG, help=f"training config YAML ({DEFAULT_CONFIG})"
    )
    add_override_argument(parser)
    parser.add_argument(
        "--data-root",
        type=Path,
        help="dataset folder (the config's data.root); default: a synthetic set in a temp dir",
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps (20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (3)")
    parser.add_argument(
        "--synth-images", type=int, default=64, help="images of the generated synthetic set (64)"
    )
    parser.add_argument(
        "--synth-classes", type=int, default=120, help="classes of the generated synthetic set"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda or auto (the config's)")
    # --out, as on every maskx command; --json, the earlier spelling, still works.
    add_output_argument(parser, dest="json", old=("--json",), type=Path, metavar="FILE.json",
                        help="write the figures to this JSON file")  # fmt: skip


def resolve_config_path(path: str | Path) -> Path:
    """``path`` as given if it exists, else relative to the source checkout holding this
    package (so that the default works from any working directory)."""
    p = Path(path)
    if p.is_file():
        return p
    in_checkout = Path(__file__).resolve().parents[2] / p
    if not p.is_absolute() and in_checkout.is_file():
        return in_checkout
    raise FileNotFoundError(f"--config: no such file {str(path)!r}")


def use_synthetic_data(cfg: Any, root: Path, *, images: int, classes: int, seed: int) -> dict:
    """Write a synthetic COCO-format set (training split only) into ``root`` and point
    ``cfg.data`` at it; returns the generator's ``dataset.json`` dict."""
    from training.synth import SynthConfig, generate_dataset

    meta = generate_dataset(
        root,
        SynthConfig(num_classes=classes, train_images=images, val_images=0, seed=seed),
        progress=False,
    )
    cfg.data = dataclasses.replace(
        cfg.data,
        kind="coco",
        root=str(root),
        train_annotations=meta["annotations"]["train"],
        train_images=meta["image_dirs"]["train"],
        val_annotations=None,
        val_images=None,
        mask_classes=meta["mask_classes_file"],
    )
    return meta


def measure_training(cfg: Any, *, steps: int, warmup: int) -> dict[str, Any]:
    """Time ``warmup + steps`` optimisation steps of ``cfg`` (single process).

    Returns ``{"step_s": [seconds of each timed step], "images_per_step", "device",
    "num_classes", "last_losses"}``.
    """
    # The benchmark times exactly what ``maskx train`` runs: the trainer's own step, with no
    # hooks (no checkpoints, evaluation or logging inside the timed region).
    from training.trainer import Trainer

    per_step = cfg.solver.batch_size * cfg.solver.accumulate
    with tempfile.TemporaryDirectory(prefix="maskx-bench-train-") as out:
        try:
            trainer = Trainer(cfg, out, resume=False, hooks=[])
        except ValueError as exc:
            if "batch" not in str(exc):  # too few images for one step's batch
                raise
            raise ValueError(
                f"{exc}; add images (--synth-images) or lower solver.batch_size"
            ) from None
        times: list[float] = []
        losses: dict[str, float] = {}
        for step in range(warmup + steps):
            t0 = time.perf_counter()
            # The step returns Python floats of the losses, which waits for an asynchronous
            # device.
            losses = trainer.step()
            if step >= warmup:
                times.append(time.perf_counter() - t0)
    cfg = trainer.cfg
    device = trainer.device
    return {
        "step_s": times,
        "images_per_step": per_step,
        "device": str(device),
        "num_classes": cfg.model.num_classes,
        "last_losses": losses,
    }


def main(args: argparse.Namespace) -> int:
    import torch

    from model.config import ConfigError
    from training.config import load_config

    if args.steps < 1 or args.warmup < 0:
        print("maskx bench train: need --steps >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    overrides = list(args.overrides)
    if args.data_root is not None:
        overrides.append(f"data.root={args.data_root}")
    if args.device is not None:
        overrides.append(f"train.device={args.device}")
    try:
        config_path = resolve_config_path(args.config)
        cfg = load_config(config_path, overrides)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"maskx bench train: {exc}", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="maskx-bench-train-") as tmp:
        data = str(args.data_root) if args.data_root is not None else None
        if data is None:
            t0 = time.perf_counter()
            use_synthetic_data(
                cfg, Path(tmp) / "synth", images=args.synth_images, classes=args.synth_classes,
                seed=cfg.train.seed,
            )  # fmt: skip
            data = f"synthetic, {args.synth_images} images ({time.perf_counter() - t0:.1f} s)"
        result = measure_training(cfg, steps=args.steps, warmup=args.warmup)

    times = result["step_s"]
    total = sum(times)
    ips = result["images_per_step"] * len(times) / total
    summary = {
        "config": str(config_path),
        "overrides": overrides,
        "data": data,
        "device": result["device"],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "backbone": cfg.model.backbone,
        "num_classes": result["num_classes"],
        "images_per_step": result["images_per_step"],
        "amp": cfg.solver.amp,
        "warmup_steps": args.warmup,
        "steps": len(times),
        "images_per_s": ips,
        "s_per_step_median": statistics.median(times),
        "s_per_step_mean": total / len(times),
        "step_s": times,
        "last_losses": result["last_losses"],
    }
    print(
        f"maskx bench train: {config_path} ({cfg.model.backbone}, K={summary['num_classes']}, "
        f"{summary['images_per_step']} images/step, amp={cfg.solver.amp}) on {result['device']} "
        f"({summary['threads']} threads), data: {data}"
    )
    print(
        f"{len(times)} steps after {args.warmup} warm-up: {ips:.2f} images/s, "
        f"{summary['s_per_step_median']:.3f} s/step (median; mean {summary['s_per_step_mean']:.3f},"
        f" range {min(times):.3f}-{max(times):.3f})"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
