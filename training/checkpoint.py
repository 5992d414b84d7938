"""Checkpoints: written atomically, holding everything needed to resume and to explain a run.

A checkpoint is a ``torch.save`` dict::

    format          "maskx-checkpoint", format_version 1
    model           state dict (unwrapped from DDP)
    model_config    ModelConfig.to_dict()
    vocab           ClassVocabulary.to_dict(): names, A/B flags, source ids
    train_config    TrainConfig.to_dict()
    optimizer       optimizer state (absent in exported-only checkpoints)
    scaler          GradScaler state (fp16 AMP)
    step            optimisation steps done
    rng             torch / cuda / numpy / python RNG states
    metrics         the last evaluation, if any
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.fileio import atomic_path

FORMAT = "maskx-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint cannot be read or is not a maskx checkpoint; the message names the file."""


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash at any point leaves either the old file or the new one, never half a file.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a maskx checkpoint (on the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        # Our checkpoints hold numpy RNG states and plain dicts besides tensors.
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be read (truncated or not a torch file): {exc}"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not a maskx checkpoint (no 'format': {FORMAT!r} entry)"
        )
    for key in ("model", "model_config", "vocab"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {str(path)!r} has no {key!r} entry")
    return ckpt


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_model_from_checkpoint(path: str | os.PathLike):
    """Build the model of a checkpoint and load its weights.

    Returns:
        (model in eval mode, ClassVocabulary, the checkpoint dict).
    """
    from model import ModelConfig, build_model
    from training.datasets.vocab import ClassVocabulary

    ckpt = load_checkpoint(path)
    try:
        cfg = ModelConfig.from_dict(ckpt["model_config"])
        # The weights come from the checkpoint; never re-read a backbone file named at training.
        cfg = cfg.replace(backbone_weights=None)
        model = build_model(cfg)
        model.load_state_dict(ckpt["model"])
    except Exception as exc:
        raise CheckpointError(f"checkpoint {str(path)!r}: cannot rebuild its model: {exc}") from exc
    vocab = ClassVocabulary.from_dict(ckpt["vocab"])
    if len(vocab) != cfg.num_classes:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: vocabulary has {len(vocab)} classes but the model "
            f"{cfg.num_classes}"
        )
    return model.eval(), vocab, ckpt
