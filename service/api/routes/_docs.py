"""OpenAPI fragments the routers share."""

from __future__ import annotations

from typing import Any

from service import schemas


def error_docs(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a route: the JSON error body for each status in ``codes``."""
    return {c: {"model": schemas.ErrorResponse} for c in codes}
