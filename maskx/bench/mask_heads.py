"""``maskx bench mask_heads``: what Deep-MARC's options cost, side by side with today's head.

For each mask head (``fcn`` with ``mask_head_layers`` of the config, ``resnet`` at the depths
given) and each choice of mask RoIs (``proposals``, ``gt``), on one model config (default the
shapes experiment's, ``configs/experiment_synth.yaml``):

* **train step**: forward + backward + SGD step on the same random batch (every instance has a
  mask), medians of interleaved, rotated runs (:func:`maskx.bench.heads.interleaved_times`);
* **inference**: one eval forward of the whole model on the same images, ``box_score_thresh=0``
  so that every image yields the config's maximum of detections;
* **mask branch alone**: FLOPs (``torch.utils.flop_counter``) and time of RoIAlign → head →
  predictor for 100 RoIs at K = ``--k-small`` and K = ``--k-large``; the K-ratio must be 1
  (the branch computes each RoI's own class only, whatever its head).

Everything is relative to ``fcn`` + ``proposals`` (today's model) in the same run. torch and
model are imported inside functions only.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from maskx.bench.heads import format_table, interleaved_times, make_train_step, random_targets
from maskx.cli import add_output_argument

QUICK = {"repeats": 1, "train_images": 1, "depths": [4]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/experiment_synth.yaml",
                        help="training YAML whose model section is benchmarked "
                             "(configs/experiment_synth.yaml)")  # fmt: skip
    parser.add_argument("--num-classes", type=int, default=100, help="K of the timed model (100)")
    parser.add_argument("--predictor", default="class_agnostic",
                        choices=["class_agnostic", "transfer", "class_specific"],
                        help="mask predictor (class_agnostic)")  # fmt: skip
    parser.add_argument("--mlp", action=argparse.BooleanOptionalAction, default=True,
                        help="fuse the MLP branch (on)")  # fmt: skip
    parser.add_argument("--depths", type=int, nargs="+", default=[4, 8],
                        help="3x3 convs of the ResNet heads (4 8)")  # fmt: skip
    parser.add_argument("--k-small", type=int, default=80)
    parser.add_argument("--k-large", type=int, default=3000)
    parser.add_argument("--train-images", type=int, default=8, help="images per train step (8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant (5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK['repeats']} repeats, {QUICK['train_images']} "
                             "images, one ResNet depth")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    # --out, as on every maskx command; --json, the earlier spelling, still works.
    add_output_argument(parser, dest="json", old=("--json",), type=Path, metavar="FILE.json",
                        help="write the figures to this JSON file")  # fmt: skip


def variants(base: Any, depths: list[int]) -> dict[str, Any]:
    """Name → ModelConfig: the config's FCN head with both RoI choices, then ResNet heads of
    ``depths`` convs trained on gt boxes (and the deepest one on proposals)."""
    out = {
        f"fcn{base.mask_head_layers} + proposals": base.replace(mask_head_arch="fcn"),
        f"fcn{base.mask_head_layers} + gt": base.replace(mask_head_arch="fcn",
                                                         mask_train_rois="gt"),
    }  # fmt: skip
    for d in depths:
        out[f"resnet{d} + gt"] = base.replace(
            mask_head_arch="resnet", mask_head_layers=d, mask_train_rois="gt"
        )
    deepest = max(depths)
    out[f"resnet{deepest} + proposals"] = base.replace(
        mask_head_arch="resnet", mask_head_layers=deepest, mask_train_rois="proposals"
    )
    return out


def mask_branch(cfg: Any, num_classes: int, seed: int) -> tuple[Any, Any]:
    """(FLOPs, closure) of the mask branch alone for 100 fixed RoIs and labels at K classes."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from model import build_model

    torch.manual_seed(seed)
    rh = build_model(cfg.replace(num_classes=num_classes)).roi_heads.eval()
    g = torch.Generator().manual_seed(seed + 1)
    s, c = cfg.min_size, cfg.fpn_channels
    features = {str(i): torch.randn(1, c, -(-s // 2 ** (i + 2)), -(-s // 2 ** (i + 2)),
                                    generator=g) for i in range(4)}  # fmt: skip
    xy = torch.rand(100, 2, generator=g) * s * 0.6
    boxes = [torch.cat([xy, xy + 8 + torch.rand(100, 2, generator=g) * s * 0.4], dim=1)]
    labels = torch.randint(1, min(num_classes, 80) + 1, (100,), generator=g)

    def run() -> Any:
        with torch.no_grad():
            feats = rh.mask_head(rh.mask_roi_pool(features, boxes, [(s, s)]))
            return rh.mask_predictor(feats, labels, rh.box_predictor)

    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops(), run


def main(args: argparse.Namespace) -> int:
    import torch

    from training.config import load_config

    torch.set_num_threads(args.threads)
    repeats, n_img, depths = args.repeats, args.train_images, list(args.depths)
    if args.quick:
        repeats, n_img, depths = QUICK["repeats"], QUICK["train_images"], QUICK["depths"]
    base = load_config(args.config, []).model.replace(
        num_classes=args.num_classes, mask_predictor=args.predictor, mlp=args.mlp,
        box_score_thresh=0.0,
    )  # fmt: skip
    cfgs = variants(base, depths)
    from model import build_model

    g = torch.Generator().manual_seed(args.seed)
    size = base.min_size
    images = [torch.rand(3, size, size, generator=g) for _ in range(n_img)]
    targets = random_targets(images, args.num_classes, args.seed)
    models, train_steps, infer = {}, {}, {}
    for name, cfg in cfgs.items():
        torch.manual_seed(args.seed)  # the same backbone, RPN and box head in every variant
        models[name] = build_model(cfg)
        train_steps[name] = make_train_step(models[name], images, targets, seed=args.seed)
    train_cpu: dict[str, list[float]] = {}
    train_t = interleaved_times(train_steps, repeats=repeats, cpu_times=train_cpu)
    for name, model in models.items():
        model.eval()

        def forward(model: Any = model) -> Any:
            with torch.no_grad():
                return model(images)

        infer[name] = forward
    infer_t = interleaved_times(infer, repeats=repeats)
    detections = [len(o["boxes"]) for o in next(iter(infer.values()))()]

    branch: dict[str, dict[str, Any]] = {}
    branch_runs = {}
    for name, cfg in cfgs.items():
        f_small, run_small = mask_branch(cfg, args.k_small, args.seed)
        f_large, run_large = mask_branch(cfg, args.k_large, args.seed)
        head = build_model(cfg).roi_heads.mask_head
        branch[name] = {"flops_k_small": f_small, "flops_k_large": f_large,
                        "head_params": sum(p.numel() for p in head.parameters())}  # fmt: skip
        branch_runs[f"{name}|small"], branch_runs[f"{name}|large"] = run_small, run_large
    branch_t = interleaved_times(branch_runs, repeats=repeats)

    ref = next(iter(cfgs))
    med = {k: statistics.median(v) for k, v in {**train_t, **infer_t}.items()}
    rows, out_rows = [], []
    for name in cfgs:
        tr, inf = statistics.median(train_t[name]), statistics.median(infer_t[name])
        b = branch[name]
        small = statistics.median(branch_t[f"{name}|small"])
        large = statistics.median(branch_t[f"{name}|large"])
        row = {
            "variant": name,
            "train_step_s": round(tr, 4),
            "train_step_cpu_s": round(statistics.median(train_cpu[name]), 4),
            "train_vs_today": round(tr / statistics.median(train_t[ref]), 3),
            "inference_s": round(inf, 4),
            "inference_vs_today": round(inf / statistics.median(infer_t[ref]), 3),
            "head_params": b["head_params"],
            "branch_gflop_100_rois": round(b["flops_k_small"] / 1e9, 4),
            "branch_flops_k_ratio": b["flops_k_large"] / b["flops_k_small"],
            "branch_time_k_ratio": round(large / small, 3),
        }
        out_rows.append(row)
        rows.append([name, f"{tr:.3f}", f"{row['train_vs_today']:.2f}", f"{inf:.3f}",
                     f"{row['inference_vs_today']:.2f}", f"{b['head_params']:,}",
                     f"{row['branch_gflop_100_rois']:.3f}", f"{row['branch_flops_k_ratio']:.3f}",
                     f"{row['branch_time_k_ratio']:.2f}"])  # fmt: skip
    del med
    headers = ["variant", "train step s", "× today", "inference s", "× today", "head params",
               "branch GFLOP (100 RoIs)", f"FLOPs K={args.k_large}/K={args.k_small}",
               "time K-ratio"]  # fmt: skip
    print(f"config {args.config}: {args.predictor}{' + MLP' if args.mlp else ''}, "
          f"K={args.num_classes}, {n_img} images of {size} px per train step, "
          f"{max(detections)} detections per image at inference, {args.threads} thread(s), "
          f"medians of {repeats}")  # fmt: skip
    print(format_table(headers, rows))
    flat = all(r["branch_flops_k_ratio"] == 1.0 for r in out_rows)
    print(f"mask branch FLOPs equal at K={args.k_large} and K={args.k_small}: {flat}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "config": args.config, "predictor": args.predictor, "mlp": args.mlp,
            "num_classes": args.num_classes, "train_images": n_img, "image_size": size,
            "repeats": repeats, "threads": args.threads, "detections_per_image": detections,
            "rows": out_rows, "flat_in_k": flat,
        }, indent=2) + "\n")  # fmt: skip
    return 0 if flat else 1
