"""TensorRT provider options: an optimisation profile over every padded batch the service makes,
and engine and timing caches in a folder that outlives the process.

Without an explicit profile, ONNX Runtime's TensorRT provider builds an engine for the shapes it
has seen and builds again (tens of seconds to minutes, in the middle of traffic) whenever a
batch falls outside them. The service's batches are bounded, so one profile covers them all:

* ``images`` uint8 ``[B, 3, H, W]``: 1 <= B <= ``MASKX_MAX_BATCH_SIZE``; H and W are multiples of
  the graph's ``size_divisible`` from one multiple up to ``max_size`` rounded up (an image is
  resized so that its short side is at most ``min_size`` and its long side at most ``max_size``,
  then padded; either side may be the long one, and a very elongated image can leave the short
  one as small as a single multiple).
* ``image_sizes`` int64 ``[B, 2]``.

The opt shape, which TensorRT tunes its kernels for, is one landscape image at the model's scale
(``min_size`` by 4/3 of it, capped by ``max_size``, both rounded up), the first warm-up shape.

With a cache folder, the engine built for that profile and TensorRT's timing cache (kernel
timings reused by later builds) are written under ``engines/`` and ``timing/``; the next start
with the same graph, profile, TensorRT version and GPU loads the engine instead of building it.
Nothing here runs TensorRT: without a GPU the options are constructed and checked only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from service.contract import INPUT_NAMES, ModelMetadata

# Left to CUDA: with them inside, the graph splits into many slow TensorRT partitions.
TENSORRT_EXCLUDED_OPS = "NonMaxSuppression,NonZero,RoiAlign"


@dataclass(frozen=True)
class ShapeProfile:
    """min / opt / max shapes of each graph input, as TensorRT's optimisation profile."""

    min: dict[str, tuple[int, ...]]
    opt: dict[str, tuple[int, ...]]
    max: dict[str, tuple[int, ...]]

    def covers(self, shapes: dict[str, tuple[int, ...]]) -> bool:
        """True when every input's shape lies within [min, max], dimension by dimension."""
        return all(
            len(shape) == len(self.min[name])
            and all(
                lo <= d <= hi
                for lo, d, hi in zip(self.min[name], shape, self.max[name], strict=True)
            )
            for name, shape in shapes.items()
        )


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def service_profile(info: ModelMetadata, max_batch_size: int) -> ShapeProfile:
    """The profile that covers every batch the service pads for this model (module docstring)."""
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size={max_batch_size} must be >= 1")
    d = info.size_divisible
    top = _round_up(info.max_size, d)
    short = _round_up(info.min_size, d)
    long = _round_up(min(info.max_size, round(info.min_size * 4 / 3)), d)
    images, sizes = INPUT_NAMES
    return ShapeProfile(
        min={images: (1, 3, d, d), sizes: (1, 2)},
        opt={images: (1, 3, short, long), sizes: (1, 2)},
        max={images: (max_batch_size, 3, top, top), sizes: (max_batch_size, 2)},
    )


def _profile_string(shapes: dict[str, tuple[int, ...]]) -> str:
    """ONNX Runtime's format: ``name:1x3x32x32,other:1x2``."""
    return ",".join(f"{name}:{'x'.join(str(d) for d in shape)}" for name, shape in shapes.items())


def tensorrt_options(
    info: ModelMetadata, *, max_batch_size: int, cache_dir: Path | None = None
) -> dict[str, str]:
    """Provider options of ``TensorrtExecutionProvider`` for this model and batch limit.

    ``cache_dir`` (``MASKX_TRT_CACHE_DIR``) holds ``engines/`` and ``timing/``, made here if
    missing; None keeps no cache (every start builds the engine).
    """
    profile = service_profile(info, max_batch_size)
    options = {
        "trt_op_types_to_exclude": TENSORRT_EXCLUDED_OPS,
        "trt_profile_min_shapes": _profile_string(profile.min),
        "trt_profile_opt_shapes": _profile_string(profile.opt),
        "trt_profile_max_shapes": _profile_string(profile.max),
    }
    if cache_dir is not None:
        engines, timing = Path(cache_dir) / "engines", Path(cache_dir) / "timing"
        for folder in (engines, timing):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ValueError(
                    f"MASKX_TRT_CACHE_DIR={str(cache_dir)!r}: cannot create {folder}: {exc}"
                ) from exc
        options |= {
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(engines),
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": str(timing),
        }
    return options
