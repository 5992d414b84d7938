"""Export a checkpoint to ONNX (legacy TorchScript exporter) and verify it against PyTorch.

The dynamo exporter fails on detection models' data-dependent shapes; the legacy tracer works
once the model is wrapped in :class:`~training.export.adapter.ExportAdapter`.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.models.detection.image_list import ImageList

from maskx import __version__
from model import MaskXRCNN
from service.contract import (  # the graph contract is the service's; this side writes it
    FORMAT_VERSION,
    INPUT_NAMES,
    METADATA_KEY,
    OUTPUT_NAMES,
    ModelMetadata,
)
from service.resize import resize_pixels, resize_scale, resized_size
from training.export.adapter import ExportAdapter
from training.fileio import atomic_path

OPSET = 17
"""The one opset we export with (ONNX Runtime ≥ 1.14 runs it on CPU, CUDA and TensorRT)."""

__all__ = ["FORMAT_VERSION", "INPUT_NAMES", "METADATA_KEY", "OPSET", "OUTPUT_NAMES"]


class ExportError(RuntimeError):
    """Export or verification failed; the message says what and where."""


# ------------------------------------------------------------------------------- inputs
def letterbox(
    image: np.ndarray | torch.Tensor, min_size: int, max_size: int, rule: str = "floor"
) -> torch.Tensor:
    """Resize a uint8 [3, H, W] image exactly as the service does for a model whose
    ``resize_rule`` is ``rule``: the size and the resampling of :mod:`service.resize`.
    Returns uint8 [3, h, w]."""
    t = torch.as_tensor(image)
    h, w = (int(v) for v in t.shape[-2:])
    size = resized_size(h, w, min_size, max_size, rule)
    if size == (h, w) and rule == "floor":
        return t
    rgb = t.permute(1, 2, 0).numpy()
    out = resize_pixels(rgb, size, rule, resize_scale(h, w, min_size, max_size, rule))
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))


def pad_batch(images: list[torch.Tensor], divisible: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [3, h_i, w_i] images → (uint8 [B, 3, H, W] zero-padded, int64 [B, 2] sizes)."""
    h = max(int(i.shape[1]) for i in images)
    w = max(int(i.shape[2]) for i in images)
    h = (h + divisible - 1) // divisible * divisible
    w = (w + divisible - 1) // divisible * divisible
    batch = torch.zeros((len(images), 3, h, w), dtype=torch.uint8)
    for k, img in enumerate(images):
        batch[k, :, : img.shape[1], : img.shape[2]] = img
    sizes = torch.tensor([[i.shape[1], i.shape[2]] for i in images], dtype=torch.int64)
    return batch, sizes


def eager_reference(model: MaskXRCNN, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """The model's own eager inference on uint8 images already at model scale, stopping at
    box-local masks: per image ``boxes``, ``scores``, ``labels``, ``mask_probs`` [N, M, M].

    The images go in as they are, as the graph takes them from the service: normalised and
    batched by the model's transform, not resized again. (Flooring is not idempotent: an image
    the service resized to 51 x 95 at min/max 96 would be resized once more to 51 x 96.)
    """
    with torch.no_grad():
        t = model.transform
        normalised = [t.normalize(i.float() / 255.0) for i in images]
        image_list = ImageList(
            t.batch_images(normalised, size_divisible=t.size_divisible),
            [(int(i.shape[1]), int(i.shape[2])) for i in images],
        )
        features = model.backbone(image_list.tensors)
        proposals, _ = model.rpn(image_list, features)
        detections, _ = model.roi_heads(features, proposals, image_list.image_sizes)
    return [
        {"boxes": d["boxes"], "scores": d["scores"], "labels": d["labels"],
         "mask_probs": d["masks"][:, 0]}
        for d in detections
    ]  # fmt: skip


# ------------------------------------------------------------------------------- export
BASE_MODEL_VERSION = "0.1.0"


def default_model_version(checkpoint_sha256: str) -> str:
    """The version ``maskx export`` writes when ``--model-version`` is not given:
    ``0.1.0+<first 12 hex digits of the checkpoint's sha256>`` (a semver / PEP 440 local part).

    From the checkpoint's bytes, not its step: two checkpoints with different weights always get
    different versions (two runs share step numbers; 48 bits of hash make a collision
    negligible), and re-exporting the same checkpoint gives the same version.
    """
    digest = checkpoint_sha256.lower()
    if len(digest) < 12 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"checkpoint_sha256={checkpoint_sha256!r} is not a hex sha256 digest")
    return f"{BASE_MODEL_VERSION}+{digest[:12]}"


