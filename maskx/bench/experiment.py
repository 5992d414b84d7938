"""``maskx bench experiment``: the partially supervised experiment in miniature.

Paper Table 1c/2 on the synthetic set: train six mask predictors with an identical budget
(steps, batch, LR schedule, data order per seed) and compare mask AP on the classes B that had
no mask supervision.

=======================  =====================================================================
variant                  what changes from ``configs/experiment_synth.yaml``
=======================  =====================================================================
``agnostic``             class-agnostic mask predictor, no MLP (Mask R-CNN's baseline)
``agnostic_mlp``         class-agnostic + fused class-agnostic MLP
``transfer``             Mask^X: w_seg = τ(stopgrad(w_det)), cls+box, 2-layer LeakyReLU
``transfer_mlp``         the paper's best model: transfer + MLP
``transfer_mlp_nostop``  transfer + MLP, gradients of the mask loss reach w_det
``oracle``               class-specific mask predictor + MLP with masks for all classes
=======================  =====================================================================

``--deep-marc`` runs Deep-MARC's comparison instead (``DEEP_MARC_VARIANTS``): class-agnostic +
MLP with the mask loss on ground-truth boxes (``model.mask_train_rois=gt``), then also a ResNet
mask head of 4 and 8 convs (``model.mask_head_arch=resnet``); transfer + MLP with gt boxes;
transfer + gt boxes + ResNet-8; beside class-agnostic + MLP, transfer + MLP and the oracle.

Layout of ``--out``::

    data/                     the generated synthetic set (unless --data-root is given)
    <variant>/seed<k>/        one ``maskx train`` run folder each (config.yaml, metrics.json…)
    results.json              per run and mean ± std per variant
    experiment_mask_ap.png    bar chart of mask AP on B (and A) per variant

A run whose ``metrics.json`` exists is skipped, so an interrupted experiment continues where it
stopped (and a half-finished run resumes from its own last checkpoint).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = "configs/experiment_synth.yaml"

# Name → (table label, config overrides). Order: the two ends of the gap first, so a partial
# experiment already says whether the dataset separates them.
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "agnostic": (
        "class-agnostic",
        ("model.mask_predictor=class_agnostic", "model.mlp=false"),
    ),
    "oracle": (
        "oracle (all masks)",
        ("model.mask_predictor=class_specific", "model.mlp=true", "data.mask_classes=all"),
    ),
    "transfer_mlp": (
        "transfer + MLP",
        ("model.mask_predictor=transfer", "model.mlp=true", "model.stop_gradient=true"),
    ),
    "transfer": (
        "transfer",
        ("model.mask_predictor=transfer", "model.mlp=false", "model.stop_gradient=true"),
    ),
    "agnostic_mlp": (
        "class-agnostic + MLP",
        ("model.mask_predictor=class_agnostic", "model.mlp=true"),
    ),
    "transfer_mlp_nostop": (
        "transfer + MLP, no stop-grad",
        ("model.mask_predictor=transfer", "model.mlp=true", "model.stop_gradient=false"),
    ),
    # transfer + MLP with PyTorch's default Linear init of cls_score / bbox_pred (the init of
    # earlier versions): how far w_det moves from its start with each init.
    "transfer_mlp_torch_init": (
        "transfer + MLP, PyTorch init",
        ("model.mask_predictor=transfer", "model.mlp=true", "model.head_init=torch"),
    ),
    # Controls for τ's input (+ MLP, as transfer + MLP): a fixed random vector per class (τ
    # can only memorise A) and the class's attribute vector (DATA/class_attributes.json).
    "random_tau": (
        "random-vector τ + MLP",
        ("model.mask_predictor=transfer", "model.mlp=true", "model.transfer_input=random"),
    ),
    "attribute_tau": (
        "attribute τ + MLP",
        (
            "model.mask_predictor=transfer",
            "model.mlp=true",
            "model.transfer_input=attribute",
            "model.class_vectors={root}/class_attributes.json",
        ),
    ),
    # Stage-wise: a detector on all boxes first (stage1, shared by both), then the mask
    # branch alone (stage 2) from its checkpoint, each stage with the whole budget.
    "stage1": (
        "stage 1 (detector)",
        ("train.scheme=stage1", "model.mask_predictor=class_agnostic", "model.mlp=false"),
    ),
    "stagewise_transfer_mlp": (
        "stage-wise transfer + MLP",
        (
            "train.scheme=stage2",
            "model.mask_predictor=transfer",
            "model.mlp=true",
            "train.init_checkpoint={out}/stage1/seed{seed}/checkpoints/model_final.pt",
        ),
    ),
    "stagewise_agnostic_mlp": (
        "stage-wise class-agnostic + MLP",
        (
            "train.scheme=stage2",
            "model.mask_predictor=class_agnostic",
            "model.mlp=true",
            "train.init_checkpoint={out}/stage1/seed{seed}/checkpoints/model_final.pt",
        ),
    ),
    # Generic features first (the synthetic analogue of ImageNet pretraining): a Mask R-CNN
    # trained with every mask on a disjoint class set C (OUT/data_c: on ``hue_ring`` the same
    # ring with every hue shifted half a step, on the shapes preset the generator's next class
    # table; other images), then the A/B runs start their
    # backbone (the ablation: backbone and mask head) from its checkpoint.
    "pretrain_c": (
        "pretraining on C (all masks)",
        (
            "data.root={out}/data_c",
            "model.mask_predictor=class_specific",
            "model.mlp=true",
            "data.mask_classes=all",
        ),
    ),
}
# Deep-MARC (Birodkar et al., ICCV 2021): the mask loss on ground-truth boxes only, then a
# deeper ResNet mask head (Deep-MARC's resnet4 / resnet8: 4 / 8 3x3 convs in basic blocks, at
# the preset's mask_head_dim). Beside class-agnostic + MLP, transfer + MLP and the oracle.
_GT = "model.mask_train_rois=gt"


def _resnet(layers: int) -> tuple[str, str]:
    return ("model.mask_head_arch=resnet", f"model.mask_head_layers={layers}")


VARIANTS.update(
    {
        "agnostic_mlp_gt": (
            "class-agnostic + MLP + gt",
            (*VARIANTS["agnostic_mlp"][1], _GT),
        ),
        "agnostic_mlp_gt_resnet4": (
            "class-agnostic + MLP + gt + ResNet-4",
            (*VARIANTS["agnostic_mlp"][1], _GT, *_resnet(4)),
        ),
        "agnostic_mlp_gt_resnet8": (
            "class-agnostic + MLP + gt + ResNet-8",
            (*VARIANTS["agnostic_mlp"][1], _GT, *_resnet(8)),
        ),
        "transfer_mlp_gt": (
            "transfer + MLP + gt",
            (*VARIANTS["transfer_mlp"][1], _GT),
        ),
        "transfer_gt_resnet8": (
            "transfer + gt + ResNet-8",
            (*VARIANTS["transfer"][1], _GT, *_resnet(8)),
        ),
    }
)
# The Deep-MARC comparison (`--deep-marc`). Its runs start in plan_runs' order (VARIANTS'
# order within each seed: the oracle and transfer + MLP first), not in this tuple's.
DEEP_MARC_VARIANTS = ("agnostic_mlp", "oracle", "agnostic_mlp_gt", "agnostic_mlp_gt_resnet4",
                      "agnostic_mlp_gt_resnet8", "transfer_mlp", "transfer_mlp_gt",
                      "transfer_gt_resnet8")  # fmt: skip
# The A/B runs that start from pretrain_c: a base variant's overrides plus the parts it takes.
VARIANTS.update(
    {
        f"pretrained{tag}_{head}": (
            f"{VARIANTS[head][0]} ({what} from C)",
            (
                *VARIANTS[head][1],
                "train.init_checkpoint={out}/pretrain_c/seed{seed}/checkpoints/model_final.pt",
                f"train.init_parts=[{parts}]",
            ),
        )
        for tag, what, parts in (
            ("", "backbone", "backbone"),
            ("_head", "backbone + head", "backbone, mask_head"),
        )
        for head in ("agnostic_mlp", "transfer", "transfer_mlp", "random_tau", "oracle")
    }
)
# Variants that are a step towards others, not a row of the table (their metrics are on
# another label set or have no mask branch to score).
STEPS = ("stage1", "pretrain_c")
# Display order (table, chart): baselines, Mask^X variants, controls, stage-wise, oracle.
DISPLAY_ORDER = (
    "agnostic", "agnostic_mlp", "agnostic_mlp_gt", "agnostic_mlp_gt_resnet4",
    "agnostic_mlp_gt_resnet8", "transfer", "transfer_mlp", "transfer_mlp_gt",
    "transfer_gt_resnet8", "transfer_mlp_nostop",
    "transfer_mlp_torch_init", "random_tau", "attribute_tau", "stage1", "stagewise_agnostic_mlp", "stagewise_transfer_mlp",
    "pretrain_c", "pretrained_agnostic_mlp", "pretrained_transfer", "pretrained_transfer_mlp",
    "pretrained_head_agnostic_mlp", "pretrained_head_transfer", "pretrained_head_transfer_mlp",
    "pretrained_random_tau", "pretrained_head_random_tau", "pretrained_head_oracle",
    "pretrained_oracle", "oracle",
)  # fmt: skip
# A variant that needs another variant's run of the same seed finished first.
DEPENDS = {"stagewise_transfer_mlp": "stage1", "stagewise_agnostic_mlp": "stage1",
           **{v: "pretrain_c" for v in VARIANTS if v.startswith("pretrained")}}  # fmt: skip
# The generic-features-first ablation as documented (the other pretrained_* variants exist
# for completeness): both heads with the backbone from C, with backbone + mask head from C,
# transfer without the MLP, the random-vector control and the oracle of the gap share.
PRETRAINED_VARIANTS = ("pretrain_c", "pretrained_agnostic_mlp", "pretrained_transfer",
                       "pretrained_transfer_mlp", "pretrained_random_tau",
                       "pretrained_head_agnostic_mlp", "pretrained_head_transfer_mlp",
                       "pretrained_oracle")  # fmt: skip
# Gap shares reported: name → (model, baseline, oracle) of gap_share().
GAP_SHARES = {
    "transfer_mlp_vs_agnostic": ("transfer_mlp", "agnostic", "oracle"),
    "transfer_mlp_vs_agnostic_mlp": ("transfer_mlp", "agnostic_mlp", "oracle"),
    "transfer_vs_agnostic": ("transfer", "agnostic", "oracle"),
    "random_tau_vs_agnostic_mlp": ("random_tau", "agnostic_mlp", "oracle"),
    "attribute_tau_vs_agnostic_mlp": ("attribute_tau", "agnostic_mlp", "oracle"),
    "stagewise_transfer_mlp_vs_stagewise_agnostic_mlp": (
        "stagewise_transfer_mlp", "stagewise_agnostic_mlp", "oracle"),
    "pretrained_transfer_mlp_vs_pretrained_agnostic_mlp": (
        "pretrained_transfer_mlp", "pretrained_agnostic_mlp", "pretrained_oracle"),
    "pretrained_transfer_vs_pretrained_agnostic_mlp": (
        "pretrained_transfer", "pretrained_agnostic_mlp", "pretrained_oracle"),
    "pretrained_random_tau_vs_pretrained_agnostic_mlp": (
        "pretrained_random_tau", "pretrained_agnostic_mlp", "pretrained_oracle"),
    **{f"{v}_vs_agnostic_mlp": (v, "agnostic_mlp", "oracle")
       for v in ("agnostic_mlp_gt", "agnostic_mlp_gt_resnet4", "agnostic_mlp_gt_resnet8",
                 "transfer_mlp_gt", "transfer_gt_resnet8")},
}  # fmt: skip
# The variants of each preset when --variants is not given.
PRESET_VARIANTS = {
    "main": ("agnostic", "oracle", "transfer_mlp", "transfer", "agnostic_mlp",
             "transfer_mlp_nostop"),
    "hue_ring": ("agnostic", "oracle", "transfer_mlp", "transfer", "agnostic_mlp", "random_tau",
                 "attribute_tau", "stage1", "stagewise_transfer_mlp", "stagewise_agnostic_mlp"),
}  # fmt: skip
PRESET_CONFIG = {"main": DEFAULT_CONFIG, "hue_ring": "configs/experiment_hue.yaml"}
# Dataset of the mechanism experiment (training.synth_hue.HueRingConfig otherwise).
HUE_DATA = {"classes": 36, "images": 1000, "val_images": 300, "image_size": 80}
# The pretraining set C of the generic-features-first ablation: the hue ring shifted by half
# a class step (hues 5°, 15°, …: no class of C is a class of A or B, jitter included), drawn
# with another image seed.
C_HUE_OFFSET, C_SEED = 0.5, 1
# On the shapes preset: the generator's class table 1 (same shapes and palette, none of the A/B
# set's shape x colour x texture classes), in images of its own.
C_CLASS_SET = 1
HUE_QUICK = {"steps": 12, "batch_size": 4, "images": 40, "val_images": 16, "seeds": [0]}

# (key in results, iou type, subset, statistic) read from each run's metrics.json.
METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("mask_AP_B", "segm", "B", "AP"),
    ("mask_AP50_B", "segm", "B", "AP50"),
    ("mask_AP_A", "segm", "A", "AP"),
    ("mask_AP50_A", "segm", "A", "AP50"),
    ("mask_AP_all", "segm", "all", "AP"),
    ("box_AP_B", "bbox", "B", "AP"),
    ("box_AP_all", "bbox", "all", "AP"),
)

# Dataset of the full experiment (the synth defaults otherwise): ≥ 100 classes from 12 families.
FULL_DATA = {"classes": 100, "images": 1200, "val_images": 400, "image_size": 160,
             "appearances": 0, "a_covers_appearances": False}  # fmt: skip
QUICK = {"steps": 30, "batch_size": 4, "classes": 100, "images": 120, "val_images": 40,
         "seeds": [0]}  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path,
                        help="experiment folder (run folders, results.json, chart); default "
                             "artifacts/experiment/full, or artifacts/experiment/quick with --quick")  # fmt: skip
    parser.add_argument("--preset", choices=list(PRESET_VARIANTS), default="main",
                        help="main: the 100-class shapes set (configs/experiment_synth.yaml); "
                             "hue_ring: the mechanism set of `maskx synth --preset hue_ring` "
                             "(configs/experiment_hue.yaml)")  # fmt: skip
    parser.add_argument("--config", help="base training config (YAML; default: the preset's)")
    parser.add_argument("--data-root", type=Path,
                        help="use this synthetic set instead of generating OUT/data")  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        help="variants to run (default: the preset's)")  # fmt: skip
    parser.add_argument("--generic-features-first", action="store_true",
                        help="run the pretraining ablation instead of the preset's "
                             f"variants ({', '.join(PRETRAINED_VARIANTS)}): a Mask R-CNN "
                             "trained on a disjoint class set C, its backbone (and mask head) "
                             "the start of the A/B runs")  # fmt: skip
    parser.add_argument("--deep-marc", action="store_true",
                        help="run Deep-MARC's mask-head comparison instead of the preset's "
                             f"variants ({', '.join(DEEP_MARC_VARIANTS)}): the mask loss on "
                             "ground-truth boxes, ResNet mask heads, beside transfer")  # fmt: skip
    parser.add_argument("--steps", type=int,
                        help="solver.max_iter of every run (LR steps scale with it)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, help="solver.batch_size of every run")
    parser.add_argument("--classes", type=int, help="classes of the generated set")
    parser.add_argument("--images", type=int, help="training images of the generated set")
    parser.add_argument("--val-images", type=int, help="validation images of the generated set")
    parser.add_argument("--image-size", type=int, help="image side of the generated set (px)")
    parser.add_argument(
        "--appearances",
        type=int,
        help="appearances of the generated set (maskx synth --appearances)",
    )
    parser.add_argument(
        "--a-covers-appearances",
        action="store_true",
        help="generated set: split A covers every appearance too",
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.FIELD=VALUE",
                        help="extra override for every run (e.g. model.box_score_thresh=0.01)")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=2,
                        help="runs in parallel, each a `maskx train` process with "
                             "--threads torch threads; 1 runs them one by one in this process")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch threads per parallel run")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run in minutes: {QUICK['steps']} steps, 1 seed, a small set")  # fmt: skip
    parser.add_argument("--no-train", dest="train", action="store_false",
                        help="only gather results of the runs already finished")  # fmt: skip
    parser.add_argument("--no-diagnose", dest="diagnose", action="store_false",
                        help="skip the check of what the trained class vectors encode")  # fmt: skip
    parser.add_argument("--probe-shape-kernels", action="store_true",
                        help="also score transfer runs with each B class given the τ kernel of "
                             "the A class of its shape (one more evaluation per run)")  # fmt: skip
    parser.add_argument("--transfer-diagnostics", action="store_true",
                        help="also measure, on finished runs: w_det's row drift from its init "
                             "(every run), offline ridge τ (oracle runs) and the free-kernel "
                             "ceiling on B (transfer and transfer + MLP runs; a short extra training each)")  # fmt: skip
    parser.add_argument("--ceiling-steps", type=int, default=150,
                        help="steps of the free-kernel ceiling (8 images each)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="results file (default OUT/results.json)")
    parser.add_argument("--chart", type=Path,
                        help="bar chart PNG (default OUT/experiment_mask_ap.png)")  # fmt: skip


# ------------------------------------------------------------------------------------ plan
@dataclass(frozen=True)
class Run:
    variant: str
    seed: int
    folder: Path
    overrides: tuple[str, ...]
    after: Path | None = None
    """A run folder that must hold a finished run before this one starts (stage 1)."""

    @property
    def done(self) -> bool:
        return (self.folder / "metrics.json").is_file()


def budget_overrides(steps: int | None, batch_size: int | None) -> list[str]:
    """Overrides that set the training budget; LR steps and warm-up scale with ``steps``
    (at 73 % and 93 %, warm-up 7 %, as 550/700 of the 750-step config)."""
    out: list[str] = []
    if steps is not None:
        if steps < 1:
            raise ValueError(f"--steps must be >= 1, got {steps}")
        milestones = sorted({max(1, round(steps * 0.73)), max(1, round(steps * 0.93))})
        out += [
            f"solver.max_iter={steps}",
            f"solver.steps=[{', '.join(str(m) for m in milestones)}]",
            f"solver.warmup_iters={max(1, round(steps * 0.07))}",
            f"train.checkpoint_period={max(1, steps // 3)}",
            f"train.log_period={max(1, min(25, steps // 4))}",
        ]
    if batch_size is not None:
        out.append(f"solver.batch_size={batch_size}")
    return out


def plan_runs(
    out: Path,
    variants: Sequence[str],
    seeds: Sequence[int],
    common: Sequence[str],
) -> list[Run]:
    """All (variant, seed) runs, seed-major so that a partial experiment has every variant once.

    ``common`` overrides come first; a variant's own overrides win over them.
    """
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; allowed: {list(VARIANTS)}")
    order = [v for v in VARIANTS if v in variants]
    missing = sorted({DEPENDS[v] for v in order if v in DEPENDS} - set(order))
    if missing:
        raise ValueError(f"variants {[v for v in order if v in DEPENDS]} need {missing} too")
    root = next((o.split("=", 1)[1] for o in common if o.startswith("data.root=")), "")

    def fill(o: str, s: int) -> str:
        return o.format(out=out, seed=s, root=root)

    return [
        Run(
            v,
            s,
            out / v / f"seed{s}",
            (*common, f"train.seed={s}", *(fill(o, s) for o in VARIANTS[v][1])),
            out / DEPENDS[v] / f"seed{s}" if v in DEPENDS else None,
        )
        for s in seeds
        for v in order
    ]


def check_finished_run(run: Run, expected: dict[str, Any]) -> None:
    """Refuse to reuse a finished run trained with another budget or variant: the table must
    compare runs of one budget. ``expected`` is the run's ``TrainConfig.to_dict()``."""
    import yaml

    path = run.folder / "config.yaml"
    if not run.done or not path.is_file():
        return
    have = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    fields = [("solver", k) for k in expected["solver"]]
    fields += [("model", k) for k in ("mask_predictor", "mlp", "stop_gradient", "mlp_input_size",
                                      "backbone", "min_size", "box_score_thresh",
                                      "transfer_input", "head_init", "mask_train_rois",
                                      "mask_head_arch", "mask_head_layers")]  # fmt: skip
    fields += [("data", "mask_classes"), ("train", "seed"), ("train", "scheme")]
    diff = {
        f"{sec}.{key}": (have.get(sec, {}).get(key), expected[sec][key])
        for sec, key in fields
        if have.get(sec, {}).get(key, expected[sec][key]) != expected[sec][key]
    }
    if diff:
        raise ValueError(
            f"{path}: this finished run was trained with other settings (have, wanted): {diff}; "
            "use another --out or delete the run folder"
        )


