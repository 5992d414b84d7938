"""``maskx train --config FILE [--set section.field=value …] --out RUN_DIR``."""

from __future__ import annotations

import argparse
import logging
import sys

from model.config import ConfigError
from training.config import add_override_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (see configs/); defaults if omitted")
    add_override_argument(parser)
    parser.add_argument("--out", required=True, help="run folder (checkpoints, logs, metrics)")
    parser.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="start afresh even if RUN_DIR holds a run (it is moved to RUN_DIR/previous/<time>/); "
        "without it, a run in RUN_DIR continues only if its config.yaml equals this config",
    )
    parser.add_argument("--data-root", help="shorthand for --set data.root=PATH")
    parser.add_argument("--mask-classes", help="shorthand for --set data.mask_classes=SPEC")
    parser.add_argument("--max-iter", type=int, help="shorthand for --set solver.max_iter=N")


def main(args: argparse.Namespace) -> int:
    from training.config import load_config
    from training.datasets import DatasetError
    from training.trainer import train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    overrides = list(args.overrides)
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    if args.mask_classes:
        overrides.append(f"data.mask_classes={args.mask_classes}")
    if args.max_iter:
        overrides.append(f"solver.max_iter={args.max_iter}")
    try:
        cfg = load_config(args.config, overrides)
        metrics = train(cfg, args.out, resume=args.resume).metrics
    except (ConfigError, DatasetError) as exc:
        # Bad settings or data: a message naming the field or path, exit 2, no traceback.
        print(f"maskx train: {exc}", file=sys.stderr)
        return 2
    if metrics:
        from training.evaluate_cli import format_metrics

        print(format_metrics(metrics))
    return 0
