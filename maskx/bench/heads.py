"""``maskx bench heads``: does the mask branch stay flat in K, and does Mask^X train as fast as
plain Mask R-CNN?

Two comparisons, each measured side by side in one run (interleaved and rotated, so that load from
other processes hits every variant alike; medians after warm-up):

* **Eval, K=3000 vs K=80** — the Mask^X model (``transfer``, ``cls+box``), MLP branch off and
  on, random weights, ``box_score_thresh=0`` and ``box_detections_per_img=100`` so that every
  forward yields exactly 100 detections (checked). Reports latency, the peak RSS increase of one
  forward (fresh subprocess per variant, see :func:`forward_peak_rss`) and the largest tensor the
  mask branch allocates (:class:`LargestAllocation`). The backbone, RPN and heads of the two K
  share their weights, so the proposals are identical and only K differs.
* **Train step, Mask^X vs torchvision** — ``MaskXRCNN`` (transfer predictor, MLP off) against
  torchvision's ``MaskRCNN`` built on the same backbone config, same K, same weights where the
  parameters coincide, same images/targets and the same RNG seed per step: forward + backward +
  SGD step.

Goal for every ratio: ≤ 1.10. torch and model are imported inside functions only (the
``maskx bench`` dispatcher imports this module to build its parser; ``maskx/bench/gpu_check.py`` reuses
the helpers on a machine where only torch and torchvision are installed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from maskx.cli import add_output_argument

GOAL = 1.10
"""Largest acceptable ratio (K=3000 / K=80 and Mask^X / torchvision)."""

# Settings of a full run and of ``--quick`` (a smoke run in seconds on the tiny backbone).
FULL = {"backbone": "resnet50", "size": 512, "repeats": 5, "train_images": 2, "train_repeats": 3}
QUICK = {"backbone": "tiny", "size": 128, "repeats": 2, "train_images": 1, "train_repeats": 2}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backbone",
        help=f"resnet50, resnet101, resnet18, mobilenet_v3 or tiny ({FULL['backbone']})",
    )
    parser.add_argument("--size", type=int, help=f"short side of the images ({FULL['size']})")
    parser.add_argument("--k-small", type=int, default=80, help="K of the small model (80)")
    parser.add_argument("--k-large", type=int, default=3000, help="K of the large model (3000)")
    parser.add_argument("--detections", type=int, default=100, help="forced detections (100)")
    parser.add_argument(
        "--mlp-input-size", type=int, default=14,
        help="spatial size the fused MLP branch reads (14; 28 is the reference's 157 M weights)",
    )  # fmt: skip
    parser.add_argument(
        "--repeats", type=int, help=f"timed eval runs per variant ({FULL['repeats']})"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per variant (1)")
    parser.add_argument(
        "--train-images", type=int, help=f"images per train step ({FULL['train_images']})"
    )
    parser.add_argument(
        "--train-repeats", type=int, help=f"timed train steps per model ({FULL['train_repeats']})"
    )
    parser.add_argument("--train-k", type=int, default=80, help="K of the train-step models (80)")
    parser.add_argument(
        "--train-instances", type=int, default=5,
        help="ground-truth instances per training image (5); a trained RPN's positives are many "
        "more than the random RPN's, and more instances give the mask branch as many RoIs",
    )  # fmt: skip
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocesses")
    parser.add_argument("--no-train", action="store_true", help="skip the train-step comparison")
    parser.add_argument(
        "--no-eval", action="store_true", help="skip the eval comparison (train step only)"
    )
    parser.add_argument("--profile", action="store_true", help="print the top ops of each variant")
    parser.add_argument("--quick", action="store_true", help="tiny backbone, few runs (smoke test)")
    parser.add_argument("--seed", type=int, default=0)
    # --out, as on every maskx command; --json, the earlier spelling, still works.
    add_output_argument(parser, dest="json", old=("--json",), type=Path, metavar="FILE.json",
                        help="write the figures to this JSON file")  # fmt: skip


# ------------------------------------------------------------------------------ model helpers
def bench_model_config(
    *,
    num_classes: int,
    backbone: str,
    size: int,
    mlp: bool = False,
    mlp_input_size: int = 14,
    detections: int = 100,
    small_heads: bool = False,
) -> Any:
    """The :class:`model.ModelConfig` of a benchmark variant.

    ``box_score_thresh=0`` so that every RoI × class is a candidate and ``detections`` are
    always produced; the other fields keep the model's defaults (R-50-FPN paper settings, the
    ``transfer`` predictor with ``cls+box`` input) unless ``small_heads`` (the smoke-test model).
    """
    from model import ModelConfig

    fields: dict[str, Any] = dict(
        num_classes=num_classes,
        backbone=backbone,
        min_size=size,
        max_size=max(1333, -(-size * 4 // 3)),
        mask_predictor="transfer",
        transfer_input="cls+box",
        mlp=mlp,
        mlp_input_size=mlp_input_size,
        box_score_thresh=0.0,
        box_detections_per_img=detections,
    )
    if small_heads:
        fields.update(
            fpn_channels=64,
            anchor_sizes=(16, 32, 64, 128, 256),
            rpn_pre_nms_top_n_train=600,
            rpn_post_nms_top_n_train=300,
            rpn_pre_nms_top_n_test=300,
            rpn_post_nms_top_n_test=150,
            box_head_dim=256,
            box_batch_size_per_image=128,
            mask_head_dim=64,
            mask_head_layers=2,
            transfer_hidden=64,
            box_candidates_per_img=max(500, detections),
        )
    return ModelConfig(**fields)


def copy_shared_weights(dst: Any, src: Any) -> list[str]:
    """Copy every parameter/buffer of ``src`` whose name and shape ``dst`` shares; return the
    names of ``dst``'s entries left as they were (the class-count-dependent layers)."""
    import torch

    src_state = src.state_dict()
    kept = []
    with torch.no_grad():
        for name, value in dst.state_dict().items():
            other = src_state.get(name)
            if other is not None and other.shape == value.shape:
                value.copy_(other)
            else:
                kept.append(name)
    return kept