# ------------------------------------------------------------------------------------ data
def ensure_hue_dataset(
    root: Path, params: dict[str, Any], hue_offset: float = 0.0, seed: int = 0
) -> Path:
    """Generate the ``hue_ring`` set in ``root`` unless it is there with the same parameters.

    ``hue_offset`` and ``seed`` make the pretraining set C: other classes on the same ring
    (hues shifted by that many class steps) in other images."""
    from training.synth_hue import HueRingConfig, generate_hue_ring

    cfg = HueRingConfig(num_classes=params["classes"], train_images=params["images"],
                        val_images=params["val_images"], image_size=params["image_size"],
                        hue_offset=hue_offset, seed=seed)  # fmt: skip
    meta_path = root / "dataset.json"
    if meta_path.is_file():
        # Sets made before hue_offset existed had none.
        have = {"hue_offset": 0.0} | json.loads(meta_path.read_text(encoding="utf-8")).get(
            "config", {}
        )
        diff = {k: (have.get(k), v) for k, v in cfg.to_json().items() if have.get(k) != v}
        if diff:
            raise ValueError(
                f"{meta_path}: the dataset there was made with other parameters "
                f"(have, wanted): {diff}; choose another --out or pass --data-root"
            )
        return root
    print(f"generating the hue_ring set in {root} ...", flush=True)
    generate_hue_ring(root, cfg)
    return root


