"""Typed service settings (``MASKX_`` environment variables; names fixed in docs/contracts.md).

Misconfiguration fails when ``Settings()`` is built, before any model is loaded, with a message
that names the variable at fault.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Every list of allowed values of the service, once; flags, query parameters and validators
# read them from here.
Provider = Literal["tensorrt", "cuda", "cpu"]
LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]
LogFormat = Literal["text", "json"]
MaskMode = Literal["rle", "none"]  # POST /segment ?masks=
ResponseFormat = Literal["maskx", "coco"]  # POST /segment ?format=
PROVIDER_NAMES: tuple[str, ...] = get_args(Provider)
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)
LOG_FORMATS: tuple[str, ...] = get_args(LogFormat)
MASK_MODES: tuple[str, ...] = get_args(MaskMode)
RESPONSE_FORMATS: tuple[str, ...] = get_args(ResponseFormat)


class Settings(BaseSettings):
    """Every knob of the serving worker, with the documented defaults."""

    model_config = SettingsConfigDict(
        env_prefix="MASKX_", extra="ignore", validate_default=True, protected_namespaces=()
    )

    model_path: Path = Field(Path("artifacts/demo/model.onnx"), description="ONNX file to serve.")
    providers: str = Field(
        "auto",
        description="Comma list of tensorrt,cuda,cpu in order of preference, or 'auto' "
        "(CUDA when available, else CPU). TensorRT is opt-in only.",
    )
    allow_cpu_fallback: bool = Field(
        False,
        description="Serve on the CPU when the TensorRT or CUDA provider that MASKX_PROVIDERS "
        "names cannot run (driver, library, onnxruntime build). Off: the worker refuses to start "
        "and says why, since a GPU worker on the CPU passes its probes at a fraction of the "
        "speed. On: it starts, warns, and maskx_provider_fallback reads 1. 'auto' never refuses.",
    )
    max_batch_size: int = Field(4, ge=1, le=256, description="Most requests per ONNX Runtime call.")
    trt_cache_dir: Path | None = Field(
        None,
        description="Folder for the TensorRT provider's engine and timing caches (engines/ and "
        "timing/ inside; a volume in compose and Kubernetes): a restart loads the engine instead "
        "of building it. Empty: no cache. Used only with MASKX_PROVIDERS=tensorrt,...",
    )
    max_batch_delay_ms: float = Field(
        5.0, ge=0.0, le=10_000.0, description="Longest wait to fill a batch."
    )
    queue_size: int = Field(64, ge=1, le=100_000, description="Bounded queue; full -> 429.")
    request_timeout_s: float = Field(
        30.0, gt=0.0, le=3600.0, description="Per-request deadline; passed -> 504."
    )
    max_body_bytes: int = Field(20_000_000, ge=1, description="Body limit; over -> 413.")
    body_timeout_s: float = Field(
        10.0, gt=0.0, le=3600.0, description="Longest time to receive a body; over -> 408."
    )
    max_in_flight: int = Field(
        32,
        ge=1,
        le=100_000,
        description="Most /segment requests admitted at once (decoding, queued, running or "
        "post-processing; admitted once their body is read, so slow uploads cannot hold these "
        "slots); beyond -> 429 server_busy.",
    )
    max_uploads_per_client: int = Field(
        64,
        ge=0,
        le=100_000,
        description="Most /segment bodies read at once from one client address; beyond -> 429 "
        "client_busy (one client trickling bodies cannot take every connection). 0: no "
        "per-client limit (behind a proxy that does not pass the client's address, see "
        "deploy/README.md).",
    )
    limit_concurrency: int = Field(
        256,
        ge=1,
        le=100_000,
        description="Most connections and tasks uvicorn serves at once; beyond, it answers 503 "
        "at once. Bounds the bodies held in memory while they are read (times "
        "MASKX_MAX_BODY_BYTES).",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0.0,
        le=3600.0,
        description="Longest time a connection may take to send a request's headers (from "
        "connecting, or from the end of its last response); then it is closed.",
    )
    max_pixels: int = Field(
        40_000_000, ge=1, description="Width x height limit checked before decoding; over -> 413."
    )
    max_jpeg_scans: int = Field(
        32,
        ge=1,
        le=10_000,
        description="Most scans a JPEG may have, counted from its markers before decoding; "
        "over -> 413 image_too_complex. libjpeg walks every block once per scan, so a small "
        "progressive file with thousands of scans would hold a thread for seconds.",
    )
    max_mask_pixels: int = Field(
        200_000_000,
        ge=1,
        description="Most pixels that the masks of one response may cover together (each "
        "mask's box clipped to the image), checked before any is pasted; over -> 422 "
        "mask_area_too_large. Bounds post-processing time and response size.",
    )
    max_response_bytes: int = Field(
        64_000_000,
        ge=1,
        description="Most characters of mask RLE in one response, counted while masks are "
        "encoded; over -> 422 response_too_large (masks whose outlines are very ragged can "
        "cost more text than their area suggests).",
    )
    score_threshold: float = Field(0.5, ge=0.0, le=1.0, description="Default score_threshold.")
    mask_threshold: float = Field(0.5, ge=0.0, le=1.0, description="Default mask_threshold.")
    max_detections: int = Field(100, ge=1, le=1000, description="Default max_detections.")
    host: str = Field(
        "127.0.0.1",
        description="Bind address. Loopback by default: a worker started by hand is not "
        "reachable from the network until asked (the images set 0.0.0.0 inside the container).",
    )
    port: int = Field(8000, ge=0, le=65535, description="Bind port (0 picks a free one).")
    api_key: SecretStr | None = Field(
        None,
        description="When set, every route but /healthz and /readyz (/v1/segment, /segment, /v1/model, "
        "/metrics, /docs, /openapi.json, the demo page) needs 'Authorization: Bearer <key>'.",
    )
    worker_threads: int = Field(2, ge=1, le=256, description="Thread pool for decoding images.")
    postprocess_threads: int = Field(
        2,
        ge=1,
        le=256,
        description="Thread pool for mask pasting and RLE (apart from decoding, so that "
        "expensive decodes cannot hold up finished inferences, nor the reverse).",
    )
    intra_op_threads: int = Field(
        0,
        ge=0,
        le=1024,
        description="ONNX Runtime CPU threads per inference call (0: one per physical core).",
    )
    ort_spinning: bool = Field(
        True,
        description="Let ONNX Runtime's idle CPU threads busy-wait for the next run (its "
        "default): lower latency and higher throughput on a dedicated machine; turn off where "
        "the cores are shared and idle CPU use matters.",
    )
    warmup: bool = Field(True, description="Run warm-up inferences before /readyz turns ready.")
    unhealthy_after_failures: int = Field(
        5,
        ge=1,
        le=1_000_000,
        description="Consecutive failed inference calls after which /healthz answers 503 "
        "(a worker that can only fail should be restarted).",
    )
    cors_origins: str = Field(
        "",
        description="Comma list of origins allowed to call the API from a browser "
        "(e.g. https://app.example.com), or '*'; empty: no CORS headers (default).",
    )
    log_level: LogLevel = Field("info", description="Log level.")
    log_format: LogFormat = Field("text", description="Log lines as text or one JSON object.")
    access_log: bool = Field(False, description="One log line per request (with its id).")

    @field_validator("providers")
    @classmethod
    def _check_providers(cls, value: str) -> str:
        value = value.strip().lower()
        if value == "auto":
            return value
        names = [p.strip() for p in value.split(",") if p.strip()]
        unknown = [p for p in names if p not in PROVIDER_NAMES]
        if not names or unknown:
            raise ValueError(
                f"MASKX_PROVIDERS={value!r}: expected 'auto' or a comma list of "
                f"{', '.join(PROVIDER_NAMES)}; unknown: {unknown or '(empty)'}"
            )
        return ",".join(dict.fromkeys(names))

    @field_validator("trt_cache_dir", mode="before")
    @classmethod
    def _empty_dir_is_unset(cls, value: object) -> object:
        # MASKX_TRT_CACHE_DIR= (empty, as compose writes an unset variable) means no cache.
        return None if value == "" else value

    @field_validator("api_key")
    @classmethod
    def _empty_key_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty MASKX_API_KEY= in a compose file means "no key", not "the empty key".
        if value is not None and not value.get_secret_value():
            return None
        return value

    @model_validator(mode="after")
    def _check_cross_fields(self) -> Settings:
        if self.queue_size < self.max_batch_size:
            raise ValueError(
                f"MASKX_QUEUE_SIZE={self.queue_size} is smaller than "
                f"MASKX_MAX_BATCH_SIZE={self.max_batch_size}: a batch could never fill; "
                "raise the queue size or lower the batch size"
            )
        if self.max_in_flight < self.max_batch_size:
            raise ValueError(
                f"MASKX_MAX_IN_FLIGHT={self.max_in_flight} is smaller than "
                f"MASKX_MAX_BATCH_SIZE={self.max_batch_size}: a batch could never fill"
            )
        if self.limit_concurrency <= self.max_in_flight:
            raise ValueError(
                f"MASKX_LIMIT_CONCURRENCY={self.limit_concurrency} is not above "
                f"MASKX_MAX_IN_FLIGHT={self.max_in_flight}: uploads, probes and scrapes "
                "would find no connection left while every admitted request runs"
            )
        return self

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def provider_list(self) -> list[str]:
        """Requested providers in order of preference (``["auto"]`` for automatic choice)."""
        return self.providers.split(",")
