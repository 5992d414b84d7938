"""Checkpoints: written atomically, holding everything needed to resume and to explain a run.

A checkpoint is one typed object, :class:`Checkpoint`, stored with ``torch.save`` as the dict of
:meth:`Checkpoint.to_dict`::

    format          "maskx-checkpoint", format_version 1
    model           state dict (unwrapped from DDP)
    model_config    ModelConfig.to_dict()
    vocab           ClassVocabulary.to_dict(): names, A/B flags, source ids
    train_config    TrainConfig.to_dict() (absent in imported checkpoints)
    optimizer       optimizer state (absent in imported checkpoints)
    scaler          GradScaler state (fp16 AMP)
    step            optimisation steps done
    rng             per rank: torch / cuda / numpy / python RNG states
    metrics         the last evaluation, if any

:meth:`Checkpoint.from_dict` is the one reader: it refuses a missing required entry, an entry
it does not know and an entry of the wrong type, naming the entry and the file. Every file
written since format version 1 (including the package layout before ``model/``/``training/``
moved to the top level) has exactly these entries.

Loading never runs code from the file: ``torch.load(weights_only=True)`` with an allow-list of
exactly the non-tensor types a checkpoint holds (:func:`checkpoint_globals`: numpy arrays, for
numpy's RNG state); anything else is refused with the file and the type named.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import random
from dataclasses import dataclass, field, fields
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


def checkpoint_globals() -> list[Any]:
    """The allow-list of :func:`load_checkpoint`: what ``np.random.get_state()`` pickles to (a
    uint32 ndarray rebuilt by numpy's ``_reconstruct`` with its ``dtype``), under numpy 2's
    module path and numpy 1's (files written with either load). Tensors, dicts, lists, tuples, str, int,
    float, bool and None need no entry."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return [
        np.ndarray,
        np.dtype,
        type(np.dtype(np.uint32)),  # numpy.dtypes.UInt32DType: the MT19937 key's dtype
        (_reconstruct, "numpy._core.multiarray._reconstruct"),
        (_reconstruct, "numpy.core.multiarray._reconstruct"),
    ]


def _refused_types(path: Path, exc: Exception) -> str:
    """The types a refused checkpoint holds beyond the allow-list, for the error message."""
    allowed = {
        g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}"
        for g in checkpoint_globals()
    }
    try:
        # Reads the pickle's opcodes only; nothing in it is run.
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        found = []
    foreign = [g for g in found if g not in allowed]
    if foreign:
        return ", ".join(foreign)
    # Not a global of its own (a call or an object built from something on the unpickler's
    # stack): torch's reason, which its message puts after "WeightsUnpickler error:" and before
    # a pointer to its documentation (the message's last line, which says nothing of the file).
    text = str(exc)
    reason = text.partition("WeightsUnpickler error:")[2] or text
    lines = [x.strip() for x in reason.splitlines() if x.strip()]
    detail = lines[0] if lines else "torch gave no reason"
    return f"a type outside the allow-list ({detail})"


