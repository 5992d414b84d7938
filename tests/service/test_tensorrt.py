"""TensorRT provider options, constructed and checked only: this machine has no GPU, and no
TensorRT; whether the engine loads from its cache on a restart is not run here.

The profile must cover every batch the service really pads (a batch outside it would make
TensorRT build an engine in the middle of traffic): the shapes are taken from the service's own
pre-processing and batching, not recomputed here.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from service.contract import ModelMetadata
from service.pipeline import infer_batch, warmup_shapes
from service.preprocess import PreparedImage, model_input_size
from service.runtime import RawDetections, select_providers
from service.settings import Settings
from service.tensorrt import TENSORRT_EXCLUDED_OPS, service_profile, tensorrt_options
from service.testing import default_metadata, expected_outputs

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TRT = "TensorrtExecutionProvider"
# Images as they arrive: ordinary, portrait, square, tiny, panoramic, a tall strip, huge.
ARRIVING = [(480, 640), (640, 480), (500, 500), (7, 9), (300, 4000), (4000, 60), (6000, 4500)]


def info(min_size: int = 800, max_size: int = 1333) -> ModelMetadata:
    return ModelMetadata.from_dict(default_metadata(min_size=min_size, max_size=max_size), "m.onnx")


class ShapeRecorder:
    """A runtime that records the shape of every batch the service hands it."""

    def __init__(self, meta: ModelMetadata) -> None:
        self.info = meta
        self.provider = self.requested_provider = "tensorrt"
        self.shapes: list[dict[str, tuple[int, ...]]] = []

    def run(self, images: np.ndarray, image_sizes: np.ndarray) -> RawDetections:
        self.shapes.append({"images": images.shape, "image_sizes": image_sizes.shape})
        return expected_outputs(image_sizes)


@pytest.mark.parametrize(("min_size", "max_size"), [(800, 1333), (320, 512), (600, 1000)])
def test_profile_covers_every_batch_the_service_pads(min_size: int, max_size: int) -> None:
    meta = info(min_size, max_size)
    max_batch = 4
    profile = service_profile(meta, max_batch)
    runtime = ShapeRecorder(meta)
    prepared = []
    for h, w in ARRIVING:
        mh, mw = model_input_size(h, w, meta.min_size, meta.max_size)
        prepared.append(PreparedImage(np.zeros((3, mh, mw), np.uint8), height=h, width=w))
    for size in range(1, max_batch + 1):
        for batch in itertools.combinations(prepared, size):
            infer_batch(runtime, list(batch))
    assert len(runtime.shapes) > len(ARRIVING)
    outside = [s for s in runtime.shapes if not profile.covers(s)]
    assert not outside, f"batches outside the TensorRT profile: {outside[:5]}"
    # ... and the warm-up shapes, the first of which is what TensorRT tunes for.
    for h, w in warmup_shapes(meta):
        infer_batch(runtime, [PreparedImage(np.zeros((3, h, w), np.uint8), height=h, width=w)])
    assert profile.covers(runtime.shapes[-3])
    assert runtime.shapes[-3]["images"] == profile.opt["images"]


def test_a_bigger_batch_or_image_is_outside() -> None:
    profile = service_profile(info(), 4)
    assert not profile.covers({"images": (5, 3, 800, 1088), "image_sizes": (5, 2)})
    assert not profile.covers({"images": (1, 3, 1376, 800), "image_sizes": (1, 2)})
    assert not profile.covers({"images": (1, 3, 800), "image_sizes": (1, 2)})


def test_options_in_onnx_runtime_format_with_caches(tmp_path: Path) -> None:
    options = tensorrt_options(info(), max_batch_size=4, cache_dir=tmp_path / "trt")
    assert options == {
        "trt_op_types_to_exclude": TENSORRT_EXCLUDED_OPS,
        "trt_profile_min_shapes": "images:1x3x32x32,image_sizes:1x2",
        # 800 x round(800 * 4 / 3) = 1067, padded to multiples of 32
        "trt_profile_opt_shapes": "images:1x3x800x1088,image_sizes:1x2",
        # 1333 padded: 1344, either side
        "trt_profile_max_shapes": "images:4x3x1344x1344,image_sizes:4x2",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(tmp_path / "trt" / "engines"),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(tmp_path / "trt" / "timing"),
    }
    assert (tmp_path / "trt" / "engines").is_dir() and (tmp_path / "trt" / "timing").is_dir()
    bare = tensorrt_options(info(), max_batch_size=1)
    assert not any(k.startswith(("trt_engine", "trt_timing")) for k in bare)
    assert bare["trt_profile_max_shapes"] == "images:1x3x1344x1344,image_sizes:1x2"


def test_unwritable_cache_dir_names_the_setting(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match=r"MASKX_TRT_CACHE_DIR=.*cannot create"):
        tensorrt_options(info(), max_batch_size=4, cache_dir=blocker / "trt")


def test_tensorrt_options_reach_the_provider_list(tmp_path: Path) -> None:
    options = tensorrt_options(info(), max_batch_size=2, cache_dir=tmp_path)
    providers, _ = select_providers(["tensorrt", "cuda", "cpu"], [TRT, CUDA, CPU], tensorrt=options)
    assert providers[0] == (TRT, options)
    assert providers[1] == (CUDA, {"cudnn_conv_algo_search": "HEURISTIC"})
    assert providers[-1] == CPU


def test_cache_dir_setting(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().trt_cache_dir is None
    monkeypatch.setenv("MASKX_TRT_CACHE_DIR", "")  # compose passes an unset variable as ""
    assert Settings().trt_cache_dir is None
    monkeypatch.setenv("MASKX_TRT_CACHE_DIR", "/var/cache/maskx/tensorrt")
    assert Settings().trt_cache_dir == Path("/var/cache/maskx/tensorrt")
