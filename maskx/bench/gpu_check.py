"""maskx GPU check: one prepared script for a CUDA machine that has only PyTorch, torchvision and
NumPy (no maskx install, no pycocotools/onnx/yaml/tqdm). Run from the repository root::

    bash maskx/bench/gpu_check.sh             # = PYTHONPATH=. python3 maskx/bench/gpu_check.py
    python3 maskx/bench/gpu_check.py --device cpu --quick    # smoke run of every case on the CPU

Cases (each in its own try/except, so that one failure still prints the table):

1. ``correctness``: the same R-50-FPN Mask^X model (K=80, fp32, TF32 off) on the CPU and on the
   device, one image — labels equal, boxes and scores close.
2. ``infer fp32|bf16 K=80|3000``: eager inference latency at short side 800 (Mask^X head,
   random weights, 100 detections forced), fp32 and bf16 autocast, interleaved, median after
   warm-up; GPU memory peak of one forward.
3. ``train fp32|bf16|fp16 …``: forward + backward + SGD step of Mask^X vs torchvision's Mask
   R-CNN on the same backbone, images and targets (fp32 and bf16 autocast; Mask^X also fp16 with a
   GradScaler): steps/s and memory peak.

A hard time budget (``--budget-s``, 420 s) skips the cases that would start after it and stops a
case that runs past it. The table is printed last; the figures go to ``$OUT/gpu_check.json``
when ``$OUT`` is set (or ``--out DIR``), rewritten after every case.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import signal
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable without PYTHONPATH too
    sys.path.insert(0, str(REPO))

FULL = {
    "backbone": "resnet50", "size": 800, "repeats": 20, "warmup": 5, "train_steps": 10,
    "train_warmup": 3, "train_images": 2,
}  # fmt: skip
QUICK = {
    "backbone": "tiny", "size": 128, "repeats": 2, "warmup": 1, "train_steps": 2,
    "train_warmup": 1, "train_images": 1,
}  # fmt: skip


class BudgetExceeded(Exception):
    """The check's time budget ran out while a case was running."""


