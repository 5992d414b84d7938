"""The model core: an ONNX Runtime session behind a small interface that tests can fake.

The graph's names, shapes and metadata are the contract of :mod:`service.contract`.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from service.contract import INPUT_NAMES, METADATA_KEY, OUTPUT_NAMES, ModelMetadata
from service.tensorrt import TENSORRT_EXCLUDED_OPS, tensorrt_options

log = logging.getLogger("maskx.service")

_ORT_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_SHORT_NAMES = {v: k for k, v in _ORT_NAMES.items()}
_DISPLAY = {"tensorrt": "TensorRT", "cuda": "CUDA", "cpu": "CPU"}
# The shared library of each GPU provider, beside onnxruntime's own in onnxruntime/capi/.
_PROVIDER_LIBRARIES = {
    "cuda": "libonnxruntime_providers_cuda.so",
    "tensorrt": "libonnxruntime_providers_tensorrt.so",
}
# CUresult codes of cuInit that have a plain explanation (CUDA driver API, cuda.h).
_CU_ERRORS = {
    35: "the NVIDIA driver is older than the CUDA runtime this onnxruntime was built for "
    "(CUDA_ERROR_INSUFFICIENT_DRIVER): upgrade the driver or use the image built for the older "
    "CUDA (deploy/README.md)",
    100: "the NVIDIA driver sees no GPU (CUDA_ERROR_NO_DEVICE): on Docker run with the NVIDIA "
    "runtime and --gpus, on Kubernetes request nvidia.com/gpu",
    999: "the NVIDIA driver failed to initialise (CUDA_ERROR_UNKNOWN); see dmesg and nvidia-smi",
}


class ProviderUnavailableError(ValueError):
    """A GPU provider that ``MASKX_PROVIDERS`` asks for cannot run the session, and falling back
    to the CPU is not allowed (``MASKX_ALLOW_CPU_FALLBACK``): a setting this machine cannot
    honour, hence a ``ValueError``."""


def requested_provider(requested: Sequence[str], available: Sequence[str]) -> str:
    """The short name of the provider the operator wants the session to run on.

    The first of ``tensorrt``/``cuda`` in ``requested``, else ``cpu``; for ``["auto"]``,
    ``cuda`` when this onnxruntime build has the CUDA provider, else ``cpu``. A ``cpu`` later in
    the list is where nodes that the GPU provider lacks run, not a wish to run on the CPU.
    """
    if list(requested) == ["auto"]:
        return "cuda" if _ORT_NAMES["cuda"] in available else "cpu"
    return next((p for p in requested if p != "cpu"), "cpu")


def _load_library(path: str) -> object:
    return ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)


def explain_provider_failure(
    provider: str,
    available: Sequence[str],
    *,
    load_library: Callable[[str], object] = _load_library,
    capi_dir: Path | None = None,
) -> str:
    """Why the GPU ``provider`` (short name) cannot run here: the onnxruntime build, the NVIDIA
    driver, or a library the provider needs, found by loading what it loads, in its order.

    ``load_library`` opens a shared library (``ctypes.CDLL``) and raises ``OSError`` naming the
    file that is missing; tests pass their own.
    """
    import onnxruntime as ort

    name = _ORT_NAMES[provider]
    if name not in available:
        return (
            f"this onnxruntime build ({ort.__version__}) has no {name} (it has "
            f"{', '.join(available)}): install onnxruntime-gpu, or use the serve-gpu image"
        )
    try:
        libcuda = load_library("libcuda.so.1")
    except OSError as exc:
        return (
            f"no NVIDIA driver: libcuda.so.1 cannot be loaded ({exc}); on Docker run with the "
            "NVIDIA runtime and --gpus, on Kubernetes request nvidia.com/gpu"
        )
    status = _cu_init(libcuda)
    if status:
        return _CU_ERRORS.get(status, f"the NVIDIA driver's cuInit failed with CUresult {status}")
    capi = capi_dir or Path(ort.__file__).parent / "capi"
    try:
        load_library(str(capi / "libonnxruntime_providers_shared.so"))
        load_library(str(capi / _PROVIDER_LIBRARIES[provider]))
    except OSError as exc:
        build = _build_cuda_version()
        return f"a library that {name} needs cannot be loaded: {exc}" + (
            f" (this onnxruntime was built for CUDA {build})" if build else ""
        )
    return f"ONNX Runtime could not initialise {name}; its own error is in the log above"


def _cu_init(libcuda: object) -> int:
    """``cuInit(0)``'s CUresult (0: the driver works); 0 when the object has no such call."""
    cu_init = getattr(libcuda, "cuInit", None)
    if cu_init is None:
        return 0
    return int(cu_init(0))


def _build_cuda_version() -> str | None:
    try:
        from onnxruntime.capi import build_and_package_info
    except ImportError:
        return None
    return getattr(build_and_package_info, "cuda_version", None)


