"""Training configuration: YAML files in ``configs/`` plus ``--set key=value`` overrides.

A config has four sections — ``model`` (a :class:`model.ModelConfig`), ``data``,
``solver`` and ``train`` — and round-trips through a plain dict, which checkpoints carry.

A YAML file may start from another one: ``_BASE_: base/coco_r50_fpn.yaml`` (a path relative to
the file that names it, as detectron2's) is read first, recursively, and the file's own values
are deep-merged over it, the file winning. Types and choices are checked once, on the merged
result; what a run saves (``config.yaml``, checkpoints) is that merged result, without
``_BASE_``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from model import ModelConfig
from model.config import ConfigError

DATA_KINDS = ("coco", "vg", "coco_in_vg", "vg+coco")
SCHEMES = ("end_to_end", "stage1", "stage2")
OPTIMIZERS = ("sgd", "adamw")
AMP_MODES = ("none", "bf16", "fp16")
# The values training.datasets.visual_genome accepts (kept here so a config loads without it).
VG_VOCABULARIES = ("reference", "by_count")
VG_MULTI_SYNSET = ("drop", "first")


@dataclass
class DataConfig:
    """Where the data is and how it is split into A (masks) and B (boxes only).

    Relative paths are taken from ``root`` when it is set, else from the working directory.
    """

    kind: str = "coco"
    """``coco`` (COCO-format json + images), ``vg`` (Visual Genome boxes), ``coco_in_vg`` (COCO
    relabelled into the VG vocabulary: stage 2 of the VG model) or ``vg+coco`` (mixed)."""
    root: str | None = None
    train_annotations: str | None = None
    train_images: str | None = None
    val_annotations: str | None = None
    val_images: str | None = None
    mask_classes: str = "all"
    """``all``, ``voc``, ``nonvoc``, ``none`` or a file of class names/ids (the set A)."""
    vg_image_data: str | None = None
    vg_objects: str | None = None
    vg_images: str | None = None
    vg_num_classes: int = 3000
    """K, the synsets kept by count. With ``vg_vocabulary: reference`` the vocabulary is these K
    plus every COCO class whose synset is not among them (3001 classes on Visual Genome 1.4)."""
    vg_vocabulary: str = "reference"
    """``reference``: the authors' rule (COCO classes first in COCO order, the other top-K
    synsets sorted by name); ``by_count``: maskx's earlier rule (the rest most frequent first)."""
    vg_multi_synset: str = "drop"
    """An object with several synsets: ``drop`` it (the reference,
    ``step_1_build_vg3k_raw_json.py``) or label it by its ``first`` synset."""
    vg_exclude_coco_val: bool = True
    """Hold out the Visual Genome images that are COCO images of ``val_annotations`` (the
    reference holds out COCO minival = val2017); the count is logged."""
    workers: int = 2
    drop_empty: bool = True
    aspect_ratio_grouping: bool = True
    flip_map: str | None = None
    """JSON file of mirror class pairs swapped by a horizontal flip (and classes no flip maps,
    which turn flipping off); see ``training.datasets.flip``. None: every class is symmetric."""

    def path(self, value: str | None) -> Path | None:
        if value is None:
            return None
        p = Path(os.path.expanduser(value))
        if not p.is_absolute() and self.root is not None:
            p = Path(os.path.expanduser(self.root)) / p
        return p


@dataclass
class SolverConfig:
    """Optimisation: the paper's schedule is SGD, LR 0.02 for 16 images, 90k iterations with
    steps at 60k and 80k; scale ``lr`` linearly with the total batch (``batch_size × GPUs ×
    accumulate``)."""

    optimizer: str = "sgd"
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 2
    """Images per process per micro-batch."""
    accumulate: int = 1
    max_iter: int = 90000
    steps: tuple[int, ...] = (60000, 80000)
    gamma: float = 0.1
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    clip_grad_norm: float | None = None
    amp: str = "none"