@dataclass
class Checkpoint:
    """What a checkpoint holds (see the module docstring for each entry).

    ``model`` maps parameter and buffer names to tensors; ``model_config`` and ``vocab`` are the
    plain-dict forms of :class:`~model.ModelConfig` and
    :class:`~training.datasets.vocab.ClassVocabulary` (rebuilt by
    :func:`load_model_from_checkpoint`); ``train_config`` is ``TrainConfig.to_dict()``, None
    in a checkpoint not written by a training run (``maskx import-detectron``); ``rng`` holds
    one RNG state per rank.
    """

    model: dict[str, torch.Tensor]
    model_config: dict[str, Any]
    vocab: dict[str, Any]
    step: int = 0
    train_config: dict[str, Any] | None = None
    optimizer: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    rng: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    REQUIRED = ("model", "model_config", "vocab")

    @property
    def data_kind(self) -> str:
        """The training data's kind (``coco``, ``vg``, ...); ``coco`` without a train config."""
        return ((self.train_config or {}).get("data") or {}).get("kind", "coco")

    def to_dict(self) -> dict[str, Any]:
        """The dict ``torch.save`` writes: ``format`` first, None entries left out."""
        out: dict[str, Any] = {"format": FORMAT}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, d: Any, source: str = "checkpoint") -> Checkpoint:
        """Check and read the dict of :meth:`to_dict`.

        Raises :class:`CheckpointError` naming ``source`` and the entry: not a maskx checkpoint
        (no ``format``), a newer ``format_version``, a required entry missing, an entry this
        version does not know, or an entry of the wrong type.
        """
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise CheckpointError(
                f"{source} is not a maskx checkpoint (no 'format': {FORMAT!r} entry)"
            )
        version = d.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise CheckpointError(f"{source}: 'format_version' is {version!r}, not a version")
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"{source}: format_version {version} is newer than this maskx reads "
                f"({FORMAT_VERSION}); load it with the maskx that wrote it, or upgrade maskx"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - {"format"})
        if unknown:
            raise CheckpointError(
                f"{source}: unknown entr{'y' if len(unknown) == 1 else 'ies'} "
                f"{', '.join(repr(k) for k in unknown)} (a maskx checkpoint of format version "
                f"{version} holds {', '.join(sorted(known))})"
            )
        for key in cls.REQUIRED:
            if key not in d:
                raise CheckpointError(f"{source} has no {key!r} entry")
        for key, kinds, what in _ENTRY_TYPES:
            value = d.get(key)
            if value is None and key not in cls.REQUIRED:
                continue
            if not isinstance(value, kinds) or isinstance(value, bool):
                raise CheckpointError(
                    f"{source}: entry {key!r} should be {what}, got {type(value).__name__}"
                )
        bad = [k for k, v in d["model"].items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise CheckpointError(f"{source}: entry 'model' holds non-tensors, e.g. {bad[0]!r}")
        if not all(isinstance(r, dict) for r in d.get("rng") or []):
            raise CheckpointError(f"{source}: entry 'rng' should be a list of RNG-state dicts")
        values = {k: v for k, v in d.items() if k != "format" and v is not None}
        values["format_version"] = version
        return cls(**values)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Checkpoint:
        """Read and check a maskx checkpoint (on the CPU), without running code from it.

        Raises :class:`CheckpointError` naming the file: missing, unreadable, holding a type
        outside :func:`checkpoint_globals` (named in the message; a checkpoint from someone
        else may carry a pickle that would run code when loaded), or refused by
        :meth:`from_dict`.
        """
        path = Path(path)
        return cls.from_dict(_load_raw(path), source=f"checkpoint {str(path)!r}")

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (:func:`save_atomic`)."""
        return save_atomic(self.to_dict(), path)


_ENTRY_TYPES: tuple[tuple[str, type | tuple[type, ...], str], ...] = (
    ("model", dict, "a state dict"),
    ("model_config", dict, "a dict (ModelConfig.to_dict())"),
    ("vocab", dict, "a dict (ClassVocabulary.to_dict())"),
    ("step", int, "an int"),
    ("train_config", dict, "a dict (TrainConfig.to_dict())"),
    ("optimizer", dict, "an optimizer state dict"),
    ("scaler", dict, "a GradScaler state dict"),
    ("rng", list, "a list (one RNG state per rank)"),
    ("metrics", dict, "a dict"),
)


def _load_raw(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        with torch.serialization.safe_globals(checkpoint_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's weights-only unpickler refused a type
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds {_refused_types(path, exc)}, which maskx "
            "checkpoints never hold; refusing to load it (unpickling it could run code). "
            "Load only checkpoints written by 'maskx train'."
        ) from None
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be read (truncated or not a torch file): {exc}"
        ) from exc


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checked dict of a checkpoint (:meth:`Checkpoint.load`, then ``to_dict``), for
    scripts that read a few entries; code of the package uses :class:`Checkpoint`."""
    return Checkpoint.load(path).to_dict()


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_model_from_checkpoint(path: str | os.PathLike) -> tuple[Any, Any, Checkpoint]:
    """Build the model of a checkpoint and load its weights.

    Returns:
        (MaskXRCNN in eval mode, ClassVocabulary, the :class:`Checkpoint`).
    """
    from model import ModelConfig, build_model
    from training.datasets.vocab import ClassVocabulary

    ckpt = Checkpoint.load(path)
    try:
        cfg = ModelConfig.from_dict(ckpt.model_config)
        # The weights come from the checkpoint: never re-read a file its config names (a
        # backbone file, the attribute control's class vectors) — a checkpoint from elsewhere
        # would have loading read any path it says. The vectors are in the state dict.
        cfg = cfg.replace(backbone_weights=None)
        model = build_model(
            cfg, class_vectors=ckpt.model.get("roi_heads.mask_predictor.class_vectors")
        )
        model.load_state_dict(ckpt.model)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {str(path)!r}: cannot rebuild its model: {exc}") from exc
    vocab = ClassVocabulary.from_dict(ckpt.vocab)
    if len(vocab) != cfg.num_classes:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: vocabulary has {len(vocab)} classes but the model "
            f"{cfg.num_classes}"
        )
    return model.eval(), vocab, ckpt