def ensure_dataset(root: Path, params: dict[str, Any], class_set: int = 0) -> Path:
    """Generate the synthetic set in ``root`` unless it is there with the same parameters.

    ``class_set`` k > 0 makes the pretraining set C: the generator's k-th class table, none of
    whose classes is in table 0 (the A/B set), in other images."""
    from training.synth import SynthConfig, generate_dataset

    cfg = SynthConfig(
        num_classes=params["classes"],
        train_images=params["images"],
        val_images=params["val_images"],
        image_size=params["image_size"],
        appearances=params.get("appearances", 0),
        a_covers_appearances=params.get("a_covers_appearances", False),
        class_set=class_set,
    )
    meta_path = root / "dataset.json"
    if meta_path.is_file():
        have = json.loads(meta_path.read_text(encoding="utf-8")).get("config", {})
        wanted = {k: getattr(cfg, k) for k in ("num_classes", "train_images", "val_images",
                  "image_size", "appearances", "a_covers_appearances", "class_set")}  # fmt: skip
        # Sets made before these fields existed used every appearance, A by shape only, and
        # the default class table.
        have = {"appearances": 0, "a_covers_appearances": False, "class_set": 0} | have
        diff = {k: (have.get(k), v) for k, v in wanted.items() if have.get(k) != v}
        if diff:
            raise ValueError(
                f"{meta_path}: the dataset there was made with other parameters "
                f"(have, wanted): {diff}; choose another --out or pass --data-root"
            )
        return root
    print(f"generating the synthetic set in {root} ...", flush=True)
    generate_dataset(root, cfg, progress=False)
    return root


