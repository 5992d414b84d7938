"""Dynamic batching: one runtime call per batch, bounded queue, deadlines, drain."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from service.batcher import Batcher
from service.errors import ServiceError
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


def lone_request_seconds(rt: FakeRuntime, *, companion_on_its_way: bool, **kw: object) -> float:
    """Time from submit to result of one request alone in a fresh batcher; with
    ``companion_on_its_way`` another request is decoding (it never arrives)."""

    async def scenario() -> float:
        b = make(rt, **kw)
        b.start()
        t0 = time.monotonic()
        if companion_on_its_way:
            with b.arriving():
                await b.submit(image(), t0 + 5)
        else:
            await b.submit(image(), t0 + 5)
        elapsed = time.monotonic() - t0
        await b.drain()
        return elapsed

    return asyncio.run(scenario())


def test_batch_waits_the_delay_for_a_companion_and_no_longer() -> None:
    rt = FakeRuntime()
    delay = 0.3
    elapsed = lone_request_seconds(rt, companion_on_its_way=True, max_batch_delay_s=delay)
    # Both sides: a batcher that never waits fails the first bound, one that waits too long
    # (or forever) the second.
    assert delay - 0.005 <= elapsed < delay + 0.5
    assert rt.calls == [1]


def test_lone_request_is_not_held_back_when_nothing_is_arriving() -> None:
    rt = FakeRuntime()
    # a batcher that always waits takes 2 s
    assert lone_request_seconds(rt, companion_on_its_way=False, max_batch_delay_s=2.0) < 1.0
    assert rt.calls == [1]


def test_batch_waits_for_a_request_that_is_on_its_way() -> None:
    rt = FakeRuntime()

    async def scenario() -> None:
        b = make(rt, max_batch_delay_s=2.0)
        b.start()
        deadline = time.monotonic() + 5
        with b.arriving():  # the second request is still decoding
            first = b.submit(image(), deadline)
            await asyncio.sleep(0.1)
        second = b.submit(image(), deadline)
        t0 = time.monotonic()
        await asyncio.gather(first, second)
        assert time.monotonic() - t0 < 1.0  # the batch ran as soon as it arrived, not at 2 s
        await b.drain()

    asyncio.run(scenario())
    assert rt.calls == [2]


def test_warmup_runs_on_the_inference_thread_before_ready() -> None:
    threads: list[str] = []

    async def scenario(warmup: object) -> tuple[bool, bool, str | None]:
        b = make(FakeRuntime())
        b.start(warmup)  # type: ignore[arg-type]
        before = b.ready
        for _ in range(200):
            if b.ready or b.warmup_error:
                break
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
    rt = FakeRuntime(delay_s=0.2)

    async def scenario() -> None:
        b = make(rt, max_batch_size=1, queue_size=2, max_batch_delay_s=0)
        b.start()
        deadline = time.monotonic() + 5
        first = b.submit(image(), deadline)
        await asyncio.sleep(0.05)  # the worker took it: the queue is empty again
        queued = [b.submit(image(), deadline) for _ in range(2)]
        with pytest.raises(ServiceError) as err:
            b.submit(image(), deadline)
        assert err.value.code == "queue_full" and err.value.headers["Retry-After"]
        await asyncio.gather(first, *queued)
        await b.drain()

    asyncio.run(scenario())


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
