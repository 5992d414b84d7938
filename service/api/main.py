"""Where each router is mounted.

* The API under one version prefix, :data:`service.api.API_PREFIX`: ``POST /v1/segment``,
  ``GET /v1/model``.
* :data:`ALIASES`: older paths that keep working, out of the OpenAPI document (``POST /segment``).
* Unversioned, where Kubernetes and Prometheus look for them: ``/healthz``, ``/readyz``,
  ``/metrics``; and ``/docs``, ``/openapi.json``, the demo page at ``/``.
"""

from __future__ import annotations

from fastapi import FastAPI

from service.api import API_PREFIX
from service.api.docs import install_docs
from service.api.routes import demo, health, metrics, model, segment

# old path -> the versioned path it answers as (same handler, same parameters and answers)
ALIASES = {"/segment": API_PREFIX + "/segment"}


def install_routes(app: FastAPI) -> None:
    """Mount every route of the worker on ``app``."""
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(segment.router)
    app.include_router(model.router)
    # The alias is the same handler at the old path, so the two cannot drift. Each keeps its
    # own route template in maskx_request_duration_seconds{route}: the alias's callers show.
    app.include_router(segment.alias_router)
    install_docs(app)
    demo.install_demo(app)
