"""``/docs`` (Swagger UI) from the package's own files, so it works offline."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

log = logging.getLogger("maskx.service")


def docs_assets_dir() -> Path | None:
    """Swagger UI's JS, CSS and favicon, shipped by the ``fastapi-offline`` package."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def install_docs(app: FastAPI) -> None:
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
