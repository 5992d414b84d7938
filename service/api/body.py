"""The request body of ``POST /v1/segment``: read with a size and a time bound, then the image
taken out of it (multipart field ``image``, or the raw bytes of an ``image/*`` body)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from service.errors import ServiceError

RAW_IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/bmp", "image/gif", "image/tiff")


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
                if chunk:  # Starlette ends the stream with an empty chunk
                    chunks.append(chunk)
    except TimeoutError:
        raise ServiceError(
            "body_timeout",
            f"the body did not arrive within {timeout_s:g} s (MASKX_BODY_TIMEOUT_S; "
            f"{size} bytes received)",
            # The rest of the body may still be on its way: this connection cannot be reused.
            headers={"Connection": "close"},
        ) from None
    # A body that arrived in one chunk is returned as is (join of one bytes object: no copy).
    return b"".join(chunks)


async def image_bytes(request: Request, limit: int, timeout_s: float) -> bytes:
    """The image of a segment request: multipart field ``image`` or a raw ``image/*`` body."""
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
