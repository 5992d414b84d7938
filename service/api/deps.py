"""What a route needs from ``app.state``, as ``Annotated[..., Depends(...)]`` aliases (as the
full-stack FastAPI template's ``api/deps.py``). The lifespan puts the :class:`Worker` on
``app.state.worker``; ``create_app`` puts the settings and metrics beside it.

Dependencies are ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool, one
thread hop per request each for work that takes microseconds.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import RETRY_AFTER_NOT_READY_S, ServiceError
from service.metrics import ServiceMetrics
from service.settings import Settings
from service.worker import Worker


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


async def get_worker_or_none(request: Request) -> Worker | None:
    """The worker, or None while the lifespan has not started it (or has stopped it)."""
    return getattr(request.app.state, "worker", None)


async def get_worker(request: Request) -> Worker:
    """The worker; 503 ``not_ready`` (with ``Retry-After``) when there is none yet."""
    worker: Worker | None = getattr(request.app.state, "worker", None)
    if worker is None:
        raise ServiceError(
            "not_ready",
            "the model is not loaded yet",
            headers={"Retry-After": str(RETRY_AFTER_NOT_READY_S)},
        )
    return worker


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
WorkerDep = Annotated[Worker, Depends(get_worker)]
MaybeWorkerDep = Annotated[Worker | None, Depends(get_worker_or_none)]
_bearer = HTTPBearer(auto_error=False, description="Needed when MASKX_API_KEY is set.")


async def require_api_key(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """The key check of the API routes. :class:`~service.api.middleware.ApiKeyMiddleware`
    guards every route already; this dependency puts the bearer scheme in the OpenAPI
    document, and keeps the route closed should the middleware ever be left out."""
    if settings.api_key is None:
        return
    expected = settings.api_key.get_secret_value().encode()
    given = credentials.credentials.encode() if credentials is not None else b""
    if not hmac.compare_digest(given, expected):
        raise ServiceError(
            "unauthorized",
            "missing or wrong API key: send 'Authorization: Bearer <MASKX_API_KEY>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
