"""The probes, unversioned as Kubernetes and load balancers expect them: ``GET /healthz``
(alive, inference not all failing) and ``GET /readyz`` (model loaded and warmed up, not
draining). Both stay public when ``MASKX_API_KEY`` is set."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from service import schemas
from service.api.deps import MaybeWorkerDep, SettingsDep, WorkerDep
from service.api.responses import json_response
from service.api.routes._docs import error_docs
from service.errors import ServiceError

router = APIRouter(tags=["probes"])


@router.get(
    "/healthz",
    response_model=schemas.HealthResponse,
    responses=error_docs(503),
    summary="Process is alive and its inference calls are not all failing",
)
async def healthz(worker: MaybeWorkerDep, settings: SettingsDep) -> Response:
    if worker is not None and not worker.healthy:
        raise ServiceError(
            "unhealthy",
            f"the last {worker.batcher.consecutive_failures} inference calls failed "
            f"(MASKX_UNHEALTHY_AFTER_FAILURES={settings.unhealthy_after_failures}); "
            "restart this worker",
        )
    return json_response({"status": "ok"})


@router.get(
    "/readyz",
    response_model=schemas.HealthResponse,
    responses=error_docs(503),
    summary="Model loaded and warmed up; not draining",
)
async def readyz(worker: WorkerDep) -> Response:
    worker.admission.check_available()
    return json_response({"status": "ready"})
