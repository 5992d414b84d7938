"""Where each router is mounted.

* The API under one version prefix, :data:`service.api.API_PREFIX`: ``POST /v1/segment``,
  ``GET /v1/model``.
* :data:`ALIASES`: older paths that keep working, out of the OpenAPI document (``POST /segment``).
* Unversioned, where Kubernetes and Prometheus look for them: ``/healthz``, ``/readyz``,
  ``/metrics``; and ``/docs``, ``/openapi.json``, the demo page at ``/``.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI

from service.api import API_PREFIX
from service.api.deps import require_api_key
from service.api.docs import install_docs
from service.api.routes import demo, health, metrics, model, segment

# old path -> the versioned path it answers as (same handler, same parameters and answers)
ALIASES = {"/segment": API_PREFIX + "/segment"}


def install_routes(app: FastAPI, *, api_key: bool) -> None:
    """Mount every route of the worker on ``app``.

    With ``api_key`` (``MASKX_API_KEY`` set), segmenting also depends on
    :func:`~service.api.deps.require_api_key`, which puts the bearer scheme in the OpenAPI
    document; :class:`~service.api.middleware.ApiKeyMiddleware` checks the key on every route
    either way. Without a key the route resolves no credentials: nothing to check, and two
    dependency calls less per request.
    """
    guard = [Depends(require_api_key)] if api_key else None
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(segment.router, dependencies=guard)
    app.include_router(model.router)
    # The alias is the same handler at the old path, so the two cannot drift. Each keeps its
    # own route template in maskx_request_duration_seconds{route}: the alias's callers show.
    app.include_router(segment.alias_router, dependencies=guard)
    install_docs(app)
    demo.install_demo(app)
