"""The model core: an ONNX Runtime session behind a small interface that tests can fake.

The graph's names, shapes and metadata are the contract of :mod:`service.contract`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from service.contract import INPUT_NAMES, METADATA_KEY, OUTPUT_NAMES, ModelMetadata

log = logging.getLogger("maskx.service")

TENSORRT_EXCLUDED_OPS = "NonMaxSuppression,NonZero,RoiAlign"

_ORT_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_SHORT_NAMES = {v: k for k, v in _ORT_NAMES.items()}


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
    """The core step: one call per batch. Implementations must be thread-safe for ``run``."""

    info: ModelMetadata

    @property
    def provider(self) -> str:
        """Short name of the provider in use now (tensorrt, cuda or cpu; or fake)."""
        ...

    def run(self, images: np.ndarray, image_sizes: np.ndarray) -> RawDetections:
        """``images`` uint8 [B, 3, H, W], ``image_sizes`` int64 [B, 2] -> whole-batch outputs."""
        ...


def select_providers(
    requested: Sequence[str], available: Sequence[str]
) -> tuple[list[str | tuple[str, dict[str, str]]], str]:
    """ONNX Runtime provider list for ``requested`` short names (or ``["auto"]``).

    Returns the list to pass to ``InferenceSession`` and a sentence explaining the choice (logged
    at start-up). TensorRT gets ``trt_op_types_to_exclude`` so that NMS, NonZero and RoiAlign stay
    on CUDA; CUDA gets ``cudnn_conv_algo_search=HEURISTIC`` because the default exhaustive search
    re-benchmarks convolutions for every new input shape (hundreds of ms per shape). CPU is always
    appended as the fallback.
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
            providers.append((_ORT_NAMES[name], {"trt_op_types_to_exclude": TENSORRT_EXCLUDED_OPS}))
        elif name == "cuda":
            providers.append((_ORT_NAMES[name], {"cudnn_conv_algo_search": "HEURISTIC"}))
    providers.append(_ORT_NAMES["cpu"])
    return providers, reason


class OnnxRuntimeSession:
    """An ONNX Runtime session over a model file that honours the graph contract."""

    def __init__(
        self,
        model_path: str | Path,
        providers: Sequence[str] = ("auto",),
        *,
        intra_op_threads: int = 0,
        spinning: bool = True,
    ) -> None:
        import onnxruntime as ort

        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"MASKX_MODEL_PATH={str(path)!r}: no such file; export a model with "
                "'maskx export' or point MASKX_MODEL_PATH at an .onnx file"
            )
        provider_list, reason = select_providers(providers, ort.get_available_providers())
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
        used = self.session.get_providers()
        wanted_first = provider_list[0]
        wanted_first = wanted_first[0] if isinstance(wanted_first, tuple) else wanted_first
        if used[0] != wanted_first:
            log.warning(
                "provider %s could not be initialised, running on %s (%s)",
                wanted_first,
                used[0],
                reason,
            )
        elif self.provider == "cpu" and providers != ("cpu",) and list(providers) != ["cpu"]:
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
) -> Runtime:
    """Open ``model_path`` with ONNX Runtime (the production runtime).

    ``intra_op_threads`` (0: ONNX Runtime's default, one per physical core) and ``spinning``
    (let idle CPU worker threads busy-wait for the next run) tune the CPU provider.
    """
    return OnnxRuntimeSession(
        model_path, providers, intra_op_threads=intra_op_threads, spinning=spinning
    )
