"""What a response and a log line may carry: no forged log lines, no internal error text, no
unbounded echo of the input, no request that fails only after its inference, headers that keep
the demo page from being framed or sniffed; and secrets kept out of git and images."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.middleware import PAGE_CSP, log_safe
from service.api.routes.demo import STATIC_DIR
from service.app import create_app
from service.logs import TEXT_FORMAT, RequestIdFilter
from service.settings import Settings
from service.testing import make_image
from tests.service.helpers import FakeRuntime

ROOT = Path(__file__).resolve().parents[2]
JPEG = {"content-type": "image/jpeg"}


def _client(settings: Settings, **runtime: object) -> TestClient:
    return TestClient(create_app(settings, runtime=FakeRuntime(**runtime)))  # type: ignore[arg-type]


def _ready(c: TestClient) -> None:
    until = time.monotonic() + 20
    while c.get("/readyz").status_code != 200:
        assert time.monotonic() < until
        time.sleep(0.02)


def test_log_safe_escapes_every_line_break_and_control() -> None:
    assert log_safe("/a\r\nGET /b 200") == "/a\\r\\nGET /b 200"
    assert log_safe("x\x1b[31m\u2028é") == "x\\x1b[31m\\u2028\\xe9"
    assert log_safe("/segment?x=1") == "/segment?x=1"


def test_a_percent_encoded_line_break_cannot_forge_an_access_log_line(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="maskx.access")
    with _client(settings.model_copy(update={"access_log": True})) as c:
        c.get("/nothing%0d%0aGET%20/segment%20200%200.1%20ms")
    formatter = logging.Formatter(TEXT_FORMAT)
    lines = []
    for record in caplog.records:
        if record.name == "maskx.access":
            RequestIdFilter().filter(record)
            lines.append(formatter.format(record))
    (line,) = [x for x in lines if "nothing" in x]
    assert "\n" not in line and "\r" not in line
    assert "/nothing\\r\\nGET /segment 200" in line


def test_inference_failure_tells_the_client_no_internal_text(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with _client(settings, fail=True) as c:
        _ready(c)
        r = c.post("/segment", content=make_image(64, 48), headers=JPEG)
    assert r.status_code == 500 and r.json()["error"]["code"] == "inference_failed"
    message = r.json()["error"]["message"]
    assert "fake runtime failure" not in message and "RuntimeError" not in message
    rid = r.json()["error"]["request_id"]
    logged = [rec for rec in caplog.records if "inference failed" in rec.getMessage()]
    assert logged and rid in logged[0].getMessage()
    assert "fake runtime failure" in str(logged[0].exc_info[1])  # the cause is in the log


def test_validation_errors_echo_a_bounded_part_of_the_input(settings: Settings) -> None:
    huge = "9" * 30_000  # twice: 60 KB of query, near the URL limit of the client
    with _client(settings) as c:
        _ready(c)
        r = c.post(f"/segment?score_threshold={huge}x&max_detections={huge}x", headers=JPEG)
    assert r.status_code == 422
    message = r.json()["error"]["message"]
    assert len(r.content) < 2_000, len(r.content)
    assert "score_threshold" in message and "max_detections" in message
    assert "(30003 characters)" in message


def test_image_id_beyond_int64_is_refused_before_inference(settings: Settings) -> None:
    runtime = FakeRuntime()
    with TestClient(create_app(settings, runtime=runtime)) as c:  # type: ignore[arg-type]
        _ready(c)
        calls = len(runtime.calls)
        image = make_image(64, 48)
        r = c.post(f"/segment?format=coco&image_id={2**63}", content=image, headers=JPEG)
        assert r.status_code == 422 and "image_id" in r.json()["error"]["message"]
        assert len(runtime.calls) == calls  # no inference was spent on it
        ok = c.post(f"/segment?format=coco&image_id={2**63 - 1}", content=image, headers=JPEG)
        assert ok.status_code == 200 and ok.json()[0]["image_id"] == 2**63 - 1


@pytest.mark.skipif(not (STATIC_DIR / "index.html").is_file(), reason="no demo page")
def test_the_demo_page_cannot_be_framed_or_sniffed(settings: Settings) -> None:
    with _client(settings) as c:
        page = c.get("/")
        assert page.headers["content-security-policy"] == PAGE_CSP.decode()
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert "script-src 'self'" in page.headers["content-security-policy"]
        docs = c.get("/docs")  # Swagger UI's inline script stays allowed; framing does not
        assert docs.headers["content-security-policy"] == "frame-ancestors 'none'"
        for r in (page, docs, c.get("/healthz"), c.get("/static/app.js")):
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["x-frame-options"] == "DENY"
    # The page's own files need nothing that policy forbids: no inline script or style.
    html = (STATIC_DIR / "index.html").read_text()
    assert "<style" not in html and " style=" not in html
    assert not re.search(r"\son[a-z]+\s*=", html), "an inline event handler"
    assert all("src=" not in tag or 'src="static/' in tag for tag in html.split("<script")[1:])


@pytest.mark.parametrize("ignore_file", [".gitignore", ".dockerignore"])
def test_the_env_file_of_compose_is_never_committed_nor_copied(ignore_file: str) -> None:
    lines = {x.strip() for x in (ROOT / ignore_file).read_text().splitlines()}
    assert ".env" in lines
