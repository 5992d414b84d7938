"""The serving engine that the app's lifespan owns: pipeline + batcher + metrics + state.

Request path: decode in the CPU pool → batch queue → one runtime call per batch (inference
thread) → paste + RLE in the CPU pool. The event loop only moves bytes and futures.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from service.batcher import Batcher
from service.errors import ServiceError
from service.metrics import ServiceMetrics
from service.pipeline import Pipeline, SegmentResult, warmup
from service.postprocess import SegmentParams
from service.runtime import ModelInfo, Runtime
from service.settings import Settings

log = logging.getLogger("maskx.service")
T = TypeVar("T")

RETRY_AFTER_NOT_READY_S = 5
RETRY_AFTER_DRAINING_S = 1


class Engine:
    """Serving state: ready/draining flags, in-flight count, pools, batcher."""

    def __init__(self, settings: Settings, runtime: Runtime, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.runtime = runtime
        self.metrics = metrics
        self.pipeline = Pipeline(runtime, max_pixels=settings.max_pixels)
        self.cpu_pool = ThreadPoolExecutor(settings.worker_threads, thread_name_prefix="maskx-cpu")
        self.batcher = Batcher(
            self.pipeline.infer,
            max_batch_size=settings.max_batch_size,
            max_batch_delay_s=settings.max_batch_delay_ms / 1000.0,
            queue_size=settings.queue_size,
            metrics=metrics,
            arriving=lambda: self.arriving,
        )
        self.ready = False
        self.draining = False
        self.in_flight = 0
        self.arriving = 0  # in segment(), not yet in the batch queue: worth waiting for
        self.warmup_error: str | None = None
        self._warmup_task: asyncio.Task[None] | None = None
        metrics.set_model(self.info.name, self.info.version, runtime.provider)

    @property
    def info(self) -> ModelInfo:
        return self.runtime.info

    async def start(self) -> None:
        """Start the batcher; warm up in the background (``/readyz`` turns ready after it)."""
        self.batcher.start()
        if self.settings.warmup:
            self._warmup_task = asyncio.get_running_loop().create_task(self._warmup())
        else:
            self.ready = True

    async def _warmup(self) -> None:
        t0 = time.perf_counter()
        try:
            await asyncio.get_running_loop().run_in_executor(
                self.batcher.executor, warmup, self.runtime, self.settings.max_batch_size
            )
        except Exception as exc:
            self.warmup_error = f"warm-up failed: {exc}"
            log.exception("warm-up failed; the worker stays not ready")
            return
        log.info("warm-up done in %.2f s; ready", time.perf_counter() - t0)
        self.ready = True

    def begin_drain(self) -> None:
        """Stop taking work: /readyz and new /segment requests answer 503. Requests already
        admitted (reading their body, decoding, queued, running) still finish: the batcher
        closes only in :meth:`stop`, once the server has seen ``idle``."""
        if not self.draining:
            log.info("draining: %d requests in flight", self.in_flight)
        self.draining = True

    @property
    def idle(self) -> bool:
        return self.in_flight == 0 and self.batcher.idle

    async def stop(self) -> None:
        self.begin_drain()
        if self._warmup_task is not None and not self._warmup_task.done():
            self._warmup_task.cancel()
        await self.batcher.drain(timeout_s=self.settings.request_timeout_s)
        self.cpu_pool.shutdown(wait=False, cancel_futures=True)

    def check_available(self) -> None:
        """Raise the 503 that applies, if any."""
        if self.draining:
            raise ServiceError(
                "draining",
                "the server is shutting down; retry on another replica",
                headers={"Retry-After": str(RETRY_AFTER_DRAINING_S)},
            )
        if not self.ready:
            message = self.warmup_error or "the model is loading or warming up; retry shortly"
            raise ServiceError(
                "not_ready", message, headers={"Retry-After": str(RETRY_AFTER_NOT_READY_S)}
            )

    async def _in_pool(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.cpu_pool, fn, *args)

    async def segment(self, data: bytes, params: SegmentParams, deadline: float) -> SegmentResult:
        """Segment one image; ``deadline`` is an event-loop time (``loop.time()``).

        The caller admits the request (:meth:`check_available`, ``in_flight``) before reading
        its body; a drain that starts after that lets it finish.
        """
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        self.arriving += 1
        try:
            image = await self._in_pool(self.pipeline.prepare, data)
        finally:
            self.arriving -= 1
        decode_s = time.perf_counter() - t0
        self.metrics.preprocess.observe(decode_s)
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise ServiceError("deadline_exceeded", "the request deadline passed while decoding")
        future = self.batcher.submit(image, deadline)
        try:
            out = await asyncio.wait_for(future, remaining)
        except TimeoutError:
            raise ServiceError(
                "deadline_exceeded",
                f"no result within the request deadline of {self.settings.request_timeout_s:g} s "
                "(MASKX_REQUEST_TIMEOUT_S)",
            ) from None
        t1 = time.perf_counter()
        detections = await self._in_pool(self.pipeline.finish, out.raw, image, params)
        post_s = time.perf_counter() - t1
        self.metrics.postprocess.observe(post_s)
        self.metrics.detections.observe(len(detections))
        timing = {
            "decode": decode_s,
            "queue": out.queue_s,
            "inference": out.inference_s,
            "postprocess": post_s,
        }
        return SegmentResult(
            width=image.width,
            height=image.height,
            detections=detections,
            timing_ms={k: v * 1000.0 for k, v in timing.items()},
        )
