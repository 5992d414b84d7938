"""The serving worker that the app's lifespan owns: admission + pipeline + batcher + metrics.

Request path: body read (bounded per client) → admission → decode in the decode pool → batch queue →
one runtime call per batch (inference thread) → paste + RLE in the post-processing pool; the
request's deadline is checked before each stage and between groups of masks. The event loop only
moves bytes and futures. Each piece of state has one owner: :class:`~service.admission.Admission`
(ready/draining, in-flight count and cap), :class:`~service.batcher.Batcher` (queue, arrivals,
warm-up, consecutive failures); this class wires them and runs one request through.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from service.admission import Admission
from service.batcher import Batcher
from service.contract import ModelMetadata
from service.errors import ServiceError
from service.metrics import ServiceMetrics
from service.pipeline import Pipeline, SegmentResult, warmup
from service.postprocess import Detection, SegmentParams
from service.preprocess import PreparedImage
from service.runtime import RawDetections, Runtime
from service.settings import Settings

log = logging.getLogger("maskx.service")
T = TypeVar("T")
ClientGone = Callable[[], Awaitable[bool]]


class Worker:
    """One model served: admission, CPU pool, batcher, and the request path through them."""

    def __init__(self, settings: Settings, runtime: Runtime, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.runtime = runtime
        self.metrics = metrics
        self.pipeline = Pipeline(
            runtime,
            max_pixels=settings.max_pixels,
            max_jpeg_scans=settings.max_jpeg_scans,
            max_mask_pixels=settings.max_mask_pixels,
            max_response_bytes=settings.max_response_bytes,
        )
        # Two pools: a slow decode cannot delay the post-processing of a finished inference
        # (whose result is held in memory until then), nor post-processing the decodes.
        self.cpu_pool = ThreadPoolExecutor(settings.worker_threads, thread_name_prefix="maskx-cpu")
        self.post_pool = ThreadPoolExecutor(
            settings.postprocess_threads, thread_name_prefix="maskx-post"
        )
        self.batcher = Batcher(
            self.pipeline.infer,
            max_batch_size=settings.max_batch_size,
            max_batch_delay_s=settings.max_batch_delay_ms / 1000.0,
            queue_size=settings.queue_size,
            metrics=metrics,
        )
        self.admission = Admission(
            settings.max_in_flight,
            metrics,
            ready=lambda: self.batcher.ready,
            not_ready_reason=lambda: self.batcher.warmup_error,
            max_uploads_per_client=settings.max_uploads_per_client,
        )
        metrics.consecutive_failures.set_function(lambda: self.batcher.consecutive_failures)
        metrics.healthy.set_function(lambda: float(self.healthy))
        metrics.ready.set_function(
            lambda: float(self.batcher.ready and not self.admission.draining)
        )
        self._provider = ""
        self.refresh_model_info()

    @property
    def info(self) -> ModelMetadata:
        return self.runtime.info

    def refresh_model_info(self) -> str:
        """The provider in use now; ``maskx_model_info`` follows it when it changes."""
        provider = self.runtime.provider
        if provider != self._provider:
            if self._provider:
                log.warning("execution provider changed from %s to %s", self._provider, provider)
            self._provider = provider
            self.metrics.set_model(self.info, provider)
            self.metrics.set_provider(self.requested_provider, provider)
        return provider

    @property
    def requested_provider(self) -> str:
        """The provider asked for; a runtime that does not say is taken at its word."""
        return getattr(self.runtime, "requested_provider", self.runtime.provider)

    @property
    def fallback_reason(self) -> str | None:
        """Why the requested provider is not the one in use (None when it is)."""
        if self.requested_provider == self._provider:
            return None
        return getattr(self.runtime, "fallback_reason", None) or "not given by the runtime"

    @property
    def healthy(self) -> bool:
        """False after ``unhealthy_after_failures`` failed inference calls in a row."""
        return self.batcher.consecutive_failures < self.settings.unhealthy_after_failures

    async def start(self) -> None:
        """Start the batcher; warm up in the background (``/readyz`` turns ready after it)."""
        provider = self.refresh_model_info()
        if provider != self.requested_provider:
            # Every start says it, not only the first: a restarted pod must not look healthy.
            log.warning(
                "provider fallback: MASKX_PROVIDERS asks for %s, serving on %s "
                "(MASKX_ALLOW_CPU_FALLBACK=%s): %s",
                self.requested_provider,
                provider,
                str(self.settings.allow_cpu_fallback).lower(),
                self.fallback_reason,
            )
        floor = self.info.score_floor
        if floor is not None and self.settings.score_threshold < floor:
            log.warning(
                "MASKX_SCORE_THRESHOLD=%g is below the model's score floor %g: requests that "
                "do not set score_threshold are answered with %g (X-Maskx-Score-Floor)",
                self.settings.score_threshold,
                floor,
                floor,
            )
        run_warmup = functools.partial(warmup, self.runtime, self.settings.max_batch_size)
        self.batcher.start(run_warmup if self.settings.warmup else None)

    @property
    def idle(self) -> bool:
        return self.admission.in_flight == 0 and self.batcher.idle

    async def stop(self) -> None:
        self.admission.begin_drain()
        await self.batcher.drain(timeout_s=self.settings.request_timeout_s)
        self.cpu_pool.shutdown(wait=False, cancel_futures=True)
        self.post_pool.shutdown(wait=False, cancel_futures=True)

    async def _in_pool(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.cpu_pool, fn, *args)

    def _decode_before(self, data: bytes, deadline: float) -> PreparedImage | None:
        """Decode ``data`` unless ``deadline`` passed while this waited for a CPU thread."""
        if time.monotonic() >= deadline:
            return None
        return self.pipeline.prepare(data)

    def _finish_before(
        self, raw: RawDetections, image: PreparedImage, params: SegmentParams, deadline: float
    ) -> list[Detection] | None:
        """Post-process unless ``deadline`` passed while this waited for a thread; the
        deadline is checked again between groups of masks."""
        if time.monotonic() >= deadline:
            return None
        return self.pipeline.finish(raw, image, params, deadline)

    async def segment(
        self,
        data: bytes,
        params: SegmentParams,
        deadline: float,
        client_gone: ClientGone | None = None,
    ) -> SegmentResult:
        """Segment one image; ``deadline`` is a ``time.monotonic()`` value.

        The caller admits the request (:meth:`Admission.admit`) once its body is read. No CPU
        is spent on a request that cannot be answered: decoding is skipped once the deadline
        has passed (504), post-processing once ``client_gone()`` says the client left (499);
        both count in ``maskx_skipped_requests_total``.
        """
        t0 = time.perf_counter()
        with self.batcher.arriving():
            image = await self._in_pool(self._decode_before, data, deadline)
        if image is None:
            self.metrics.skipped.labels(stage="decode").inc()
            raise ServiceError(
                "deadline_exceeded", "the request deadline passed before its image was decoded"
            )
        decode_s = time.perf_counter() - t0
        self.metrics.preprocess.observe(decode_s)
        remaining = deadline - time.monotonic()
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
        if client_gone is not None and await client_gone():
            self.metrics.skipped.labels(stage="postprocess").inc()
            raise ServiceError("client_closed_request", "the client closed the connection")
        t1 = time.perf_counter()
        detections = await asyncio.get_running_loop().run_in_executor(
            self.post_pool, self._finish_before, out.raw, image, params, deadline
        )
        if detections is None:
            self.metrics.skipped.labels(stage="postprocess").inc()
            raise ServiceError(
                "deadline_exceeded", "the request deadline passed before its masks were pasted"
            )
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
            score_threshold=params.score_threshold,
        )