@dataclass
class TrainLoopConfig:
    scheme: str = "end_to_end"
    seed: int = 0
    device: str = "auto"
    hflip_prob: float = 0.5
    min_size_train: tuple[int, ...] = ()
    """Multi-scale training: short sides to draw from (empty: the model's ``min_size``)."""
    init_checkpoint: str | None = None
    """Weights to start from (e.g. the stage-1 checkpoint for stage 2)."""
    init_parts: tuple[str, ...] = ()
    """Parts taken from ``init_checkpoint`` (``backbone``, ``rpn``, ``box_head``,
    ``box_predictor``, ``mask_head``, ``mask_predictor``; empty: all that match). A mask
    branch of another kind than the checkpoint's always keeps its own initialisation."""
    checkpoint_period: int = 1000
    keep_checkpoints: int = 3
    eval_period: int = 0
    """Evaluate on the validation set every N steps (0: only at the end); every rank runs
    its shard of the set and rank 0 scores the gathered detections."""
    dist_timeout_minutes: float = 30.0
    """Timeout of the process group's collectives under ``torchrun`` (detectron2's 30 minutes;
    PyTorch's NCCL default is 10): how long a rank may wait for the others, e.g. for rank 0's
    COCOeval of a large validation set."""
    log_period: int = 20
    deterministic: bool = False
    progress: bool = True
    tensorboard: bool = True


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _choice("data.kind", self.data.kind, DATA_KINDS)
        _choice("train.scheme", self.train.scheme, SCHEMES)
        _choice("solver.optimizer", self.solver.optimizer, OPTIMIZERS)
        _choice("solver.amp", self.solver.amp, AMP_MODES)
        _choice("data.vg_vocabulary", self.data.vg_vocabulary, VG_VOCABULARIES)
        _choice("data.vg_multi_synset", self.data.vg_multi_synset, VG_MULTI_SYNSET)
        if self.data.kind != "coco" and self.data.mask_classes != "all":
            raise ConfigError(
                f"data.mask_classes={self.data.mask_classes!r} cannot be used with "
                f"data.kind={self.data.kind!r}: the mask classes (A) of a Visual Genome "
                "vocabulary are its 80 COCO classes; leave data.mask_classes at 'all'"
            )
        s = self.solver
        if s.batch_size < 1 or s.accumulate < 1 or s.max_iter < 1:
            raise ConfigError(
                "solver.batch_size, solver.accumulate and solver.max_iter must be >= 1, got "
                f"{s.batch_size}, {s.accumulate}, {s.max_iter}"
            )
        if list(s.steps) != sorted(s.steps):
            raise ConfigError(f"solver.steps must be increasing, got {list(s.steps)}")
        if not 0.0 <= self.train.hflip_prob <= 1.0:
            raise ConfigError(f"train.hflip_prob must be in [0, 1], got {self.train.hflip_prob}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            "data": _plain(dataclasses.asdict(self.data)),
            "solver": _plain(dataclasses.asdict(self.solver)),
            "train": _plain(dataclasses.asdict(self.train)),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        sections = {"model", "data", "solver", "train"}
        unknown = sorted(set(data) - sections)
        if unknown:
            raise ConfigError(f"unknown config section(s) {unknown}; allowed: {sorted(sections)}")
        return cls(
            model=ModelConfig.from_dict(
                checked_types(ModelConfig, "model", dict(data.get("model") or {}))
            ),
            data=_section(DataConfig, "data", data.get("data") or {}),
            solver=_section(SolverConfig, "solver", data.get("solver") or {}),
            train=_section(TrainLoopConfig, "train", data.get("train") or {}),
        )


FROM_SCRATCH = "none"
"""``model.backbone_weights`` value that asks for a backbone trained from scratch on purpose."""

# Backbones meant to start from ImageNet weights; ``tiny`` is built for from-scratch CPU work.
_PRETRAINED_BACKBONES = ("resnet50", "resnet101", "resnet18", "mobilenet_v3")


def check_backbone_weights(cfg: TrainConfig) -> None:
    """Refuse a run whose backbone would silently train from scratch.

    A ResNet (or MobileNet) backbone needs ``model.backbone_weights`` (a local ImageNet state
    dict), unless ``train.init_checkpoint`` supplies the backbone (e.g. stage 2) or the config
    says ``model.backbone_weights: none`` on purpose. The paper's numbers need an ImageNet
    backbone; from scratch at 2 images per GPU, plain BN is a poor normaliser.
    """
    m, t = cfg.model, cfg.train
    if m.backbone not in _PRETRAINED_BACKBONES or m.backbone_weights is not None:
        return
    if t.init_checkpoint and (not t.init_parts or "backbone" in t.init_parts):
        return
    raise ConfigError(
        f"model.backbone_weights is not set: the {m.backbone} backbone would train from scratch. "
        f"Name a local ImageNet state dict (--set model.backbone_weights=/path/{m.backbone}.pth), "
        f"or train from scratch on purpose with --set model.backbone_weights={FROM_SCRATCH} "
        "(on several GPUs, add --set model.norm=sync_bn)"
    )


# Settings a resumed run may change: they alter how a run reports, not what it trains.
RESUME_FREE_KEYS = frozenset(
    {"train.progress", "train.tensorboard", "train.log_period", "train.dist_timeout_minutes"}
)


def config_differences(
    saved: dict[str, Any], current: dict[str, Any]
) -> list[tuple[str, Any, Any]]:
    """``(section.field, saved value, current value)`` for every field whose value differs
    between two configs (as :meth:`TrainConfig.to_dict` writes them, each normalised through
    :class:`TrainConfig` so that fields a newer version added count at their defaults), leaving
    out :data:`RESUME_FREE_KEYS`. Sorted by key."""
    a = TrainConfig.from_dict(saved).to_dict()
    b = TrainConfig.from_dict(current).to_dict()
    out = []
    for section in sorted(set(a) | set(b)):
        sa, sb = a.get(section, {}), b.get(section, {})
        for key in sorted(set(sa) | set(sb)):
            name = f"{section}.{key}"
            if name not in RESUME_FREE_KEYS and sa.get(key) != sb.get(key):
                out.append((name, sa.get(key), sb.get(key)))
    return out


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _section(cls: type, name: str, values: dict[str, Any]) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown field(s) {[f'{name}.{k}' for k in unknown]}; "
                          f"allowed: {sorted(f'{name}.{k}' for k in known)}")  # fmt: skip
    return cls(**checked_types(cls, name, values))


