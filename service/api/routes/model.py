"""``GET /v1/model``: the model being served, and where it runs."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from service import schemas
from service.api import API_PREFIX
from service.api.deps import SettingsDep, WorkerDep
from service.api.responses import json_response
from service.api.routes._docs import error_docs

router = APIRouter(prefix=API_PREFIX, tags=["model"])


@router.get(
    "/model",
    response_model=schemas.ModelDescription,
    responses=error_docs(503),
    summary="The model being served",
)
async def model(worker: WorkerDep, settings: SettingsDep) -> Response:
    info = worker.info
    provider = worker.refresh_model_info()
    return json_response(
        {
            "name": info.name,
            "version": info.version,
            "num_classes": info.num_classes,
            "classes": list(info.classes),
            "mask_classes": list(info.mask_classes),
            "category_ids": list(info.category_ids),
            "provider": provider,
            "requested_provider": worker.requested_provider,
            "provider_fallback": worker.requested_provider != provider,
            "fallback_reason": worker.fallback_reason,
            "min_size": info.min_size,
            "max_size": info.max_size,
            "size_divisible": info.size_divisible,
            "mask_resolution": info.mask_resolution,
            "resize_rule": info.resize_rule,
            "mask_paste": info.mask_paste,
            "max_batch_size": settings.max_batch_size,
            "checkpoint_sha256": info.checkpoint_sha256,
            "precision": info.precision,
            "exported_at": info.exported_at,
            "maskx_version": info.maskx_version,
            "score_floor": info.score_floor,
        }
    )
