"""Prometheus metrics of the worker (names and labels fixed in docs/contracts.md).

Each app owns its own registry so that several apps (tests, benchmarks) can live in one process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from service.contract import ModelMetadata

# 1 ms .. 60 s, about three buckets per decade: the request histogram covers the default 30 s
# deadline, and 1.5x a longer deadline is added as its top bound, so a 504 lands in a bucket.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    15.0, 20.0, 30.0, 45.0, 60.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)
DETECTION_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
# The error codes of the two 429s (service/errors.py), the label values of
# maskx_rejected_requests_total.
REJECT_REASONS = ("queue_full", "server_busy", "client_busy")
MODEL_INFO_LABELS = ("name", "version", "provider", "checkpoint_sha256", "precision",
                     "exported_at", "maskx_version", "score_floor")  # fmt: skip
# The value of an identity label that a model file written by an older exporter does not hold.
UNKNOWN = "unknown"


class ServiceMetrics:
    """All metrics of one app, registered in ``self.registry``."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, deadline_s: float = 30.0
    ) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        # What the default registry would have carried: process_resident_memory_bytes,
        # process_cpu_seconds_total, process_open_fds, ... (read from /proc at scrape time),
        # python_info and the garbage collector's counts.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        # A request that hits its deadline takes a little longer than it: 1.5x leaves room.
        top = max(LATENCY_BUCKETS[-1], deadline_s * 1.5)
        request_buckets = tuple(sorted({*LATENCY_BUCKETS, top}))
        self.request_duration = Histogram(
            "maskx_request_duration_seconds",
            "End-to-end request latency by route template and status code (499: the client "
            "closed the connection first).",
            ["route", "status"],
            buckets=request_buckets,
            registry=r,
        )
        self._request_children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self.requests = Counter(
            "maskx_requests", "Requests by route and status code.", ["route", "status"], registry=r
        )
        self.queue_wait = Histogram(
            "maskx_queue_wait_seconds",
            "Time a request waited in the batch queue before its batch started.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "maskx_inference_seconds",
            "ONNX Runtime time per batch (one session call).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.preprocess = Histogram(
            "maskx_preprocess_seconds",
            "Decode, orientation, conversion and resize per image.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.postprocess = Histogram(
            "maskx_postprocess_seconds",
            "Box-local mask paste and RLE encoding per image.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "maskx_batch_size", "Images per ONNX Runtime call.", buckets=BATCH_BUCKETS, registry=r
        )
        self.detections = Histogram(
            "maskx_detections_per_image",
            "Detections returned per image.",
            buckets=DETECTION_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "maskx_in_flight_requests", "POST /segment requests being handled.", registry=r
        )
        self.uploading = Gauge(
            "maskx_uploading_requests",
            "POST /segment requests whose body is still being received (not yet in flight).",
            registry=r,
        )
        self.in_flight_capacity = Gauge(
            "maskx_in_flight_capacity",
            "Most POST /segment requests admitted at once (MASKX_MAX_IN_FLIGHT).",
            registry=r,
        )
        self.skipped = Counter(
            "maskx_skipped_requests",
            "Requests whose remaining work was skipped: stage=decode when the deadline passed "
            "before decoding, stage=postprocess when the client was gone after inference or "
            "the deadline passed before post-processing began.",
            ["stage"],
            registry=r,
        )
        self.inference_failures = Counter(
            "maskx_inference_failures",
            "Inference calls (one per batch) that raised; each answered its requests with 500 "
            "inference_failed.",
            registry=r,
        )
        self.rejected = Counter(
            "maskx_rejected_requests",
            "POST /segment requests answered 429, by reason: queue_full (the batch queue was "
            "full), server_busy (MASKX_MAX_IN_FLIGHT requests were already admitted) or "
            "client_busy (MASKX_MAX_UPLOADS_PER_CLIENT bodies of that client being read).",
            ["reason"],
            registry=r,
        )
        for reason in REJECT_REASONS:  # present from the start, so rate() sees the first one
            self.rejected.labels(reason=reason)
        self.ready = Gauge(
            "maskx_ready",
            "1 while GET /readyz answers 200 (model loaded and warmed up, not draining), else 0.",
            registry=r,
        )
        self.healthy = Gauge(
            "maskx_healthy",
            "1 while GET /healthz answers 200; 0 after MASKX_UNHEALTHY_AFTER_FAILURES failed "
            "inference calls in a row.",
            registry=r,
        )
        self.consecutive_failures = Gauge(
            "maskx_consecutive_inference_failures",
            "Failed inference calls since the last one that succeeded.",
            registry=r,
        )
        self.queue_depth = Gauge(
            "maskx_queue_depth", "Requests waiting in the batch queue.", registry=r
        )
        self.queue_capacity = Gauge(
            "maskx_queue_capacity", "Size of the bounded batch queue.", registry=r
        )
        self.model_info = Gauge(
            "maskx_model_info",
            "The model being served (value 1): name, version, the execution provider in use, "
            "the checkpoint's sha256, precision, export time, the maskx version that exported "
            "it and the graph's score floor ('unknown' where the file does not say).",
            list(MODEL_INFO_LABELS),
            registry=r,
        )
        self.provider_fallback = Gauge(
            "maskx_provider_fallback",
            "1 when ONNX Runtime runs on another provider than MASKX_PROVIDERS asks for (e.g. "
            "CUDA asked, CPU used: MASKX_ALLOW_CPU_FALLBACK=true or 'auto'), else 0.",
            ["requested", "provider"],
            registry=r,
        )

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        """One answered request: its latency and count under ``route`` and ``status``.

        The labelled children are kept per (route, status), so a request costs no label
        look-up; routes are templates and statuses a few codes, so the cache stays small."""
        children = self._request_children.get((route, status))
        if children is None:
            labels = {"route": route, "status": str(status)}
            children = (self.request_duration.labels(**labels), self.requests.labels(**labels))
            self._request_children[(route, status)] = children
        children[0].observe(seconds)
        children[1].inc()

    def set_provider(self, requested: str, provider: str) -> None:
        self.provider_fallback.clear()
        self.provider_fallback.labels(requested=requested, provider=provider).set(
            int(requested != provider)
        )

    def bind_queue(self, depth: Callable[[], float], capacity: int) -> None:
        """Read the queue depth at scrape time instead of tracking every put and get."""
        self.queue_depth.set_function(depth)
        self.queue_capacity.set(capacity)

    def set_model(self, info: ModelMetadata, provider: str) -> None:
        self.model_info.clear()
        self.model_info.labels(**model_info_labels(info, provider)).set(1)


def model_info_labels(info: ModelMetadata, provider: str) -> dict[str, str]:
    """The label values of ``maskx_model_info`` for ``info`` served on ``provider``."""
    floor = info.score_floor
    values = {
        "name": info.name,
        "version": info.version,
        "provider": provider,
        "checkpoint_sha256": info.checkpoint_sha256,
        "precision": info.precision,
        "exported_at": info.exported_at,
        "maskx_version": info.maskx_version,
        "score_floor": None if floor is None else f"{floor:g}",
    }
    return {k: UNKNOWN if v is None else v for k, v in values.items()}
