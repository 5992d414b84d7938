"""Admission that slow clients cannot starve, over real uvicorn on loopback.

Clients trickling bodies (from other loopback addresses: all of 127.0.0.0/8 is local) must not
take the slots that decoding and inference need; one address cannot take every upload; a
connection that never finishes its request head is closed after ``MASKX_HEADER_TIMEOUT_S``.
"""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from service.app import create_app
from service.settings import Settings
from service.testing import make_image
from tests.service.helpers import FakeRuntime, LiveServer

JPEG = make_image(64, 48)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _trickler(port: int, source: str, length: int = 100_000) -> socket.socket:
    """A connection from ``source`` that sends the head of a /segment request and 10 bytes of
    its body, then nothing (until the test closes it)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    sock.sendall(
        f"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {length}\r\n\r\n".encode()
        + b"\xff\xd8"
        + b"x" * 8
    )
    return sock


def _post(url: str) -> httpx.Response:
    return httpx.post(
        url + "/segment", content=JPEG, headers={"content-type": "image/jpeg"}, timeout=10
    )


@pytest.fixture
def loopback_aliases() -> None:
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
    except OSError:
        pytest.skip("this host cannot bind 127.0.0.2")


def test_trickling_bodies_hold_no_admission_slot(loopback_aliases: None) -> None:
    """Before, 32 connections trickling bodies held every slot (max_in_flight 32: 429
    server_busy for everyone). Here twice max_in_flight of them, from eight addresses, while a
    normal client is answered 200 at once, more than once."""
    cfg = Settings(warmup=False, max_batch_delay_ms=1, max_in_flight=4, body_timeout_s=30)
    with LiveServer(create_app(cfg, runtime=FakeRuntime())) as live:
        live.wait_ready()
        port = _port(live.url)
        socks = [_trickler(port, f"127.0.0.{2 + i % 8}") for i in range(8)]
        try:
            time.sleep(0.3)  # every body is being read now
            assert live.app.state.worker.admission.admitted == 0
            assert sum(live.app.state.worker.admission.uploads.values()) == 8
            metrics = httpx.get(live.url + "/metrics").text
            assert "maskx_uploading_requests 8.0" in metrics  # an operator sees them
            assert "maskx_in_flight_requests 0.0" in metrics
            for _ in range(3):
                t = time.perf_counter()
                r = _post(live.url)
                assert r.status_code == 200, r.text
                assert time.perf_counter() - t < 5.0
        finally:
            for s in socks:
                s.close()


def test_one_address_cannot_take_every_upload(loopback_aliases: None) -> None:
    cfg = Settings(warmup=False, max_batch_delay_ms=1, max_uploads_per_client=3)
    with LiveServer(create_app(cfg, runtime=FakeRuntime())) as live:
        live.wait_ready()
        port = _port(live.url)
        socks = [_trickler(port, "127.0.0.2") for _ in range(3)]
        try:
            time.sleep(0.3)
            # A fourth body from that address is refused at once, naming the limit ...
            fourth = _trickler(port, "127.0.0.2")
            socks.append(fourth)
            head = fourth.recv(4096).decode("latin-1")
            assert head.startswith("HTTP/1.1 429"), head
            assert "client_busy" in head and "MASKX_MAX_UPLOADS_PER_CLIENT=3" in head
            assert "retry-after: 1" in head.lower()
            # ... while another address is served.
            assert _post(live.url).status_code == 200
        finally:
            for s in socks:
                s.close()
        text = httpx.get(live.url + "/metrics").text
        assert 'maskx_rejected_requests_total{reason="client_busy"} 1.0' in text


@pytest.mark.parametrize("sent", [b"", b"POST /segment HTTP/1.1\r\nHost: x\r\n"])
def test_a_connection_that_never_finishes_its_head_is_closed(sent: bytes) -> None:
    """uvicorn alone keeps such a connection open for as long as the client likes (37 s and
    counting in the review); here it is closed at MASKX_HEADER_TIMEOUT_S, also after a
    response on a kept-alive connection."""
    cfg = Settings(warmup=False, header_timeout_s=1.0)
    with LiveServer(create_app(cfg, runtime=FakeRuntime())) as live:
        live.wait_ready()
        assert live.server.config.limit_concurrency == cfg.limit_concurrency
        with socket.create_connection(("127.0.0.1", _port(live.url)), timeout=10) as sock:
            t = time.monotonic()
            sock.sendall(sent)
            assert sock.recv(1) == b""  # closed by the server
            assert 0.9 <= time.monotonic() - t < 4.0
        with socket.create_connection(("127.0.0.1", _port(live.url)), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            t = time.monotonic()
            sock.sendall(b"GET /hea")  # the next head, never finished
            while sock.recv(4096):
                pass
            assert time.monotonic() - t < 4.0


def test_limit_concurrency_must_leave_room_above_max_in_flight() -> None:
    with pytest.raises(ValueError, match="MASKX_LIMIT_CONCURRENCY=32"):
        Settings(limit_concurrency=32, max_in_flight=32)
