"""The FastAPI app: ``create_app(settings)``; the lifespan owns the :class:`Engine`.

Routes: ``POST /segment``, ``GET /healthz``, ``GET /readyz``, ``GET /metrics``,
``GET /v1/model``, OpenAPI at ``/docs``; ``GET /`` and ``/static`` serve the demo page when
``service/static/`` exists. Every error is JSON ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import schemas
from service.errors import ServiceError
from service.metrics import ServiceMetrics
from service.pipeline import parse_classes
from service.postprocess import SegmentParams
from service.runtime import Runtime, load_runtime
from service.settings import Settings
from service.worker import RETRY_AFTER_NOT_READY_S, Engine

log = logging.getLogger("maskx.service")
STATIC_DIR = Path(__file__).with_name("static")
RAW_IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/bmp", "image/gif", "image/tiff")


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """orjson-encoded JSON (several times faster than the stdlib for mask-heavy bodies)."""
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers=headers)  # fmt: skip


def error_response(exc: ServiceError) -> Response:
    return json_response(exc.body(), exc.status, exc.headers)


class MetricsMiddleware:
    """Request latency and count by route template and status (pure ASGI: no body copies)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            # Unmatched paths share one label value: clients must not grow our label set.
            name = getattr(route, "path", None) or "unmatched"
            labels = {"route": name, "status": str(status)}
            self.metrics.request_duration.labels(**labels).observe(time.perf_counter() - start)
            self.metrics.requests.labels(**labels).inc()


# Dependencies are ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool,
# one thread hop per request each for work that takes microseconds.
async def get_engine(request: Request) -> Engine:
    engine: Engine | None = getattr(request.app.state, "engine", None)
    if engine is None:
        raise ServiceError(
            "not_ready",
            "the model is not loaded yet",
            headers={"Retry-After": str(RETRY_AFTER_NOT_READY_S)},
        )
    return engine


EngineDep = Annotated[Engine, Depends(get_engine)]
_bearer = HTTPBearer(auto_error=False, description="Needed when MASKX_API_KEY is set.")


