"""``maskx export --checkpoint CKPT --output model.onnx [--opset N] [--no-verify]``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from maskx.export.onnx_export import OPSET


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a maskx training checkpoint (.pt)")
    parser.add_argument("--output", required=True, help="ONNX file to write (atomically)")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    parser.add_argument("--name", help="model name in the metadata (default: the run folder)")
    parser.add_argument("--model-version", default="0.1.0", help="model version in the metadata")
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
    parser.add_argument("--box-rtol", type=float, default=1e-3)
    parser.add_argument("--mask-atol", type=float, default=1e-3)


def main(args: argparse.Namespace) -> int:
    from maskx.export.onnx_export import (
        ExportError,
        build_metadata,
        export_model,
        verification_images,
        verify_export,
    )
    from maskx.training.checkpoint import CheckpointError, file_sha256, load_model_from_checkpoint

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
    metadata = build_metadata(
        model, vocab, model_config=ckpt["model_config"], train_config=ckpt.get("train_config"),
        checkpoint_sha256=file_sha256(ckpt_path), name=name, version=args.model_version,
    )  # fmt: skip
    t0 = time.perf_counter()
    try:
        out = export_model(model, args.output, metadata, opset=args.opset)
    except (ExportError, OSError) as exc:
        print(f"maskx export: {exc}", file=sys.stderr)
        return 2
    size_mb = out.stat().st_size / 1e6
    print(f"wrote {out} ({size_mb:.1f} MB, {len(vocab)} classes, opset {args.opset}) "
          f"in {time.perf_counter() - t0:.1f} s")  # fmt: skip
    if not args.verify:
        return 0
    images = verification_images(model, args.images, ckpt.get("train_config"))
    report = verify_export(model, out, images, box_rtol=args.box_rtol, mask_atol=args.mask_atol)
    print(report.table())
    if not report.passed:
        print("maskx export: verification FAILED (the model was written; see the table)",
              file=sys.stderr)  # fmt: skip
        return 1
    print("verification passed: ONNX Runtime matches eager PyTorch")
    return 0
