"""Pydantic models of the HTTP API, so that ``/openapi.json`` describes it exactly.

Responses are built as plain dicts and serialised with orjson (the hot path does not validate
them); these models document the shape and are checked against real responses in the tests.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class RleMask(BaseModel):
    size: tuple[int, int] = Field(description="[height, width] of the image.")
    counts: str = Field(description="COCO compressed RLE (decodes with pycocotools.mask.decode).")


class DetectionOut(BaseModel):
    box: tuple[float, float, float, float] = Field(
        description="x1, y1, x2, y2 in pixels of the image as displayed (EXIF applied)."
    )
    score: float = Field(ge=0, le=1)
    label: int = Field(ge=1, description="Model label, 1..num_classes.")
    category_id: int = Field(
        description="The class's id in the dataset the model was trained on (COCO category_id)."
    )
    name: str
    mask_source: Literal["supervised", "transferred"] = Field(
        description="supervised: class had mask training data (A); transferred: class in B."
    )
    mask: RleMask | None = Field(None, description="Absent with masks=none.")


class ModelRef(BaseModel):
    name: str
    version: str
    num_classes: int


class ImageSize(BaseModel):
    width: int
    height: int


class Timing(BaseModel):
    decode: float
    queue: float
    inference: float
    postprocess: float


class SegmentResponse(BaseModel):
    model: ModelRef
    image: ImageSize
    detections: list[DetectionOut]
    timing_ms: Timing
    score_threshold_applied: float = Field(
        ge=0,
        le=1,
        description="The score threshold the detections were kept by: the request's (or the "
        "server default, MASKX_SCORE_THRESHOLD), raised to the model's score floor when below "
        "it; the X-Maskx-Score-Floor header is set then.",
    )


class CocoResult(BaseModel):
    """One entry of the ``format=coco`` answer: what pycocotools' ``COCO.loadRes`` reads."""

    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float] = Field(description="x, y, width, height.")
    score: float = Field(ge=0, le=1)
    segmentation: RleMask | None = Field(None, description="Absent with masks=none.")


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. queue_full.")
    message: str = Field(description="What went wrong and what to do.")
    request_id: str | None = Field(None, description="The request's X-Request-ID.")


class ErrorResponse(BaseModel):
    error: ErrorBody


class HealthResponse(BaseModel):
    status: Literal["ok", "ready"]


class ModelDescription(BaseModel):
    name: str
    version: str
    num_classes: int
    classes: list[str]
    mask_classes: list[bool] = Field(description="True for classes in the mask set A.")
    category_ids: list[int] = Field(description="Dataset category id of each class.")
    provider: str = Field(description="Execution provider in use: tensorrt, cuda or cpu.")
    requested_provider: str = Field(
        description="The provider MASKX_PROVIDERS asks for (for 'auto': cuda when this "
        "onnxruntime build has it, else cpu)."
    )
    provider_fallback: bool = Field(
        description="True when the session runs on another provider than the one asked for "
        "(allowed by MASKX_ALLOW_CPU_FALLBACK, or 'auto')."
    )
    fallback_reason: str | None = Field(
        None, description="Why the requested provider cannot run (driver, library, build)."
    )
    min_size: int
    max_size: int
    size_divisible: int
    mask_resolution: int
    resize_rule: Literal["floor", "detectron"] = Field(
        description="How images are resized for the model: floor (torchvision's rule) or "
        "detectron (Detectron's prep_im_for_blob); docs/contracts.md."
    )
    mask_paste: Literal["maskx", "detectron"] = Field(
        description="How masks are pasted: maskx (torchvision's geometry) or detectron "
        "(Detectron's segm_results); docs/contracts.md."
    )
    max_batch_size: int
    checkpoint_sha256: str | None = Field(
        description="sha256 of the training checkpoint the model was exported from (null: the "
        "file does not say)."
    )
    precision: str | None = Field(
        description="fp32, or fp16-backbone (maskx export --fp16); null: the file does not say."
    )
    exported_at: str | None = Field(
        description="When maskx export wrote the file, ISO 8601 UTC; null for files written "
        "before it was recorded."
    )
    maskx_version: str | None = Field(
        description="The maskx version that exported the file; null: the file does not say."
    )
    score_floor: float | None = Field(
        description="The graph's own score threshold: no detection below it leaves the model, "
        "so a request's score_threshold below it is raised to it (score_threshold_applied, "
        "X-Maskx-Score-Floor). null: the file does not say, no floor is applied."
    )
