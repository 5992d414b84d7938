"""Stable, machine-readable error codes of the HTTP API.

Every error response is JSON ``{"error": {"code": "<code>", "message": "<human text>",
"request_id": "<X-Request-ID>"}}``; the codes below never change meaning. Clients branch on
``code``, people read ``message``.
"""

from __future__ import annotations

from collections.abc import Mapping

# code -> HTTP status
ERROR_CODES: dict[str, int] = {
    "empty_body": 400,
    "undecodable_image": 400,
    "unauthorized": 401,
    "not_found": 404,
    "method_not_allowed": 405,
    "body_timeout": 408,
    "body_too_large": 413,
    "image_too_large": 413,
    "image_too_complex": 413,
    "unsupported_media_type": 415,
    "invalid_parameter": 422,
    "missing_image_field": 422,
    "unknown_class": 422,
    "mask_area_too_large": 422,
    "response_too_large": 422,
    "queue_full": 429,
    "server_busy": 429,
    "client_busy": 429,
    # nginx's convention: the client closed the connection before the answer. It never reaches
    # that client; it keeps such requests apart from server errors in logs and metrics.
    "client_closed_request": 499,
    "internal_error": 500,
    "inference_failed": 500,
    "not_ready": 503,
    "draining": 503,
    "unhealthy": 503,
    "deadline_exceeded": 504,
}


class ServiceError(Exception):
    """An error with a stable ``code``, its HTTP status and a message that names the culprit."""

    def __init__(
        self, code: str, message: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}; add it to ERROR_CODES")
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = ERROR_CODES[code]
        self.headers = dict(headers or {})

    def body(self, request_id: str | None = None) -> dict[str, dict[str, str]]:
        error = {"code": self.code, "message": self.message}
        if request_id is not None:
            error["request_id"] = request_id
        return {"error": error}


RETRY_AFTER_NOT_READY_S = 5
RETRY_AFTER_BUSY_S = 1


def draining_error() -> ServiceError:
    """The one 503 of a worker that is shutting down (admission and the batch queue)."""
    return ServiceError(
        "draining",
        "the server is shutting down; retry on another replica",
        headers={"Retry-After": str(RETRY_AFTER_BUSY_S)},
    )
