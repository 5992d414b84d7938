"""Dynamic batching over a bounded queue: one runtime call per batch.

A single worker task takes the oldest waiting request, then keeps taking requests until it holds
``max_batch_size`` of them or ``max_batch_delay_s`` has passed since the first, drops those whose
deadline has already passed, and runs the batch in a dedicated inference thread so the event loop
stays free. The delay is only spent while more requests are on their way (inside
:meth:`Batcher.arriving`: admitted and still decoding): a lone request is never held back for
company that is not coming. A full queue refuses at once (``queue_full`` → 429 with
``Retry-After``) instead of letting latency grow without bound.

The batcher owns everything about its inference thread: the arrival count, the warm-up run on
that thread before it reports ready, and the run of consecutive failed calls (``/healthz``).
Deadlines are ``time.monotonic()`` values.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

from service.errors import RETRY_AFTER_BUSY_S, ServiceError, draining_error
from service.logs import request_id_var
from service.metrics import ServiceMetrics
from service.preprocess import PreparedImage
from service.runtime import RawDetections

log = logging.getLogger("maskx.service")

InferFn = Callable[[Sequence[PreparedImage]], list[RawDetections]]


@dataclass
class BatchOutput:
    """One request's share of a batch, with the times it spent queued and in inference."""

    raw: RawDetections
    queue_s: float
    inference_s: float
    batch_size: int


@dataclass
class _Job:
    image: PreparedImage
    future: asyncio.Future[BatchOutput]
    enqueued: float
    deadline: float  # time.monotonic() after which the result is useless
    request_id: str | None = None  # for the log line of a failed batch