def checked_types(cls: type, section: str, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` for the fields of dataclass ``cls`` with their declared types checked.

    An int is taken where a float is declared (as a float), a list where a tuple is declared
    (as a tuple); anything else of the wrong type raises :class:`ConfigError` naming
    ``section.field``, the value and the expected type (a string where a number is declared, a
    float where an int is, a number where a bool is). Unknown keys are passed through.
    """
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in values.items():
        if key in hints:
            value = _typed(f"{section}.{key}", value, hints[key])
        out[key] = value
    return out


def _typed(name: str, value: Any, hint: Any) -> Any:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    for option in options:
        ok, converted = _convert(value, option)
        if ok:
            return converted
    expected = " or ".join(_type_name(o) for o in options)
    message = f"{name}={value!r}: expected {expected}, got {type(value).__name__}"
    if str in options and isinstance(value, int | float):
        message += f" (quote it to mean text: --set {name}='\"{value}\"')"
    raise ConfigError(message)


def _convert(value: Any, hint: Any) -> tuple[bool, Any]:
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    origin = typing.get_origin(hint)
    if origin is tuple and isinstance(value, list | tuple):
        item = typing.get_args(hint)[0]
        items = [_convert(v, item) for v in value]
        return all(ok for ok, _ in items), tuple(v for _, v in items)
    if origin is dict or hint is dict:
        return isinstance(value, dict), value
    return hint is type(None) and value is None, value


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is tuple:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not supported; allowed values: {list(allowed)}")


def add_override_argument(parser: argparse.ArgumentParser) -> None:
    """``--set SECTION.FIELD=VALUE`` (repeatable) into ``args.overrides``, for :func:`load_config`."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override a config value, e.g. --set solver.lr=0.01 --set data.mask_classes=voc",
    )


def parse_override(text: str) -> tuple[list[str], Any]:
    """``solver.lr=0.01`` → (["solver", "lr"], 0.01); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set key must be section.field (e.g. solver.lr), got {key!r}")
    return parts, yaml.safe_load(raw)


BASE_KEY = "_BASE_"
"""Top-level key of a config file naming the file it starts from (detectron2's spelling)."""


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping a YAML config file describes, its ``_BASE_`` chain merged in.

    ``_BASE_`` is a path relative to the file that holds it (``~`` expanded); the base is read
    the same way (recursively) and the file's values are merged over it: mappings merge key by
    key at every depth, any other value (a list included) replaces the base's. Types are not
    checked here; :func:`load_config` checks the merged result. Raises :class:`ConfigError`
    naming the file for a missing or unreadable file, a ``_BASE_`` that is not a path, or a
    cycle of bases.
    """
    return _read_with_bases(Path(path), ())


def _read_with_bases(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"config file {str(path)!r}: {BASE_KEY} makes a cycle: {cycle}")
    if not path.is_file():
        named_by = f" (the {BASE_KEY} of {str(chain[-1])!r})" if chain else ""
        raise ConfigError(f"config file {str(path)!r}{named_by} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections")
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(
            f"config file {str(path)!r}: {BASE_KEY} must be the path of another config file "
            f"(relative to this one), got {base!r}"
        )
    base_path = Path(os.path.expanduser(base))
    if not base_path.is_absolute():
        base_path = path.parent / base_path
    return merge_configs(_read_with_bases(base_path, (*chain, resolved)), data)


def merge_configs(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """``child`` deep-merged over ``base`` (new dicts; neither argument is changed): where both
    hold a mapping the two merge key by key, anywhere else ``child``'s value wins — except that
    an empty value (``None``) over a mapping leaves the mapping, since a section whose lines are
    all commented out (``train:``) reads as ``None`` in YAML and must not erase the base's."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(out.get(key), dict) and (value is None or isinstance(value, dict)):
            out[key] = merge_configs(out[key], value or {})
        else:
            out[key] = value
    return out


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML config (its ``_BASE_`` chain merged in; or the defaults when ``path`` is
    None), apply ``section.field=value`` overrides, and check types and values."""
    data: dict[str, Any] = {} if path is None else read_config_file(path)
    for text in overrides:
        (section, key), value = parse_override(text)
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ConfigError(f"config section {section!r} is not a mapping")
        data[section][key] = value
    return TrainConfig.from_dict(data)