class Check:
    """Runs cases under a time budget and collects one table row per measured case."""

    def __init__(self, budget_s: float, out_dir: Path | None, device: Any) -> None:
        self.t0 = time.monotonic()
        self.budget_s = budget_s
        self.out_dir = out_dir
        self.device = device
        self.rows: list[dict[str, Any]] = []
        self.info: dict[str, Any] = {}

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def add(self, case: str, status: str, **fields: Any) -> None:
        row = {"case": case, "status": status, **fields}
        self.rows.append(row)
        self.save()

    def run(self, case: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` unless the budget is spent; an exception becomes an ``error`` row."""
        left = self.budget_s - self.elapsed()
        if left <= 1:
            self.add(case, "skipped", note=f"time budget {self.budget_s:.0f} s spent")
            return None
        print(f"[{self.elapsed():6.1f} s] {case} …", flush=True)
        try:
            with _alarm(left):
                return fn()
        except BudgetExceeded:
            self.add(case, "skipped", note=f"stopped at the time budget ({self.budget_s:.0f} s)")
        except Exception as exc:  # every case is isolated: report and go on
            traceback.print_exc()
            self.add(case, "error", note=f"{type(exc).__name__}: {exc}"[:300])
        finally:
            _free_device_memory(self.device)
        return None

    def save(self) -> None:
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        data = {"info": self.info, "elapsed_s": self.elapsed(), "rows": self.rows}
        (self.out_dir / "gpu_check.json").write_text(json.dumps(data, indent=2) + "\n")


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """Raise :class:`BudgetExceeded` in the main thread after ``seconds`` (POSIX only). Nests:
    an enclosing alarm is re-armed with its remaining time on exit."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise BudgetExceeded

    outer_left, _ = signal.getitimer(signal.ITIMER_REAL)
    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_left > 0:
            signal.setitimer(
                signal.ITIMER_REAL, max(outer_left - (time.monotonic() - started), 0.001)
            )


def _free_device_memory(device: Any) -> None:
    import gc

    import torch

    gc.collect()
    if device is not None and device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------- measurement
def make_sync(device: Any) -> Callable[[], None] | None:
    import torch

    return torch.cuda.synchronize if device.type == "cuda" else None


def memory_peak(fn: Callable[[], Any], device: Any) -> dict[str, float | None]:
    """``peak_mb`` (above the allocation before the call) and ``abs_peak_mb``, in MiB, of one
    call of ``fn`` on a CUDA device (``torch.cuda.max_memory_allocated`` after a reset); None
    elsewhere."""
    import torch

    if device.type != "cuda":
        fn()
        return {"peak_mb": None, "abs_peak_mb": None}
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return {"peak_mb": (peak - before) / 2**20, "abs_peak_mb": peak / 2**20}


def autocast(device: Any, dtype: Any) -> Any:
    import torch

    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def match_detections(
    ref: dict[str, Any], other: dict[str, Any], iou_min: float = 0.9
) -> dict[str, Any]:
    """Compare two detection sets (``boxes`` [N, 4], ``labels`` [N], ``scores`` [N], CPU).

    Scores of random weights lie within 1e-5 of each other, so ranks may swap across devices:
    each detection of ``other`` is matched (greedily, by score) to the unused ``ref`` detection
    of the same label with the highest IoU >= ``iou_min``. Returns the counts, the ``ref``
    ranks that found a match and the largest box/score differences of the matched pairs.
    """
    from torchvision.ops import box_iou

    n_ref, n_other = len(ref["labels"]), len(other["labels"])
    n = min(n_ref, n_other)
    rank_equal = int((ref["labels"][:n] == other["labels"][:n]).sum())
    iou = box_iou(other["boxes"], ref["boxes"]) if n_ref and n_other else None
    box_err, score_err, used = 0.0, 0.0, set()
    for i in range(n_other if iou is not None else 0):
        same = (ref["labels"] == other["labels"][i]).nonzero().flatten().tolist()
        same = [j for j in same if j not in used and iou[i, j] >= iou_min]
        if not same:
            continue
        j = max(same, key=lambda j: float(iou[i, j]))
        used.add(j)
        box_err = max(box_err, float((other["boxes"][i] - ref["boxes"][j]).abs().max()))
        score_err = max(score_err, float((other["scores"][i] - ref["scores"][j]).abs()))
    return {
        "n_ref": n_ref,
        "n_other": n_other,
        "labels_equal_by_rank": rank_equal,
        "matched": len(used),
        "matched_ref_ranks": sorted(used),
        "max_box_diff_px": box_err,
        "max_score_diff": score_err,
    }


# ---------------------------------------------------------------------------------- cases
def case_correctness(check: Check, s: dict[str, Any], args: argparse.Namespace) -> None:
    import torch

    from maskx.bench.heads import bench_model_config, random_images
    from model import build_model

    device = check.device
    cfg = bench_model_config(
        num_classes=80, backbone=s["backbone"], size=s["size"], small_heads=args.quick
    )
    torch.manual_seed(args.seed)
    model = build_model(cfg).eval()
    images = random_images(1, s["size"], args.seed + 7)
    with torch.inference_mode():
        ref = model(images)[0]
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        moved = copy.deepcopy(model).to(device)
        with torch.inference_mode():
            out = moved([img.to(device) for img in images])[0]
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    out = {k: v.cpu() for k, v in out.items()}
    m = match_detections(ref, out)
    n = m["n_ref"]
    top = min(args.top_ranks, n)
    top_matched = set(range(top)) <= set(m.pop("matched_ref_ranks"))
    # Thresholds: a CPU fp32 vs fp64 run of this model (the size of rounding differences)
    # matches 96/100 with boxes within 0.07 px and scores within 2e-5.
    ok = (
        n > 0
        and m["n_other"] == n
        and top_matched
        and m["matched"] >= 0.8 * n
        and m["max_box_diff_px"] <= 1.0
        and m["max_score_diff"] <= 1e-3
    )
    note = (
        f"{device.type} vs cpu: top-{top} all matched={top_matched}; {m['matched']}/{n} matched"
        f" (label equal, IoU>=0.9); {m['labels_equal_by_rank']}/{n} labels equal by rank; max "
        f"diff box {m['max_box_diff_px']:.2g} px, score {m['max_score_diff']:.1g}"
    )
    check.add("correctness cpu vs device", "ok" if ok else "FAIL", note=note, **m)


def case_inference(check: Check, s: dict[str, Any], args: argparse.Namespace) -> None:
    import torch

    from maskx.bench.heads import (
        bench_model_config,
        copy_shared_weights,
        interleaved_times,
        random_images,
    )
    from model import build_model

    device = check.device
    models = {}
    for k in (args.k_small, args.k_large):
        cfg = bench_model_config(
            num_classes=k, backbone=s["backbone"], size=s["size"], small_heads=args.quick
        )
        torch.manual_seed(args.seed)
        models[k] = build_model(cfg).eval().to(device)
    copy_shared_weights(models[args.k_large], models[args.k_small])
    images = [img.to(device) for img in random_images(1, s["size"], args.seed)]
    precisions = {"fp32": None, "bf16": torch.bfloat16}

    def forward(model: Any, dtype: Any) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode(), autocast(device, dtype):
                return model(images)

        return run

    cases: dict[str, Callable[[], Any]] = {}
    extra: dict[str, dict[str, Any]] = {}
    for pname, dtype in precisions.items():
        for k, model in models.items():
            name = f"infer {pname} K={k}"
            fn = forward(model, dtype)

            def probe(fn: Callable[[], Any] = fn, name: str = name) -> None:
                for _ in range(s["warmup"]):
                    out = fn()
                dets = int(out[0]["boxes"].shape[0])
                if dets != 100:
                    raise RuntimeError(f"{name}: {dets} detections instead of 100")
                extra[name] = memory_peak(fn, device)
                extra[name]["detections"] = dets

            check.run(name + " (warm-up)", probe)
            if name in extra:
                cases[name] = fn
    if not cases:
        return
    times = check.run(
        "infer timing",
        lambda: interleaved_times(cases, repeats=s["repeats"], warmup=0, sync=make_sync(device)),
    )
    if times is None:
        return
    for name, t in times.items():
        ms = statistics.median(t) * 1e3
        check.add(name, "ok", latency_ms=ms, per_s=1e3 / ms, runs=len(t), **extra[name])


def case_train(check: Check, s: dict[str, Any], args: argparse.Namespace) -> None:
    import torch

    from maskx.bench.heads import (
        bench_model_config,
        copy_shared_weights,
        interleaved_times,
        make_train_step,
        random_images,
        random_targets,
        torchvision_twin,
    )
    from model import build_model

    device = check.device
    cfg = bench_model_config(
        num_classes=args.k_small, backbone=s["backbone"], size=s["size"], small_heads=args.quick
    )
    torch.manual_seed(args.seed)
    ours = build_model(cfg)
    theirs = torchvision_twin(cfg)
    copy_shared_weights(theirs, ours)
    images = random_images(s["train_images"], s["size"], args.seed)
    targets = random_targets(images, cfg.num_classes, args.seed)
    images = [img.to(device) for img in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    variants = [
        ("Mask^X", ours, "fp32", None),
        ("torchvision", theirs, "fp32", None),
        ("Mask^X", ours, "bf16", torch.bfloat16),
        ("torchvision", theirs, "bf16", torch.bfloat16),
        ("Mask^X", ours, "fp16", torch.float16),
    ]
    cases: dict[str, Callable[[], Any]] = {}
    extra: dict[str, dict[str, Any]] = {}
    for model_name, model, pname, dtype in variants:
        name = f"train {pname} {model_name}"

        def build_and_probe(model: Any = model, dtype: Any = dtype, name: str = name) -> None:
            # Each precision trains its own copy, so that one's updates do not feed another.
            replica = copy.deepcopy(model).to(device)
            scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
            step = make_train_step(
                replica, images, targets, seed=args.seed, autocast_dtype=dtype, scaler=scaler
            )
            for _ in range(s["train_warmup"]):
                loss = step()
            extra[name] = memory_peak(step, device)
            extra[name]["loss"] = loss
            cases[name] = step

        check.run(name + " (warm-up)", build_and_probe)
    if not cases:
        return
    times = check.run(
        "train timing",
        lambda: interleaved_times(
            cases, repeats=s["train_steps"], warmup=0, sync=make_sync(device)
        ),
    )
    if times is None:
        return
    for name, t in times.items():
        step_s = statistics.median(t)
        check.add(
            name, "ok", latency_ms=step_s * 1e3, per_s=1 / step_s,
            images_per_s=s["train_images"] / step_s, runs=len(t), **extra[name],
        )  # fmt: skip


# ---------------------------------------------------------------------------------- output
def ratios(rows: list[dict[str, Any]], k_small: int, k_large: int) -> dict[str, float]:
    """K-scaling, bf16 speed-up and Mask^X/torchvision ratios of the measured rows."""
    ms = {r["case"]: r["latency_ms"] for r in rows if r["status"] == "ok" and "latency_ms" in r}
    out = {}
    pairs = {
        f"infer fp32 latency K={k_large}/K={k_small}": (
            f"infer fp32 K={k_large}", f"infer fp32 K={k_small}"),
        f"infer bf16 latency K={k_large}/K={k_small}": (
            f"infer bf16 K={k_large}", f"infer bf16 K={k_small}"),
        f"infer bf16/fp32 latency K={k_small}": (
            f"infer bf16 K={k_small}", f"infer fp32 K={k_small}"),
        "train fp32 step Mask^X/torchvision": ("train fp32 Mask^X", "train fp32 torchvision"),
        "train bf16 step Mask^X/torchvision": ("train bf16 Mask^X", "train bf16 torchvision"),
        "train bf16/fp32 step Mask^X": ("train bf16 Mask^X", "train fp32 Mask^X"),
    }  # fmt: skip
    for name, (a, b) in pairs.items():
        if a in ms and b in ms:
            out[name] = ms[a] / ms[b]
    return out


def format_rows(rows: list[dict[str, Any]]) -> str:
    from maskx.bench.heads import format_table

    def num(v: Any, fmt: str) -> str:
        return "" if v is None else format(v, fmt)

    table = [
        [
            r["case"], r["status"], num(r.get("latency_ms"), ".1f"), num(r.get("per_s"), ".2f"),
            num(r.get("peak_mb"), ".0f"), num(r.get("abs_peak_mb"), ".0f"), r.get("note", ""),
        ]
        for r in rows
    ]  # fmt: skip
    return format_table(["case", "status", "ms", "per s", "peak +MiB", "peak MiB", "note"], table)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke run)")
    p.add_argument("--quick", action="store_true", help="tiny backbone, few runs")
    p.add_argument("--budget-s", type=float, default=420.0, help="hard time budget (420 s)")
    p.add_argument("--size", type=int, help="short side (800; quick 128)")
    p.add_argument("--repeats", type=int, help="timed inference runs per case (20)")
    p.add_argument("--train-steps", type=int, help="timed train steps per case (10)")
    p.add_argument("--k-small", type=int, default=80)
    p.add_argument("--k-large", type=int, default=3000)
    p.add_argument(
        "--top-ranks", type=int, default=10, help="top CPU detections that must all be matched"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="folder for gpu_check.json (default: $OUT)")
    p.add_argument(
        "--only", default="correctness,infer,train", help="comma list of case groups to run"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.monotonic()
    import torch
    import torchvision

    s = dict(QUICK if args.quick else FULL)
    for key in ("size", "repeats", "train_steps"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    out_dir = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available (use --device cpu for a smoke run)")
        device = None
    else:
        device = torch.device(args.device)
    check = Check(args.budget_s, out_dir, device)
    check.t0 = t_start
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": args.device,
        "settings": s,
        "k": [args.k_small, args.k_large],
        "cpu_threads": torch.get_num_threads(),
    }
    if device is not None and device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            card=torch.cuda.get_device_name(device),
            capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
            matmul_tf32=torch.backends.cuda.matmul.allow_tf32,
            cudnn_tf32=torch.backends.cudnn.allow_tf32,
            cudnn_benchmark=torch.backends.cudnn.benchmark,
        )
    check.info = info
    print("gpu_check: " + json.dumps(info), flush=True)

    groups = {g.strip() for g in args.only.split(",") if g.strip()}
    if device is not None:
        if "correctness" in groups:
            check.run("correctness", lambda: case_correctness(check, s, args))
        if "infer" in groups:
            check.run("inference", lambda: case_inference(check, s, args))
        if "train" in groups:
            check.run("train", lambda: case_train(check, s, args))
    else:
        check.add("all", "skipped", note="no CUDA device")

    check.info["ratios"] = ratios(check.rows, args.k_small, args.k_large)
    check.save()
    card = info.get("card", args.device)
    print(
        f"\n== maskx gpu_check on {card}: torch {info['torch']}, torchvision "
        f"{info['torchvision']}, CUDA {info['cuda']}; {s['backbone']} FPN, short side "
        f"{s['size']}, {check.elapsed():.0f} s =="
    )
    print(format_rows(check.rows))
    for name, value in check.info["ratios"].items():
        print(f"{name}: {value:.3f}")
    if out_dir is not None:
        print(f"wrote {out_dir / 'gpu_check.json'}")
    failed = [r["case"] for r in check.rows if r["status"] in ("error", "FAIL")]
    return 1 if failed or device is None else 0


if __name__ == "__main__":
    sys.exit(main())
