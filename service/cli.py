"""``maskx serve``: run the worker under uvicorn; flags override ``MASKX_*`` settings.

SIGTERM drains instead of cutting requests off: ``/readyz`` and new ``/segment`` requests answer
503 at once (so the load balancer stops sending), requests in flight and in the queue finish,
then the server stops. A second SIGTERM or SIGINT stops at once.
"""

from __future__ import annotations

import argparse
import sys
import time
from types import FrameType
from typing import Any

DRAIN_GRACE_S = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from service.flags import SERVE_FLAGS, add_setting_flags

    add_setting_flags(parser, SERVE_FLAGS)


def header_timeout_protocol(timeout_s: float) -> type:
    """uvicorn's HTTP protocol (httptools when installed, else h11) closing a connection that
    has not sent a whole request head within ``timeout_s`` of connecting or of its last
    response. uvicorn itself has no such timeout: a connection that sends nothing, or a byte
    at a time, stays open and holds one of its ``limit_concurrency`` connections."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class HeaderTimeoutProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
        _header_timer: Any = None

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            waiting_after = self.cycle  # a new request head replaces the cycle

            def expire() -> None:
                if self.cycle is waiting_after and not self.transport.is_closing():
                    self.transport.close()

            self._header_timer = self.loop.call_later(timeout_s, expire)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol


def make_server(app: Any, settings: Any, **config: Any) -> Any:
    """A uvicorn server whose first SIGTERM/SIGINT drains the app's worker (see module doc),
    with ``MASKX_LIMIT_CONCURRENCY`` and ``MASKX_HEADER_TIMEOUT_S`` applied."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        drain_started: float | None = None

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            worker = getattr(app.state, "worker", None)
            if self.drain_started is not None or worker is None:
                self.force_exit = self.drain_started is not None
                super().handle_exit(sig, frame)
                return
            self.drain_started = time.monotonic()
            worker.admission.begin_drain()

        async def on_tick(self, counter: int) -> bool:
            if self.drain_started is not None and not self.should_exit:
                worker = getattr(app.state, "worker", None)
                waited = time.monotonic() - self.drain_started
                if worker is None or worker.idle or waited > DRAIN_GRACE_S:
                    self.should_exit = True
            return await super().on_tick(counter)

    cfg = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # MASKX_ACCESS_LOG: our own line, with the request id
        log_config=None,  # keep the logging set up by configure_logging (text or JSON)
        timeout_graceful_shutdown=int(DRAIN_GRACE_S),
        limit_concurrency=settings.limit_concurrency,
        http=header_timeout_protocol(settings.header_timeout_s),
        **config,
    )
    return DrainingServer(cfg)


def main(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from service.flags import settings_from_args

    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        print(f"maskx serve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    if not settings.model_path.is_file():
        print(
            f"maskx serve: model file {str(settings.model_path)!r} not found "
            "(--model or MASKX_MODEL_PATH)",
            file=sys.stderr,
        )
        return 2
    from service.app import create_app
    from service.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)

    server = make_server(create_app(settings), settings)
    server.run()
    return 0 if server.started else 1