# ------------------------------------------------------------------------------------- run
def _train_command(config: str, run: Run) -> list[str]:
    cmd = [sys.executable, "-m", "maskx.cli", "train", "--config", config, "--out", str(run.folder)]
    for o in run.overrides:
        cmd += ["--set", o]
    return cmd


def run_in_process(config: str, run: Run) -> None:
    """Train one run in this process (``--jobs 1``: no interpreter start-up per run)."""
    from training.config import load_config
    from training.trainer import train

    run.folder.mkdir(parents=True, exist_ok=True)
    train(load_config(config, list(run.overrides)), run.folder)


def execute(runs: Sequence[Run], config: str, jobs: int, threads: int) -> list[Run]:
    """Train the runs that are not done; ``jobs`` at a time as subprocesses (logs in
    ``RUN/train.log``), or one by one in this process when ``jobs`` is 1. Returns the runs that
    failed."""
    todo = [r for r in runs if not r.done]
    for r in runs:
        if r.done:
            print(f"  {r.variant}/seed{r.seed}: done, skipped", flush=True)
    failed: list[Run] = []
    if jobs <= 1:
        for r in todo:
            if r.after is not None and not (r.after / "metrics.json").is_file():
                failed.append(r)
                print(f"  {r.variant}/seed{r.seed}: skipped, {r.after} has not finished")
                continue
            t0 = time.perf_counter()
            print(f"  {r.variant}/seed{r.seed}: training ...", flush=True)
            run_in_process(config, r)
            print(f"  {r.variant}/seed{r.seed}: {time.perf_counter() - t0:.0f} s", flush=True)
        return failed
    env = dict(os.environ)
    # Parallel runs on few cores go faster with one BLAS/OpenMP thread each than when they
    # fight over the same cores with several.
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    pending = list(todo)
    active: list[tuple[Run, subprocess.Popen, Any, float]] = []
    while pending or active:
        while pending and len(active) < jobs:
            ready = [p for p in pending if p.after is None or (p.after / "metrics.json").is_file()]
            blocked = [p for p in pending if p.after is not None and p.after in
                       {f.folder for f in failed}]  # fmt: skip
            for p in blocked:
                pending.remove(p)
                failed.append(p)
                print(f"  {p.variant}/seed{p.seed}: not started, {p.after} failed", flush=True)
            if not ready:
                break
            r = ready[0]
            pending.remove(r)
            r.folder.mkdir(parents=True, exist_ok=True)
            log = open(r.folder / "train.log", "a", encoding="utf-8")  # noqa: SIM115
            proc = subprocess.Popen(
                _train_command(config, r), stdout=log, stderr=subprocess.STDOUT, env=env
            )
            print(f"  {r.variant}/seed{r.seed}: started (pid {proc.pid})", flush=True)
            active.append((r, proc, log, time.perf_counter()))
        if (
            pending
            and not active
            and not any(p.after is None or (p.after / "metrics.json").is_file() for p in pending)
        ):
            for p in pending:
                failed.append(p)
                print(f"  {p.variant}/seed{p.seed}: not started, {p.after} not finished")
            break
        time.sleep(1.0)
        for item in list(active):
            r, proc, log, t0 = item
            if proc.poll() is None:
                continue
            log.close()
            active.remove(item)
            took = time.perf_counter() - t0
            if proc.returncode != 0 or not r.done:
                failed.append(r)
                print(f"  {r.variant}/seed{r.seed}: FAILED (exit {proc.returncode}); "
                      f"see {r.folder / 'train.log'}", flush=True)  # fmt: skip
            else:
                print(f"  {r.variant}/seed{r.seed}: done in {took:.0f} s", flush=True)
    return failed


