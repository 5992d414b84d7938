"""The ``maskx`` command: a thin shell over functions that tests call directly.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``main(args) -> int``; modules are imported only when their subcommand runs, so that
``maskx serve`` never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("training.synth_cli", "write a synthetic COCO-format dataset"),
    "train": ("training.cli", "train a Mask^X R-CNN model"),
    "evaluate": ("training.evaluate_cli", "evaluate a checkpoint with pycocotools"),
    "export": ("training.export.cli", "export a checkpoint to ONNX with baked mask weights"),
    "import-detectron": (
        "training.detectron.cli",
        "convert a Detectron (Caffe2) Mask^X weights file into a maskx checkpoint",
    ),
    "serve": ("service.cli", "serve an exported model over HTTP"),
    "predict": ("service.predict", "segment images offline: overlay PNG + JSON"),
    "fetch-model": (
        "service.model_source",
        "copy a model from a URL into a file, checked by its sha256 (an init container's job)",
    ),
    "bench": ("maskx.bench.cli", "run a benchmark (heads, export, service, postprocess, ...)"),
}


OUTPUT_FLAG = "--out"
"""How every ``maskx`` command that writes something names where it writes (file or folder)."""


def add_output_argument(
    parser: argparse.ArgumentParser,
    *,
    help: str,
    dest: str = "out",
    old: Sequence[str] = (),
    required: bool = False,
    **kwargs: Any,
) -> None:
    """Add ``--out`` (:data:`OUTPUT_FLAG`) to a command's parser, storing into ``args.<dest>``.

    ``old`` spellings of the same option (``--output``, ``--json``) still parse, into the same
    ``dest``, but are hidden from ``--help``; giving both spellings is an error. ``kwargs`` go to
    :meth:`argparse.ArgumentParser.add_argument` (``type``, ``default``, ``metavar``).
    """
    if not old:
        parser.add_argument(OUTPUT_FLAG, dest=dest, required=required, help=help, **kwargs)
        return
    # A required option with hidden aliases: a required group, so that either spelling counts.
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument(OUTPUT_FLAG, dest=dest, help=help, **kwargs)
    for flag in old:
        group.add_argument(flag, dest=dest, help=argparse.SUPPRESS, **kwargs)


def version() -> str:
    """The installed ``maskx`` distribution's version (``unknown`` when run from a bare tree)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("maskx")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskx", description="Mask^X R-CNN: train, export and serve."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        # Arguments are added lazily in main() once the command is known.
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help", "--version") or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints help / usage error and exits
        return 2
    name = argv[0]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    sub_parser = argparse.ArgumentParser(prog=f"maskx {name}", description=help_text)
    module.add_arguments(sub_parser)
    args = sub_parser.parse_args(argv[1:])
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
