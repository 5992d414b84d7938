"""Pure ASGI middleware of the worker (no body copies, no thread hops).

* :class:`RequestMiddleware`: the request id, security headers, latency and count by route
  template and status, the access log line;
* :class:`ApiKeyMiddleware`: with ``MASKX_API_KEY`` set, every route but the probes needs it.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.responses import json_response
from service.errors import ServiceError
from service.logs import request_id_var
from service.metrics import ServiceMetrics

access_log = logging.getLogger("maskx.access")
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
# Routes anyone may call when MASKX_API_KEY is set: the probes that kubelets and load balancers
# call without credentials. They say only "alive" and "ready", nothing about the model.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})


def log_safe(text: str) -> str:
    """``text`` with every character outside printable ASCII escaped (``\\r``, ``\\x1b``,
    ``\\u2028``): a percent-decoded ``%0d%0a`` in a path cannot forge a line of the text log."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


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
            # An alias (/segment) keeps its own template, so its remaining callers show.
            name = getattr(route, "path", None) or "unmatched"
            elapsed = time.perf_counter() - start
            self.metrics.observe_request(name, status, elapsed)
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


class ApiKeyMiddleware:
    """With ``MASKX_API_KEY`` set, every request but the probes (:data:`PUBLIC_PATHS`) needs
    ``Authorization: Bearer <key>``: ``/v1/segment`` (and its alias ``/segment``),
    ``/v1/model``, ``/metrics``, ``/docs``, ``/openapi.json``, the demo page, and any path that
    does not exist (401 before 404, so the key cannot be skipped by probing for routes). One
    guard, in front of every route, so a route added later is covered too. CORS preflights are
    answered before it (browsers send them without credentials)."""

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