async def require_api_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    settings: Settings = request.app.state.settings
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


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) as soon as more than ``limit`` bytes arrive."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ServiceError(
            "body_too_large",
            f"body of {declared} bytes is over the limit of {limit} (MASKX_MAX_BODY_BYTES)",
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServiceError(
                "body_too_large",
                f"body is over the limit of {limit} bytes (MASKX_MAX_BODY_BYTES)",
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def image_bytes(request: Request, limit: int) -> bytes:
    """The image of a ``/segment`` request: multipart field ``image`` or a raw ``image/*`` body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    is_multipart = content_type == "multipart/form-data"
    if not is_multipart and (
        not content_type.startswith("image/") or content_type == "image/svg+xml"
    ):
        raise ServiceError(
            "unsupported_media_type",
            f"Content-Type {content_type or '(none)'!r} is not supported: send multipart/form-data "
            "with a file field 'image', or the raw image bytes with Content-Type image/jpeg, "
            "image/png, image/webp, ... (SVG is not supported)",
        )
    body = await read_body(request, limit)
    if not body:
        raise ServiceError("empty_body", "the request body is empty; send an image")
    if not is_multipart:
        return body

    async def once() -> AsyncIterator[bytes]:
        yield body

    try:
        parser = MultiPartParser(
            Headers(scope=request.scope), once(), max_files=4, max_fields=16, max_part_size=limit
        )
        form = await parser.parse()
    except MultiPartException as exc:
        raise ServiceError("invalid_parameter", f"malformed multipart body: {exc.message}") from exc
    field = form.get("image")
    try:
        if field is None:
            raise ServiceError(
                "missing_image_field",
                "multipart body has no field 'image' (fields: "
                + (", ".join(sorted(set(form.keys()))) or "none")
                + ")",
            )
        if isinstance(field, UploadFile):
            return await field.read()
        return field.encode()
    finally:
        await form.close()


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> FastAPI:
    """Build the app. With ``runtime`` given (tests, benchmarks), no model file is opened."""
    settings = settings or Settings()
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The session is opened before the server accepts connections, so a wrong model path
        # or a broken file stops start-up with its reason; warm-up runs in the background.
        loop = asyncio.get_running_loop()
        rt = runtime
        if rt is None:
            rt = await loop.run_in_executor(
                None,
                functools.partial(
                    load_runtime,
                    settings.model_path,
                    settings.provider_list,
                    intra_op_threads=settings.intra_op_threads,
                    spinning=settings.ort_spinning,
                ),
            )
        engine = Engine(settings, rt, metrics)
        await engine.start()
        app.state.engine = engine
        try:
            yield
        finally:
            await engine.stop()
            app.state.engine = None

    app = FastAPI(
        title="maskx",
        summary="Mask^X R-CNN instance segmentation worker.",
        version="1",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.engine = None
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    install_error_handlers(app)
    add_routes(app, settings)
    return app


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg')}"
            + (f" (got {err['input']!r})" if "input" in err else "")
            for err in exc.errors()
        )
        return error_response(ServiceError("invalid_parameter", problems or "invalid request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        if code is None:
            code = "internal_error" if exc.status_code >= 500 else "invalid_parameter"
        body = {"error": {"code": code, "message": str(exc.detail)}}
        return json_response(body, exc.status_code, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            ServiceError("internal_error", f"internal error ({type(exc).__name__}); see server log")
        )


def _error_docs(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": schemas.ErrorResponse} for c in codes}


def add_routes(app: FastAPI, settings: Settings) -> None:
    image_schema = {"type": "string", "format": "binary"}
    body_doc = {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"image": image_schema},
                        "required": ["image"],
                    }
                },
                **{t: {"schema": image_schema} for t in RAW_IMAGE_TYPES},
            },
        }
    }

    @app.post(
        "/segment",
        summary="Segment every instance in an image",
        response_model=schemas.SegmentResponse,
        responses=_error_docs(400, 401, 413, 415, 422, 429, 500, 503, 504),
        openapi_extra=body_doc,
        dependencies=[Depends(require_api_key)],
    )
    async def segment(
        request: Request,
        engine: EngineDep,
        score_threshold: Annotated[float | None, Query(ge=0, le=1)] = None,
        max_detections: Annotated[int | None, Query(ge=1, le=1000)] = None,
        mask_threshold: Annotated[float | None, Query(ge=0, le=1)] = None,
        classes: Annotated[
            str | None, Query(max_length=100_000, description="Comma-separated names or labels.")
        ] = None,
        masks: Annotated[Literal["rle", "none"], Query()] = "rle",
    ) -> Response:
        """Body: multipart field ``image`` or raw bytes with an ``image/*`` Content-Type.

        Coordinates and masks are in the pixels of the image as displayed (EXIF applied).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.request_timeout_s
        engine.check_available()  # before reading a body we would not use
        engine.in_flight += 1
        engine.metrics.in_flight.inc()
        try:
            params = SegmentParams(
                score_threshold=settings.score_threshold
                if score_threshold is None
                else score_threshold,
                mask_threshold=settings.mask_threshold
                if mask_threshold is None
                else mask_threshold,
                max_detections=settings.max_detections
                if max_detections is None
                else max_detections,
                classes=parse_classes(classes, engine.info),
                masks=masks == "rle",
            )
            data = await image_bytes(request, settings.max_body_bytes)
            result = await engine.segment(data, params, deadline)
            return json_response(result.to_json(engine.info))
        finally:
            engine.in_flight -= 1
            engine.metrics.in_flight.dec()

    @app.get("/healthz", response_model=schemas.HealthResponse, summary="Process is alive")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get(
        "/readyz",
        response_model=schemas.HealthResponse,
        responses=_error_docs(503),
        summary="Model loaded and warmed up; not draining",
    )
    async def readyz(request: Request) -> Response:
        (await get_engine(request)).check_available()
        return json_response({"status": "ready"})

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}},
    )
    async def metrics_route(request: Request) -> Response:
        registry = request.app.state.metrics.registry
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/v1/model",
        response_model=schemas.ModelDescription,
        responses=_error_docs(503),
        summary="The model being served",
    )
    async def model_route(engine: EngineDep) -> Response:
        info = engine.info
        return json_response(
            {
                "name": info.name,
                "version": info.version,
                "num_classes": info.num_classes,
                "classes": list(info.classes),
                "mask_classes": list(info.mask_classes),
                "provider": engine.runtime.provider,
                "min_size": info.min_size,
                "max_size": info.max_size,
                "size_divisible": info.size_divisible,
                "mask_resolution": info.mask_resolution,
                "max_batch_size": settings.max_batch_size,
            }
        )

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        page = STATIC_DIR / "index.html"
        if page.is_file():
            return FileResponse(page, media_type="text/html")
        return RedirectResponse("/docs")

    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
