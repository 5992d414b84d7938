"""Dynamic batching: one runtime call per batch, bounded queue, deadlines, drain."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import numpy as np
import pytest

from service.batcher import Batcher
from service.errors import ServiceError
from service.metrics import ServiceMetrics
from service.pipeline import infer_batch
from service.preprocess import PreparedImage
from tests.service.helpers import FakeRuntime


def image(h: int = 64, w: int = 96) -> PreparedImage:
    return PreparedImage(pixels=np.zeros((3, h, w), np.uint8), height=h * 2, width=w * 2)


def make(rt: FakeRuntime, **kw: object) -> Batcher:
    args = {"max_batch_size": 4, "max_batch_delay_s": 0.05, "queue_size": 16} | kw
    return Batcher(lambda imgs: infer_batch(rt, imgs), **args)  # type: ignore[arg-type]


def test_waiting_requests_share_one_runtime_call() -> None:
    rt = FakeRuntime()

    async def scenario() -> list:
        b = make(rt)
        b.start()
        deadline = time.monotonic() + 5
        sizes = [(64, 96), (96, 64), (32, 32), (64, 64), (64, 96), (32, 64)]
        futures = [b.submit(image(*s), deadline) for s in sizes]
        outs = await asyncio.gather(*futures)
        await b.drain()
        return list(zip(sizes, outs, strict=True))

    results = asyncio.run(scenario())
    assert rt.calls == [4, 2]
    for (h, w), out in results:
        # each request got its own image's detections back (boxes scale with its size)
        assert out.raw.boxes[:, 2].max() <= w and out.raw.boxes[:, 3].max() <= h
        assert out.raw.boxes[:, 2].max() > 0.9 * w
    assert [o.batch_size for _, o in results] == [4, 4, 4, 4, 2, 2]


# Timing bounds come from the mechanism, not from a quiet machine: a wrong batcher waits
# LONG_S (a delay or a deadline set that far away), a right one answers after the scheduling
# of a few tasks, so "under LONG_S / 2" leaves seconds of room for a loaded machine.
LONG_S = 30.0


def lone_request_seconds(rt: FakeRuntime, *, companion_on_its_way: bool, **kw: object) -> float:
    """Time from submit to result of one request alone in a fresh batcher; with
    ``companion_on_its_way`` another request is decoding (it never arrives). The request's
    deadline is ``LONG_S`` away, and waiting for the result gives up after ``LONG_S``."""

    async def scenario() -> float:
        b = make(rt, **kw)
        b.start()
        t0 = time.monotonic()
        if companion_on_its_way:
            with b.arriving():
                await asyncio.wait_for(b.submit(image(), t0 + LONG_S), LONG_S)
        else:
            await asyncio.wait_for(b.submit(image(), t0 + LONG_S), LONG_S)
        elapsed = time.monotonic() - t0
        await b.drain()
        return elapsed

    return asyncio.run(scenario())


def test_batch_waits_the_delay_for_a_companion_and_no_longer() -> None:
    rt = FakeRuntime()
    delay = 0.3
    elapsed = lone_request_seconds(rt, companion_on_its_way=True, max_batch_delay_s=delay)
    # A batcher that never waits fails the first bound (the batch cannot start before the
    # delay is over). The companion never arrives: one that waits for it instead of for the
    # delay waits until the result is given up on (LONG_S), failing the second.
    assert delay - 0.005 <= elapsed < LONG_S / 2
    assert rt.calls == [1]


def test_lone_request_is_not_held_back_when_nothing_is_arriving() -> None:
    rt = FakeRuntime()
    # a batcher that always waits the delay takes LONG_S
    elapsed = lone_request_seconds(rt, companion_on_its_way=False, max_batch_delay_s=LONG_S)
    assert elapsed < LONG_S / 2
    assert rt.calls == [1]


def test_batch_waits_for_a_request_that_is_on_its_way() -> None:
    rt = FakeRuntime()

    async def scenario() -> None:
        b = make(rt, max_batch_delay_s=LONG_S)
        b.start()
        deadline = time.monotonic() + LONG_S
        with b.arriving():  # the second request is still decoding
            first = b.submit(image(), deadline)
            await asyncio.sleep(0.1)
        second = b.submit(image(), deadline)
        t0 = time.monotonic()
        await asyncio.wait_for(asyncio.gather(first, second), LONG_S)
        # the batch ran as soon as the second arrived, not when the delay (LONG_S) was over
        assert time.monotonic() - t0 < LONG_S / 2
        await b.drain()

    asyncio.run(scenario())
    assert rt.calls == [2]


def test_warmup_runs_on_the_inference_thread_before_ready() -> None:
    threads: list[str] = []

    async def scenario(warmup: object) -> tuple[bool, bool, str | None]:
        b = make(FakeRuntime())
        b.start(warmup)  # type: ignore[arg-type]
        before = b.ready
        until = time.monotonic() + LONG_S
        while not (b.ready or b.warmup_error) and time.monotonic() < until:
            await asyncio.sleep(0.01)
        await b.drain()
        return before, b.ready, b.warmup_error

    def ok() -> None:
        time.sleep(0.05)
        threads.append(threading.current_thread().name)

    def broken() -> None:
        raise RuntimeError("no GPU memory")

    assert asyncio.run(scenario(ok)) == (False, True, None)
    assert threads and threads[0].startswith("maskx-infer")
    _, ready, error = asyncio.run(scenario(broken))
    assert not ready and error is not None and "no GPU memory" in error


def test_consecutive_failures_are_counted_and_reset_by_a_success() -> None:
    rt = FakeRuntime(fail=True)

    async def scenario() -> list[int]:
        b = make(rt, max_batch_size=1, max_batch_delay_s=0)
        b.start()
        seen = []
        for fail in (True, True, True, False):
            rt.fail = fail
            await asyncio.gather(b.submit(image(), time.monotonic() + 5), return_exceptions=True)
            seen.append(b.consecutive_failures)
        await b.drain()
        return seen

    assert asyncio.run(scenario()) == [1, 2, 3, 0]


def test_full_queue_refuses_at_once_with_retry_after() -> None:
    gate = threading.Event()
    rt = FakeRuntime(gate=gate)

    async def scenario() -> None:
        b = make(rt, max_batch_size=1, queue_size=2, max_batch_delay_s=0)
        b.start()
        deadline = time.monotonic() + LONG_S
        first = b.submit(image(), deadline)
        while not rt.calls:  # the worker took it (it waits at the gate): the queue is empty
            await asyncio.sleep(0.01)
        queued = [b.submit(image(), deadline) for _ in range(2)]
        with pytest.raises(ServiceError) as err:
            b.submit(image(), deadline)
        assert err.value.code == "queue_full" and err.value.headers["Retry-After"]
        gate.set()
        await asyncio.gather(first, *queued)
        await b.drain()

    asyncio.run(scenario())
    assert rt.calls == [1, 1, 1]


def test_expired_requests_are_not_run() -> None:
    rt = FakeRuntime(delay_s=0.2)

    async def scenario() -> None:
        b = make(rt, max_batch_size=1, max_batch_delay_s=0)
        b.start()
        first = b.submit(image(), time.monotonic() + 5)
        late = b.submit(image(), time.monotonic() + 0.05)  # expires while the first one runs
        await first
        with pytest.raises(ServiceError) as err:
            await late
        assert err.value.code == "deadline_exceeded"
        await b.drain()

    asyncio.run(scenario())
    assert rt.calls == [1]


def test_runtime_failure_reaches_every_request_of_the_batch() -> None:
    rt = FakeRuntime(fail=True)

    async def scenario() -> list:
        b = make(rt)
        b.start()
        deadline = time.monotonic() + 5
        futures = [b.submit(image(), deadline) for _ in range(3)]
        outs = await asyncio.gather(*futures, return_exceptions=True)
        await b.drain()
        return outs

    outs = asyncio.run(scenario())
    assert all(isinstance(o, ServiceError) and o.code == "inference_failed" for o in outs)


def test_drain_finishes_queued_work_and_refuses_new() -> None:
    rt = FakeRuntime(delay_s=0.05)

    async def scenario() -> None:
        b = make(rt, max_batch_size=1, max_batch_delay_s=0)
        b.start()
        deadline = time.monotonic() + 5
        futures = [b.submit(image(), deadline) for _ in range(3)]
        drain = asyncio.create_task(b.drain())
        await asyncio.sleep(0)
        with pytest.raises(ServiceError) as err:
            b.submit(image(), deadline)
        assert err.value.code == "draining"
        await drain
        assert all(f.done() and not f.exception() for f in futures)

    asyncio.run(scenario())
    assert rt.calls == [1, 1, 1]


def test_a_job_whose_caller_gave_up_is_not_run() -> None:
    gate = threading.Event()
    rt = FakeRuntime(gate=gate)

    async def scenario() -> None:
        b = make(rt, max_batch_size=1, max_batch_delay_s=0)
        b.start()
        deadline = time.monotonic() + LONG_S
        first = b.submit(image(), deadline)
        while not rt.calls:  # the first one runs (waiting at the gate)
            await asyncio.sleep(0.01)
        gone = b.submit(image(), deadline)
        kept = b.submit(image(), deadline)
        gone.cancel()  # its caller's deadline passed or its client left
        gate.set()
        await asyncio.gather(first, kept)
        await b.drain()

    asyncio.run(scenario())
    assert rt.calls == [1, 1]  # the second call is `kept`'s alone


def test_a_runtime_returning_the_wrong_number_of_results_fails_the_batch(caplog) -> None:
    rt = FakeRuntime()

    def one_result_short(images: list[PreparedImage]) -> list:
        return infer_batch(rt, images)[:-1]

    async def scenario() -> list:
        b = Batcher(one_result_short, max_batch_size=4, max_batch_delay_s=0.05, queue_size=8)
        b.start()
        deadline = time.monotonic() + LONG_S
        with b.arriving():  # both go into one batch
            futures = [b.submit(image(), deadline) for _ in range(2)]
        outs = await asyncio.gather(*futures, return_exceptions=True)
        assert b.consecutive_failures == 1
        await b.drain()
        return outs

    with caplog.at_level(logging.ERROR, logger="maskx.service"):
        outs = asyncio.run(scenario())
    assert rt.calls == [2]
    for out in outs:
        assert isinstance(out, ServiceError) and out.code == "inference_failed"
        # The client gets the generic text; the cause is in the server log only.
        assert "returned 1 results" not in out.message and "server log" in out.message
    assert "runtime returned 1 results for 2" in caplog.text


def test_drain_gives_up_after_its_timeout_and_refuses_what_is_still_queued() -> None:
    gate = threading.Event()  # never opened while draining: the runtime hangs
    rt = FakeRuntime(gate=gate)

    async def scenario() -> None:
        b = make(rt, max_batch_size=1, max_batch_delay_s=0)
        b.start()
        deadline = time.monotonic() + LONG_S
        running = b.submit(image(), deadline)
        while not rt.calls:
            await asyncio.sleep(0.01)
        queued = [b.submit(image(), deadline) for _ in range(2)]
        # drain returns although the batch never finishes (a drain that waits for it would
        # wait until the gate's own timeout, LONG_S)
        await asyncio.wait_for(b.drain(timeout_s=0.2), LONG_S / 2)
        for f in queued:
            assert f.done() and isinstance(f.exception(), ServiceError)
            assert f.exception().code == "draining"  # type: ignore[union-attr]
        assert not running.done() or running.exception() is not None
        gate.set()  # let the inference thread end

    asyncio.run(scenario())
    assert rt.calls == [1]


@pytest.mark.parametrize(
    "bad", [{"max_batch_size": 0}, {"queue_size": 0}, {"max_batch_delay_s": -0.001}]
)
def test_each_bad_size_alone_is_refused(bad: dict) -> None:
    (name, value), = bad.items()  # fmt: skip
    with pytest.raises(ValueError, match=f"{name}={value}"):
        make(FakeRuntime(), **bad)


def test_the_batcher_counts_what_it_does_in_the_service_metrics() -> None:
    """Queue capacity and depth, one batch-size and inference observation per runtime call, one
    queue wait per request, a refusal counted under queue_full, a failed call counted."""
    gate = threading.Event()
    rt = FakeRuntime(gate=gate)
    metrics = ServiceMetrics()

    def value(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    async def scenario() -> None:
        b = make(rt, queue_size=3, metrics=metrics)
        assert value("maskx_queue_capacity") == 3
        b.start()
        deadline = time.monotonic() + LONG_S
        first = b.submit(image(), deadline)
        while not rt.calls:  # the worker holds the first request at the gate
            await asyncio.sleep(0.01)
        queued = [b.submit(image(), deadline) for _ in range(3)]
        assert value("maskx_queue_depth") == 3
        with pytest.raises(ServiceError):
            b.submit(image(), deadline)
        gate.set()
        await asyncio.gather(first, *queued)
        rt.fail = True
        await asyncio.gather(b.submit(image(), deadline), return_exceptions=True)
        await b.drain()

    asyncio.run(scenario())
    assert rt.calls == [1, 3, 1]
    assert value("maskx_rejected_requests_total", reason="queue_full") == 1
    assert value("maskx_batch_size_count") == 2 and value("maskx_batch_size_sum") == 4
    assert value("maskx_inference_seconds_count") == 2
    assert value("maskx_queue_wait_seconds_count") == 4
    assert value("maskx_inference_failures_total") == 1
    assert value("maskx_queue_depth") == 0


def test_drain_cancels_a_warm_up_still_running() -> None:
    """A worker drained while its warm-up runs never turns ready, even when the warm-up call
    returns afterwards."""
    gate = threading.Event()

    async def scenario() -> bool:
        b = make(FakeRuntime())
        b.start(lambda: gate.wait(LONG_S))
        await asyncio.sleep(0)  # the warm-up task starts its call on the inference thread
        await b.drain()
        gate.set()
        # The inference thread ends only after the warm-up call returned and handed its result
        # to the loop; the two yields then let the warm-up task take it, had it not been
        # cancelled.
        await asyncio.to_thread(b.executor.shutdown, True)
        for _ in range(3):
            await asyncio.sleep(0)
        return b.ready

    assert asyncio.run(scenario()) is False


def test_not_idle_while_a_batch_runs() -> None:
    gate = threading.Event()
    rt = FakeRuntime(gate=gate)

    async def scenario() -> tuple[bool, bool, bool]:
        b = make(rt, max_batch_delay_s=0)
        b.start()
        before = b.idle
        result = b.submit(image(), time.monotonic() + LONG_S)
        while not rt.calls:  # the batch is at the runtime, the queue is empty
            await asyncio.sleep(0.01)
        running = b.idle
        gate.set()
        await result
        after = b.idle
        await b.drain()
        return before, running, after

    assert asyncio.run(scenario()) == (True, False, True)


def test_a_batch_waits_for_the_warm_up_on_the_one_inference_thread() -> None:
    """Warm-up and batches share one inference thread: a request submitted during a warm-up
    runs after it, on the same thread, never beside it on a second one."""
    gate = threading.Event()
    threads: list[str] = []
    rt = FakeRuntime()

    def infer(imgs: list) -> list:
        threads.append(threading.current_thread().name)
        return infer_batch(rt, imgs)

    def warmup() -> None:
        threads.append(threading.current_thread().name)
        gate.wait(LONG_S)

    async def scenario() -> None:
        b = Batcher(infer, max_batch_size=4, max_batch_delay_s=0, queue_size=4)
        b.start(warmup)
        while not threads:  # the warm-up holds the thread
            await asyncio.sleep(0.01)
        result = b.submit(image(), time.monotonic() + LONG_S)
        gate.set()
        await result
        await b.drain()

    asyncio.run(scenario())
    assert len(threads) == 2 and threads[0] == threads[1], threads


def test_drain_during_a_batch_still_filling_stops_the_worker_at_once() -> None:
    """A batch waiting for a companion that is on its way when the server drains: the drain's
    stop marker ends the batch and the worker together, so drain returns as soon as the batch is
    answered instead of waiting out its timeout for a worker that kept listening."""
    rt = FakeRuntime()

    async def scenario() -> tuple[float, int]:
        b = make(rt, max_batch_delay_s=LONG_S)
        b.start()
        with b.arriving():  # a companion is decoding: the batch waits for it
            result = b.submit(image(), time.monotonic() + LONG_S)
            await asyncio.sleep(0)  # the worker takes the request and starts filling
            t0 = time.monotonic()
            await b.drain(timeout_s=LONG_S)
            elapsed = time.monotonic() - t0
        out = await result
        return elapsed, out.batch_size

    elapsed, batch_size = asyncio.run(scenario())
    assert batch_size == 1
    assert elapsed < LONG_S / 2, f"drain waited {elapsed:.1f} s for a worker that did not stop"