def build_metadata(
    model: MaskXRCNN,
    vocab: Any,
    *,
    model_config: dict[str, Any],
    train_config: dict[str, Any] | None,
    checkpoint_sha256: str | None,
    name: str,
    version: str,
    precision: str = "fp32",
    exported_at: str | None = None,
) -> ModelMetadata:
    """The metadata of ``model``'s ONNX file (:class:`service.contract.ModelMetadata`).

    ``exported_at``: ISO 8601 UTC time of the export (default: now).
    """
    t = model.transform
    if exported_at is None:
        exported_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return ModelMetadata(
        name=name,
        version=version,
        classes=tuple(vocab.names),
        mask_classes=tuple(bool(m) for m in vocab.mask_classes),
        category_ids=tuple(int(i) for i in vocab.source_ids),
        min_size=int(t.min_size[-1]),
        max_size=int(t.max_size),
        size_divisible=int(t.size_divisible),
        mask_resolution=28,
        # Set by the model's config (an imported Detectron model: "detectron" for both);
        # configs written before these fields existed mean the defaults.
        resize_rule=str(model_config.get("resize_rule", "floor")),
        mask_paste=str(model_config.get("mask_paste", "maskx")),
        format_version=FORMAT_VERSION,
        provenance={
            "precision": precision,  # "fp32", or "fp16-backbone" (maskx export --fp16)
            "image_mean": [float(v) for v in t.image_mean],
            "image_std": [float(v) for v in t.image_std],
            "mask_predictor": model_config.get("mask_predictor"),
            "score_threshold": float(model.roi_heads.score_thresh),
            "detections_per_img": int(model.roi_heads.detections_per_img),
            "checkpoint_sha256": checkpoint_sha256,
            "training_config": train_config,
            "model_config": model_config,
            "exporter": f"maskx {__version__}, torch {torch.__version__}, opset {OPSET}",
            "maskx_version": __version__,
            "exported_at": exported_at,
        },
    )


def export_model(
    model: MaskXRCNN,
    output: str | os.PathLike,
    metadata: ModelMetadata | dict[str, Any],
    *,
    opset: int = OPSET,
    sample_size: tuple[int, int] = (320, 320),
    fp16: bool = False,
) -> Path:
    """Trace ``model`` through the adapter and write ``output`` atomically with metadata
    (:func:`build_metadata`, or its decoded JSON as read back from a file).

    ``fp16``: backbone and FPN weights and activations in float16, the rest float32 (inputs
    and outputs keep the contract's types).
    """
    import onnx

    output = Path(output)
    if output.is_dir():
        raise ExportError(f"output {str(output)!r} is a directory; give a file path")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise ExportError(f"output folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise ExportError(f"output folder {str(parent)!r} is not writable")

    adapter = ExportAdapter(model.eval(), fp16_backbone=fp16).eval()
    h, w = sample_size
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, h, w), dtype=torch.uint8, generator=g)
    sizes = torch.tensor([[h, w], [h - 32, w - 64]], dtype=torch.int64)
    with atomic_path(output, make_parents=False) as tmp_path:
        tmp = str(tmp_path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about data-dependent shapes
            torch.onnx.export(
                adapter,
                (images, sizes),
                tmp,
                input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES),
                dynamic_axes={
                    "images": {0: "batch", 2: "height", 3: "width"},
                    "image_sizes": {0: "batch"},
                    "boxes": {0: "detections"},
                    "scores": {0: "detections"},
                    "labels": {0: "detections"},
                    "batch_index": {0: "detections"},
                    "mask_probs": {0: "detections"},
                },
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        proto = onnx.load(tmp)
        if isinstance(metadata, ModelMetadata):
            name, version, text = metadata.name, metadata.version, metadata.to_json()
        else:  # a plain dict (read back from a file, or partial in tests) is written as is
            name, version = metadata.get("name"), metadata.get("version")
            text = json.dumps(metadata, separators=(",", ":"))
        proto.doc_string = f"Mask^X R-CNN {name} {version}"
        del proto.metadata_props[:]
        entry = proto.metadata_props.add()
        entry.key = METADATA_KEY
        entry.value = text
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)
    return output


