"""``maskx bench detectron``: the authors' released model at full size, from file to HTTP.

A Detectron-format file with the released model's real names and shapes (R-101-FPN or R-50-FPN,
K = 3001, the 157 M-weight MLP, momentum, backups and ImageNet leftovers; random weights) goes
through the three user commands — ``maskx import-detectron``, ``maskx export`` (verified against
eager PyTorch), ``maskx serve`` — and the same weights cut to K = 81 go beside it. Printed side by
side in one run: time and peak memory of each command, the ONNX file's size, and the served
latency (requests alternating between the two workers) and peak memory at 800 px.

The weights are random but arranged so that both models answer alike: 12 classes of the first
81 respond to a few textured RoIs of the test image and none to a flat image
(:func:`calibrate_classifier`); every other class has a bias of −30 and never scores. Both models then return the same
detections (up to 100 per image, every one with a mask), so the ratio of the two columns is the
cost of K alone: the mask branch, with W_seg baked for every class, must not grow with K.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

COCO_NAMES = [
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic_light",
    "fire_hydrant",
    "stop_sign",
    "parking_meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports_ball",
    "kite",
    "baseball_bat",
    "baseball_glove",
    "skateboard",
    "surfboard",
    "tennis_racket",
    "bottle",
    "wine_glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot_dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted_plant",
    "bed",
    "dining_table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell_phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy_bear",
    "hair_drier",
    "toothbrush",
]
FIRING = (1, 3, 17, 18, 28, 40, 45, 57, 62, 63, 74)
"""Model labels whose classifier bias stands out, besides the last label of the cut model (81:
the first class past the COCO ones, in B), so that answers show both mask sources."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--depth", type=int, choices=(50, 101), default=101)
    parser.add_argument("--classes", type=int, default=3001, help="K of the full model")
    parser.add_argument("--cut", type=int, default=81, help="K of the cut model")
    parser.add_argument("--size", type=int, default=800, help="short side of the test image")
    parser.add_argument("--requests", type=int, default=5, help="timed requests per worker")
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench_detectron"))
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the large files afterwards")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: one block per stage, narrow layers, K=30 vs 20")  # fmt: skip


# ------------------------------------------------------------------------------- the file
def released_like_blobs(spec, cut: int, seed: int) -> dict[str, np.ndarray]:
    """The released file's blobs for ``spec`` (a :class:`training.detectron.writer.Spec`), random
    weights arranged as the module docstring says (every blob, momentum and leftovers
    included); only labels up to ``cut`` can score."""
    from training.detectron.writer import make_blobs, model_params

    blobs = make_blobs(spec, seed)
    rng = np.random.default_rng(seed + 1)
    for name, shape in model_params(spec).items():
        if name.endswith("_w") and len(shape) > 1 and name != "conv5_mask_w":
            fan_in = int(np.prod(shape[1:]))
            blobs[name] = (rng.standard_normal(shape, np.float32) * np.sqrt(2.0 / fan_in)).astype(
                np.float32
            )
    blobs["conv1_w"] /= 100.0  # Detectron feeds 0..255 minus the means
    for name in blobs:
        if name.endswith("_branch2c_w"):
            blobs[name] *= 0.2  # residual branches small, so 33 blocks keep the activations' size
    blobs["rpn_bbox_pred_fpn2_w"] *= 0.1
    blobs["bbox_pred_w"] *= 0.05
    blobs["cls_score_b"] = np.zeros_like(blobs["cls_score_b"])  # set by calibrate_classifier
    blobs["mask_mlp_logits_raw_w"] *= 0.1
    for name in ("cls_score_w", "cls_score_b", "bbox_pred_w", "bbox_pred_b"):
        blobs[name + "_jcvbackup"] = blobs[name].copy()
    return blobs


