"""The FastAPI app: ``create_app(settings)``; the lifespan owns the :class:`Worker`.

Routes (:mod:`service.api.main`): ``POST /v1/segment`` (alias ``POST /segment``),
``GET /v1/model``, ``GET /healthz``, ``GET /readyz``, ``GET /metrics``, OpenAPI at ``/docs``
(Swagger UI served from the package: works offline); ``GET /`` and ``/static`` serve the demo
page when ``service/static/`` exists. With ``MASKX_API_KEY`` set, every route but ``/healthz``
and ``/readyz`` needs it (:class:`~service.api.middleware.ApiKeyMiddleware`). Every error is
JSON ``{"error": {"code", "message", "request_id"}}``; every response carries ``X-Request-ID``.
State lives on ``app.state`` (``settings``, ``metrics``, ``worker``); routes reach it through
the dependencies of :mod:`service.api.deps`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service.api.error_handlers import install_error_handlers
from service.api.main import install_routes
from service.api.middleware import ApiKeyMiddleware, RequestMiddleware
from service.api.routes.segment import SCORE_FLOOR_HEADER
from service.metrics import ServiceMetrics
from service.runtime import ProviderUnavailableError, Runtime, load_runtime
from service.settings import Settings
from service.worker import Worker

log = logging.getLogger("maskx.service")


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> FastAPI:
    """Build the app. With ``runtime`` given (tests, benchmarks), no model file is opened."""
    settings = settings or Settings()
    metrics = ServiceMetrics(deadline_s=settings.request_timeout_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The session is opened before the server accepts connections, so a wrong model path
        # or a broken file stops start-up with its reason; warm-up runs in the background.
        loop = asyncio.get_running_loop()
        rt = runtime
        if rt is None:
            open_session = functools.partial(
                load_runtime,
                settings.model_path,
                settings.provider_list,
                intra_op_threads=settings.intra_op_threads,
                spinning=settings.ort_spinning,
                allow_cpu_fallback=settings.allow_cpu_fallback,
                max_batch_size=settings.max_batch_size,
                trt_cache_dir=settings.trt_cache_dir,
            )
            try:
                rt = await loop.run_in_executor(None, open_session)
            except ProviderUnavailableError as exc:
                # The one line an operator needs, last before uvicorn's traceback and exit.
                log.critical("%s", exc)
                raise
        worker = Worker(settings, rt, metrics)
        await worker.start()
        app.state.worker = worker
        try:
            yield
        finally:
            await worker.stop()
            app.state.worker = None

    app = FastAPI(
        title="maskx",
        summary="Mask^X R-CNN instance segmentation worker.",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # served from the package's own Swagger UI files (service.api.docs)
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.worker = None
    if settings.api_key is not None:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key.get_secret_value())
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After", SCORE_FLOOR_HEADER],
            max_age=600,
        )
    # Added last, so it runs first: the request id exists before CORS or a route answers.
    app.add_middleware(RequestMiddleware, metrics=metrics, access_log=settings.access_log)
    install_error_handlers(app)
    install_routes(app, api_key=settings.api_key is not None)
    return app
