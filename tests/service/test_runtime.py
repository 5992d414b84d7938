"""ONNX Runtime session, provider choice and the metadata parser."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.contract import ModelMetadata
from service.runtime import (
    OnnxRuntimeSession,
    RawDetections,
    load_runtime,
    select_providers,
)
from service.settings import Settings
from service.testing import build_test_model, default_metadata, expected_outputs

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TRT = "TensorrtExecutionProvider"


def test_auto_prefers_cuda_with_heuristic_search() -> None:
    providers, reason = select_providers(["auto"], [TRT, CUDA, CPU])
    assert providers == [(CUDA, {"cudnn_conv_algo_search": "HEURISTIC"}), CPU]
    assert "CUDA available" in reason


def test_auto_falls_back_to_cpu_with_reason() -> None:
    providers, reason = select_providers(["auto"], [CPU])
    assert providers == [CPU]
    assert "not available" in reason


def test_tensorrt_is_opt_in_and_excludes_nms_nonzero_roialign() -> None:
    providers, _ = select_providers(["tensorrt", "cuda", "cpu"], [TRT, CUDA, CPU])
    assert providers[0] == (TRT, {"trt_op_types_to_exclude": "NonMaxSuppression,NonZero,RoiAlign"})
    assert providers[1][0] == CUDA and providers[-1] == CPU
    providers, reason = select_providers(["tensorrt"], [CPU])
    assert providers == [CPU] and "tensorrt" in reason


def test_session_runs_the_contract_graph(model_path: Path, synthetic_model: None) -> None:
    rt = load_runtime(model_path, ["cpu"])
    assert rt.provider == "cpu"
    assert rt.info.name == "maskx-test" and rt.info.num_classes == 4
    sizes = np.array([[320, 426], [352, 320]], dtype=np.int64)
    out = rt.run(np.zeros((2, 3, 352, 448), np.uint8), sizes)
    ref = expected_outputs(sizes)
    for key in ("boxes", "scores", "labels", "batch_index", "mask_probs"):
        np.testing.assert_array_equal(getattr(out, key), getattr(ref, key), err_msg=key)


def test_cpu_thread_settings_reach_the_session(model_path: Path, settings: Settings) -> None:
    rt = load_runtime(model_path, ["cpu"], intra_op_threads=1, spinning=False)
    options = rt.session.get_session_options()  # type: ignore[attr-defined]
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    # ... and through the app's settings (MASKX_INTRA_OP_THREADS, MASKX_ORT_SPINNING)
    app = create_app(settings.model_copy(update={"intra_op_threads": 2, "ort_spinning": True}))
    with TestClient(app):
        options = app.state.worker.runtime.session.get_session_options()
        assert options.intra_op_num_threads == 2
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"


def test_split_routes_by_batch_index() -> None:
    raw = expected_outputs(np.array([[100, 200], [300, 400], [10, 20]]))
    order = np.random.default_rng(0).permutation(len(raw.scores))
    shuffled = RawDetections(*(getattr(raw, k)[order] for k in RawDetections.__dataclass_fields__))
    parts = shuffled.split(4)
    assert [len(p.scores) for p in parts] == [3, 3, 3, 0]
    for b, part in enumerate(parts[:3]):
        assert (part.batch_index == b).all()
        assert part.boxes[:, 2].max() <= [200, 400, 20][b]


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.onnx"):
        OnnxRuntimeSession(tmp_path / "nope.onnx")


def test_model_without_maskx_metadata_is_refused(tmp_path: Path) -> None:
    import onnx

    path = build_test_model(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.save(model, str(path))
    with pytest.raises(ValueError, match="no 'maskx' key"):
        OnnxRuntimeSession(path, ["cpu"])


def test_garbage_file_is_refused_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"garbage\.onnx"):
        OnnxRuntimeSession(path, ["cpu"])


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"classes": []}, "classes"),
        ({"mask_classes": [True]}, "mask_classes"),
        ({"min_size": 600, "max_size": 500}, "min_size=600"),
        ({"min_size": "320"}, "'min_size'"),
        ({"format_version": 2}, "format_version"),
        ({"mask_resolution": 0}, "mask_resolution"),
    ],
)
def test_metadata_errors_name_the_field(change: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        ModelMetadata.parse(json.dumps(default_metadata(**change)), "m.onnx")


def test_metadata_not_json() -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        ModelMetadata.parse("{", "m.onnx")
