"""``maskx bench NAME``: benchmarks that print ratios measured side by side in one run.

Each benchmark is a module ``maskx.bench.<name>`` exposing ``add_arguments(parser)`` and
``main(args) -> int``; it prints a table and writes its figures to ``--out`` (a JSON file, which
``--json``, the earlier spelling, also names; ``experiment`` and ``detectron`` write a folder
there and take ``--json`` for their results file).
"""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS: dict[str, str] = {
    "heads": "mask-head K-scaling and Mask^X vs torchvision train step",
    "mask_heads": "cost of Deep-MARC's mask heads and gt-box training beside today's head",
    "export": "ONNX Runtime (CPU) vs eager PyTorch latency and file size",
    "service": "HTTP latency/throughput at concurrency 1/4/16 vs bare ONNX Runtime",
    "postprocess": "box-local paste+RLE vs torchvision paste_masks_in_image + pycocotools",
    "train": "training images/s of a config on this machine",
    "experiment": "the partially supervised experiment (paper Table 1c/2 in miniature)",
    "detectron": "the authors' released model at full size: import, export, serve; K=3001 vs 81",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    sub.required = True
    for name, help_text in BENCHMARKS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            module = importlib.import_module(f"maskx.bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"maskx.bench.{name}":
                raise
            continue
        module.add_arguments(p)
        p.set_defaults(_bench=module)


def main(args: argparse.Namespace) -> int:
    module = getattr(args, "_bench", None)
    if module is None:
        raise SystemExit(f"benchmark {args.benchmark!r} is not available in this install")
    return int(module.main(args) or 0)