# Parameter-name prefixes of the parts a training run can take from another checkpoint.
INIT_PARTS: dict[str, tuple[str, ...]] = {
    "backbone": ("backbone.",),
    "rpn": ("rpn.",),
    "box_head": ("roi_heads.box_head.",),
    "box_predictor": ("roi_heads.box_predictor.",),
    "mask_head": ("roi_heads.mask_head.",),
    "mask_predictor": ("roi_heads.mask_predictor.",),
}
MASK_BRANCH = ("roi_heads.mask_head.", "roi_heads.mask_predictor.")


def init_from_checkpoint(
    model: torch.nn.Module,
    path: str | os.PathLike,
    parts: tuple[str, ...] | list[str] = (),
    log: Any = None,
) -> dict[str, list[str]]:
    """Initialise ``model`` from the weights of another run (``train.init_checkpoint``).

    ``parts`` (names of :data:`INIT_PARTS`; empty: all) limits what is taken — e.g.
    ``backbone`` alone to start an A/B run from features pretrained on other classes. Within
    those parts every weight of matching name and shape is copied. The **mask branch** may be
    of another kind than the checkpoint's (stage 1 never trains it): mask-branch weights that
    the model lacks or that differ in shape are skipped and the model's own mask branch keeps
    its initialisation; this is logged. Any other weight the checkpoint has but the model
    cannot take is an error (it means another architecture, not another mask head).

    Returns ``{"loaded", "kept_own_init", "skipped"}``: parameter names loaded from the file,
    model parameters left at their own initialisation, checkpoint entries not used.
    """
    unknown = sorted(set(parts) - set(INIT_PARTS))
    if unknown:
        raise ValueError(f"train.init_parts: unknown {unknown}; allowed: {sorted(INIT_PARTS)}")
    prefixes = tuple(p for name in (parts or INIT_PARTS) for p in INIT_PARTS[name])
    source = Checkpoint.load(path).model
    target = model.state_dict()
    take: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    mismatched: list[str] = []
    for name, value in source.items():
        if not name.startswith(prefixes):
            skipped.append(name)
        elif name in target and target[name].shape == value.shape:
            take[name] = value
        elif name.startswith(MASK_BRANCH):
            skipped.append(name)  # a mask branch of another kind: the model keeps its own
        else:
            have = tuple(target[name].shape) if name in target else "absent"
            mismatched.append(f"{name} (file {tuple(value.shape)}, model {have})")
    if mismatched:
        raise CheckpointError(
            f"train.init_checkpoint {str(path)!r} does not match the model: {mismatched[:5]}"
            + ("" if parts else "; choose the parts to take with train.init_parts")
        )
    model.load_state_dict(take, strict=False)
    own = [n for n in target if n not in take and n.startswith(prefixes)]
    own += [n for n in target if not n.startswith(prefixes)]
    if log is not None:
        mask_own = [n for n in own if n.startswith(MASK_BRANCH)]
        mask_skipped = [n for n in skipped if n.startswith(MASK_BRANCH) and n.startswith(prefixes)]
        log.info(
            "initialised %d tensors from %s (parts: %s); %d keep their own initialisation",
            len(take), path, ", ".join(parts) or "all", len(own),
        )  # fmt: skip
        if mask_skipped:
            log.info(
                "the checkpoint's mask branch is of another kind (%d tensors not taken, e.g. %s): "
                "the mask branch starts from its own initialisation (%d tensors)",
                len(mask_skipped), mask_skipped[0], len(mask_own),
            )  # fmt: skip
    return {"loaded": sorted(take), "kept_own_init": sorted(own), "skipped": sorted(skipped)}
