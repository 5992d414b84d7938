"""The FastAPI app: ``create_app(settings)``; the lifespan owns the :class:`Worker`.

Routes: ``POST /segment``, ``GET /healthz``, ``GET /readyz``, ``GET /metrics``,
``GET /v1/model``, OpenAPI at ``/docs`` (Swagger UI served from the package: works offline);
``GET /`` and ``/static`` serve the demo page when ``service/static/`` exists. With
``MASKX_API_KEY`` set, every route but ``/healthz`` and ``/readyz`` needs it
(:class:`ApiKeyMiddleware`). Every error is JSON
``{"error": {"code", "message", "request_id"}}``; every response carries ``X-Request-ID``.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import importlib.util
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import schemas
from service.errors import RETRY_AFTER_NOT_READY_S, ServiceError
from service.logs import request_id_var
from service.metrics import ServiceMetrics
from service.pipeline import request_params
from service.runtime import ProviderUnavailableError, Runtime, load_runtime
from service.settings import MaskMode, ResponseFormat, Settings
from service.worker import Worker

log = logging.getLogger("maskx.service")
access_log = logging.getLogger("maskx.access")
STATIC_DIR = Path(__file__).with_name("static")
RAW_IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/bmp", "image/gif", "image/tiff")
# A client's X-Request-ID is kept when it is short and plain (it lands in logs and headers).
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
# The demo page loads only its own script and style; images come from files the user picks
# (blob:) and samples; it may not be framed (clickjacking). /docs keeps Swagger UI's inline
# script, so its pages get only the framing rule.
PAGE_CSP = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    b"frame-ancestors 'none'"
)
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer")]  # fmt: skip
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
# Echoed input is cut to this many characters in error messages.
ECHO_CHARS = 200


def log_safe(text: str) -> str:
    """``text`` with every character outside printable ASCII escaped (``\\r``, ``\\x1b``,
    ``\\u2028``): a percent-decoded ``%0d%0a`` in a path cannot forge a line of the text log."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def clip_echo(value: object, limit: int = ECHO_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, saying how long it was."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def docs_assets_dir() -> Path | None:
    """Swagger UI's JS, CSS and favicon, shipped by the ``fastapi-offline`` package."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """orjson-encoded JSON (several times faster than the stdlib for mask-heavy bodies)."""
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers=headers)  # fmt: skip


def request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def error_response(exc: ServiceError, request: Request) -> Response:
    return json_response(exc.body(request_id(request)), exc.status, exc.headers)


class RequestMiddleware:
    """Per request: the ``X-Request-ID`` (the client's, or a new one) in the response header,
    the log context and ``request.state``; latency and count by route template and status; the
    access log line when enabled. Pure ASGI: no body copies."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, access_log: bool = False) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        rid = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                rid = value.decode("latin-1")
                break
        if rid is None or not _REQUEST_ID.fullmatch(rid):
            rid = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id_var.set(rid)
        rid_header = (b"x-request-id", rid.encode())

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", ()), rid_header, *SECURITY_HEADERS]
                is_html = any(k.lower() == b"content-type" and v.startswith(b"text/html")
                              for k, v in headers)  # fmt: skip
                if is_html:
                    page = scope["path"] == "/" or scope["path"].startswith("/static/")
                    csp = PAGE_CSP if page else b"frame-ancestors 'none'"
                    headers.append((b"content-security-policy", csp))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            # Unmatched paths share one label value: clients must not grow our label set.
            name = getattr(route, "path", None) or "unmatched"
            elapsed = time.perf_counter() - start
            labels = {"route": name, "status": str(status)}
            self.metrics.request_duration.labels(**labels).observe(elapsed)
            self.metrics.requests.labels(**labels).inc()
            if self.access_log:
                client = scope.get("client")
                access_log.info(
                    "%s %s %d %.1f ms",
                    log_safe(scope["method"]),
                    log_safe(scope["path"]),
                    status,
                    elapsed * 1000,
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 3),
                        "client": client[0] if client else None,
                        "request_id": rid,
                    },
                )
            request_id_var.reset(token)


# Routes anyone may call when MASKX_API_KEY is set: the probes that kubelets and load balancers
# call without credentials. They say only "alive" and "ready", nothing about the model.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})


