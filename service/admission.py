"""Admission: whether a ``/segment`` request may start, and how many have.

One owner for the worker's availability (ready, draining), its in-flight count (with the
``maskx_in_flight_requests`` gauge) and the bodies being read per client. A request is checked
for availability before its body is read, but admitted against the cap
(``MASKX_MAX_IN_FLIGHT``) only **once its body is read**: clients that trickle bodies cannot
hold the slots that decoding and inference need. Bodies being read are bounded per client
address (``MASKX_MAX_UPLOADS_PER_CLIENT``), each in time (``MASKX_BODY_TIMEOUT_S``), and all
together by uvicorn's connection limit (``MASKX_LIMIT_CONCURRENCY``).
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
        max_uploads_per_client: int = 0,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.max_uploads_per_client = max_uploads_per_client
        self.uploads: dict[str, int] = {}  # client address -> bodies being read
        self.metrics = metrics
        self._ready = ready
        self._not_ready_reason = not_ready_reason
        self.draining = False
        self.in_flight = 0  # accepted: receiving a body or admitted
        self.admitted = 0  # body read, counted against max_in_flight
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
    def uploading(self, client: str | None) -> Iterator[None]:
        """Count one body being read from ``client`` (an address; None: unknown, not counted)
        for the duration of the block, or refuse it: 429 ``client_busy`` when that client
        already has ``max_uploads_per_client`` bodies on their way (0: no limit)."""
        self.metrics.uploading.inc()
        try:
            with self._per_client(client):
                yield
        finally:
            self.metrics.uploading.dec()

    @contextmanager
    def _per_client(self, client: str | None) -> Iterator[None]:
        if client is None or self.max_uploads_per_client == 0:
            yield
            return
        held = self.uploads.get(client, 0)
        if held >= self.max_uploads_per_client:
            self.metrics.rejected.labels(reason="client_busy").inc()
            raise ServiceError(
                "client_busy",
                f"{held} bodies from this client are still being received "
                f"(MASKX_MAX_UPLOADS_PER_CLIENT={self.max_uploads_per_client}); retry later",
                headers={"Retry-After": str(RETRY_AFTER_BUSY_S)},
            )
        self.uploads[client] = held + 1
        try:
            yield
        finally:
            left = self.uploads[client] - 1
            if left:
                self.uploads[client] = left
            else:
                del self.uploads[client]

    @contextmanager
    def accept(self) -> Iterator[None]:
        """Count one ``/segment`` request from its availability check to its answer (503
        while not available): ``in_flight``, which a drain waits for, includes requests whose
        body is still arriving (accepted before a drain, they are served)."""
        self.check_available()
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Count one request whose body is read against ``max_in_flight`` for the duration of
        the block (``maskx_in_flight_requests``), or refuse it: 429 ``server_busy`` when
        ``max_in_flight`` requests are already admitted. Availability is :meth:`accept`'s."""
        if self.admitted >= self.max_in_flight:
            self.metrics.rejected.labels(reason="server_busy").inc()
            raise ServiceError(
                "server_busy",
                f"{self.admitted} requests are already being handled (MASKX_MAX_IN_FLIGHT="
                f"{self.max_in_flight}); retry later",
                headers={"Retry-After": str(RETRY_AFTER_BUSY_S)},
            )
        self.admitted += 1
        self.metrics.in_flight.inc()
        try:
            yield
        finally:
            self.admitted -= 1
            self.metrics.in_flight.dec()

    def begin_drain(self) -> None:
        """Stop admitting: ``/readyz`` and new requests answer 503; admitted ones finish."""
        if not self.draining:
            log.info("draining: %d requests in flight", self.in_flight)
        self.draining = True
