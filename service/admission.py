"""Admission: whether a ``/segment`` request may start, and how many have.

One owner for the worker's availability (ready, draining) and its in-flight count (with the
``maskx_in_flight_requests`` gauge): a request is admitted **before** its body is read and
counts until its answer is built, so that the cap (``MASKX_MAX_IN_FLIGHT``) bounds the bodies
held in memory, not only the batch queue.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from service.errors import (
    RETRY_AFTER_BUSY_S,
    RETRY_AFTER_NOT_READY_S,
    ServiceError,
    draining_error,
)
from service.metrics import ServiceMetrics

log = logging.getLogger("maskx.service")


class Admission:
    """Ready/draining state, the in-flight count and its cap.

    ``ready`` is read from the batcher (it owns warm-up); ``not_ready_reason`` says why not.
    """

    def __init__(
        self,
        max_in_flight: int,
        metrics: ServiceMetrics,
        *,
        ready: Callable[[], bool],
        not_ready_reason: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.metrics = metrics
        self._ready = ready
        self._not_ready_reason = not_ready_reason
        self.draining = False
        self.in_flight = 0
        metrics.in_flight_capacity.set(max_in_flight)

    def check_available(self) -> None:
        """Raise the 503 that applies (draining, not ready), if any."""
        if self.draining:
            raise draining_error()
        if not self._ready():
            message = (
                self._not_ready_reason() or "the model is loading or warming up; retry shortly"
            )
            raise ServiceError(
                "not_ready", message, headers={"Retry-After": str(RETRY_AFTER_NOT_READY_S)}
            )

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Count one request for the duration of the block, or refuse it: 503 while not
        available, 429 ``server_busy`` when ``max_in_flight`` requests are already admitted."""
        self.check_available()
        if self.in_flight >= self.max_in_flight:
            self.metrics.rejected.labels(reason="server_busy").inc()
            raise ServiceError(
                "server_busy",
                f"{self.in_flight} requests are already being handled (MASKX_MAX_IN_FLIGHT="
                f"{self.max_in_flight}); retry later",
                headers={"Retry-After": str(RETRY_AFTER_BUSY_S)},
            )
        self.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            yield
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()

    def begin_drain(self) -> None:
        """Stop admitting: ``/readyz`` and new requests answer 503; admitted ones finish."""
        if not self.draining:
            log.info("draining: %d requests in flight", self.in_flight)
        self.draining = True