class ApiKeyMiddleware:
    """With ``MASKX_API_KEY`` set, every request but the probes (:data:`PUBLIC_PATHS`) needs
    ``Authorization: Bearer <key>``: ``/segment``, ``/v1/model``, ``/metrics``, ``/docs``,
    ``/openapi.json``, the demo page, and any path that does not exist (401 before 404, so
    the key cannot be skipped by probing for routes). One guard, in front of every route, so a
    route added later is covered too. CORS preflights are answered before it (browsers send
    them without credentials)."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        given = b""
        for key, value in scope["headers"]:
            if key == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    given = token.strip()
                break
        if hmac.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        error = ServiceError(
            "unauthorized",
            "missing or wrong API key: send 'Authorization: Bearer <MASKX_API_KEY>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
        rid = scope.get("state", {}).get("request_id")
        response = json_response(error.body(rid), error.status, error.headers)
        await response(scope, receive, send)


# Dependencies are ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool,
# one thread hop per request each for work that takes microseconds.
async def get_worker(request: Request) -> Worker:
    worker: Worker | None = getattr(request.app.state, "worker", None)
    if worker is None:
        raise ServiceError(
            "not_ready",
            "the model is not loaded yet",
            headers={"Retry-After": str(RETRY_AFTER_NOT_READY_S)},
        )
    return worker


WorkerDep = Annotated[Worker, Depends(get_worker)]
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


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The request body, refusing as soon as more than ``limit`` bytes arrive (413) or when it
    has not all arrived within ``timeout_s`` (408; a slow sender must not hold its slot until
    the inference deadline)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ServiceError(
            "body_too_large",
            f"body of {declared} bytes is over the limit of {limit} (MASKX_MAX_BODY_BYTES)",
        )
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ServiceError(
                        "body_too_large",
                        f"body is over the limit of {limit} bytes (MASKX_MAX_BODY_BYTES)",
                    )
                chunks.append(chunk)
    except TimeoutError:
        raise ServiceError(
            "body_timeout",
            f"the body did not arrive within {timeout_s:g} s (MASKX_BODY_TIMEOUT_S; "
            f"{size} bytes received)",
            # The rest of the body may still be on its way: this connection cannot be reused.
            headers={"Connection": "close"},
        ) from None
    return b"".join(chunks)


async def image_bytes(request: Request, limit: int, timeout_s: float) -> bytes:
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
    body = await read_body(request, limit, timeout_s)
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
        docs_url=None,  # served below from the package's own Swagger UI files
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
            expose_headers=["X-Request-ID", "Retry-After"],
            max_age=600,
        )
    # Added last, so it runs first: the request id exists before CORS or a route answers.
    app.add_middleware(RequestMiddleware, metrics=metrics, access_log=settings.access_log)
    install_error_handlers(app)
    add_docs(app)
    add_routes(app, settings)
    return app


def add_docs(app: FastAPI) -> None:
    """``/docs`` from local files; without them (the asset package is not installed) FastAPI's
    default page, which loads Swagger UI from a CDN, with a warning."""
    assets = docs_assets_dir()
    if assets is None:
        log.warning("fastapi-offline is not installed: /docs loads Swagger UI from a CDN")
        urls = {}
    else:
        app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")
        urls = {
            "swagger_js_url": "/docs-assets/swagger-ui-bundle.js",
            "swagger_css_url": "/docs-assets/swagger-ui.css",
            "swagger_favicon_url": "/docs-assets/favicon.png",
        }

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="maskx - Swagger UI", **urls)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> Response:
        return error_response(exc, request)

    @app.exception_handler(ClientDisconnect)
    async def _client_disconnect(request: Request, exc: ClientDisconnect) -> Response:
        # Not a server error: counted as 499, logged quietly. The answer reaches nobody.
        log.debug("client disconnected during %s %s", request.method, request.url.path)
        return error_response(
            ServiceError("client_closed_request", "the client closed the connection"), request
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg')}"
            + (f" (got {clip_echo(err['input'])})" if "input" in err else "")
            for err in exc.errors()[:10]  # an echo of bounded size, whatever was sent
        )
        return error_response(
            ServiceError("invalid_parameter", problems or "invalid request"), request
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        if code is None:
            code = "internal_error" if exc.status_code >= 500 else "invalid_parameter"
        body = {"error": {"code": code, "message": str(exc.detail)}}
        if request_id(request) is not None:
            body["error"]["request_id"] = request_id(request)
        return json_response(body, exc.status_code, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        rid = request_id(request)
        error = ServiceError(
            "internal_error", f"internal error ({type(exc).__name__}); see server log"
        )
        # This answer leaves outside RequestMiddleware, so it sets the id header itself.
        return json_response(error.body(rid), error.status, {"X-Request-ID": rid} if rid else None)


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
        response_model=schemas.SegmentResponse | list[schemas.CocoResult],
        responses=_error_docs(400, 401, 408, 413, 415, 422, 429, 500, 503, 504),
        openapi_extra=body_doc,
        dependencies=[Depends(require_api_key)],
    )
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
        """
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
        if format == "coco":
            return json_response(result.to_coco(image_id))
        return json_response(result.to_json(worker.info))

    @app.get(
        "/healthz",
        response_model=schemas.HealthResponse,
        responses=_error_docs(503),
        summary="Process is alive and its inference calls are not all failing",
    )
    async def healthz(request: Request) -> Response:
        worker: Worker | None = request.app.state.worker
        if worker is not None and not worker.healthy:
            raise ServiceError(
                "unhealthy",
                f"the last {worker.batcher.consecutive_failures} inference calls failed "
                f"(MASKX_UNHEALTHY_AFTER_FAILURES={settings.unhealthy_after_failures}); "
                "restart this worker",
            )
        return json_response({"status": "ok"})

    @app.get(
        "/readyz",
        response_model=schemas.HealthResponse,
        responses=_error_docs(503),
        summary="Model loaded and warmed up; not draining",
    )
    async def readyz(request: Request) -> Response:
        (await get_worker(request)).admission.check_available()
        return json_response({"status": "ready"})

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}},
    )
    async def metrics_route(request: Request) -> Response:
        worker: Worker | None = request.app.state.worker
        if worker is not None:
            worker.refresh_model_info()
        registry = request.app.state.metrics.registry
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/v1/model",
        response_model=schemas.ModelDescription,
        responses=_error_docs(503),
        summary="The model being served",
    )
    async def model_route(worker: WorkerDep) -> Response:
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
