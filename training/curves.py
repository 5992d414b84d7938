"""Training curves as a PNG, from ``metrics.jsonl``."""

from __future__ import annotations

import json
import os
from pathlib import Path


def plot_curves(jsonl: str | os.PathLike, out_png: str | os.PathLike) -> Path:
    """Plot the losses, the learning rate and the evaluation APs of a run into one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps: dict[str, list[tuple[int, float]]] = {}
    evals: dict[str, list[tuple[int, float]]] = {}
    for line in Path(jsonl).read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        step = rec["step"]
        if "eval" in rec:
            for iou in ("segm", "bbox"):
                for subset in ("A", "B"):
                    ap = rec["eval"].get(iou, {}).get(subset, {}).get("AP")
                    if ap is not None:
                        evals.setdefault(f"{iou} AP ({subset})", []).append((step, ap))
            continue
        for k, v in rec.items():
            if k.startswith("loss") or k == "lr":
                steps.setdefault(k, []).append((step, v))

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for k, pts in sorted(steps.items()):
        if k.startswith("loss"):
            axes[0].plot(*zip(*pts, strict=True), label=k, lw=2 if k == "loss" else 1)
    axes[0].set_yscale("log")
    axes[0].set_title("losses")
    axes[0].legend(fontsize=8)
    if "lr" in steps:
        axes[1].plot(*zip(*steps["lr"], strict=True))
    axes[1].set_title("learning rate")
    for k, pts in sorted(evals.items()):
        axes[2].plot(*zip(*pts, strict=True), marker="o", label=k)
    axes[2].set_title("validation AP (A = masks, B = boxes only)")
    if evals:
        axes[2].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out_png)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