class Batcher:
    """Bounded queue + batching worker around ``infer`` (images -> per-image outputs)."""

    def __init__(
        self,
        infer: InferFn,
        *,
        max_batch_size: int,
        max_batch_delay_s: float,
        queue_size: int,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        if max_batch_size < 1 or queue_size < 1 or max_batch_delay_s < 0:
            raise ValueError(
                f"Batcher: max_batch_size={max_batch_size}, queue_size={queue_size} must be >= 1 "
                f"and max_batch_delay_s={max_batch_delay_s} >= 0"
            )
        self._infer = infer
        self.max_batch_size = max_batch_size
        self.max_batch_delay_s = max_batch_delay_s
        self.queue_size = queue_size
        self.metrics = metrics
        self._arriving = 0  # requests inside arriving(): submitted soon, worth waiting for
        self.ready = False
        self.warmup_error: str | None = None
        self.consecutive_failures = 0
        self._warmup_task: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue(maxsize=queue_size)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="maskx-infer")
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._busy = False
        if metrics is not None:
            metrics.bind_queue(lambda: self._queue.qsize(), queue_size)

    @property
    def idle(self) -> bool:
        return self._queue.empty() and not self._busy

    @contextmanager
    def arriving(self) -> Iterator[None]:
        """Mark a request that will be submitted soon (it is decoding): while any is, a
        batch waits up to the delay for it; while none is, a batch starts at once."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1

    def start(self, warmup: Callable[[], object] | None = None) -> None:
        """Start the worker task; run ``warmup`` on the inference thread first, in the
        background (``ready`` turns True after it, or at once without one)."""
        loop = asyncio.get_running_loop()
        if self._worker is None:
            self._worker = loop.create_task(self._run(), name="maskx-batcher")
        if warmup is None:
            self.ready = True
        elif self._warmup_task is None:
            self._warmup_task = loop.create_task(self._warm_up(warmup), name="maskx-warmup")

    async def _warm_up(self, warmup: Callable[[], object]) -> None:
        t0 = time.perf_counter()
        try:
            await asyncio.get_running_loop().run_in_executor(self.executor, warmup)
        except Exception as exc:
            self.warmup_error = f"warm-up failed: {exc}"
            log.exception("warm-up failed; the worker stays not ready")
            return
        log.info("warm-up done in %.2f s; ready", time.perf_counter() - t0)
        self.ready = True

    def submit(self, image: PreparedImage, deadline: float) -> asyncio.Future[BatchOutput]:
        """Queue ``image``; the future resolves to its :class:`BatchOutput`.

        Raises ``draining`` once :meth:`close` was called and ``queue_full`` when the queue is
        full; never waits.
        """
        if self._closed:
            raise draining_error()
        loop = asyncio.get_running_loop()
        job = _Job(image, loop.create_future(), time.monotonic(), deadline, request_id_var.get())
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            if self.metrics is not None:
                self.metrics.rejected.labels(reason="queue_full").inc()
            raise ServiceError(
                "queue_full",
                f"the batch queue is full ({self.queue_size} waiting requests); retry later",
                headers={"Retry-After": str(RETRY_AFTER_BUSY_S)},
            ) from None
        return job.future

    async def _next_batch(self) -> tuple[list[_Job], bool]:
        """Wait for the first job, then fill the batch until it is full, the delay has passed,
        or the queue is empty with nothing on its way."""
        first = await self._queue.get()
        if first is None:
            return [], True
        loop = asyncio.get_running_loop()
        batch, stop = [first], False
        fill_until = loop.time() + self.max_batch_delay_s
        while len(batch) < self.max_batch_size:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = fill_until - loop.time()
                if remaining <= 0 or self._arriving <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if job is None:
                stop = True
                break
            batch.append(job)
        return batch, stop

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = False
        while not stop:
            batch, stop = await self._next_batch()
            now = time.monotonic()
            live = []
            for job in batch:
                if job.future.done():  # the caller gave up (deadline or disconnect)
                    continue
                if job.deadline <= now:
                    job.future.set_exception(
                        ServiceError("deadline_exceeded", "the request deadline passed in queue")
                    )
                    continue
                live.append(job)
            if not live:
                continue
            self._busy = True
            try:
                await self._run_batch(loop, live)
            finally:
                self._busy = False

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job]) -> None:
        start = time.monotonic()
        t0 = time.perf_counter()
        try:
            outputs = await loop.run_in_executor(
                self.executor, self._infer, [job.image for job in jobs]
            )
            if len(outputs) != len(jobs):
                raise RuntimeError(f"runtime returned {len(outputs)} results for {len(jobs)}")
        except Exception:
            self.consecutive_failures += 1
            if self.metrics is not None:
                self.metrics.inference_failures.inc()
            log.exception(
                "inference failed for a batch of %d (requests %s)",
                len(jobs),
                ", ".join(str(job.request_id) for job in jobs),
            )
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(
                        # ONNX Runtime's text names graph nodes and file paths: the log has
                        # it (above, with the batch's request ids); the client gets the id.
                        ServiceError(
                            "inference_failed",
                            "inference failed; the server log has the cause, under this "
                            "request's id",
                        )
                    )
            return
        inference_s = time.perf_counter() - t0
        self.consecutive_failures = 0
        if self.metrics is not None:
            self.metrics.inference.observe(inference_s)
            self.metrics.batch_size.observe(len(jobs))
        for job, raw in zip(jobs, outputs, strict=True):
            queue_s = start - job.enqueued
            if self.metrics is not None:
                self.metrics.queue_wait.observe(queue_s)
            if not job.future.done():
                job.future.set_result(BatchOutput(raw, queue_s, inference_s, len(jobs)))

    def close(self) -> None:
        """Refuse new work; queued work still runs."""
        self._closed = True

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Close, let queued batches finish (up to ``timeout_s``), stop the worker."""
        self.close()
        if self._warmup_task is not None and not self._warmup_task.done():
            self._warmup_task.cancel()
        if self._worker is not None:
            loop = asyncio.get_running_loop()
            until = loop.time() + timeout_s
            while not self.idle and loop.time() < until:
                await asyncio.sleep(0.01)
            if not self._worker.done():
                try:
                    self._queue.put_nowait(None)
                    await asyncio.wait_for(self._worker, max(until - loop.time(), 0.1))
                except (asyncio.QueueFull, TimeoutError):
                    self._worker.cancel()
            while not self._queue.empty():  # only after a timed-out drain
                job = self._queue.get_nowait()
                if job is not None and not job.future.done():
                    job.future.set_exception(draining_error())
        self.executor.shutdown(wait=False, cancel_futures=True)
