"""The torch-free segmentation pipeline, usable without HTTP.

``decode -> preprocess -> run -> postprocess`` as plain functions and one small class, shared by
the HTTP worker (which batches the ``run`` step across requests) and ``maskx predict``::

    pipeline = Pipeline.from_model("model.onnx")
    result = pipeline.segment(Path("dog.jpg").read_bytes(), SegmentParams(score_threshold=0.3))
    result.detections[0].mask  # {"size": [h, w], "counts": "..."} (COCO compressed RLE)
    result.to_json(pipeline.info)  # the POST /segment response body
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.contract import ModelMetadata
from service.errors import ServiceError
from service.postprocess import (
    DEFAULT_MAX_MASK_PIXELS,
    DEFAULT_MAX_RESPONSE_BYTES,
    Detection,
    SegmentParams,
    limit_blas_threads,
    postprocess_detections,
)
from service.preprocess import DEFAULT_MAX_JPEG_SCANS, PreparedImage, decode_image, pad_batch
from service.runtime import RawDetections, Runtime, load_runtime
from service.settings import MaskMode, Settings

__all__ = [
    "Detection",
    "Pipeline",
    "PreparedImage",
    "SegmentParams",
    "SegmentResult",
    "infer_batch",
    "parse_classes",
    "request_params",
]


@dataclass
class SegmentResult:
    """Everything the service says about one image (coordinates in displayed pixels)."""

    width: int
    height: int
    detections: list[Detection]
    timing_ms: dict[str, float] = field(default_factory=dict)
    score_threshold: float | None = None  # the one applied (SegmentParams.score_threshold)

    def to_json(self, info: ModelMetadata) -> dict[str, Any]:
        """The ``POST /v1/segment`` response body (docs/contracts.md, "HTTP API")."""
        body = {
            "model": {"name": info.name, "version": info.version, "num_classes": info.num_classes},
            "image": {"width": self.width, "height": self.height},
            "detections": [d.to_json() for d in self.detections],
            "timing_ms": {k: round(v, 3) for k, v in self.timing_ms.items()},
        }
        if self.score_threshold is not None:
            body["score_threshold_applied"] = self.score_threshold
        return body

    def to_coco(self, image_id: int) -> list[dict[str, Any]]:
        """The ``format=coco`` body: a COCO results list for image ``image_id``."""
        return [d.to_coco(image_id) for d in self.detections]


def parse_classes(spec: str | None, info: ModelMetadata) -> frozenset[int] | None:
    """``"dog,17"`` -> model labels to keep; names or 1-based labels, comma-separated.

    Raises :class:`ServiceError` ``unknown_class`` naming the first entry that is neither.
    """
    if spec is None or not spec.strip():
        return None
    index = {name: i + 1 for i, name in enumerate(info.classes)}
    labels = set()
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if item in index:
            labels.add(index[item])
        elif item.isdigit() and 1 <= int(item) <= info.num_classes:
            labels.add(int(item))
        else:
            raise ServiceError(
                "unknown_class",
                f"classes: {item!r} is neither a class name of model {info.name!r} nor a "
                f"label in 1..{info.num_classes} (see GET /v1/model)",
            )
    return frozenset(labels)


def request_params(
    settings: Settings,
    info: ModelMetadata,
    *,
    score_threshold: float | None = None,
    mask_threshold: float | None = None,
    max_detections: int | None = None,
    classes: str | None = None,
    masks: MaskMode = "rle",
) -> SegmentParams:
    """The one place a request's options are built: each one given, or the setting's default.

    A score threshold below the model's score floor (:attr:`ModelMetadata.score_floor`: no
    detection under it leaves the graph) is raised to the floor, and the params say so
    (``score_floor_applied``), so that the answer can tell the client.
    Used by ``POST /v1/segment`` (query parameters) and ``maskx predict`` (flags).
    """
    wanted = settings.score_threshold if score_threshold is None else score_threshold
    floor = info.score_floor
    below_floor = floor is not None and wanted < floor
    return SegmentParams(
        score_threshold=floor if below_floor else wanted,
        score_floor_applied=below_floor,
        mask_threshold=settings.mask_threshold if mask_threshold is None else mask_threshold,
        max_detections=settings.max_detections if max_detections is None else max_detections,
        classes=parse_classes(classes, info),
        masks=masks == "rle",
    )


def infer_batch(runtime: Runtime, images: Sequence[PreparedImage]) -> list[RawDetections]:
    """Pad ``images`` into one batch, make **one** runtime call, split outputs per image."""
    batch, sizes = pad_batch([img.pixels for img in images], runtime.info.size_divisible)
    return runtime.run(batch, sizes).split(len(images))


class Pipeline:
    """Decode, run and post-process images with one runtime (no batching across callers)."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        max_pixels: int = 40_000_000,
        max_jpeg_scans: int = DEFAULT_MAX_JPEG_SCANS,
        max_mask_pixels: int | None = DEFAULT_MAX_MASK_PIXELS,
        max_response_bytes: int | None = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self.runtime = runtime
        self.max_pixels = max_pixels
        self.max_jpeg_scans = max_jpeg_scans
        self.max_mask_pixels = max_mask_pixels
        self.max_response_bytes = max_response_bytes
        limit_blas_threads()  # BLAS threads spinning after a paste slow the next inference

    @classmethod
    def from_model(
        cls,
        model_path: str | Path,
        providers: Sequence[str] = ("auto",),
        *,
        max_pixels: int = 40_000_000,
        allow_cpu_fallback: bool = False,
    ) -> Pipeline:
        """Open ``model_path`` (see :func:`service.runtime.load_runtime` for the providers)."""
        runtime = load_runtime(model_path, providers, allow_cpu_fallback=allow_cpu_fallback)
        return cls(runtime, max_pixels=max_pixels)

    @property
    def info(self) -> ModelMetadata:
        return self.runtime.info

    def prepare(self, data: bytes, *, exif_orientation: bool = True) -> PreparedImage:
        """Image bytes -> :class:`PreparedImage` (raises :class:`ServiceError` on bad input);
        ``exif_orientation=False`` keeps the stored pixels (COCO evaluation)."""
        return decode_image(
            data,
            min_size=self.info.min_size,
            max_size=self.info.max_size,
            max_pixels=self.max_pixels,
            resize_rule=self.info.resize_rule,
            max_jpeg_scans=self.max_jpeg_scans,
            exif_orientation=exif_orientation,
        )

    def infer(self, images: Sequence[PreparedImage]) -> list[RawDetections]:
        return infer_batch(self.runtime, images)

    def finish(
        self,
        raw: RawDetections,
        image: PreparedImage,
        params: SegmentParams,
        deadline: float | None = None,
    ) -> list[Detection]:
        """Post-process one image's outputs; ``deadline`` (``time.monotonic()``) is checked
        between groups of masks (504 ``deadline_exceeded``)."""
        return postprocess_detections(
            raw,
            input_size=image.input_size,
            image_size=(image.height, image.width),
            info=self.info,
            params=params,
            max_mask_pixels=self.max_mask_pixels,
            deadline=deadline,
            max_response_bytes=self.max_response_bytes,
        )

    def segment(self, data: bytes, params: SegmentParams | None = None) -> SegmentResult:
        """The whole pipeline for one image."""
        params = params or SegmentParams()
        t0 = time.perf_counter()
        image = self.prepare(data)
        t1 = time.perf_counter()
        (raw,) = self.infer([image])
        t2 = time.perf_counter()
        detections = self.finish(raw, image, params)
        t3 = time.perf_counter()
        timing = {"decode": t1 - t0, "queue": 0.0, "inference": t2 - t1, "postprocess": t3 - t2}
        return SegmentResult(
            width=image.width,
            height=image.height,
            detections=detections,
            timing_ms={k: v * 1000 for k, v in timing.items()},
            score_threshold=params.score_threshold,
        )


def warmup_shapes(info: ModelMetadata) -> list[tuple[int, int]]:
    """Representative input sizes (h, w): landscape 4:3, portrait 3:4 and square."""
    lo, hi = info.min_size, info.max_size
    long_side = min(hi, round(lo * 4 / 3))
    return [(lo, long_side), (long_side, lo), (lo, lo)]


def warmup(runtime: Runtime, max_batch_size: int) -> None:
    """Run the graph on the representative sizes, alone and as a full batch, so that the
    first real requests pay no provider-side set-up (kernel choice, memory arenas)."""
    images = [
        PreparedImage(pixels=np.full((3, h, w), 114, dtype=np.uint8), height=h, width=w)
        for h, w in warmup_shapes(runtime.info)
    ]
    for image in images:
        infer_batch(runtime, [image])
    if max_batch_size > 1:
        infer_batch(runtime, [images[0]] * max_batch_size)
