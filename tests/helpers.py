"""Helpers every test package may import (fixtures stay in conftest.py)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "tiny_synth.yaml"


def tiny_train_overrides(data_root: Path, **extra: object) -> list[str]:
    """--set overrides that make the tiny synthetic config run in seconds on the CPU."""
    sets: dict[str, object] = {
        "data.root": str(data_root),
        "data.workers": 0,
        "model.tiny_widths": "[16, 32, 48, 64]",
        "model.fpn_channels": 32,
        "model.min_size": 96,
        "model.max_size": 96,
        "model.box_head_dim": 64,
        "model.mask_head_dim": 32,
        "model.transfer_hidden": 32,
        "model.rpn_batch_size_per_image": 64,
        "model.box_batch_size_per_image": 64,
        "solver.batch_size": 2,
        "solver.warmup_iters": 2,
        "solver.steps": "[]",
        "train.progress": "false",
        "train.tensorboard": "false",
        "train.log_period": 1,
    }
    sets.update(extra)
    return [f"{k}={v}" for k, v in sets.items()]


def export_checkpoint(checkpoint: Path, out: Path, *, score_thresh: float) -> Path:
    """Export a trained test checkpoint to ONNX at ``out`` with the graph's score threshold set
    to ``score_thresh`` (the 40-step test model scores next to nothing at its own)."""
    from training.checkpoint import load_model_from_checkpoint
    from training.export.onnx_export import build_metadata, export_model

    model, vocab, ckpt = load_model_from_checkpoint(checkpoint)
    model.roi_heads.score_thresh = score_thresh
    meta = build_metadata(
        model, vocab, model_config=ckpt.model_config, train_config=ckpt.train_config,
        checkpoint_sha256=None, name="tiny", version="test",
    )  # fmt: skip
    return export_model(model, out, meta)
