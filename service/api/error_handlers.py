"""Every error the app answers, as JSON ``{"error": {"code", "message", "request_id"}}`` with a
stable code (:mod:`service.errors`); never a stack trace."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.api.responses import json_response
from service.errors import ServiceError

log = logging.getLogger("maskx.service")
# Echoed input is cut to this many characters in error messages.
ECHO_CHARS = 200


def clip_echo(value: object, limit: int = ECHO_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, saying how long it was."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def request_id(request: Request) -> str | None:
    """The id :class:`~service.api.middleware.RequestMiddleware` gave this request."""
    return getattr(request.state, "request_id", None)


def error_response(exc: ServiceError, request: Request) -> Response:
    return json_response(exc.body(request_id(request)), exc.status, exc.headers)


async def _service_error(request: Request, exc: ServiceError) -> Response:
    return error_response(exc, request)


async def _client_disconnect(request: Request, exc: ClientDisconnect) -> Response:
    # Not a server error: counted as 499, logged quietly. The answer reaches nobody.
    log.debug("client disconnected during %s %s", request.method, request.url.path)
    return error_response(
        ServiceError("client_closed_request", "the client closed the connection"), request
    )


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg')}"
        + (f" (got {clip_echo(err['input'])})" if "input" in err else "")
        for err in exc.errors()[:10]  # an echo of bounded size, whatever was sent
    )
    return error_response(ServiceError("invalid_parameter", problems or "invalid request"), request)


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    if code is None:
        code = "internal_error" if exc.status_code >= 500 else "invalid_parameter"
    body = {"error": {"code": code, "message": str(exc.detail)}}
    if request_id(request) is not None:
        body["error"]["request_id"] = request_id(request)
    return json_response(body, exc.status_code, dict(exc.headers or {}))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    rid = request_id(request)
    error = ServiceError("internal_error", f"internal error ({type(exc).__name__}); see server log")
    # This answer leaves outside RequestMiddleware, so it sets the id header itself.
    return json_response(error.body(rid), error.status, {"X-Request-ID": rid} if rid else None)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers above on ``app``."""
    app.add_exception_handler(ServiceError, _service_error)  # type: ignore[arg-type]
    app.add_exception_handler(ClientDisconnect, _client_disconnect)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