# --------------------------------------------------------------------------------- results
def read_run(run: Run) -> dict[str, Any] | None:
    """The numbers of one finished run (AP in percent), or None if it has not finished."""
    path = run.folder / "metrics.json"
    if not path.is_file():
        return None
    split = run.folder / SPLIT_METRICS
    metrics = json.loads((split if split.is_file() else path).read_text(encoding="utf-8"))
    row: dict[str, Any] = {"variant": run.variant, "seed": run.seed, "folder": str(run.folder)}
    for key, iou, subset, stat in METRICS:
        value = metrics.get(iou, {}).get(subset, {}).get(stat)
        row[key] = None if value is None else round(100.0 * float(value), 3)
    row["step"] = metrics.get("step")
    config = run.folder / "config.yaml"
    # config.yaml is written when training starts, metrics.json after the final evaluation.
    if config.is_file():
        row["seconds"] = round(path.stat().st_mtime - config.stat().st_mtime, 1)
    return row


SPLIT_METRICS = "metrics_AB.json"
# Per-run figures of --transfer-diagnostics that summarise() averages like METRICS.
DIAGNOSTIC_KEYS = ("true_box_mask_AP_B", "true_box_mask_AP_A", "ridge_tau_mask_AP_B",
                   "ceiling_mask_AP_B")  # fmt: skip


def evaluate_on_split(run: Run, root: Path, batch_size: int = 8) -> Path | None:
    """Score a run trained with masks for **all** classes (the oracle) on the experiment's
    A/B split.

    Its own ``metrics.json`` has no B (every class was a mask class), so the final checkpoint
    is evaluated again with A = ``root/mask_classes_A.txt``; the result goes to
    ``RUN/metrics_AB.json``, which :func:`read_run` then prefers. Returns that path, or None
    when the run has no final checkpoint or no split file is there.
    """
    from training.checkpoint import load_checkpoint
    from training.evaluate_cli import run_evaluation
    from training.evaluation import write_metrics_json

    ckpt_path = run.folder / "checkpoints" / "model_final.pt"
    split_file = root / "mask_classes_A.txt"
    if not ckpt_path.is_file() or not split_file.is_file():
        return None
    ckpt = load_checkpoint(ckpt_path)
    data = ckpt["train_config"]["data"]
    # The same routine as `maskx evaluate --mask-classes SPLIT_FILE`.
    metrics = run_evaluation(
        str(ckpt_path), str(root / data["val_annotations"]), str(root / data["val_images"]),
        device="cpu", batch_size=batch_size, workers=0, progress=False,
        mask_classes=str(split_file),
    )  # fmt: skip
    return write_metrics_json({"step": ckpt["step"], **metrics}, run.folder / SPLIT_METRICS)


def evaluate_with_same_shape_kernels(run: Run, root: Path, batch_size: int = 8) -> Path | None:
    """Probe: score a transfer run with each B class's mask kernel replaced by τ(w_det) of the
    A class of the same canonical shape (every B class has one).

    If B improves, τ(w_det) of B classes is what fails (w_det does not carry the shape); if
    not, a shape-correct kernel does not help this head. Writes ``RUN/metrics_probe_shape.json``
    and returns its path; None when the run has no final checkpoint.
    """
    import torch

    from training.checkpoint import load_model_from_checkpoint
    from training.datasets import CocoDataset, build_data_loader
    from training.evaluation import evaluate, write_metrics_json

    ckpt_path = run.folder / "checkpoints" / "model_final.pt"
    if not ckpt_path.is_file():
        return None
    model, vocab, ckpt = load_model_from_checkpoint(ckpt_path)
    predictor = model.roi_heads.mask_predictor
    if not hasattr(predictor, "all_class_kernels"):
        raise ValueError(f"{ckpt_path}: not a weight-transfer model")
    names = list(vocab.names)
    shapes = class_attributes(root, names)["shape"]
    in_a = list(vocab.mask_classes)
    a_of_shape = {shapes[i]: i for i in range(len(names)) if in_a[i]}
    # remap[label] = the label whose τ kernel serves it (labels are 1..K; 0 is background).
    remap = torch.arange(len(names) + 1)
    for i in range(len(names)):
        if not in_a[i] and shapes[i] in a_of_shape:
            remap[i + 1] = a_of_shape[shapes[i]] + 1
    original = predictor.class_kernels

    def class_kernels(labels: Any, box_predictor: Any) -> Any:
        return original(remap.to(labels.device)[labels], box_predictor)

    predictor.class_kernels = class_kernels  # this model instance only
    data = (ckpt.train_config or {})["data"]
    dataset = CocoDataset(root / data["val_annotations"], root / data["val_images"], vocab=vocab)
    loader = build_data_loader(dataset, batch_size, workers=0, shuffle=False)
    metrics = evaluate(model, loader, dataset.coco, vocab, progress=False)
    out = run.folder / "metrics_probe_shape.json"
    return write_metrics_json({"step": ckpt.step, **metrics}, out)


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:  # one seed has no spread to state (not a spread of 0)
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


def summarise(
    rows: Sequence[dict[str, Any]],
    variants: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
) -> dict[str, dict[str, Any]]:
    """Mean and sample standard deviation over the seeds that finished, per variant and metric.

    With the planned ``variants`` and ``seeds``, a partial experiment says what is missing: each
    entry lists ``missing_seeds``, and a planned variant without a finished run gets an entry
    with no seeds and every mean None. The std of a single seed is None, not 0.
    """
    out: dict[str, dict[str, Any]] = {}
    planned = set(variants or ())
    for variant in DISPLAY_ORDER:
        mine = [r for r in rows if r["variant"] == variant]
        if not mine and variant not in planned:
            continue
        entry: dict[str, Any] = {"label": VARIANTS[variant][0], "seeds": [r["seed"] for r in mine]}
        if seeds is not None:
            entry["missing_seeds"] = [s for s in seeds if s not in entry["seeds"]]
        extra = [k for k in DIAGNOSTIC_KEYS if any(r.get(k) is not None for r in mine)]
        for key in [k for k, *_ in METRICS] + extra:
            values = [r[key] for r in mine if r.get(key) is not None]
            mean, std = _mean_std(values)
            entry[key] = {
                "mean": None if mean is None else round(mean, 3),
                "std": None if std is None else round(std, 3),
            }
        out[variant] = entry
    return out