def torchvision_twin(cfg: Any) -> Any:
    """torchvision's ``MaskRCNN`` with the modules :func:`model.build_model` builds for
    ``cfg`` (same backbone, RPN, RoI pools, box and mask heads), but torchvision's own class-
    specific predictors and ``RoIHeads``: plain Mask R-CNN, the train-step baseline."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

    from model import mask_rcnn_arguments

    k1, d = cfg.num_classes + 1, cfg.mask_head_dim
    return MaskRCNN(
        num_classes=None,
        box_predictor=FastRCNNPredictor(cfg.box_head_dim, k1),
        mask_predictor=MaskRCNNPredictor(d, d, k1),
        **mask_rcnn_arguments(cfg),
    )


def image_hw(size: int) -> tuple[int, int]:
    """(H, W) of the benchmark images: short side ``size``, 4:3 landscape."""
    return size, -(-size * 4 // 3)


def random_images(n: int, size: int, seed: int) -> list[Any]:
    """``n`` float32 [3, H, W] images in [0, 1] (H, W from :func:`image_hw`)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    h, w = image_hw(size)
    return [torch.rand(3, h, w, generator=g) for _ in range(n)]


def random_targets(
    images: list[Any], num_classes: int, seed: int, instances: int = 5
) -> list[dict[str, Any]]:
    """Training targets (docs/contracts.md) with ``instances`` boxes per image, all with masks
    (rectangles and ellipses filling their boxes), labels uniform in 1..K."""
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    targets = []
    for img in images:
        h, w = img.shape[-2:]
        boxes, masks = [], []
        for i in range(instances):
            bw = int(torch.randint(w // 8, w // 2, (1,), generator=g))
            bh = int(torch.randint(h // 8, h // 2, (1,), generator=g))
            x1 = int(torch.randint(0, w - bw, (1,), generator=g))
            y1 = int(torch.randint(0, h - bh, (1,), generator=g))
            m = torch.zeros(h, w, dtype=torch.uint8)
            if i % 2:
                yy, xx = torch.meshgrid(torch.arange(bh), torch.arange(bw), indexing="ij")
                ell = ((yy - bh / 2) / (bh / 2)) ** 2 + ((xx - bw / 2) / (bw / 2)) ** 2 <= 1
                m[y1 : y1 + bh, x1 : x1 + bw] = ell.to(torch.uint8)
            else:
                m[y1 : y1 + bh, x1 : x1 + bw] = 1
            boxes.append([x1, y1, x1 + bw, y1 + bh])
            masks.append(m)
        targets.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32),
                "labels": torch.randint(1, num_classes + 1, (instances,), generator=g),
                "masks": torch.stack(masks),
            }
        )
    return targets


def make_train_step(
    model: Any,
    images: list[Any],
    targets: list[dict[str, Any]],
    *,
    seed: int,
    lr: float = 1e-4,
    autocast_dtype: Any = None,
    scaler: Any = None,
) -> Callable[[], float]:
    """A closure running one forward + backward + SGD step of ``model`` (in train mode) on the
    same batch every call; returns the summed loss. The RNG is reseeded first, so two models
    with equal RPN weights sample the same RoIs. The learning rate is small so that random
    weights do not diverge over the benchmark's few steps."""
    import torch

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
    device_type = images[0].device.type

    def step() -> float:
        torch.manual_seed(seed)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            losses = model(images, targets)
        loss = sum(v.float() for v in losses.values())
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        return float(loss.detach())

    return step


# --------------------------------------------------------------------------------- measuring
def interleaved_times(
    cases: Mapping[str, Callable[[], object]],
    *,
    repeats: int,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
    cpu_times: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """Run every case ``warmup`` times, then ``repeats`` rounds of one run each, interleaved and
    rotated (A B C, B C A, C A B, …: a load that recurs once per round must not always hit the
    same case); return the wall-clock seconds of each timed run per case.

    ``sync`` (e.g. ``torch.cuda.synchronize``) is called before and after each timed run so that
    asynchronous devices are measured to completion. ``cpu_times``, when given, receives the
    process CPU seconds (all threads) of each timed run: on a CPU shared with other jobs it
    varies less than wall time, since waiting for a core does not count.
    """
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = cases[name]
            if sync is not None:
                sync()
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            if sync is not None:
                sync()
            times[name].append(time.perf_counter() - t0)
            if cpu_times is not None:
                cpu_times.setdefault(name, []).append(time.process_time() - c0)
    return times


def _make_largest_allocation_mode() -> Any:
    from torch.utils._python_dispatch import TorchDispatchMode

    class LargestAllocation(TorchDispatchMode):
        """Records the largest storage any aten op allocates while active (views and in-place
        results share an input's storage and are not counted)."""

        def __init__(self) -> None:
            super().__init__()
            self.nbytes = 0
            self.shape: tuple[int, ...] | None = None
            self.op = ""

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            import torch
            from torch.utils._pytree import tree_leaves

            out = func(*args, **(kwargs or {}))
            inputs = {
                t.untyped_storage().data_ptr()
                for t in tree_leaves((args, kwargs or {}))
                if isinstance(t, torch.Tensor) and t.layout == torch.strided
            }
            for t in tree_leaves(out):
                if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
                    continue
                storage = t.untyped_storage()
                if storage.data_ptr() in inputs or storage.nbytes() <= self.nbytes:
                    continue
                self.nbytes, self.shape, self.op = storage.nbytes(), tuple(t.shape), str(func)
            return out

    return LargestAllocation


def largest_allocations(model: Any, images: list[Any]) -> dict[str, dict[str, Any]]:
    """One eval forward of ``model`` with the largest allocation recorded separately inside the
    mask branch (``roi_heads.predict_masks``: RoIAlign, mask head, predictor) and inside the whole
    RoI heads (box branch included). Returns ``{part: {"bytes", "shape", "op"}}``."""
    import torch

    mode_cls = _make_largest_allocation_mode()
    heads = model.roi_heads
    records: dict[str, Any] = {"mask_branch": mode_cls(), "roi_heads": mode_cls()}
    original_predict, original_forward = heads.predict_masks, heads.forward

    def predict_masks(*a: Any, **kw: Any) -> Any:
        with records["mask_branch"]:
            return original_predict(*a, **kw)

    def forward(*a: Any, **kw: Any) -> Any:
        with records["roi_heads"]:
            return original_forward(*a, **kw)

    # Instance attributes shadow the bound methods for this one call only.
    heads.predict_masks, heads.forward = predict_masks, forward
    try:
        with torch.inference_mode():
            model(images)
    finally:
        del heads.predict_masks, heads.forward
    # A nested mode does not see ops the inner one handled: fold the mask branch into the heads.
    if records["mask_branch"].nbytes > records["roi_heads"].nbytes:
        records["roi_heads"] = records["mask_branch"]
    return {
        part: {"bytes": r.nbytes, "shape": list(r.shape or ()), "op": r.op}
        for part, r in records.items()
    }


def _proc_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _memory_child(spec_json: str) -> int:
    """Subprocess entry of :func:`forward_peak_rss`: build, warm up, measure one forward."""
    import gc

    import torch

    from model import ModelConfig, build_model

    spec = json.loads(spec_json)
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    model = build_model(ModelConfig.from_dict(spec["config"])).eval()
    images = random_images(1, spec["size"], spec["seed"])
    with torch.inference_mode():
        out = model(images)  # warm-up: one-time allocations (thread pools, kernel caches)
        del out
        gc.collect()
        rss_before = _proc_status_kb("VmRSS")
        method = "VmHWM after clear_refs"
        try:
            # Writing 5 resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0).
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            method = "none"
        out = model(images)
        peak = _proc_status_kb("VmHWM")
    detections = int(out[0]["boxes"].shape[0])
    result = {
        "method": method,
        "rss_before_mb": rss_before / 1024 if rss_before is not None else None,
        "peak_increase_mb": (
            (peak - rss_before) / 1024
            if method != "none" and peak is not None and rss_before is not None
            else None
        ),
        "detections": detections,
    }
    print("MASKX_MEMORY " + json.dumps(result), flush=True)
    return 0


def _memory_command(cfg: Any, *, size: int, seed: int, threads: int) -> tuple[list[str], dict]:
    import maskx

    spec = {"config": cfg.to_dict(), "size": size, "seed": seed, "threads": threads}
    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    package_root = str(Path(maskx.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    code = (
        "import sys; from maskx.bench.heads import _memory_child; "
        "sys.exit(_memory_child(sys.argv[1]))"
    )
    return [sys.executable, "-c", code, json.dumps(spec)], env


def forward_peak_rss(
    configs: Mapping[str, Any], *, size: int, seed: int, threads: int, parallel: int = 2
) -> dict[str, dict[str, Any]]:
    """Peak resident-memory increase of one eval forward of each model in ``configs``.

    Each model runs in a fresh Python process (so one variant's allocator state cannot hide
    another's peak) with ``MALLOC_MMAP_THRESHOLD_`` fixed at 64 KiB, so that glibc returns freed
    large buffers to the OS and RSS follows the live tensors. After a warm-up forward the
    kernel's peak-RSS counter is reset (``/proc/self/clear_refs``) and one forward is measured:
    ``peak_increase_mb = VmHWM - VmRSS before``. Peaks are per process, so ``parallel``
    processes may run at once without disturbing each other's figure. Linux only; elsewhere the
    figure is None.
    """
    pending = list(configs.items())
    running: list[tuple[str, Any, subprocess.Popen]] = []
    results: dict[str, dict[str, Any]] = {}
    while pending or running:
        while pending and len(running) < max(parallel, 1):
            name, cfg = pending.pop(0)
            cmd, env = _memory_command(cfg, size=size, seed=seed, threads=threads)
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
            )
            running.append((name, cfg, proc))
        name, cfg, proc = running.pop(0)
        stdout, stderr = proc.communicate()
        for line in stdout.splitlines():
            if line.startswith("MASKX_MEMORY "):
                results[name] = json.loads(line.split(" ", 1)[1])
                break
        else:
            raise RuntimeError(
                f"memory subprocess of {name} (K={cfg.num_classes}, mlp={cfg.mlp}) failed "
                f"(exit {proc.returncode}): {stderr.strip()[-2000:]}"
            )
    return results


def top_ops(fn: Callable[[], object], n: int = 12) -> str:
    """The ``n`` aten ops with the most self CPU time during one call of ``fn``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=n)


# ------------------------------------------------------------------------------------ output
def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain-text table: columns left-aligned, a rule under the header."""
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _mb(nbytes: float | None) -> str | None:
    return None if nbytes is None else f"{nbytes / 2**20:.1f}"


def _ratio_line(name: str, value: float | None, goal: bool = True) -> str:
    if value is None:
        return f"{name}: n/a"
    if not goal:
        return f"{name}: {value:.3f} (for information)"
    verdict = "meets" if value <= GOAL else "MISSES"
    return f"{name}: {value:.3f} ({verdict} the goal <= {GOAL:.2f})"


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    base = QUICK if args.quick else FULL
    return {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in base.items()}


def _validate(args: argparse.Namespace, s: dict[str, Any]) -> None:
    for name in ("repeats", "train_images", "train_repeats", "size"):
        if s[name] < 1:
            raise SystemExit(f"maskx bench heads: --{name.replace('_', '-')} must be >= 1")
    if args.train_instances < 1:
        raise SystemExit("maskx bench heads: --train-instances must be >= 1")
    if args.warmup < 0:
        raise SystemExit("maskx bench heads: --warmup must be >= 0")
    if not 1 <= args.k_small <= args.k_large:
        raise SystemExit(
            f"maskx bench heads: need 1 <= --k-small ({args.k_small}) <= --k-large ({args.k_large})"
        )


# -------------------------------------------------------------------------------------- main
def run_eval(args: argparse.Namespace, s: dict[str, Any]) -> dict[str, Any]:
    """The eval comparison (K small vs large, MLP off and on); returns its JSON section."""
    import torch

    from model import build_model

    images = random_images(1, s["size"], args.seed)
    variants: dict[str, dict[str, Any]] = {}
    models: dict[str, Any] = {}
    reference = None  # the first model: every other one takes its shared weights
    for mlp in (False, True):
        same_mlp = None
        for k in (args.k_small, args.k_large):
            name = f"transfer{'+mlp' if mlp else ''} K={k}"
            cfg = bench_model_config(
                num_classes=k, backbone=s["backbone"], size=s["size"], mlp=mlp,
                mlp_input_size=args.mlp_input_size, detections=args.detections,
                small_heads=args.quick,
            )  # fmt: skip
            torch.manual_seed(args.seed)
            model = build_model(cfg).eval()
            if reference is None:
                reference = model
            else:
                copy_shared_weights(model, reference)
            if same_mlp is None:
                same_mlp = model
            else:
                copy_shared_weights(model, same_mlp)  # the MLP branch too
            models[name] = model
            variants[name] = {"k": k, "mlp": mlp, "config": cfg}

    def forward(model: Any) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode():
                return model(images)

        return run

    cases = {name: forward(m) for name, m in models.items()}
    for name, fn in cases.items():
        n = int(fn()[0]["boxes"].shape[0])
        if n != args.detections:
            raise RuntimeError(
                f"{name}: {n} detections instead of {args.detections}; the comparison needs the "
                "same number on both sides (raise rpn_post_nms_top_n_test or lower --detections)"
            )
        variants[name]["detections"] = n
    cpu: dict[str, list[float]] = {}
    times = interleaved_times(cases, repeats=s["repeats"], warmup=args.warmup, cpu_times=cpu)

    # The RoI heads alone, on the same features and proposals (backbone and RPN weights are
    # shared): the part where K enters, timed without the backbone's larger, K-free cost.
    with torch.inference_mode():
        image_list, _ = reference.transform(images)
        features = reference.backbone(image_list.tensors)
        proposals, _ = reference.rpn(image_list, features)

    def heads_only(model: Any) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode():
                return model.roi_heads(features, proposals, image_list.image_sizes)

        return run

    heads_times = interleaved_times(
        {name: heads_only(m) for name, m in models.items()},
        repeats=s["repeats"],
        warmup=args.warmup,
    )
    for name, t in times.items():
        variants[name]["latency_s"] = statistics.median(t)
        variants[name]["latency_runs_s"] = t
        variants[name]["cpu_s"] = statistics.median(cpu[name])
        variants[name]["roi_heads_s"] = statistics.median(heads_times[name])
        variants[name]["roi_heads_runs_s"] = heads_times[name]
        variants[name]["largest"] = largest_allocations(models[name], images)
        if args.profile:
            print(f"\n--- top ops: {name}\n{top_ops(cases[name])}")
    del models, cases
    if not args.no_memory:
        memory = forward_peak_rss(
            {name: v["config"] for name, v in variants.items()},
            size=s["size"], seed=args.seed, threads=torch.get_num_threads(),
            parallel=2 if args.quick else 1,
        )  # fmt: skip
        for name, v in variants.items():
            if memory[name]["detections"] != args.detections:
                raise RuntimeError(
                    f"{name}: the memory subprocess got {memory[name]['detections']} detections "
                    f"instead of {args.detections}"
                )
            v["memory"] = memory[name]
    return {name: {**v, "config": v["config"].to_dict()} for name, v in variants.items()}


def run_train(args: argparse.Namespace, s: dict[str, Any]) -> dict[str, Any]:
    """The train-step comparison (Mask^X vs torchvision Mask R-CNN); returns its JSON section."""
    import torch

    from model import build_model

    cfg = bench_model_config(
        num_classes=args.train_k, backbone=s["backbone"], size=s["size"], mlp=False,
        small_heads=args.quick,
    )  # fmt: skip
    torch.manual_seed(args.seed)
    ours = build_model(cfg)
    theirs = torchvision_twin(cfg)
    not_shared = copy_shared_weights(theirs, ours)
    images = random_images(s["train_images"], s["size"], args.seed)
    targets = random_targets(images, cfg.num_classes, args.seed, instances=args.train_instances)
    mask_rois: dict[str, int] = {}
    for name, model in (("Mask^X (transfer)", ours), ("torchvision MaskRCNN", theirs)):
        # The RoIs the mask branch trains on in a step (the same sampling in both models).
        model.roi_heads.mask_roi_pool.register_forward_hook(
            lambda m, i, out, name=name: mask_rois.__setitem__(name, int(out.shape[0]))
        )
    steps = {
        "Mask^X (transfer)": make_train_step(ours, images, targets, seed=args.seed),
        "torchvision MaskRCNN": make_train_step(theirs, images, targets, seed=args.seed),
    }
    losses: dict[str, float] = {}

    def recording(name: str, fn: Callable[[], float]) -> Callable[[], float]:
        def run() -> float:
            losses[name] = fn()
            return losses[name]

        return run

    cases = {name: recording(name, fn) for name, fn in steps.items()}
    cpu: dict[str, list[float]] = {}
    times = interleaved_times(cases, repeats=s["train_repeats"], warmup=args.warmup, cpu_times=cpu)
    if args.profile:
        for name, fn in cases.items():
            print(f"\n--- top ops: train step {name}\n{top_ops(fn)}")
    # Each round runs the two steps back to back, so the ratio within a round sees the same
    # machine state; its median and spread say more than the ratio of the two medians when
    # other processes come and go.
    ours_name, theirs_name = list(steps)
    paired = {
        "step_s": [a / b for a, b in zip(times[ours_name], times[theirs_name], strict=True)],
        "cpu_s": [a / b for a, b in zip(cpu[ours_name], cpu[theirs_name], strict=True)],
    }
    return {
        "k": cfg.num_classes,
        "images_per_step": len(images),
        "instances_per_image": args.train_instances,
        "mask_rois_per_step": mask_rois,
        "not_shared_parameters": not_shared,
        "paired_ratios": paired,
        "models": {
            name: {
                "step_s": statistics.median(t),
                "step_runs_s": t,
                "cpu_s": statistics.median(cpu[name]),
                "last_loss": losses[name],
            }
            for name, t in times.items()
        },
    }


def main(args: argparse.Namespace) -> int:
    import torch

    s = _settings(args)
    _validate(args, s)
    h, w = image_hw(s["size"])
    header = (
        f"maskx bench heads: {s['backbone']} FPN, images {h}x{w}, {torch.get_num_threads()} CPU "
        f"threads, torch {torch.__version__}, {platform.processor() or platform.machine()}"
    )
    print(header, flush=True)
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "settings": {**s, **{k: getattr(args, k) for k in (
            "k_small", "k_large", "detections", "mlp_input_size", "warmup", "train_k", "seed")}},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "goal": GOAL,
    }  # fmt: skip
    # Other processes' load is the main source of noise on a shared CPU: record it.
    cpu_load_before = _load_average()
    if args.no_eval and args.no_train:
        raise SystemExit("maskx bench heads: --no-eval and --no-train leave nothing to measure")
    if not args.no_eval:
        result["eval"] = run_eval(args, s)
    if not args.no_train:
        result["train"] = run_train(args, s)
    result["load_average"] = {"before": cpu_load_before, "after": _load_average()}
    result["wall_s"] = time.perf_counter() - t0

    ratios: dict[str, float | None] = {}
    ev = result.get("eval", {})
    rows = []
    for name, v in ev.items():
        mem = v.get("memory") or {}
        runs = v["latency_runs_s"]
        rows.append([
            name, v["detections"], f"{v['latency_s']:.3f}", f"{min(runs):.3f}-{max(runs):.3f}",
            f"{v['cpu_s']:.3f}", f"{v['roi_heads_s']:.3f}",
            None if mem.get("peak_increase_mb") is None else f"{mem['peak_increase_mb']:.1f}",
            _mb(v["largest"]["mask_branch"]["bytes"]),
            "x".join(map(str, v["largest"]["mask_branch"]["shape"])),
            _mb(v["largest"]["roi_heads"]["bytes"]),
        ])  # fmt: skip
    if ev:
        print(
            f"\nEval, one image, median of {s['repeats']} interleaved runs after {args.warmup} "
            "warm-up"
        )
        print(format_table(
            ["variant", "dets", "latency s", "range s", "CPU s", "RoI heads s", "peak RSS +MB",
             "mask-branch max MB",
             "its shape", "RoI-heads max MB"], rows))  # fmt: skip
    for suffix in ("", "+mlp") if ev else ():
        small = ev[f"transfer{suffix} K={args.k_small}"]
        large = ev[f"transfer{suffix} K={args.k_large}"]
        tag = f"transfer{suffix}"
        ratios[f"{tag} latency K={args.k_large}/K={args.k_small}"] = (
            large["latency_s"] / small["latency_s"]
        )
        ratios[f"{tag} CPU time K={args.k_large}/K={args.k_small}"] = (
            large["cpu_s"] / small["cpu_s"]
        )
        ratios[f"{tag} RoI-heads latency K={args.k_large}/K={args.k_small}"] = (
            large["roi_heads_s"] / small["roi_heads_s"]
        )
        pm_small = (small.get("memory") or {}).get("peak_increase_mb")
        pm_large = (large.get("memory") or {}).get("peak_increase_mb")
        ratios[f"{tag} peak RSS K={args.k_large}/K={args.k_small}"] = (
            pm_large / pm_small if pm_small and pm_large is not None else None
        )
        ratios[f"{tag} mask-branch max K={args.k_large}/K={args.k_small}"] = (
            large["largest"]["mask_branch"]["bytes"] / small["largest"]["mask_branch"]["bytes"]
        )
    if "train" in result:
        tr = result["train"]
        print(
            f"\nTrain step (forward + backward + SGD), {tr['images_per_step']} image(s), "
            f"K={tr['k']}, {tr['instances_per_image']} instances per image, mask RoIs per step "
            f"{' / '.join(str(n) for n in tr['mask_rois_per_step'].values())}, median of "
            f"{s['train_repeats']} interleaved steps"
        )
        print(format_table(
            ["model", "step s", "range s", "CPU s", "loss"],
            [[name, f"{m['step_s']:.3f}", f"{min(m['step_runs_s']):.3f}-"
              f"{max(m['step_runs_s']):.3f}", f"{m['cpu_s']:.3f}", f"{m['last_loss']:.3f}"]
             for name, m in tr["models"].items()]))  # fmt: skip
        ratios["train step CPU time Mask^X/torchvision"] = (
            tr["models"]["Mask^X (transfer)"]["cpu_s"]
            / tr["models"]["torchvision MaskRCNN"]["cpu_s"]
        )
        ratios["train step Mask^X/torchvision"] = (
            tr["models"]["Mask^X (transfer)"]["step_s"]
            / tr["models"]["torchvision MaskRCNN"]["step_s"]
        )
        for key, label in (("step_s", ""), ("cpu_s", " CPU time")):
            per_round = tr["paired_ratios"][key]
            ratios[f"train step{label} Mask^X/torchvision, median of per-round ratios"] = (
                statistics.median(per_round)
            )
            print(
                f"per-round ratios{label or ' (wall)'}: "
                + " ".join(f"{r:.3f}" for r in per_round)
                + f"  (range {min(per_round):.3f}-{max(per_round):.3f})"
            )
    result["ratios"] = ratios
    # The RoI heads alone (where K enters) and CPU times explain the wall-clock ratios; the goal
    # applies to those.
    informative = {
        name for name in ratios if "RoI-heads" in name or "CPU time" in name or "per-round" in name
    }
    result["goal_ratios"] = [name for name in ratios if name not in informative]
    result["goals_met"] = all(
        ratios[name] is None or ratios[name] <= GOAL for name in result["goal_ratios"]
    )
    print()
    for name, value in ratios.items():
        print(_ratio_line(name, value, goal=name not in informative))
    print(f"\n({result['wall_s']:.0f} s; load average before/after: {result['load_average']})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
