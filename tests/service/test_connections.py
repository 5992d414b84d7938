"""Misbehaving connections over real uvicorn on 127.0.0.1: clients that drop mid-upload, send
a byte a second, flood the worker with slow uploads, or leave while their request waits.

Every wait is bounded (socket timeouts, fixed loop counts); nothing leaves the loopback host.
Tests order events by what the server reports (its in-flight gauge, its connections, a runtime
that waits for the test), not by sleeps that a loaded machine can outlast.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.settings import Settings
from service.testing import make_image
from tests.service.helpers import FakeRuntime, LiveServer

HOST = "127.0.0.1"
JPEG = make_image(64, 48)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _metric(text: str, name: str, **labels: str) -> float:
    """Value of one sample of the Prometheus text ``text`` (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = (
        "(?m)^" + re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" (\S+)"
    )
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


def _scrape(url: str) -> str:
    return httpx.get(url + "/metrics", timeout=5).text


def _headers(length: int, request_id: str = "") -> bytes:
    extra = f"X-Request-ID: {request_id}\r\n" if request_id else ""
    return (
        f"POST /segment HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    length = int({k.lower(): v for k, v in headers.items()}.get("content-length", 0))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def _wait_for(predicate, timeout_s: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_client_dropping_mid_upload_counts_499_and_no_500(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with LiveServer(create_app(settings, runtime=FakeRuntime())) as live:
        live.wait_ready()
        for dropped in range(1, 4):
            with socket.create_connection((HOST, _port(live.url)), timeout=5) as sock:
                sock.sendall(_headers(100_000) + b"\xff\xd8" + b"x" * 1000)
                # the server is reading its body now (it takes an in-flight slot only once read)
                assert _wait_for(
                    lambda: _metric(_scrape(live.url), "maskx_uploading_requests") == 1
                )
            assert _wait_for(
                lambda n=dropped: (
                    _metric(_scrape(live.url), "maskx_requests_total", route="/segment",
                            status="499") == n
                    and _metric(_scrape(live.url), "maskx_uploading_requests") == 0
                    and _metric(_scrape(live.url), "maskx_in_flight_requests") == 0
                )
            )  # fmt: skip
        text = _scrape(live.url)
        assert 'status="500"' not in text
        # The worker is fine afterwards.
        assert httpx.post(live.url + "/segment", content=JPEG,
                          headers={"content-type": "image/jpeg"}).status_code == 200  # fmt: skip
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    assert not any(r.exc_info for r in caplog.records if "disconnect" in r.getMessage())


def test_one_byte_per_second_gets_408_within_the_body_timeout(settings: Settings) -> None:
    cfg = settings.model_copy(update={"body_timeout_s": 2.0})
    with LiveServer(create_app(cfg, runtime=FakeRuntime())) as live:
        live.wait_ready()
        with socket.create_connection((HOST, _port(live.url)), timeout=10) as sock:
            t0 = time.monotonic()
            sock.sendall(_headers(1000, "slow-client-1"))
            sock.setblocking(False)
            answered = False
            for _ in range(15):  # at most 15 of the 1000 bytes, one a second
                try:
                    sock.send(b"x")
                except OSError:  # the server answered and closed
                    answered = True
                    break
                time.sleep(1.0)
                try:
                    if sock.recv(1, socket.MSG_PEEK):
                        answered = True
                        break
                except BlockingIOError:
                    continue
            elapsed = time.monotonic() - t0
            sock.setblocking(True)
            status, headers, body = _read_response(sock)
        assert status == 408, body
        error = httpx.Response(408, content=body).json()["error"]
        assert error["code"] == "body_timeout" and error["request_id"] == "slow-client-1"
        assert headers["x-request-id"] == "slow-client-1"
        # Not before the body timeout; and while the client was still sending (a server
        # without a body timeout would wait for the 1000 bytes: 1000 s at this pace).
        assert answered and elapsed >= 2.0, elapsed
        assert _metric(_scrape(live.url), "maskx_in_flight_requests") == 0


def test_deadline_passed_while_waiting_for_a_decode_thread_is_not_decoded(
    settings: Settings,
) -> None:
    cfg = settings.model_copy(update={"worker_threads": 1, "request_timeout_s": 0.5})
    app = create_app(cfg, runtime=FakeRuntime())
    with LiveServer(app) as live:
        live.wait_ready()
        # Occupy the only CPU thread until the request's deadline has passed for certain.
        busy = threading.Event()
        app.state.worker.cpu_pool.submit(busy.wait, 60)
        with ThreadPoolExecutor(1) as client:
            pending = client.submit(httpx.post, live.url + "/segment", content=JPEG,
                                    headers={"content-type": "image/jpeg"}, timeout=60)  # fmt: skip
            try:
                # Admitted: its deadline (set before admission) is at most 0.5 s from now.
                assert _wait_for(
                    lambda: _metric(_scrape(live.url), "maskx_in_flight_requests") == 1
                )
                time.sleep(cfg.request_timeout_s)
            finally:
                busy.set()
            r = pending.result()
        assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
        text = _scrape(live.url)
        assert _metric(text, "maskx_skipped_requests_total", stage="decode") == 1
        assert _metric(text, "maskx_preprocess_seconds_count") == 0  # never decoded
        # A request with time left is decoded and answered.
        ok = httpx.post(live.url + "/segment", content=JPEG,
                        headers={"content-type": "image/jpeg"}, timeout=10)  # fmt: skip
        assert ok.status_code == 200
        assert _metric(_scrape(live.url), "maskx_preprocess_seconds_count") == 1


def test_no_postprocessing_for_a_client_that_left_during_inference(settings: Settings) -> None:
    gate = threading.Event()  # inference ends when the test says so
    rt = FakeRuntime(gate=gate)
    with LiveServer(create_app(settings, runtime=rt)) as live:
        live.wait_ready()
        try:
            with socket.create_connection((HOST, _port(live.url)), timeout=5) as sock:
                sock.sendall(_headers(len(JPEG)) + JPEG)
                assert _wait_for(lambda: len(rt.calls) == 1)  # its batch is running
            # the server has seen the connection close (no connection is left open)
            assert _wait_for(lambda: not live.server.server_state.connections)
        finally:
            gate.set()
        assert _wait_for(
            lambda: (
                _metric(_scrape(live.url), "maskx_skipped_requests_total", stage="postprocess") == 1
            )
        )
        text = _scrape(live.url)
        assert _metric(text, "maskx_postprocess_seconds_count") == 0
        assert _metric(text, "maskx_requests_total", route="/segment", status="499") == 1


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


# Measured on the 2-core development machine (synthetic graph, CPU provider): the worker's RSS
# is 102 MiB idle and peaks at 108 MiB with 200 slow uploads and 16 admitted; the bound leaves
# room for other onnxruntime/numpy builds. The cap itself is checked by the status counts.
RSS_BOUND_MIB = 150


@pytest.mark.slow
def test_200_slow_uploads_are_capped_and_a_normal_request_still_gets_through(
    model_path: Path, tmp_path: Path
) -> None:
    cap, uploads, body_timeout = 16, 200, 3.0
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    env = os.environ | {"MASKX_LOG_LEVEL": "warning"}
    cmd = [sys.executable, "-m", "maskx.cli", "serve", "--model", str(model_path), "--host", HOST,
           "--port", str(port), "--providers", "cpu", "--max-in-flight", str(cap),
           "--max-uploads-per-client", str(cap),
           "--body-timeout-s", str(body_timeout), "--no-warmup"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env)
    url = f"http://{HOST}:{port}"
    try:

        def up() -> bool:
            try:
                return httpx.get(url + "/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert _wait_for(up, 60), "maskx serve did not start"
        rss_before = _rss_kib(proc.pid, "VmRSS")
        statuses, normal = asyncio.run(_flood(port, cap, uploads, body_timeout))
        peak = _rss_kib(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"RSS before {rss_before / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB; "
          f"slow uploads {sorted(set(statuses))}; normal request {normal}")  # fmt: skip
    assert set(statuses) <= {408, 429}, statuses
    assert statuses.count(408) <= cap and statuses.count(429) >= uploads - cap - 1
    _, answered_after_s, final_status = normal
    assert final_status == 200 and answered_after_s < 30.0  # within the request deadline
    assert peak / 1024 < RSS_BOUND_MIB


async def _slow_upload(port: int, length: int) -> int:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(_headers(length))
        await writer.drain()
        for _ in range(20):  # at most 20 s
            try:
                line = await asyncio.wait_for(reader.readline(), 1.0)
                return int(line.split()[1]) if line else 0
            except TimeoutError:
                writer.write(b"x" * 1024)
                await writer.drain()
        return 0
    except (ConnectionError, OSError):
        return -1
    finally:
        writer.close()


async def _normal_request(port: int) -> tuple[int, float, int]:
    """POST a small image, following Retry-After; (first status, seconds to 200, final)."""
    await asyncio.sleep(0.5)  # the slow uploads have taken the slots
    t0 = time.monotonic()
    first = None
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=30) as client:
        for _ in range(30):
            r = await client.post("/segment", content=JPEG, headers={"content-type": "image/jpeg"})
            first = first or r.status_code
            if r.status_code not in (429, 503):
                return first, time.monotonic() - t0, r.status_code
            await asyncio.sleep(float(r.headers["retry-after"]))
    return first or 0, time.monotonic() - t0, 0


async def _flood(
    port: int, cap: int, uploads: int, body_timeout: float
) -> tuple[list[int], tuple[int, float, int]]:
    tasks = [asyncio.create_task(_slow_upload(port, 64 * 1024)) for _ in range(uploads)]
    normal = await _normal_request(port)
    return list(await asyncio.gather(*tasks)), normal
