"""``POST /v1/segment`` (alias ``POST /segment``): segment every instance in an image."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from service import schemas
from service.api import API_PREFIX
from service.api.body import RAW_IMAGE_TYPES, image_bytes
from service.api.deps import WorkerDep
from service.api.responses import json_response
from service.api.routes._docs import error_docs
from service.pipeline import request_params
from service.settings import MaskMode, ResponseFormat

router = APIRouter(prefix=API_PREFIX, tags=["segment"])
# POST /segment, the path before the version prefix: the same handler, out of the schema.
alias_router = APIRouter(tags=["segment"])

# Set when the request's score_threshold was below the model's score floor: the floor applied.
SCORE_FLOOR_HEADER = "X-Maskx-Score-Floor"
_IMAGE_SCHEMA = {"type": "string", "format": "binary"}
_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": _IMAGE_SCHEMA},
                    "required": ["image"],
                }
            },
            **{t: {"schema": _IMAGE_SCHEMA} for t in RAW_IMAGE_TYPES},
        },
    }
}


async def segment(
    request: Request,
    worker: WorkerDep,
    score_threshold: Annotated[float | None, Query(ge=0, le=1)] = None,
    max_detections: Annotated[int | None, Query(ge=1, le=1000)] = None,
    mask_threshold: Annotated[float | None, Query(ge=0, le=1)] = None,
    classes: Annotated[
        str | None, Query(max_length=100_000, description="Comma-separated names or labels.")
    ] = None,
    masks: Annotated[MaskMode, Query()] = "rle",
    format: Annotated[
        ResponseFormat,
        Query(description="maskx: the response below; coco: a COCO results list."),
    ] = "maskx",
    image_id: Annotated[
        int,
        Query(
            ge=0,
            le=2**63 - 1,  # COCO tools read it as int64; checked before any work is done
            description="image_id of every entry with format=coco.",
        ),
    ] = 0,
) -> Response:
    """Body: multipart field ``image`` or raw bytes with an ``image/*`` Content-Type.

    Coordinates and masks are in the pixels of the image as displayed (EXIF applied).
    ``format=coco`` answers the list that pycocotools' ``COCO.loadRes`` reads.
    A ``score_threshold`` below the model's score floor (``GET /v1/model``: ``score_floor``)
    is answered with the floor applied: ``score_threshold_applied`` in the body and the
    ``X-Maskx-Score-Floor`` header.
    Also served at ``POST /segment`` (an alias kept for older clients).
    """
    settings = worker.settings  # the worker's own: one dependency less per request
    deadline = time.monotonic() + settings.request_timeout_s
    # Refusals that need no body come first; the slot is taken only once the body is here,
    # so clients trickling bodies hold no slot (their uploads are bounded per client).
    with worker.admission.accept():
        params = request_params(
            settings,
            worker.info,
            score_threshold=score_threshold,
            mask_threshold=mask_threshold,
            max_detections=max_detections,
            classes=classes,
            masks=masks,
        )
        client = request.client.host if request.client is not None else None
        with worker.admission.uploading(client):
            data = await image_bytes(request, settings.max_body_bytes, settings.body_timeout_s)
        with worker.admission.admit():
            result = await worker.segment(data, params, deadline, request.is_disconnected)
    # A threshold below the model's floor is answered with the floor, and said so.
    headers = (
        {SCORE_FLOOR_HEADER: f"{params.score_threshold:g}"} if params.score_floor_applied else None
    )
    if format == "coco":
        return json_response(result.to_coco(image_id), headers=headers)
    return json_response(result.to_json(worker.info), headers=headers)


_ROUTE = {
    "methods": ["POST"],
    "summary": "Segment every instance in an image",
    "response_model": schemas.SegmentResponse | list[schemas.CocoResult],
    "responses": error_docs(400, 401, 408, 413, 415, 422, 429, 500, 503, 504),
    "openapi_extra": _BODY_DOC,
}
router.add_api_route("/segment", segment, **_ROUTE)
alias_router.add_api_route(
    "/segment", segment, name="segment_alias", include_in_schema=False, deprecated=True, **_ROUTE
)