def calibrate_classifier(
    blobs: dict[str, np.ndarray], cut: int, image: np.ndarray, seed: int
) -> dict[str, float]:
    """Set ``cls_score`` so that the classes of :data:`FIRING` (and label ``cut``) stand out on
    the textured RoIs of ``image`` with scores well apart, no class scores on a flat grey image
    (as a trained model's would not: ``maskx export`` verifies on one, where random features
    would tie up to rounding and eager PyTorch and ONNX Runtime break such near-ties each its
    own way), and no class past ``cut`` ever scores. Reads the box head's features of both
    images through the model the blobs import to. Returns the figures it chose."""
    import torch

    from model import build_model
    from training.detectron.importer import convert_blobs
    from training.detectron.pickle_io import DetectronWeights

    state, report = convert_blobs(DetectronWeights(blobs, None, 2), source="calibration")
    model = build_model(report.model_config).eval()
    model.load_state_dict(state)
    del state
    features: list[torch.Tensor] = []
    model.roi_heads.box_head.register_forward_hook(lambda m, i, o: features.append(o))
    flat = np.full_like(image, 128)
    with torch.no_grad():
        for im in (image, flat):
            model([torch.from_numpy(im.copy()).permute(2, 0, 1).float() / 255.0])
    x_img, x_flat = (f.numpy() for f in features)
    del model
    rng = np.random.default_rng(seed + 2)
    k1, d = blobs["cls_score_w"].shape
    firing = [k for k in FIRING if k < cut] + [cut]
    weight = rng.standard_normal((k1, d)).astype(np.float32) * 1e-3
    directions = rng.standard_normal((len(firing), d)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    s_img, s_flat = x_img @ directions.T, x_flat @ directions.T  # [R, classes]
    # Per class, its top 0.5 % of textured RoIs 8 logits above every flat one and the
    # background 2 above them: a class scores (> 0.05, about 3 logits below the background)
    # on a few RoIs only, so some dozens of detections remain, under the cap of 100 (no cut
    # among near-equal scores decides what is kept), and no flat RoI scores.
    top = np.percentile(s_img, 99.8, axis=0)  # [classes]
    gain = 8.0 / (top - s_flat.max(axis=0))
    weight[firing] = directions * gain[:, None]
    bias = np.full(k1, -30.0, np.float32)  # classes that never score
    bias[0] = 0.0
    bias[firing] = -(gain * top) - 3.0
    blobs["cls_score_w"], blobs["cls_score_b"] = weight, bias
    blobs["cls_score_w_jcvbackup"], blobs["cls_score_b_jcvbackup"] = weight.copy(), bias.copy()
    return {
        "gain_mean": float(gain.mean()),
        "flat_max_logit": float((gain * s_flat.max(0) + bias[firing]).max()),
    }


def cut_blobs(blobs: dict[str, np.ndarray], num_classes: int) -> dict[str, np.ndarray]:
    """The same weights with the first ``num_classes`` classes (rows 0..K of the classifier,
    4(K+1) of the box regressor)."""
    out = dict(blobs)
    for name in ("cls_score", "bbox_pred"):
        rows = (num_classes + 1) * (4 if name == "bbox_pred" else 1)
        for suffix in ("_w", "_b", "_w_jcvbackup", "_b_jcvbackup"):
            if name + suffix in out:
                out[name + suffix] = out[name + suffix][:rows].copy()
    return out


def vocabulary(path: Path, num_classes: int) -> Path:
    """A COCO-format json whose categories are the 80 COCO names then ``vg_class_0081`` …"""
    cats = [
        {"id": i + 1, "name": COCO_NAMES[i] if i < 80 else f"vg_class_{i + 1:04d}"}
        for i in range(num_classes)
    ]
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": cats}))
    return path


# ------------------------------------------------------------------------------ the commands
@dataclass
class Step:
    seconds: float
    peak_rss_mb: float
    exit_code: int = 0


def run_step(argv: list[str], *, allowed_codes: tuple[int, ...] = (0,)) -> Step:
    """Run a ``maskx`` command in a child process; its wall time, peak resident memory and exit
    code (one outside ``allowed_codes`` stops the benchmark)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "maskx.cli", *argv])
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code not in allowed_codes:
        raise SystemExit(f"maskx {' '.join(argv)} failed with exit code {code}")
    return Step(time.perf_counter() - start, usage.ru_maxrss / 1024.0, code)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def decoded(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_image(size: int, seed: int) -> bytes:
    """A PNG of flat rectangles over noise, ``size`` × round(size · 4/3): textured everywhere,
    so that no two RoIs see the same pixels (a flat stretch would give equal scores)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size, round(size * 4 / 3)
    img = rng.integers(40, 216, (h, w, 3)).astype(np.float32)
    for _ in range(12):
        y0, x0 = rng.integers(0, h - h // 8), rng.integers(0, w - w // 8)
        y1, x1 = y0 + rng.integers(h // 8, h // 2), x0 + rng.integers(w // 8, w // 2)
        img[y0:y1, x0:x1] = 0.5 * img[y0:y1, x0:x1] + 0.5 * rng.integers(0, 256, 3)
    buf = io.BytesIO()
    Image.fromarray(img.astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def start_worker(model: Path) -> tuple[subprocess.Popen, str]:
    """``maskx serve`` of ``model`` on a free loopback port, once ``/readyz`` answers 200
    (no warm-up: the first, untimed request of :func:`serve_side_by_side` is it)."""
    from maskx.bench.service import _free_port, wait_ready

    port = _free_port()
    cmd = [sys.executable, "-m", "maskx.cli", "serve", "--model", str(model), "--host",
           "127.0.0.1", "--port", str(port), "--no-warmup", "--request-timeout-s", "600",
           "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url, cmd, timeout_s=600)  # a 1-GB graph loads in tens of seconds
    return proc, url


def serve_side_by_side(models: dict[str, Path], image: bytes, requests: int) -> dict[str, dict]:
    """One worker per model; ``/v1/model`` read; one untimed request each, then ``requests``
    timed ones alternating between the workers; the workers' peak memory at the end."""
    import httpx

    workers = {name: start_worker(path) for name, path in models.items()}
    out: dict[str, dict] = {name: {"latency_s": [], "server_ms": []} for name in models}
    try:
        for name, (_, url) in workers.items():
            described = httpx.get(url + "/v1/model", timeout=30).json()
            out[name]["num_classes"] = len(described["classes"])
            out[name]["mask_classes"] = sum(bool(m) for m in described["mask_classes"])
        for round_ in range(requests + 1):
            for name, (_, url) in workers.items():
                start = time.perf_counter()
                # Detectron's TEST.SCORE_THRESH, the graph's floor (the service's default is 0.5)
                response = httpx.post(url + "/v1/segment?score_threshold=0.05", content=image,
                                      timeout=600,
                                      headers={"content-type": "image/png"})  # fmt: skip
                elapsed = time.perf_counter() - start
                if response.status_code != 200:
                    raise SystemExit(f"{name}: POST /v1/segment answered {response.status_code}")
                body = response.json()
                if round_ == 0:  # untimed: the first run of each shape
                    out[name]["detections"] = [
                        (d["name"], d["mask_source"], round(d["score"], 4))
                        for d in body["detections"]
                    ]
                    continue
                out[name]["latency_s"].append(elapsed)
                out[name]["server_ms"].append(body["timing_ms"])
        for name, (proc, _) in workers.items():
            out[name]["peak_rss_mb"] = peak_rss_mb(proc.pid)
    finally:
        for proc, _ in workers.values():
            proc.terminate()
            proc.wait(60)
    return out


def main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from training.detectron.writer import Spec, write_detectron_pickle

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=7, desc="detectron bench", unit="step")
    if args.quick:
        args.classes, args.cut, args.size = 30, 20, 160
        spec = Spec(blocks=(1, 1, 1, 1), width=8, num_classes=30, fpn_dim=16, box_dim=32,
                    mask_dim=4)  # fmt: skip
    else:
        blocks = (3, 4, 23, 3) if args.depth == 101 else (3, 4, 6, 3)
        spec = Spec(blocks=blocks, num_classes=args.classes)
    full, cut = f"K={args.classes}", f"K={args.cut}"
    blobs = released_like_blobs(spec, args.cut, args.seed)
    png = test_image(args.size, args.seed)
    calibration = calibrate_classifier(blobs, args.cut, decoded(png), args.seed)
    figures: dict[str, dict] = {full: {}, cut: {}, "calibration": calibration}
    files = {
        full: out / f"r{args.depth}_k{args.classes}.pkl",
        cut: out / f"r{args.depth}_k{args.cut}.pkl",
    }
    for name, b in ((full, blobs), (cut, cut_blobs(blobs, args.cut))):
        start = time.perf_counter()
        write_detectron_pickle(files[name], b, None, protocol=2)
        figures[name]["pkl_gb"] = files[name].stat().st_size / 1e9
        figures[name]["write_s"] = time.perf_counter() - start
        figures[name]["weights"] = model_floats(b)
    del blobs
    bar.update(1)
    images = []  # verification images: the test image and another of its kind
    for k, data in enumerate((png, test_image(args.size, args.seed + 1))):
        images.append(out / f"verify_{k}.png")
        images[-1].write_bytes(data)
    onnx_files = {}
    for name, k in ((full, args.classes), (cut, args.cut)):
        vocab = vocabulary(out / f"classes_k{k}.json", k)
        ckpt = out / f"r{args.depth}_k{k}.pt"
        # A = the COCO classes in both models (the importer's default for K = 3001 only).
        mask_classes = out / "mask_classes.txt"
        mask_classes.write_text("".join(f"{n}\n" for n in COCO_NAMES[: min(80, args.cut - 1)]))
        step = run_step(["import-detectron", str(files[name]), "--classes", str(vocab),
                         "--out", str(ckpt), "--name", f"seg-every-thing-r{args.depth}-k{k}",
                         "--mask-classes", str(mask_classes)])  # fmt: skip
        figures[name]["import"] = step.__dict__
        bar.update(1)
        onnx_files[name] = out / f"r{args.depth}_k{k}.onnx"
        # Exit 1 is a verification that found a difference: the file is written and its table
        # printed above; the figures go on, and the verdict is recorded and printed.
        step = run_step(["export", "--checkpoint", str(ckpt), "--output", str(onnx_files[name]),
                         "--images", *map(str, images)], allowed_codes=(0, 1))  # fmt: skip
        figures[name]["export"] = step.__dict__
        figures[name]["onnx_gb"] = onnx_files[name].stat().st_size / 1e9
        bar.update(1)
        files[name].unlink()
    served = serve_side_by_side(onnx_files, png, args.requests)
    bar.update(1)
    bar.close()
    for name in (full, cut):
        figures[name]["serve"] = served[name]
    if served[full]["detections"] != served[cut]["detections"]:
        print("note: the two models answered with different detections", file=sys.stderr)
    print_table(figures, full, cut, args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {"args": {k: str(v) for k, v in vars(args).items() if not k.startswith("_")},
                  "machine": machine(), "figures": figures}  # fmt: skip
        args.json.write_text(json.dumps(record, indent=1))
    if not args.keep:
        shutil.rmtree(out)
    return 0


def model_floats(blobs: dict[str, np.ndarray]) -> int:
    """Floats of the blobs that become model weights (the importer's manifest: momentum,
    backups and ImageNet leftovers excluded; the released R-101 file has 237,071,617)."""
    from training.detectron.importer import infer_architecture
    from training.detectron.manifest import blob_manifest

    return sum(int(np.prod(e.shape)) for e in blob_manifest(infer_architecture(blobs)))


def machine() -> dict[str, str]:
    import platform

    import onnxruntime
    import torch

    return {"cpu": platform.processor() or platform.machine(), "cores": str(os.cpu_count()),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}  # fmt: skip


def print_table(figures: dict, full: str, cut: str, args: argparse.Namespace) -> None:
    def row(label: str, a: float, b: float, fmt: str = "{:.2f}") -> None:
        ratio = a / b if b else float("nan")
        print(f"{label:<34} {fmt.format(a):>12} {fmt.format(b):>12} {ratio:>8.3f}")

    f, c = figures[full], figures[cut]
    arch = "quick (1 block per stage, narrow)" if args.quick else f"R-{args.depth}-FPN"
    print(f"\n{arch} Mask^X, random weights, {args.size} px, "
          f"{args.requests} requests each (alternating)")  # fmt: skip
    print(f"{'':<34} {full:>12} {cut:>12} {'ratio':>8}")
    row("weights (model parameters)", f["weights"], c["weights"], "{:,}")
    row("Detectron file (GB)", f["pkl_gb"], c["pkl_gb"])
    row("import: time (s)", f["import"]["seconds"], c["import"]["seconds"])
    row(
        "import: peak memory (MB)", f["import"]["peak_rss_mb"], c["import"]["peak_rss_mb"], "{:.0f}"
    )
    row("export + verify: time (s)", f["export"]["seconds"], c["export"]["seconds"])
    row("export + verify: peak memory (MB)", f["export"]["peak_rss_mb"],
        c["export"]["peak_rss_mb"], "{:.0f}")  # fmt: skip
    row("ONNX file (GB)", f["onnx_gb"], c["onnx_gb"], "{:.3f}")
    verdict = {0: "passed", 1: "FAILED (table above)"}
    print(f"{'export verification':<34} {verdict[f['export']['exit_code']]:>12} "
          f"{verdict[c['export']['exit_code']]:>12}")  # fmt: skip
    fs, cs = f["serve"], c["serve"]
    row("served: classes", fs["num_classes"], cs["num_classes"], "{:d}")
    row("served: detections per image", len(fs["detections"]), len(cs["detections"]), "{:d}")
    row("served: p50 latency (s)", statistics.median(fs["latency_s"]),
        statistics.median(cs["latency_s"]))  # fmt: skip
    for stage in ("decode", "inference", "postprocess"):
        row(f"served: p50 {stage} (ms)",
            statistics.median(t[stage] for t in fs["server_ms"]),
            statistics.median(t[stage] for t in cs["server_ms"]), "{:.0f}")  # fmt: skip
    row("served: worker peak memory (MB)", fs["peak_rss_mb"], cs["peak_rss_mb"], "{:.0f}")
