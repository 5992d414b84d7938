"""``maskx bench export``: ONNX Runtime (CPU) vs eager PyTorch on the same model and images.

Both sides compute the same thing — detections with box-local mask probabilities (no pasting)
from uint8 images at the model's scale — and are timed interleaved (A, B, A, B, …) so that
machine noise hits both alike. Prints the medians, the ratio and the ONNX file size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from maskx.cli import add_output_argument

DEFAULT_CHECKPOINT = "artifacts/demo/run/checkpoints/model_final.pt"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        default=DEFAULT_CHECKPOINT,
        help=f"trained checkpoint (default: the demo model's, {DEFAULT_CHECKPOINT})",
    )
    parser.add_argument(
        "--random-r50",
        action="store_true",
        help="instead of a checkpoint: R-50-FPN, K=80, random weights, score threshold 0",
    )
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="image size (default: the model's min_size square; 480 640 for r50)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="threads for both (0: default)")
    # --out, as on every maskx command; --json, the earlier spelling, still works.
    add_output_argument(parser, dest="json", old=("--json",), type=Path, metavar="FILE.json",
                        help="write the figures here")  # fmt: skip


def main(args: argparse.Namespace) -> int:
    import numpy as np
    import onnxruntime as ort
    import torch

    from training.export.onnx_export import (
        OUTPUT_NAMES,
        build_metadata,
        eager_reference,
        export_model,
        pad_batch,
        verification_images,
    )

    if args.random_r50:
        from model import ModelConfig, build_model

        torch.manual_seed(0)
        cfg = ModelConfig(num_classes=80, backbone="resnet50", min_size=480, max_size=640,
                          box_score_thresh=0.0)  # fmt: skip
        model = build_model(cfg).eval()
        label = "R-50-FPN, K=80, random weights, score threshold 0"
        size = tuple(args.size or (480, 640))
    else:
        from training.checkpoint import CheckpointError, load_model_from_checkpoint

        try:
            model, _, ckpt = load_model_from_checkpoint(args.checkpoint)
        except CheckpointError as exc:
            print(f"maskx bench export: {exc} (build one with `make demo-model`)")
            return 2
        label = f"checkpoint {args.checkpoint}"
        s = int(model.transform.min_size[-1])
        size = tuple(args.size or (s, s))
    if args.threads:
        torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=g) for _ in range(3)]
    if not args.random_r50:
        real = verification_images(model, train_config=ckpt.train_config)
        if real is not None:  # the checkpoint's own validation images, where they are here
            images = real
    with tempfile.TemporaryDirectory() as tmp:
        from training.datasets.vocab import ClassVocabulary

        k = model.num_classes
        vocab = ClassVocabulary([f"c{i}" for i in range(k)], [True] * k, list(range(1, k + 1)))
        meta = build_metadata(model, vocab, model_config={}, train_config=None,
                              checkpoint_sha256=None, name="bench", version="0")  # fmt: skip
        t0 = time.perf_counter()
        path = export_model(model, Path(tmp) / "m.onnx", meta)
        export_s = time.perf_counter() - t0
        size_mb = path.stat().st_size / 1e6
        so = ort.SessionOptions()
        if args.threads:
            so.intra_op_num_threads = args.threads
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

        def run_ort(img: torch.Tensor) -> int:
            batch, sizes = pad_batch([img])
            out = sess.run(OUTPUT_NAMES, {"images": batch.numpy(), "image_sizes": sizes.numpy()})
            return int(out[0].shape[0])

        def run_eager(img: torch.Tensor) -> int:
            return int(eager_reference(model, [img])[0]["boxes"].shape[0])

        for _ in range(args.warmup):
            run_ort(images[0])
            run_eager(images[0])
        t_ort, t_eager, dets = [], [], []
        for r in range(args.repeats):
            img = images[r % len(images)]
            for name, fn, acc in (("ort", run_ort, t_ort), ("eager", run_eager, t_eager)):
                t = time.perf_counter()
                n = fn(img)
                acc.append(time.perf_counter() - t)
                if name == "ort":
                    dets.append(n)
    med_ort, med_eager = statistics.median(t_ort), statistics.median(t_eager)
    result = {
        "model": label,
        "image_size": list(size),
        "repeats": args.repeats,
        "eager_ms_median": med_eager * 1e3,
        "onnxruntime_ms_median": med_ort * 1e3,
        "speedup_onnxruntime_vs_eager": med_eager / med_ort,
        "onnx_file_mb": size_mb,
        "export_s": export_s,
        "detections_median": float(np.median(dets)),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
    }
    print(f"model: {label}; image {size[0]}×{size[1]}; {args.repeats} interleaved runs")
    print(f"{'':22}{'median ms':>12}")
    print(f"{'eager PyTorch':22}{med_eager * 1e3:>12.1f}")
    print(f"{'ONNX Runtime (CPU)':22}{med_ort * 1e3:>12.1f}")
    print(f"speed-up ONNX Runtime / eager: {med_eager / med_ort:.2f}×  "
          f"(detections per image: {np.median(dets):.0f}); ONNX file {size_mb:.1f} MB")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0