@dataclass
class RawDetections:
    """Graph outputs for a whole batch (see the module docstring for shapes)."""

    boxes: np.ndarray  # float32 [N, 4], input pixels
    scores: np.ndarray  # float32 [N]
    labels: np.ndarray  # int64 [N], 1..K
    batch_index: np.ndarray  # int64 [N]
    mask_probs: np.ndarray  # float32 [N, M, M]

    def split(self, batch_size: int) -> list[RawDetections]:
        """One :class:`RawDetections` per image of the batch, in batch order."""
        order = np.argsort(self.batch_index, kind="stable")
        sorted_index = self.batch_index[order]
        bounds = np.searchsorted(sorted_index, np.arange(batch_size + 1))
        out = []
        for b in range(batch_size):
            sel = order[bounds[b] : bounds[b + 1]]
            out.append(
                RawDetections(
                    boxes=self.boxes[sel],
                    scores=self.scores[sel],
                    labels=self.labels[sel],
                    batch_index=self.batch_index[sel],
                    mask_probs=self.mask_probs[sel],
                )
            )
        return out


class Runtime(Protocol):
    """The core step: one call per batch. Implementations must be thread-safe for ``run``.

    ``requested_provider`` is the provider the operator asked for (short name); when it differs
    from :attr:`provider`, the runtime fell back and ``maskx_provider_fallback`` reads 1.
    """

    info: ModelMetadata
    requested_provider: str

    @property
    def provider(self) -> str:
        """Short name of the provider in use now (tensorrt, cuda or cpu; or fake)."""
        ...

    def run(self, images: np.ndarray, image_sizes: np.ndarray) -> RawDetections:
        """``images`` uint8 [B, 3, H, W], ``image_sizes`` int64 [B, 2] -> whole-batch outputs."""
        ...


def select_providers(
    requested: Sequence[str],
    available: Sequence[str],
    *,
    tensorrt: dict[str, str] | None = None,
) -> tuple[list[str | tuple[str, dict[str, str]]], str]:
    """ONNX Runtime provider list for ``requested`` short names (or ``["auto"]``).

    Returns the list to pass to ``InferenceSession`` and a sentence explaining the choice (logged
    at start-up). TensorRT gets ``trt_op_types_to_exclude`` so that NMS, NonZero and RoiAlign stay
    on CUDA; CUDA gets ``cudnn_conv_algo_search=HEURISTIC`` because the default exhaustive search
    re-benchmarks convolutions for every new input shape (hundreds of ms per shape). CPU is always
    appended as the fallback. ``tensorrt`` replaces TensorRT's options (from
    :func:`service.tensorrt.tensorrt_options`: profile and caches; the op exclusion included).
    """
    available = list(available)
    if list(requested) == ["auto"]:
        wanted = ["cuda"] if _ORT_NAMES["cuda"] in available else []
        reason = (
            "auto: CUDA available"
            if wanted
            else f"auto: CUDA not available in this onnxruntime build ({', '.join(available)})"
        )
    else:
        wanted = [p for p in requested if p != "cpu"]
        missing = [p for p in wanted if _ORT_NAMES[p] not in available]
        wanted = [p for p in wanted if p not in missing]
        reason = f"requested {','.join(requested)}" + (
            f"; not available in this onnxruntime build: {','.join(missing)}" if missing else ""
        )
    providers: list[str | tuple[str, dict[str, str]]] = []
    for name in wanted:
        if name == "tensorrt":
            options = tensorrt or {"trt_op_types_to_exclude": TENSORRT_EXCLUDED_OPS}
            providers.append((_ORT_NAMES[name], options))
        elif name == "cuda":
            providers.append((_ORT_NAMES[name], {"cudnn_conv_algo_search": "HEURISTIC"}))
    providers.append(_ORT_NAMES["cpu"])
    return providers, reason


