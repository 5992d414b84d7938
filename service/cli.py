"""``maskx serve``: run the worker under uvicorn; flags override ``MASKX_*`` settings.

SIGTERM drains instead of cutting requests off: ``/readyz`` and new ``/segment`` requests answer
503 at once (so the load balancer stops sending), requests in flight and in the queue finish,
then the server stops. A second SIGTERM or SIGINT stops at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from types import FrameType
from typing import Any

DRAIN_GRACE_S = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="ONNX file to serve (MASKX_MODEL_PATH)")
    parser.add_argument("--host", help="bind address (MASKX_HOST)")
    parser.add_argument("--port", type=int, help="bind port (MASKX_PORT)")
    parser.add_argument("--providers", help="tensorrt,cuda,cpu or auto (MASKX_PROVIDERS)")
    parser.add_argument("--max-batch-size", type=int, help="MASKX_MAX_BATCH_SIZE")
    parser.add_argument("--max-batch-delay-ms", type=float, help="MASKX_MAX_BATCH_DELAY_MS")
    parser.add_argument("--queue-size", type=int, help="MASKX_QUEUE_SIZE")
    parser.add_argument("--request-timeout-s", type=float, help="MASKX_REQUEST_TIMEOUT_S")
    parser.add_argument("--worker-threads", type=int, help="MASKX_WORKER_THREADS")
    parser.add_argument("--intra-op-threads", type=int, help="MASKX_INTRA_OP_THREADS")
    parser.add_argument(
        "--ort-spinning",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="MASKX_ORT_SPINNING",
    )
    parser.add_argument(
        "--no-warmup", dest="warmup", action="store_false", default=None, help="skip warm-up"
    )
    parser.add_argument("--log-level", help="MASKX_LOG_LEVEL")


def settings_from_args(args: argparse.Namespace) -> Any:
    """``Settings`` from the environment with every given flag taking precedence."""
    from service.settings import Settings

    mapping = {
        "model": "model_path",
        "host": "host",
        "port": "port",
        "providers": "providers",
        "max_batch_size": "max_batch_size",
        "max_batch_delay_ms": "max_batch_delay_ms",
        "queue_size": "queue_size",
        "request_timeout_s": "request_timeout_s",
        "worker_threads": "worker_threads",
        "intra_op_threads": "intra_op_threads",
        "ort_spinning": "ort_spinning",
        "warmup": "warmup",
        "log_level": "log_level",
    }
    overrides = {
        field: getattr(args, flag)
        for flag, field in mapping.items()
        if getattr(args, flag, None) is not None
    }
    return Settings(**overrides)


def make_server(app: Any, settings: Any, **config: Any) -> Any:
    """A uvicorn server whose first SIGTERM/SIGINT drains the app's engine (see module doc)."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        drain_started: float | None = None

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            engine = getattr(app.state, "engine", None)
            if self.drain_started is not None or engine is None:
                self.force_exit = self.drain_started is not None
                super().handle_exit(sig, frame)
                return
            self.drain_started = time.monotonic()
            engine.begin_drain()

        async def on_tick(self, counter: int) -> bool:
            if self.drain_started is not None and not self.should_exit:
                engine = getattr(app.state, "engine", None)
                waited = time.monotonic() - self.drain_started
                if engine is None or engine.idle or waited > DRAIN_GRACE_S:
                    self.should_exit = True
            return await super().on_tick(counter)

    cfg = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=int(DRAIN_GRACE_S),
        **config,
    )
    return DrainingServer(cfg)


def main(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

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
    logging.basicConfig(
        level=settings.log_level.upper() if settings.log_level != "trace" else "DEBUG",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from service.app import create_app

    server = make_server(create_app(settings), settings)
    server.run()
    return 0 if server.started else 1
