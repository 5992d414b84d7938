"""``GET /metrics``: Prometheus text format, unversioned where Prometheus looks for it."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import MaybeWorkerDep, MetricsDep

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}},
)
async def metrics(worker: MaybeWorkerDep, service_metrics: MetricsDep) -> Response:
    if worker is not None:
        worker.refresh_model_info()
    return Response(generate_latest(service_metrics.registry), media_type=CONTENT_TYPE_LATEST)