# ------------------------------------------------------------------------------- verify
@dataclass
class CaseResult:
    name: str
    detections_eager: int
    detections_onnx: int
    same_detections: bool
    max_box_rel_diff: float
    max_score_diff: float
    max_mask_diff: float
    passed: bool
    note: str = ""


@dataclass
class VerifyReport:
    cases: list[CaseResult] = field(default_factory=list)
    box_rtol: float = 1e-3
    mask_atol: float = 1e-3
    score_atol: float = 1e-4

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.cases)

    def table(self) -> str:
        rows = [
            f"{'case':28}{'eager':>7}{'onnx':>7}{'same':>6}{'box rel':>10}"
            f"{'score':>10}{'mask':>10}  ok"
        ]
        for c in self.cases:
            rows.append(
                f"{c.name:28}{c.detections_eager:>7}{c.detections_onnx:>7}"
                f"{'yes' if c.same_detections else 'NO':>6}{c.max_box_rel_diff:>10.2e}"
                f"{c.max_score_diff:>10.2e}{c.max_mask_diff:>10.2e}  "
                f"{'ok' if c.passed else 'FAIL'} {c.note}"
            )
        return "\n".join(rows)


def _compare(
    name: str,
    ref: dict[str, torch.Tensor],
    got: dict[str, np.ndarray],
    box_rtol: float,
    mask_atol: float,
    score_atol: float = 1e-4,
    match: bool = False,
) -> CaseResult:
    """Compare one image's detections; all differences are maxima over the compared pairs.

    Without ``match`` the two lists must hold the same detections: equal label for label, or
    differing only in the order of near-equal scores (every detection paired, the graph's list
    by score). With ``match`` (float16
    graphs) detections are paired by label and IoU >= 0.9, best score first, and a detection
    left without a partner is allowed only at the edge of what the model keeps: its score
    within ``score_atol`` of the lowest score its side kept (the score threshold or the top-k
    cut), where a float16 rounding can move it in or out.
    """
    ne, no = int(ref["labels"].shape[0]), int(got["labels"].shape[0])
    rb, gb = ref["boxes"].numpy(), np.asarray(got["boxes"])
    rl, gl = ref["labels"].numpy(), np.asarray(got["labels"])
    rs, gs = ref["scores"].numpy(), np.asarray(got["scores"])
    same = ne == no and bool(np.array_equal(rl, gl))
    pairs = [(i, i) for i in range(ne)] if same else []
    note = ""
    if not same and not match and ne == no:
        # Two detections whose scores are equal up to float rounding may come out in either
        # order. Still the same detections if every one pairs up (label, IoU >= 0.9) and the
        # graph's list is by score, descending; the tolerances below then bound the pairs.
        pairs = _match_detections(rb, rl, gb, gl)
        same = len(pairs) == ne and bool(np.all(np.diff(gs) <= 0))
        note = "(same detections; order differs among near-equal scores)" if same else ""
    if not same and match:
        pairs = _match_detections(rb, rl, gb, gl)
        lone_ref = np.setdiff1d(np.arange(ne), [i for i, _ in pairs])
        lone_got = np.setdiff1d(np.arange(no), [j for _, j in pairs])
        at_edge = all(
            float(scores[lone].max() - scores.min()) <= score_atol
            for scores, lone in ((rs, lone_ref), (gs, lone_got))
            if len(lone)
        )
        same = at_edge
        note = f"({len(pairs)} matched, {len(lone_ref)}+{len(lone_got)} at the score edge)"
        if not at_edge:
            note = f"({len(pairs)} matched; unmatched detections away from the score edge)"
    box = score = mask = 0.0
    if same and pairs:
        i, j = (np.array(x) for x in zip(*pairs, strict=True))
        scale = np.maximum(np.abs(rb[i]), 1.0)
        box = float((np.abs(rb[i] - gb[j]) / scale).max())
        score = float(np.abs(rs[i] - gs[j]).max())
        mask = float(np.abs(ref["mask_probs"].numpy()[i] - np.asarray(got["mask_probs"])[j]).max())
    ok = same and box <= box_rtol and mask <= mask_atol and score <= score_atol
    return CaseResult(name, ne, no, same, box, score, mask, ok, note)