def _read_metadata(path: Path) -> ModelMetadata:
    """The graph's metadata, read before the real session exists (TensorRT's profile needs the
    model's sizes): a CPU session without graph optimisation, dropped at once."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ValueError(f"{path}: ONNX Runtime cannot load the model: {exc}") from exc
    meta = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in meta:
        raise ValueError(f"{path}: metadata_props has no {METADATA_KEY!r} key")
    return ModelMetadata.parse(meta[METADATA_KEY], source=str(path))


class OnnxRuntimeSession:
    """An ONNX Runtime session over a model file that honours the graph contract."""

    def __init__(
        self,
        model_path: str | Path,
        providers: Sequence[str] = ("auto",),
        *,
        intra_op_threads: int = 0,
        spinning: bool = True,
        allow_cpu_fallback: bool = False,
        max_batch_size: int = 1,
        trt_cache_dir: Path | None = None,
    ) -> None:
        import onnxruntime as ort

        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"MASKX_MODEL_PATH={str(path)!r}: no such file; export a model with "
                "'maskx export' or point MASKX_MODEL_PATH at an .onnx file"
            )
        available = ort.get_available_providers()
        self.requested_provider = requested_provider(providers, available)
        # `auto` takes what works; a provider named in the list is a promise to be kept.
        strict = list(providers) != ["auto"] and not allow_cpu_fallback
        if strict and _ORT_NAMES[self.requested_provider] not in available:
            # Refused before the model is read: nothing could change the outcome.
            raise self._unavailable(providers, explain_provider_failure(
                self.requested_provider, available))  # fmt: skip
        trt = None
        if "tensorrt" in providers and _ORT_NAMES["tensorrt"] in available:
            trt = tensorrt_options(
                _read_metadata(path), max_batch_size=max_batch_size, cache_dir=trt_cache_dir
            )
        provider_list, reason = select_providers(providers, available, tensorrt=trt)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads  # 0: one per physical core
        # Idle CPU worker threads busy-wait for the next run (ONNX Runtime's default). Measured
        # here with a 160-px model: turning it off made each run ~15% slower (every parallel op
        # then wakes sleeping threads) and cut HTTP throughput; off suits shared cores.
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if spinning else "0"
        )
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=options, providers=provider_list
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ValueError(f"{path}: ONNX Runtime cannot load the model: {exc}") from exc
        self.fallback_reason: str | None = None
        if self.provider != self.requested_provider:
            self.fallback_reason = explain_provider_failure(self.requested_provider, available)
            if strict and self.provider == "cpu":
                raise self._unavailable(providers, self.fallback_reason)
            log.warning(
                "FALLBACK: asked for %s, running on %s (%s): %s",
                _DISPLAY[self.requested_provider],
                _DISPLAY.get(self.provider, self.provider),
                reason,
                self.fallback_reason,
            )
        elif self.provider == "cpu" and list(providers) != ["cpu"]:
            log.warning("running on the CPU provider: %s", reason)
        else:
            log.info("running on the %s provider (%s)", self.provider, reason)
        self._check_io(path)
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise ValueError(
                f"{path}: metadata_props has no {METADATA_KEY!r} key; export the model with "
                "'maskx export' (keys found: " + ", ".join(sorted(meta)) + ")"
            )
        self.info = ModelMetadata.parse(meta[METADATA_KEY], source=str(path))
        self.path = path

    @staticmethod
    def _unavailable(providers: Sequence[str], why: str) -> ProviderUnavailableError:
        wanted = requested_provider(providers, ())
        return ProviderUnavailableError(
            f"MASKX_PROVIDERS={','.join(providers)}: the {_DISPLAY[wanted]} provider cannot run "
            f"here: {why}. Fix that, or set MASKX_ALLOW_CPU_FALLBACK=true to serve on the CPU "
            "(much slower; maskx_provider_fallback then reads 1)"
        )

    @property
    def provider(self) -> str:
        """The provider ONNX Runtime runs on now, read from the session each time: a session
        whose preferred provider failed runs on the next one, and this says so."""
        first = self.session.get_providers()[0]
        return _SHORT_NAMES.get(first, first)

    def _check_io(self, path: Path) -> None:
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if sorted(inputs) != sorted(INPUT_NAMES):
            raise ValueError(f"{path}: graph inputs are {inputs}, expected {list(INPUT_NAMES)}")
        missing = [o for o in OUTPUT_NAMES if o not in outputs]
        if missing:
            raise ValueError(f"{path}: graph outputs lack {missing} (found {outputs})")

    def run(self, images: np.ndarray, image_sizes: np.ndarray) -> RawDetections:
        boxes, scores, labels, batch_index, mask_probs = self.session.run(
            list(OUTPUT_NAMES), {"images": images, "image_sizes": image_sizes}
        )
        return RawDetections(
            boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            scores=np.asarray(scores, dtype=np.float32).reshape(-1),
            labels=np.asarray(labels, dtype=np.int64).reshape(-1),
            batch_index=np.asarray(batch_index, dtype=np.int64).reshape(-1),
            mask_probs=np.asarray(mask_probs, dtype=np.float32),
        )


def load_runtime(
    model_path: str | Path,
    providers: Sequence[str] = ("auto",),
    *,
    intra_op_threads: int = 0,
    spinning: bool = True,
    allow_cpu_fallback: bool = False,
    max_batch_size: int = 1,
    trt_cache_dir: Path | None = None,
) -> Runtime:
    """Open ``model_path`` with ONNX Runtime (the production runtime).

    ``intra_op_threads`` (0: ONNX Runtime's default, one per physical core) and ``spinning``
    (let idle CPU worker threads busy-wait for the next run) tune the CPU provider.
    When ``providers`` names TensorRT or CUDA and the session would run on the CPU instead,
    :class:`ProviderUnavailableError` says why, unless ``allow_cpu_fallback``; ``["auto"]``
    always runs, on the CPU when it must (the fallback is logged and shown either way).
    With TensorRT, ``max_batch_size`` bounds its optimisation profile and ``trt_cache_dir``
    keeps its engine and timing caches (:mod:`service.tensorrt`).
    """
    return OnnxRuntimeSession(
        model_path,
        providers,
        intra_op_threads=intra_op_threads,
        spinning=spinning,
        allow_cpu_fallback=allow_cpu_fallback,
        max_batch_size=max_batch_size,
        trt_cache_dir=trt_cache_dir,
    )
