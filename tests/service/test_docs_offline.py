"""``/docs`` renders in headless Chromium with every request off the host blocked: Swagger UI's
files come from the installed package, not a CDN."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pytest

from service.api.docs import docs_assets_dir
from service.app import create_app
from service.settings import Settings
from tests.service.helpers import CHROMIUM, CHROMIUM_ARGS, FakeRuntime, LiveServer


def test_docs_render_with_the_network_blocked(settings: Settings) -> None:
    if not CHROMIUM.is_file():
        pytest.fail(f"headless Chromium not found at {CHROMIUM}: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    assert docs_assets_dir() is not None, "fastapi-offline (the serve extra) is not installed"
    off_host: list[str] = []
    served: list[str] = []
    with LiveServer(create_app(settings, runtime=FakeRuntime())) as live, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context()

            def route(r) -> None:  # type: ignore[no-untyped-def]
                url = r.request.url
                if urlparse(url).hostname == "127.0.0.1" or url.startswith("data:"):
                    served.append(url)
                    r.continue_()
                else:  # the network is blocked: anything off the host fails
                    off_host.append(url)
                    r.abort()

            context.route("**/*", route)
            page = context.new_page()
            page.set_default_timeout(20_000)
            page.goto(live.url + "/docs")
            # Swagger UI built the page from /openapi.json: the operations are listed.
            page.wait_for_selector("#operations-default-segment_segment_post, .opblock-post")
            text = page.inner_text(".swagger-ui")
            assert "/segment" in text and "/v1/model" in text
            Path("artifacts/test-screenshots").mkdir(parents=True, exist_ok=True)
            page.screenshot(path="artifacts/test-screenshots/docs_offline.png")
        finally:
            browser.close()
    assert not off_host, f"/docs tried to leave the host: {off_host}"
    assert any(u.endswith("/docs-assets/swagger-ui-bundle.js") for u in served)
    assert any(u.endswith("/openapi.json") for u in served)