def finished(summary: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The entries of ``summary`` with at least one finished seed (what a chart can show)."""
    return {v: e for v, e in summary.items() if e["seeds"]}


def seeds_cell(entry: dict[str, Any]) -> str:
    """``3`` for a complete variant; ``1 of 3 (missing 1, 2)`` or ``0 of 3 (not run yet)``."""
    n, missing = len(entry["seeds"]), entry.get("missing_seeds") or []
    if not missing:
        return str(n)
    if not n:
        return f"0 of {len(missing)} (not run yet)"
    return f"{n} of {n + len(missing)} (missing {', '.join(str(s) for s in missing)})"


def mean_std_cell(stat: dict[str, Any] | None, empty: str = "n/a") -> str:
    """``12.34 ± 1.05``; ``12.34 (n=1)`` for a single seed (no spread to state)."""
    if not stat or stat.get("mean") is None:
        return empty
    if stat.get("std") is None:
        return f"{stat['mean']:.2f} (n=1)"
    return f"{stat['mean']:.2f} ± {stat['std']:.2f}"


def gap_share(
    summary: dict[str, dict[str, Any]],
    model: str,
    baseline: str,
    key: str = "mask_AP_B",
    oracle: str = "oracle",
) -> float | None:
    """``(model − baseline) / (oracle − baseline)`` of the mean ``key``; None when a term is
    missing or the oracle does not beat the baseline (no gap to close)."""
    try:
        m, b, o = (summary[v][key]["mean"] for v in (model, baseline, oracle))
    except KeyError:
        return None
    if m is None or b is None or o is None or o - b <= 0:
        return None
    return (m - b) / (o - b)


def format_table(summary: dict[str, dict[str, Any]]) -> str:
    """A Markdown table: mean ± std over the finished seeds of each metric (AP in percent);
    the seeds column says how many finished and, for a partial experiment, which are missing."""
    cols = [("mask AP B", "mask_AP_B"), ("mask AP50 B", "mask_AP50_B"),
            ("mask AP A", "mask_AP_A"), ("box AP B", "box_AP_B"), ("box AP all", "box_AP_all")]  # fmt: skip
    lines = ["| variant | seeds | " + " | ".join(c for c, _ in cols) + " |",
             "|---|---|" + "---|" * len(cols)]  # fmt: skip
    for entry in summary.values():
        empty = "n/a" if entry["seeds"] else "–"
        cells = [mean_std_cell(entry[key], empty) for _, key in cols]
        lines.append(f"| {entry['label']} | {seeds_cell(entry)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_diagnostics_table(summary: dict[str, dict[str, Any]]) -> str:
    """Markdown table of the --transfer-diagnostics figures (mean ± std over seeds)."""
    cols = [("mask AP B, true boxes", "true_box_mask_AP_B"),
            ("mask AP A, true boxes", "true_box_mask_AP_A"),
            ("ridge τ: mask AP B, true boxes", "ridge_tau_mask_AP_B"),
            ("free-kernel ceiling: mask AP B, true boxes", "ceiling_mask_AP_B")]  # fmt: skip
    lines = ["| variant | " + " | ".join(c for c, _ in cols) + " |",
             "|---|" + "---|" * len(cols)]  # fmt: skip
    for entry in summary.values():
        cells = [mean_std_cell(entry.get(key), "–") for _, key in cols]
        lines.append(f"| {entry['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_chart(
    summary: dict[str, dict[str, Any]],
    path: Path,
    title: str,
    keys: tuple[str, str] = ("mask_AP_B", "mask_AP_A"),
    what: str = "mask AP",
) -> Path:
    """Bar chart: ``keys`` = (on B, on A) per variant (B dark, A light), error bars = std over
    seeds; ``what`` names the figure in the legend. A variant with seeds missing has its n
    under its name; one with no finished seed is left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(finished(summary))
    x = list(range(len(names)))

    def series(key: str) -> tuple[list[float], list[float]]:
        means = [(summary[n].get(key) or {}).get("mean") or 0.0 for n in names]
        stds = [(summary[n].get(key) or {}).get("std") or 0.0 for n in names]
        return means, stds

    b_mean, b_std = series(keys[0])
    a_mean, a_std = series(keys[1])
    fig, ax = plt.subplots(figsize=(max(9.0, 1.3 * len(names)), 4.8), dpi=110)
    w = 0.38
    ax.bar([i - w / 2 for i in x], b_mean, w, yerr=b_std, capsize=4, color="#1f77b4",
           label=f"{what} on B (no masks in training)")  # fmt: skip
    ax.bar([i + w / 2 for i in x], a_mean, w, yerr=a_std, capsize=4, color="#aec7e8",
           label=f"{what} on A")  # fmt: skip
    for i, m, sd in zip(x, b_mean, b_std, strict=True):  # above the error bar, not on it
        ax.text(i - w / 2, m + sd + 0.4, f"{m:.1f}", ha="center", va="bottom", fontsize=8)
    labels = [textwrap.fill(summary[n]["label"], 16, break_on_hyphens=False)
              + (f"\n(n={len(summary[n]['seeds'])})" if summary[n].get("missing_seeds") else "")
              for n in names]  # fmt: skip
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("AP (%)")
    ax.set_title(textwrap.fill(title, 100), fontsize=10)  # a long title wraps, not clips
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- diagnostics
ATTRIBUTES = ("shape", "family", "colour", "texture")
PROBE_KEY = "probe_same_shape_kernels_mask_AP_B"


def class_attributes(root: Path, names: Sequence[str]) -> dict[str, list[str]]:
    """Each class's canonical shape (``family-variant``), family, colour and texture, from the
    synthetic set's categories: ``{attribute: [value per class name]}``."""
    coco = json.loads((root / "annotations" / "instances_val.json").read_text(encoding="utf-8"))
    by_name = {c["name"]: c for c in coco["categories"]}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ValueError(f"{root}: classes {missing[:5]} of the checkpoint are not in the set")
    key = {"shape": "shape", "family": "supercategory", "colour": "colour", "texture": "texture"}
    return {a: [str(by_name[n].get(key[a])) for n in names] for a in ATTRIBUTES}


def nearest_a_match(vectors: Any, values: Sequence[str], in_a: Sequence[bool]) -> float | None:
    """Share of B classes whose cosine-nearest A class has the same ``values`` entry.

    ``vectors``: float [K, E], one row per class. Weight transfer needs an embedding in which
    a B class looks like the A class of its own *shape* (A holds one class per shape, so chance
    is about 1/24); if instead it looks like A classes of its colour or texture, τ hands it the
    mask kernel of another shape.
    """
    import torch

    v = torch.nn.functional.normalize(torch.as_tensor(vectors, dtype=torch.float64), dim=1)
    a_idx = [i for i, a in enumerate(in_a) if a]
    b_idx = [i for i, a in enumerate(in_a) if not a]
    if not a_idx or not b_idx:
        return None
    nearest = (v[b_idx] @ v[a_idx].T).argmax(dim=1).tolist()
    hits = sum(values[b] == values[a_idx[j]] for b, j in zip(b_idx, nearest, strict=True))
    return hits / len(b_idx)


def chance_match(values: Sequence[str], in_a: Sequence[bool]) -> float | None:
    """Expected :func:`nearest_a_match` of an embedding that ignores ``values`` (a random A
    class as the nearest one)."""
    a_vals = [v for v, a in zip(values, in_a, strict=True) if a]
    b_vals = [v for v, a in zip(values, in_a, strict=True) if not a]
    if not a_vals or not b_vals:
        return None
    return sum(a_vals.count(b) for b in b_vals) / (len(a_vals) * len(b_vals))


def diagnose(run: Run, root: Path) -> dict[str, Any] | None:
    """Which attribute of a class do the trained class vectors encode?

    For the detection embeddings w_det (``cls``, ``box``, ``cls+box``) and, where the model has
    per-class mask kernels, w_seg: :func:`nearest_a_match` for shape, family, colour and
    texture, next to ``chance``. None when the run has no final checkpoint.
    """
    import torch

    from model import ModelConfig, build_model
    from training.checkpoint import load_checkpoint

    path = run.folder / "checkpoints" / "model_final.pt"
    if not path.is_file():
        return None
    ckpt = load_checkpoint(path)
    model = build_model(ModelConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    model.eval()
    names, in_a = ckpt["vocab"]["names"], ckpt["vocab"]["mask_classes"]
    # The A/B split of the experiment, also for the oracle (which trains with masks for all).
    split_file = root / "mask_classes_A.txt"
    if split_file.is_file():
        a_names = set(split_file.read_text(encoding="utf-8").split())
        in_a = [n in a_names for n in names]
    attrs = class_attributes(root, names)
    box_predictor = model.roi_heads.box_predictor
    predictor = model.roi_heads.mask_predictor
    labels = torch.arange(1, len(names) + 1)
    vectors: dict[str, Any] = {}
    with torch.no_grad():
        for kind in ("cls", "box", "cls+box"):
            vectors[f"w_det_{kind}"] = box_predictor.detection_embedding(labels, kind)
        if hasattr(predictor, "all_class_kernels"):
            vectors["w_seg"] = predictor.all_class_kernels(box_predictor)
        elif getattr(predictor, "mask_fcn_logits", None) is not None and (
            predictor.mask_fcn_logits.out_channels > 1
        ):
            vectors["w_seg"] = predictor.mask_fcn_logits.weight.flatten(1)[1:]

    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 3)

    out: dict[str, Any] = {"chance": {a: r(chance_match(attrs[a], in_a)) for a in ATTRIBUTES}}
    for name, v in vectors.items():
        out[name] = {a: r(nearest_a_match(v, attrs[a], in_a)) for a in ATTRIBUTES}
    return out


def dataset_title(meta: dict[str, Any] | None) -> str:
    """``Synthetic set (96 classes, 4 appearances, 24 in A)`` from ``dataset.json``."""
    if not meta:
        return "Synthetic set"
    config = meta.get("config", {})
    parts = [f"{meta.get('num_classes', config.get('num_classes', '?'))} classes"]
    if config.get("appearances"):
        parts.append(f"{config['appearances']} appearances")
    if meta.get("num_mask_classes") is not None:
        parts.append(f"{meta['num_mask_classes']} in A")
    return f"Synthetic set ({', '.join(parts)})"


def keep_previous_checks(rows: list[dict[str, Any]], json_path: Path, keys: list[str]) -> None:
    """Carry the ``keys`` of each run over from an earlier ``json_path``: a gather that skips
    the class-vector check or the probe must not erase what an earlier one measured."""
    if not keys or not json_path.is_file():
        return
    try:
        previous = json.loads(json_path.read_text(encoding="utf-8")).get("runs", [])
    except (OSError, ValueError):
        return
    found = {(r.get("variant"), r.get("seed")): r for r in previous}
    for row in rows:
        earlier = found.get((row["variant"], row["seed"]), {})
        for key in keys:
            if key in earlier and key not in row:
                row[key] = earlier[key]


# ------------------------------------------------------------------------------------ main
def main(args: argparse.Namespace) -> int:
    from model.config import ConfigError
    from training.config import load_config

    steps, batch_size, seeds = args.steps, args.batch_size, list(args.seeds)
    hue = args.preset == "hue_ring"
    args.config = args.config or PRESET_CONFIG[args.preset]
    if args.generic_features_first:
        args.variants = [*PRETRAINED_VARIANTS, *(args.variants or [])]
    if args.deep_marc:
        args.variants = [*DEEP_MARC_VARIANTS, *(args.variants or [])]
    args.variants = list(dict.fromkeys(args.variants or PRESET_VARIANTS[args.preset]))
    data = dict(HUE_DATA if hue else FULL_DATA)
    if args.quick:
        quick = HUE_QUICK if hue else QUICK
        steps = steps or quick["steps"]
        batch_size = batch_size or quick["batch_size"]
        seeds = seeds if seeds != [0, 1] else list(quick["seeds"])
        data.update(images=quick["images"], val_images=quick["val_images"])
        if not hue:
            data.update(classes=QUICK["classes"])
    data["a_covers_appearances"] = args.a_covers_appearances
    for key in ("classes", "images", "val_images", "image_size", "appearances"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    name = ("hue_" if hue else "") + ("quick" if args.quick else "full")
    out: Path = args.out or Path(f"artifacts/experiment/{name}")
    try:  # misconfiguration fails here, before hours of training
        make = ensure_hue_dataset if hue else ensure_dataset
        root = args.data_root or make(out / "data", data)
        if "pretrain_c" in args.variants:
            if hue:
                ensure_hue_dataset(out / "data_c", data, hue_offset=C_HUE_OFFSET, seed=C_SEED)
            elif args.data_root:
                raise ValueError(
                    "pretrain_c on the shapes preset builds C as the class table disjoint from "
                    "the set it generates; with --data-root it cannot know that set's classes"
                )
            else:
                ensure_dataset(out / "data_c", data, class_set=C_CLASS_SET)
        if not (root / "annotations").is_dir():
            raise ValueError(f"--data-root {root} holds no synthetic set (no annotations/)")
        common = [f"data.root={root}", *budget_overrides(steps, batch_size), *args.overrides]
        runs = plan_runs(out, args.variants, seeds, common)
        base = load_config(args.config, list(runs[0].overrides))
        for r in runs:
            check_finished_run(r, load_config(args.config, list(r.overrides)).to_dict())
    except (ConfigError, ValueError) as exc:
        print(f"maskx bench experiment: {exc}", file=sys.stderr)
        return 2
    s = base.solver
    budget = {"max_iter": s.max_iter, "batch_size": s.batch_size, "lr": s.lr,
              "optimizer": s.optimizer, "lr_steps": list(s.steps), "warmup_iters": s.warmup_iters,
              "images_seen": s.max_iter * s.batch_size}  # fmt: skip
    print(f"experiment in {out}: {len(args.variants)} variants × seeds {seeds}, "
          f"{s.max_iter} steps × {s.batch_size} images, data {root}", flush=True)  # fmt: skip
    failed: list[Run] = []
    if args.train:
        failed = execute(runs, args.config, args.jobs, args.threads)

    for r in runs:
        if (
            r.done
            and r.variant not in STEPS
            and "data.mask_classes=all" in r.overrides
            and not (r.folder / SPLIT_METRICS).is_file()
        ):
            print(f"  {r.variant}/seed{r.seed}: scoring on the A/B split ...", flush=True)
            evaluate_on_split(r, root)
    done = [r for r in runs if r.done and r.variant not in STEPS]
    rows = [row for r in done if (row := read_run(r)) is not None]
    # The steps' own scores (stage 1: boxes on the A/B set; pretraining: C's validation set).
    step_rows = [row for r in runs if r.done and r.variant in STEPS
                 and (row := read_run(r)) is not None]  # fmt: skip
    if args.probe_shape_kernels:
        for r, row in zip(done, rows, strict=True):
            if r.variant.startswith("transfer"):
                print(f"  {r.variant}/seed{r.seed}: probe with same-shape A kernels ...")
                path = evaluate_with_same_shape_kernels(r, root)
                if path is not None:
                    m = json.loads(path.read_text(encoding="utf-8"))
                    row[PROBE_KEY] = round(100.0 * m["segm"]["B"]["AP"], 3)
                    print(f"  {r.variant}/seed{r.seed}: mask AP B {row['mask_AP_B']} -> "
                          f"{row[PROBE_KEY]} with same-shape A kernels")  # fmt: skip
    if args.transfer_diagnostics:
        from maskx.bench.transfer_diagnostics import (
            hue_neighbour_share,
            kernel_ceiling,
            ridge_tau,
            row_drift,
            true_box_mask_ap,
        )

        def cached(r: Run, name: str, fn: Any, *a: Any, **kw: Any) -> Any:
            # Each figure is kept in the run folder: a later gather reuses it.
            path = r.folder / f"diagnostic_{name}.json"
            final = r.folder / "checkpoints" / "model_final.pt"
            if path.is_file() and path.stat().st_mtime >= final.stat().st_mtime:
                return json.loads(path.read_text(encoding="utf-8"))
            value = fn(*a, **kw)
            path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
            return value

        for r, row in zip(done, rows, strict=True):
            tb = cached(r, "true_boxes", true_box_mask_ap, r.folder, root)
            row["true_box_mask_AP_B"], row["true_box_mask_AP_A"] = tb["mask_AP_B"], tb["mask_AP_A"]
            print(f"  {r.variant}/seed{r.seed}: mask AP given the true boxes {tb}", flush=True)
            if not r.variant.startswith("stage"):
                row["w_det_row_drift"] = cached(r, "row_drift", row_drift, r.folder, root)
                print(f"  {r.variant}/seed{r.seed}: w_det row drift {row['w_det_row_drift']}")
            if hue and not r.variant.startswith("stage"):
                row["hue_neighbour_share"] = cached(
                    r, "hue_neighbours", hue_neighbour_share, r.folder, root
                )
                print(f"  {r.variant}/seed{r.seed}: B classes whose nearest A class in w_det is "
                      f"a ring neighbour {row['hue_neighbour_share']}")  # fmt: skip
            if r.variant in ("oracle", "pretrained_oracle"):
                row["ridge_tau"] = cached(r, "ridge_tau", ridge_tau, r.folder, root)
                row["ridge_tau_mask_AP_B"] = row["ridge_tau"].get("true_box_mask_AP_B")
                print(f"  {r.variant}/seed{r.seed}: ridge τ {row['ridge_tau']}", flush=True)
            if r.variant.removeprefix("pretrained_").removeprefix("head_") in (
                "transfer_mlp",
                "transfer",
            ):
                row["ceiling"] = cached(
                    r, f"ceiling_{args.ceiling_steps}", kernel_ceiling, r.folder, root,
                    steps=args.ceiling_steps,
                )  # fmt: skip
                row["ceiling_mask_AP_B"] = row["ceiling"].get("true_box_mask_AP_B")
                print(f"  {r.variant}/seed{r.seed}: free-kernel ceiling {row['ceiling']}")
    if args.diagnose and not hue:  # the shape/colour check needs the shapes set's classes
        for r, row in zip(done, rows, strict=True):
            if r.variant != "agnostic" and r.variant != "agnostic_mlp":
                row["nearest_a_class"] = diagnose(r, root)
    json_path = args.json or out / "results.json"
    keep_previous_checks(
        rows,
        json_path,
        [key for key, ran in (("nearest_a_class", args.diagnose),
                              (PROBE_KEY, args.probe_shape_kernels),
                              ("w_det_row_drift", args.transfer_diagnostics),
                              ("ridge_tau", args.transfer_diagnostics),
                              ("hue_neighbour_share", args.transfer_diagnostics),
                              ("ceiling", args.transfer_diagnostics),
                              *((k, args.transfer_diagnostics) for k in DIAGNOSTIC_KEYS)) if not ran],
    )  # fmt: skip
    summary = summarise(rows, [v for v in args.variants if v not in STEPS], seeds)
    # Each share on end-to-end mask AP B and, where measured, with every true box given (the
    # mask branch alone); a share whose variants did not run is None.
    shares = {
        f"{prefix}{name}": gap_share(summary, model_v, base_v, key, oracle_v)
        for prefix, key in (("", "mask_AP_B"), ("true_boxes_", "true_box_mask_AP_B"))
        if key == "mask_AP_B" or any(key in e for e in summary.values())
        for name, (model_v, base_v, oracle_v) in GAP_SHARES.items()
    }
    dataset_meta = None
    if (root / "dataset.json").is_file():
        dataset_meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    results = {
        "config": args.config,
        "common_overrides": common,
        "variants": {
            v: {"label": VARIANTS[v][0], "overrides": list(VARIANTS[v][1])} for v in args.variants
        },
        "budget": budget,
        "dataset": {"root": str(root), **({"generator": dataset_meta} if dataset_meta else {})},
        "runs": rows,
        "step_runs": step_rows,
        "summary": summary,
        "gap_share_mask_AP_B": shares,
        "missing_runs": [f"{r.variant}/seed{r.seed}" for r in runs if not r.done],
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")

    print()
    print(format_table(summary))
    if any(k in e for e in summary.values() for k in DIAGNOSTIC_KEYS):
        print()
        print(format_diagnostics_table(summary))
    for name, share in shares.items():
        text = "n/a" if share is None else f"{100 * share:.0f} %"
        print(f"gap share {name}: {text}")
    for row in rows:
        if row.get("nearest_a_class"):
            print(f"nearest A class of a B class shares (shape/family/colour/texture), "
                  f"{row['variant']}/seed{row['seed']}: "
                  + "; ".join(f"{k} " + "/".join(str(x) for x in v.values())
                              for k, v in row["nearest_a_class"].items()))  # fmt: skip
    if finished(summary):
        chart = args.chart or out / "experiment_mask_ap.png"
        counts = {len(e["seeds"]) for e in finished(summary).values()}
        over = (f"{counts.pop()} seed(s)" if len(counts) == 1 and not results["missing_runs"]
                else f"finished seeds (n shown if < {len(seeds)})")  # fmt: skip
        title = (f"{dataset_title(dataset_meta)}, {s.max_iter} steps × {s.batch_size} images, "
                 f"mean ± std over {over}")  # fmt: skip
        print(f"chart: {plot_chart(summary, chart, title)}")
        if any("true_box_mask_AP_B" in e for e in summary.values()):
            tb_chart = chart.with_name(chart.stem + "_true_boxes.png")
            plot_chart(summary, tb_chart, title + "; true boxes given",
                       ("true_box_mask_AP_B", "true_box_mask_AP_A"), "mask AP given true boxes")  # fmt: skip
            print(f"chart: {tb_chart}")
    print(f"results: {json_path}")
    if results["missing_runs"]:
        print(f"missing runs: {results['missing_runs']}")
    return 1 if failed else 0