def _match_detections(
    ref_boxes: np.ndarray, ref_labels: np.ndarray, got_boxes: np.ndarray, got_labels: np.ndarray
) -> list[tuple[int, int]]:
    """Greedy pairs (ref index, got index): same label, IoU >= 0.9, in ref's (score) order."""
    pairs: list[tuple[int, int]] = []
    free = np.ones(len(got_boxes), dtype=bool)
    for i, (box, label) in enumerate(zip(ref_boxes, ref_labels, strict=True)):
        candidates = np.flatnonzero(free & (got_labels == label))
        if not len(candidates):
            continue
        g = got_boxes[candidates]
        iw = np.clip(np.minimum(box[2], g[:, 2]) - np.maximum(box[0], g[:, 0]), 0, None)
        ih = np.clip(np.minimum(box[3], g[:, 3]) - np.maximum(box[1], g[:, 1]), 0, None)
        inter = iw * ih
        area = (box[2] - box[0]) * (box[3] - box[1])
        union = area + (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1]) - inter
        iou = inter / np.maximum(union, 1e-9)
        best = int(np.argmax(iou))
        if iou[best] >= 0.9:
            pairs.append((i, int(candidates[best])))
            free[candidates[best]] = False
    return pairs


def _split(outputs: list[np.ndarray], n_images: int) -> list[dict[str, np.ndarray]]:
    boxes, scores, labels, batch, masks = outputs
    return [
        {"boxes": boxes[batch == i], "scores": scores[batch == i], "labels": labels[batch == i],
         "mask_probs": masks[batch == i]}
        for i in range(n_images)
    ]  # fmt: skip


def verification_images(
    model: MaskXRCNN,
    paths: list[str | os.PathLike] | None = None,
    train_config: dict | None = None,
    *,
    resize_rule: str = "floor",
) -> list[torch.Tensor] | None:
    """Two uint8 images at the model's scale and of different shapes, for :func:`verify_export`.

    From ``paths``, else from the validation images named in the checkpoint's training config
    (when that folder exists here); None when neither gives two images. The first is resized
    to the model's scale as the service resizes it (``resize_rule``, :func:`letterbox`), the
    second also cropped 32 rows shorter, so that the two differ in shape and the model keeps
    both as they are.
    """
    from PIL import Image

    files: list[Path] = [Path(p) for p in paths or []]
    if not files and train_config:
        data = train_config.get("data", {})
        folder = data.get("val_images")
        if folder:
            root = data.get("root")
            folder_path = (
                Path(root) / folder if root and not Path(folder).is_absolute() else Path(folder)
            )
            if folder_path.is_dir():
                files = sorted(p for p in folder_path.rglob("*") if p.suffix.lower() in
                               (".png", ".jpg", ".jpeg"))[:2]  # fmt: skip
    if len(files) < 2:
        return None
    t = model.transform
    out = []
    for f in files[:2]:
        try:
            rgb = np.array(Image.open(f).convert("RGB"))
        except OSError as exc:
            raise ExportError(f"verification image {str(f)!r} cannot be read: {exc}") from exc
        out.append(
            letterbox(
                torch.from_numpy(rgb).permute(2, 0, 1),
                int(t.min_size[-1]),
                int(t.max_size),
                resize_rule,
            )
        )
    # A second size that the model keeps as it is (scale exactly 1): short side below min_size
    # with the long side at max_size. Cropping gives it when the long side is already there;
    # otherwise (max_size above what the image reaches) resize to that shape.
    lo, hi = int(t.min_size[-1]), int(t.max_size)
    if max(out[1].shape[1:]) == hi:
        out[1] = out[1][:, : max(out[1].shape[1] - 32, 32)].contiguous()
    else:
        resized = torch.nn.functional.interpolate(
            out[1][None].float(), size=(max(lo - 32, 32), hi), mode="bilinear", align_corners=False
        )
        out[1] = resized[0].round().clamp(0, 255).to(torch.uint8)
    return out


