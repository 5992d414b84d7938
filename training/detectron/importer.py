"""Import a Detectron (Caffe2) Mask^X R-CNN weights file as a maskx checkpoint.

:func:`import_detectron` reads the file without running anything in it
(:mod:`training.detectron.pickle_io`), infers the architecture from the blobs' shapes
(:func:`infer_architecture`), maps every weight blob to exactly one maskx parameter
(:mod:`training.detectron.manifest`), skips the blobs that are not weights by named rules,
and writes an ordinary maskx checkpoint (``maskx export``, ``evaluate``, ``predict`` and
``train.init_checkpoint`` take it). See docs/detectron_import.md.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model import ModelConfig, build_model
from training.checkpoint import Checkpoint, file_sha256
from training.datasets.vocab import ClassVocabulary, mask_split
from training.detectron.manifest import (
    LEFTOVER_RULES,
    Architecture,
    BlobEntry,
    blob_manifest,
    leftover_rule,
    nonzero,
    stage_sum,
    transfer_blob_names,
)
from training.detectron.pickle_io import (
    DetectronWeights,
    cfg_array,
    load_detectron_pickle,
    read_cfg,
)

__all__ = [
    "DETECTRON_CONVENTIONS",
    "DETECTRON_PIXEL_MEANS_BGR",
    "DetectronImportError",
    "ImportReport",
    "import_detectron",
    "infer_architecture",
    "read_vocabulary",
]

log = logging.getLogger(__name__)

#: Detectron subtracts these from 0..255 BGR pixels and divides by nothing (``PIXEL_MEANS``).
DETECTRON_PIXEL_MEANS_BGR = (102.9801, 115.9465, 122.7717)

#: Detectron's inference conventions that differ from torchvision's, as ModelConfig fields.
#: Applied where this version's ModelConfig has the field; the others are logged as not yet
#: supported (the model then follows torchvision's convention for them).
DETECTRON_CONVENTIONS: dict[str, Any] = {
    "anchor_style": "detectron",
    "box_convention": "legacy",
    "rpn_min_size": 0.0,
    "clip_proposals_to_padded": True,
    "resize_rule": "detectron",
    "mask_paste": "detectron",
}

#: The authors' test settings (``configs/bbox2mask_vg/eval_sw*/runtest_*.yaml`` and Detectron's
#: defaults): short side 800, long side ≤ 1333, score > 0.05, NMS 0.5, 100 detections, 1000
#: proposals before and after the RPN's NMS.
TEST_SETTINGS: dict[str, Any] = {
    "min_size": 800,
    "max_size": 1333,
    "box_score_thresh": 0.05,
    "box_nms_thresh": 0.5,
    "box_detections_per_img": 100,
    "box_candidates_per_img": None,
    "rpn_pre_nms_top_n_test": 1000,
    "rpn_post_nms_top_n_test": 1000,
}

#: The mask set A of the authors' Visual Genome vocabulary: its first 80 (COCO) classes.
VG3K_NUM_CLASSES = 3001
VG3K_MASK_CLASSES = 80


class DetectronImportError(ValueError):
    """The file cannot be imported; the message names the file, blob or value at fault."""


@dataclass
class ImportReport:
    """What an import read, skipped and decided (also logged).

    Attributes:
        architecture: what the blobs' shapes describe.
        model_config: the maskx config written to the checkpoint.
        loaded: blob → maskx key, for every weight blob.
        skipped: rule (:data:`~training.detectron.manifest.LEFTOVER_RULES`) → blob names.
        floats: number of floats loaded into the model (the weight blobs).
        notes: cross-checks against the file's cfg and settings taken from it or by default.
        unsupported: Detectron conventions this version's ModelConfig cannot express yet.
    """

    architecture: Architecture
    model_config: ModelConfig
    loaded: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=dict)
    floats: int = 0
    notes: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)

    def summary(self) -> str:
        a = self.architecture
        lines = [
            f"{a.backbone}-FPN (blocks {list(a.resnet_blocks)}, width {a.resnet_width}), "
            f"K = {a.num_classes}, τ {a.transfer_input} {a.transfer_layers} layer(s), "
            f"MLP {'on' if a.mlp else 'off'}",
            f"loaded {len(self.loaded)} weight blobs ({self.floats:,} floats)",
        ]
        for rule, names in sorted(self.skipped.items()):
            lines.append(f"skipped {len(names)} blob(s) by rule {rule!r}: {LEFTOVER_RULES[rule]}")
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"not yet supported by this version: {u}" for u in self.unsupported]
        return "\n".join(lines)


# -- architecture from the blobs' shapes -----------------------------------------------------------


def _need(blobs: Mapping[str, np.ndarray], name: str, why: str) -> np.ndarray:
    if name not in blobs:
        raise DetectronImportError(f"missing blob {name!r} ({why})")
    return blobs[name]


def infer_architecture(blobs: Mapping[str, np.ndarray]) -> Architecture:
    """Read the architecture from the blobs' names and shapes (no cfg needed).

    Depth from the number of ``res4_*`` blocks (6: R-50, 23: R-101), K from ``cls_score_w``'s
    rows − 1, τ's depth from the presence of ``bbox2mask_mlp_l1``/``l2`` and its input from
    the first layer's width (D, 4D or 5D), the MLP from ``mask_mlp_logits_raw``; widths from
    the first layer of each part.

    Raises:
        DetectronImportError: a blob the architecture needs is missing or inconsistent.
    """
    blocks = []
    for stage in (2, 3, 4, 5):
        n = 0
        while f"res{stage}_{n}_branch2a_w" in blobs:
            n += 1
        if n == 0:
            raise DetectronImportError(
                f"missing blob 'res{stage}_0_branch2a_w': not a ResNet backbone (stage res{stage})"
            )
        blocks.append(n)
    width = int(_need(blobs, "conv1_w", "the ResNet stem").shape[0])
    cls = _need(blobs, "cls_score_w", "the box predictor")
    if cls.ndim != 2 or cls.shape[0] < 2:
        raise DetectronImportError(f"blob 'cls_score_w' has shape {cls.shape}, expected [K+1, D]")
    num_classes, box_dim = int(cls.shape[0]) - 1, int(cls.shape[1])
    fpn_dim = int(
        _need(blobs, f"fpn_inner_{stage_sum(5, tuple(blocks))}_w", "the FPN's top level").shape[0]
    )
    mask_layers = 0
    while f"_[mask]_fcn{mask_layers + 1}_w" in blobs:
        mask_layers += 1
    if mask_layers == 0:
        raise DetectronImportError(
            "missing blob '_[mask]_fcn1_w': no 4-conv FCN mask head "
            "(mask_rcnn_fcn_head_v1up4convs), the only mask head supported"
        )
    mask_dim = int(blobs["_[mask]_fcn1_w"].shape[0])
    if "mask_fcn_logits_w_flat_w" not in blobs:
        raise DetectronImportError(
            "missing blob 'mask_fcn_logits_w_flat_w': not a Mask^X model (no weight transfer "
            "function; MRCNN.BBOX2MASK.BBOX2MASK_ON was off)"
        )
    layers = 3 if "bbox2mask_mlp_l2_w" in blobs else 2 if "bbox2mask_mlp_l1_w" in blobs else 1
    first = blobs[transfer_blob_names(layers)[0] + "_w"]
    embed = {box_dim: "cls", 4 * box_dim: "box", 5 * box_dim: "cls+box"}.get(int(first.shape[1]))
    if embed is None:
        raise DetectronImportError(
            f"blob {transfer_blob_names(layers)[0] + '_w'!r} reads {first.shape[1]} values per "
            f"class; weight transfer from cls_score/bbox_pred reads {box_dim}, {4 * box_dim} or "
            f"{5 * box_dim} (a pretrained embedding as τ's input is not supported)"
        )
    hidden = int(first.shape[0]) if layers > 1 else mask_dim
    for unsupported in ("fc_mask_head_mlp_l1_w", "fc_mask_head_mlp_l2_w"):
        if unsupported in blobs:
            raise DetectronImportError(
                f"blob {unsupported!r}: a multi-layer class-agnostic MLP branch "
                "(MRCNN.MLP_MASK_BRANCH_TYPE 2_layer/3_layer) is not supported, only 1_layer"
            )
    mlp = "mask_mlp_logits_raw_w" in blobs
    anchors = int(_need(blobs, "rpn_cls_logits_fpn2_w", "the FPN RPN").shape[0])
    if anchors != 3:
        raise DetectronImportError(
            f"blob 'rpn_cls_logits_fpn2_w' has {anchors} anchors per location; maskx's FPN RPN "
            "has 3 (one size per level, aspect ratios 0.5, 1, 2)"
        )
    return Architecture(
        resnet_blocks=tuple(blocks),  # type: ignore[arg-type]
        resnet_width=width,
        num_classes=num_classes,
        fpn_dim=fpn_dim,
        box_head_dim=box_dim,
        mask_head_dim=mask_dim,
        mask_head_layers=mask_layers,
        transfer_input=embed,
        transfer_layers=layers,
        transfer_hidden=hidden,
        mlp=mlp,
        num_anchors=anchors,
    )


# -- the file's cfg: settings the weights do not show, and cross-checks ---------------------------


def _get(cfg: Mapping[str, Any] | None, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _cfg_settings(
    cfg: Mapping[str, Any] | None, arch: Architecture, notes: list[str]
) -> dict[str, Any]:
    """ModelConfig fields taken from the cfg (activation, stride placement, pixel means), and
    notes where the cfg disagrees with the weights (the weights' shapes win)."""
    if cfg is None:
        notes.append("the file has no cfg: Detectron's defaults for what the weights do not show")
    checks = [
        ("MODEL.NUM_CLASSES", arch.num_classes + 1, "cls_score_w rows"),
        ("FPN.DIM", arch.fpn_dim, "FPN width"),
        ("MRCNN.DIM_REDUCED", arch.mask_head_dim, "mask head width"),
        ("MRCNN.JOINT_FCN_MLP_HEAD", arch.mlp, "MLP branch present"),
        ("RESNETS.WIDTH_PER_GROUP", arch.resnet_width, "ResNet stem width"),
        ("MRCNN.BBOX2MASK.TYPE", f"{arch.transfer_layers}_layer", "τ layers"),
    ]
    for key, from_weights, what in checks:
        value = _get(cfg, key)
        if key == "MRCNN.BBOX2MASK.TYPE" and value == "":
            value = "1_layer"  # Detectron's bbox2mask_weight_transfer reads '' as 1 layer
        if value is not None and value != from_weights and str(value) != str(from_weights):
            notes.append(
                f"cfg {key} = {value!r} but the weights give {from_weights!r} ({what}): "
                "using the weights"
            )
    body = _get(cfg, "MODEL.CONV_BODY")
    if isinstance(body, str) and arch.standard_blocks:
        depth = "ResNet101" if arch.backbone == "resnet101" else "ResNet50"
        if depth not in body:
            notes.append(f"cfg MODEL.CONV_BODY = {body!r} but the weights are {depth}: using them")
    settings: dict[str, Any] = {}
    leaky = _get(cfg, "MRCNN.BBOX2MASK.USE_LEAKYRELU")
    settings["transfer_activation"] = "relu" if leaky is False else "leaky_relu"
    stride_1x1 = _get(cfg, "RESNETS.STRIDE_1X1")
    settings["stride_in_1x1"] = stride_1x1 is not False
    stop = _get(cfg, "MRCNN.BBOX2MASK.STOP_DET_W_GRAD")
    settings["stop_gradient"] = stop is not False
    means = DETECTRON_PIXEL_MEANS_BGR
    raw = _get(cfg, "PIXEL_MEANS")
    if raw is not None:
        arr = cfg_array(raw)
        if arr is None or arr.size != 3:
            notes.append("cfg PIXEL_MEANS is unreadable: using Detectron's default means")
        elif not np.allclose(arr.ravel(), means):
            means = tuple(float(v) for v in arr.ravel())
            notes.append(f"cfg PIXEL_MEANS (BGR) = {list(means)}: used instead of the default")
    # maskx feeds RGB in 0..1 and normalises (x − mean) / std; Detectron feeds BGR 0..255 minus
    # its means: mean = means / 255 in RGB order, std = 1/255 gives 255·x − mean exactly.
    settings["image_mean"] = tuple(m / 255.0 for m in reversed(means))
    settings["image_std"] = (1 / 255.0,) * 3
    for key, ours in (("TEST.SCALE", "min_size"), ("TEST.MAX_SIZE", "max_size"),
                      ("TEST.NMS", "box_nms_thresh"), ("TEST.SCORE_THRESH", "box_score_thresh"),
                      ("TEST.DETECTIONS_PER_IM", "box_detections_per_img")):  # fmt: skip
        value = _get(cfg, key)
        if value is not None and value != TEST_SETTINGS[ours]:
            notes.append(
                f"cfg {key} = {value!r} (the training run's); the authors' test setting "
                f"{ours} = {TEST_SETTINGS[ours]!r} is used"
            )
    return settings


# -- the vocabulary --------------------------------------------------------------------------------


def read_vocabulary(path: str | os.PathLike) -> tuple[list[str], list[int]]:
    """Class names and ids, in model-label order, from a COCO-format json or a text file.

    A json's ``categories`` are taken in their list order, as Detectron's ``JsonDataset`` does
    (pycocotools ``getCatIds()`` returns the list order; the authors' json lists ids 1..K in
    order). A text file has one name per line (blank lines ignored); its ids are 1..K.
    """
    import json

    path = Path(path)
    if not path.is_file():
        raise DetectronImportError(f"--classes: no such file {str(path)!r}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DetectronImportError(
            f"--classes {str(path)!r} cannot be read as text: {exc}"
        ) from exc
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise DetectronImportError(f"--classes {str(path)!r} is not valid JSON: {exc}") from exc
        cats = data.get("categories") if isinstance(data, dict) else None
        if not isinstance(cats, list) or not cats:
            raise DetectronImportError(
                f"--classes {str(path)!r} has no 'categories' list (a COCO-format json)"
            )
        try:
            return [str(c["name"]) for c in cats], [int(c["id"]) for c in cats]
        except (KeyError, TypeError, ValueError) as exc:
            raise DetectronImportError(
                f"--classes {str(path)!r}: every category needs an 'id' and a 'name' ({exc!r})"
            ) from exc
    names = [line.strip() for line in text.splitlines() if line.strip()]
    return names, list(range(1, len(names) + 1))


def build_vocabulary(
    classes: str | os.PathLike, num_classes: int, mask_classes: str | os.PathLike | None
) -> ClassVocabulary:
    names, ids = read_vocabulary(classes)
    if len(names) != num_classes:
        raise DetectronImportError(
            f"--classes {str(classes)!r} has {len(names)} classes but the weights have "
            f"K = {num_classes} (cls_score_w has {num_classes + 1} rows, background included)"
        )
    if mask_classes is None:
        if num_classes == VG3K_NUM_CLASSES:
            flags = [i < VG3K_MASK_CLASSES for i in range(num_classes)]
        else:
            flags = [True] * num_classes
    else:
        try:
            flags = mask_split(list(zip(names, ids, strict=True)), mask_classes)
        except ValueError as exc:
            raise DetectronImportError(f"--mask-classes: {exc}") from exc
    try:
        return ClassVocabulary(tuple(names), tuple(flags), tuple(ids))
    except ValueError as exc:
        raise DetectronImportError(f"--classes {str(classes)!r}: {exc}") from exc


# -- the import ------------------------------------------------------------------------------------


def _model_config(
    arch: Architecture, settings: dict[str, Any], extra: dict[str, Any], unsupported: list[str]
) -> ModelConfig:
    fields = {
        "num_classes": arch.num_classes,
        "backbone": arch.backbone,
        "resnet_width": arch.resnet_width,
        "resnet_blocks": None if arch.standard_blocks else tuple(arch.resnet_blocks),
        "norm": "frozen_bn",
        "trainable_backbone_layers": 3,  # Detectron's FREEZE_AT 2: stem and res2 frozen
        "fpn_channels": arch.fpn_dim,
        "box_head_dim": arch.box_head_dim,
        "head_init": "paper",
        "mask_head_dim": arch.mask_head_dim,
        "mask_head_layers": arch.mask_head_layers,
        "mask_predictor": "transfer",
        "transfer_input": arch.transfer_input,
        "transfer_layers": arch.transfer_layers,
        "transfer_hidden": arch.transfer_hidden,
        "mlp": arch.mlp,
        "mlp_input_size": arch.mask_resolution,
        "extra": extra,
        **TEST_SETTINGS,
        **settings,
    }
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    for key, value in DETECTRON_CONVENTIONS.items():
        if key in known:
            fields[key] = value
        else:
            unsupported.append(f"{key}={value!r}")
    return ModelConfig(**fields)


def _expected_state(cfg: ModelConfig) -> dict[str, torch.Size]:
    """Keys and shapes of the model ``cfg`` builds (on the meta device: nothing allocated)."""
    with torch.device("meta"):
        model = build_model(cfg)
    return {k: v.shape for k, v in model.state_dict().items()}


def _frozen_bn_stats(keys: dict[str, torch.Size], eps: float = 1e-5) -> dict[str, torch.Tensor]:
    """Mean 0 and variance 1 − eps for every frozen BN that an AffineChannel fills, so that
    ``weight · (var + eps)^-½`` is the scale itself (1 − eps + eps rounds to exactly 1 in
    float32 for torchvision's eps = 1e-5)."""
    var = torch.tensor(1.0 - eps, dtype=torch.float32)
    if float(var + eps) != 1.0:
        raise RuntimeError(f"1 - eps + eps is not 1 in float32 for eps={eps}")
    out = {}
    for key, shape in keys.items():
        if key.endswith(".running_mean"):
            out[key] = torch.zeros(shape)
        elif key.endswith(".running_var"):
            out[key] = torch.full(shape, float(var))
    return out


def _tensor(entry: BlobEntry, array: np.ndarray) -> torch.Tensor:
    if entry.flip_bgr:
        array = array[:, ::-1]  # Detectron's input channels are B, G, R; maskx feeds R, G, B
    return torch.from_numpy(np.require(array, np.float32, ["C", "W"]))


def convert_blobs(
    weights: DetectronWeights,
    *,
    source: str = "the file",
    name: str | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[dict[str, torch.Tensor], ImportReport]:
    """Blobs → (maskx state dict, report). Every weight blob fills exactly one key, every key
    is filled, every other blob is skipped by a named rule; anything else is an error."""
    blobs = weights.blobs
    arch = infer_architecture(blobs)
    notes: list[str] = []
    cfg_dict = None
    if weights.cfg_text is not None:
        try:
            cfg_dict = read_cfg(weights.cfg_text)
        except ValueError as exc:
            notes.append(f"{exc}; not cross-checked")
    settings = _cfg_settings(cfg_dict, arch, notes)
    unsupported: list[str] = []
    cfg = _model_config(arch, settings, extra or {"name": name or "detectron"}, unsupported)
    manifest = blob_manifest(arch)
    by_blob = {e.blob: e for e in manifest}

    missing = [e.blob for e in manifest if e.blob not in blobs]
    if missing:
        raise DetectronImportError(
            f"{source}: missing {len(missing)} blob(s) a {arch.backbone}-FPN Mask^X model "
            f"with these shapes has: {missing[:8]}{' …' if len(missing) > 8 else ''}"
        )
    skipped: dict[str, list[str]] = {}
    unknown = []
    for blob in blobs:
        if blob in by_blob:
            continue
        rule = leftover_rule(blob, set(by_blob))
        if rule is None:
            unknown.append(blob)
            continue
        if rule == "imagenet_conv_bias" and nonzero(blobs[blob]):
            raise DetectronImportError(
                f"{source}: blob {blob!r} is a bias of a ResNet conv that has none in the model, "
                f"but it is not zero (max |b| = {float(np.abs(blobs[blob]).max()):g}): refusing "
                "to drop it"
            )
        if rule == "jcvbackup":
            live = blob[: -len("_jcvbackup")]
            if blobs[blob].shape != blobs[live].shape or not np.array_equal(
                blobs[blob], blobs[live]
            ):
                notes.append(f"{blob} differs from {live}; {live} is used (Detectron uses it)")
        skipped.setdefault(rule, []).append(blob)
    if unknown:
        raise DetectronImportError(
            f"{source}: {len(unknown)} unknown blob(s), neither a weight of the model nor a "
            f"known leftover: {sorted(unknown)[:8]}{' …' if len(unknown) > 8 else ''}"
        )

    expected = _expected_state(cfg)
    state: dict[str, torch.Tensor] = {}
    loaded: dict[str, str] = {}
    for entry in manifest:
        array = blobs[entry.blob]
        if tuple(array.shape) != entry.shape:
            raise DetectronImportError(
                f"{source}: blob {entry.blob!r} has shape {tuple(array.shape)}, expected "
                f"{entry.shape} for this architecture"
            )
        if entry.key not in expected or tuple(expected[entry.key]) != entry.shape:
            raise DetectronImportError(  # a manifest/model mismatch: a bug, not a bad file
                f"blob {entry.blob!r} maps to {entry.key!r}, which the model "
                f"{'lacks' if entry.key not in expected else 'shapes ' + str(expected[entry.key])}"
            )
        if entry.key in state:
            raise DetectronImportError(f"two blobs map to {entry.key!r}")
        state[entry.key] = _tensor(entry, array)
        loaded[entry.blob] = entry.key
    state.update(_frozen_bn_stats({k: v for k, v in expected.items() if k not in state}))
    unfilled = sorted(set(expected) - set(state))
    if unfilled:
        raise DetectronImportError(f"maskx parameters no blob fills: {unfilled[:8]}")
    ordered = {k: state[k] for k in expected}
    report = ImportReport(
        architecture=arch,
        model_config=cfg,
        loaded=loaded,
        skipped={k: sorted(v) for k, v in skipped.items()},
        floats=sum(int(np.prod(e.shape)) for e in manifest),
        notes=notes,
        unsupported=unsupported,
    )
    return ordered, report


def import_detectron(
    path: str | os.PathLike,
    classes: str | os.PathLike,
    out: str | os.PathLike,
    *,
    mask_classes: str | os.PathLike | None = None,
    name: str | None = None,
) -> ImportReport:
    """Convert a Detectron Mask^X weights file into a maskx checkpoint at ``out``.

    Args:
        path: the ``.pkl`` weights file (e.g. the authors' ``…_model_final_coco2vg3k_seg.pkl``).
        classes: the class list in model-label order: a COCO-format json (``categories`` in
            list order) or a text file of names, one a line; K entries.
        out: the checkpoint to write (atomically; mode 0644 under the usual umask).
        mask_classes: the mask set A (a :func:`~training.datasets.vocab.mask_split` spec:
            ``all``, ``none``, ``voc``, ``nonvoc`` or a file of names/ids); default the first
            80 classes when K = 3001 (the authors' COCO-aligned classes), else all.
        name: the model's name (default: the file's stem).

    Returns:
        the :class:`ImportReport` (also logged).

    Raises:
        DetectronFileError: the file is unreadable or holds something a weights file never
            does (nothing in it is run).
        DetectronImportError: blobs missing, unknown or of the wrong shape; a bad vocabulary.
    """
    path = Path(path)
    weights = load_detectron_pickle(path)
    name = name or path.stem
    sha = file_sha256(path)
    extra = {
        "name": name,
        "imported_from": {
            "format": "detectron",
            "file": path.name,
            "sha256": sha,
            "pickle_protocol": weights.protocol,
            "note": "weights of a Detectron (Caffe2) Mask^X R-CNN, converted by maskx "
            "import-detectron; check the weights' terms before redistributing",
        },
    }
    # The vocabulary first: a wrong class count is found before the conversion.
    vocab = build_vocabulary(classes, infer_architecture(weights.blobs).num_classes, mask_classes)
    state, report = convert_blobs(weights, source=str(path), name=name, extra=extra)
    if mask_classes is None:
        report.notes.append(
            f"mask set A: the first {VG3K_MASK_CLASSES} classes (the authors' COCO classes)"
            if report.architecture.num_classes == VG3K_NUM_CLASSES
            else "mask set A: all classes (no --mask-classes given)"
        )
    Checkpoint(
        model=state, model_config=report.model_config.to_dict(), vocab=vocab.to_dict(), step=0
    ).save(out)
    for line in report.summary().splitlines():
        log.info("%s", line)
    for rule, names in sorted(report.skipped.items()):
        log.debug("skipped by %s: %s", rule, ", ".join(names))
    return report
