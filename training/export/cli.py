"""``maskx export --checkpoint CKPT --out model.onnx [--opset N] [--no-verify]``
(``--output``, the earlier spelling, still works)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from maskx.cli import add_output_argument
from training.export.onnx_export import OPSET

# (box rtol, score atol, mask atol) of the verification against eager float32 PyTorch, by
# whether the backbone runs in float16 (its 11-bit mantissa moves scores and masks by ~1e-3).
TOLERANCES = {False: (1e-3, 1e-4, 1e-3), True: (1e-2, 1e-2, 5e-2)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a maskx training checkpoint (.pt)")
    add_output_argument(
        parser, dest="output", old=("--output",), required=True, metavar="MODEL.onnx",
        help="ONNX file to write (atomically)",
    )  # fmt: skip
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    parser.add_argument("--name", help="model name in the metadata (default: the run folder)")
    parser.add_argument(
        "--model-version",
        help="model version in the metadata (default: 0.1.0+<first 12 hex digits of the "
        "checkpoint's sha256>, so two different checkpoints never share a version)",
    )
    parser.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compare ONNX Runtime with eager PyTorch and fail on a mismatch (default: on)",
    )
    parser.add_argument(
        "--images",
        nargs="+",
        help="two images to verify on (default: the checkpoint's validation images, if present)",
    )
    parser.add_argument(
        "--min-size",
        type=int,
        help="input scale to serve at: short side in pixels (default: the training config's "
        "test scale); detections change with it, so verify the model at the new scale",
    )
    parser.add_argument("--max-size", type=int, help="longest side in pixels (with --min-size)")
    parser.add_argument(
        "--fp16",
        action="store_true",
        help="backbone and FPN in float16 (most of the arithmetic); heads, box arithmetic and "
        "NMS stay float32; inputs and outputs keep the contract's types",
    )
    parser.add_argument(
        "--box-rtol",
        type=float,
        help=f"box tolerance (default {TOLERANCES[False][0]:g}, "
        f"{TOLERANCES[True][0]:g} with --fp16)",
    )
    parser.add_argument(
        "--score-atol",
        type=float,
        help=f"score tolerance (default {TOLERANCES[False][1]:g}, "
        f"{TOLERANCES[True][1]:g} with --fp16)",
    )
    parser.add_argument(
        "--mask-atol",
        type=float,
        help=f"mask probability tolerance (default "
        f"{TOLERANCES[False][2]:g}, {TOLERANCES[True][2]:g} with --fp16)",
    )


def main(args: argparse.Namespace) -> int:
    from training.checkpoint import CheckpointError, file_sha256, load_model_from_checkpoint
    from training.export.onnx_export import (
        ExportError,
        build_metadata,
        default_model_version,
        export_model,
        verification_images,
        verify_export,
    )

    ckpt_path = Path(args.checkpoint)
    try:
        model, vocab, ckpt = load_model_from_checkpoint(ckpt_path)
    except CheckpointError as exc:
        print(f"maskx export: {exc}", file=sys.stderr)
        return 2
    if args.min_size is not None or args.max_size is not None:
        # Test-time scale: the graph takes images already resized by the caller, so only the
        # metadata (what the service resizes to) and the verification images change.
        t = model.transform
        min_size = args.min_size if args.min_size is not None else int(t.min_size[-1])
        max_size = args.max_size if args.max_size is not None else max(int(t.max_size), min_size)
        if not 32 <= min_size <= max_size:
            print(f"maskx export: need 32 <= --min-size ({min_size}) <= --max-size ({max_size})",
                  file=sys.stderr)  # fmt: skip
            return 2
        t.min_size, t.max_size = (min_size,), max_size
    name = args.name or (ckpt_path.parent.parent.name if ckpt_path.parent.name == "checkpoints"
                         else ckpt_path.stem)  # fmt: skip
    checkpoint_sha256 = file_sha256(ckpt_path)
    version = args.model_version or default_model_version(checkpoint_sha256)
    metadata = build_metadata(
        model, vocab, model_config=ckpt.model_config, train_config=ckpt.train_config,
        checkpoint_sha256=checkpoint_sha256, name=name, version=version,
        precision="fp16-backbone" if args.fp16 else "fp32",
    )  # fmt: skip
    t0 = time.perf_counter()
    try:
        out = export_model(model, args.output, metadata, opset=args.opset, fp16=args.fp16)
    except (ExportError, OSError) as exc:
        print(f"maskx export: {exc}", file=sys.stderr)
        return 2
    size_mb = out.stat().st_size / 1e6
    print(f"wrote {out} ({name} {version}; {size_mb:.1f} MB, {len(vocab)} classes, "
          f"opset {args.opset}"
          f"{', float16 backbone' if args.fp16 else ''}) "
          f"in {time.perf_counter() - t0:.1f} s")  # fmt: skip
    if not args.verify:
        return 0
    images = verification_images(
        model, args.images, ckpt.train_config, resize_rule=metadata.resize_rule
    )
    box_rtol, score_atol, mask_atol = TOLERANCES[args.fp16]
    report = verify_export(
        model,
        out,
        images,
        box_rtol=box_rtol if args.box_rtol is None else args.box_rtol,
        score_atol=score_atol if args.score_atol is None else args.score_atol,
        mask_atol=mask_atol if args.mask_atol is None else args.mask_atol,
        match=args.fp16,
    )
    print(report.table())
    if not report.passed:
        print("maskx export: verification FAILED (the model was written; see the table)",
              file=sys.stderr)  # fmt: skip
        return 1
    print("verification passed: ONNX Runtime matches eager PyTorch"
          + (" within the float16 tolerances" if args.fp16 else ""))  # fmt: skip
    return 0