def verify_export(
    model: MaskXRCNN,
    onnx_path: str | os.PathLike,
    images: list[torch.Tensor] | None = None,
    *,
    box_rtol: float = 1e-3,
    mask_atol: float = 1e-3,
    score_atol: float = 1e-4,
    match: bool = False,
) -> VerifyReport:
    """Compare ONNX Runtime (CPU) with eager PyTorch (float32); ``match`` pairs detections
    instead of requiring equal lists (for float16 graphs, see :func:`_compare`).

    Cases: each image alone (at least two sizes), the first two as a batch of 2 (must equal
    the single runs), and a flat grey image (usually no detections). Images are uint8 [3, H, W]
    at the model's scale; default: two random-texture images at the model's min/max sizes.
    """
    import onnxruntime as ort

    model = model.eval()
    t = model.transform
    if images is None:
        g = torch.Generator().manual_seed(1)
        lo, hi = int(t.min_size[-1]), int(t.max_size)
        # Two shapes the model keeps as they are (scale exactly 1): short side at min_size,
        # and a long side at max_size with a shorter short side.
        images = [
            torch.randint(0, 256, (3, lo, min(hi, lo + 64)), dtype=torch.uint8, generator=g),
            torch.randint(0, 256, (3, max(lo - 32, 32), hi), dtype=torch.uint8, generator=g),
        ]
    grey = torch.full((3, int(t.min_size[-1]), int(t.min_size[-1])), 128, dtype=torch.uint8)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    report = VerifyReport(box_rtol=box_rtol, mask_atol=mask_atol, score_atol=score_atol)

    def run(batch_images: list[torch.Tensor]) -> list[dict[str, np.ndarray]]:
        batch, sizes = pad_batch(batch_images, int(t.size_divisible))
        out = session.run(
            list(OUTPUT_NAMES), {"images": batch.numpy(), "image_sizes": sizes.numpy()}
        )
        return _split(out, len(batch_images))

    singles = []
    for k, img in enumerate([*images, grey]):
        ref = eager_reference(model, [img])[0]
        got = run([img])[0]
        singles.append(got)
        name = "flat grey image" if k == len(images) else f"image {k} {tuple(img.shape[1:])}"
        case = _compare(name, ref, got, box_rtol, mask_atol, score_atol, match)
        if k == len(images) and case.detections_eager == 0:
            case.note = "(empty)"
        report.cases.append(case)
    if len(images) >= 2 and images[0].shape == images[1].shape:
        pair = [images[0], images[1]]
    else:
        pair = [images[0], images[0].flip(-1)]
        singles[1] = run([pair[1]])[0]
    both = run(pair)
    for k in range(2):
        ref = {key: torch.from_numpy(np.asarray(v)) for key, v in singles[k].items()}
        c = _compare(f"batch of 2, image {k}", ref, both[k], box_rtol, mask_atol, score_atol, match)
        c.note = "(vs batch of 1)"
        report.cases.append(c)
    return report
