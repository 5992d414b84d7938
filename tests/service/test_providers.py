"""Strict providers: a worker asked for a GPU provider it cannot use refuses to start and says
why, unless MASKX_ALLOW_CPU_FALLBACK allows the CPU; an allowed fallback shows everywhere.

This machine's onnxruntime has no CUDA provider, so ``MASKX_PROVIDERS=cuda`` is a real failure
here; the driver and library branches are fed by a loader that fails as the real one does.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.runtime import (
    ProviderUnavailableError,
    explain_provider_failure,
    load_runtime,
    requested_provider,
)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TRT = "TensorrtExecutionProvider"
CUDA_BUILD = [TRT, CUDA, CPU]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(model_path: Path, port: int, **env: str) -> subprocess.Popen[str]:
    """``maskx serve`` in its own process, with only the given MASKX_ variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MASKX_")}
    clean |= {"MASKX_MODEL_PATH": str(model_path), "MASKX_HOST": "127.0.0.1",
              "MASKX_PORT": str(port), "MASKX_WARMUP": "false", **env}  # fmt: skip
    code = "import sys; from maskx.cli import main; sys.exit(main(['serve']))"
    return subprocess.Popen(
        [sys.executable, "-c", code], env=clean, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def test_cuda_without_fallback_exits_non_zero_naming_cuda_and_why(model_path: Path) -> None:
    port = free_port()
    proc = serve(model_path, port, MASKX_PROVIDERS="cuda")
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode not in (0, None), out
    assert "MASKX_PROVIDERS=cuda" in out and "CUDA provider cannot run here" in out, out
    assert "onnxruntime build" in out, "the reason (the build lacks CUDA) is missing:\n" + out
    assert "MASKX_ALLOW_CPU_FALLBACK=true" in out, out
    with pytest.raises(httpx.HTTPError):  # it never served
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)


def test_cuda_with_fallback_allowed_serves_on_cpu_and_shows_it(model_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = serve(model_path, port, MASKX_PROVIDERS="cuda,cpu", MASKX_ALLOW_CPU_FALLBACK="true")
    try:
        until = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < until, "the worker did not turn ready"
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        model = httpx.get(url + "/v1/model").json()
        assert model["provider"] == "cpu" and model["requested_provider"] == "cuda"
        assert model["provider_fallback"] is True
        assert "onnxruntime build" in model["fallback_reason"]
        metrics = httpx.get(url + "/metrics").text
        assert 'maskx_provider_fallback{provider="cpu",requested="cuda"} 1.0' in metrics
        assert re.search(r'maskx_model_info\{[^}]*name="maskx-test",[^}]*provider="cpu"', metrics)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert "provider fallback: MASKX_PROVIDERS asks for cuda, serving on cpu" in out, out


def test_cpu_asked_is_not_a_fallback(model_path: Path) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings(model_path=model_path, providers="cpu", warmup=False))
    with TestClient(app) as client:
        model = client.get("/v1/model").json()
        assert (model["provider"], model["provider_fallback"]) == ("cpu", False)
        assert model["fallback_reason"] is None
        text = client.get("/metrics").text
        assert 'maskx_provider_fallback{provider="cpu",requested="cpu"} 0.0' in text


def test_load_runtime_refuses_before_reading_the_model(tmp_path: Path) -> None:
    # A file that is not a model: the refusal must come first, from the provider check.
    path = tmp_path / "m.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(ProviderUnavailableError, match=r"TensorRT provider cannot run"):
        load_runtime(path, ["tensorrt", "cuda", "cpu"])


def test_auto_on_a_cpu_build_asks_for_cpu_and_never_refuses(model_path: Path) -> None:
    assert requested_provider(["auto"], [CPU]) == "cpu"
    assert requested_provider(["auto"], CUDA_BUILD) == "cuda"
    assert requested_provider(["cuda", "cpu"], [CPU]) == "cuda"
    assert requested_provider(["tensorrt", "cuda", "cpu"], [CPU]) == "tensorrt"
    rt = load_runtime(model_path, ["auto"])
    assert (rt.requested_provider, rt.provider) == ("cpu", "cpu")


class FakeLoader:
    """Opens shared libraries as ``ctypes.CDLL`` would: raises OSError for ``missing``."""

    def __init__(self, missing: str = "", cu_init: int = 0) -> None:
        self.missing = missing
        self.cu_init = cu_init
        self.opened: list[str] = []

    def __call__(self, path: str) -> object:
        self.opened.append(Path(path).name)
        if self.missing and self.missing in path:
            raise OSError(f"{self.missing}: cannot open shared object file: No such file")
        result = self.cu_init
        return type("Lib", (), {"cuInit": staticmethod(lambda flags: result)})()


def test_reason_names_the_missing_driver() -> None:
    why = explain_provider_failure("cuda", CUDA_BUILD, load_library=FakeLoader("libcuda.so.1"))
    assert why.startswith("no NVIDIA driver") and "nvidia.com/gpu" in why


@pytest.mark.parametrize(("code", "needle"), [(35, "older than the CUDA"), (100, "no GPU")])
def test_reason_names_the_driver_problem(code: int, needle: str) -> None:
    why = explain_provider_failure("cuda", CUDA_BUILD, load_library=FakeLoader(cu_init=code))
    assert needle in why


def test_reason_names_the_missing_library(tmp_path: Path) -> None:
    loader = FakeLoader("libnvinfer.so.10")

    def load(path: str) -> object:
        # The TensorRT provider's own library is what pulls in libnvinfer.
        if path.endswith("libonnxruntime_providers_tensorrt.so"):
            return loader("libnvinfer.so.10")
        return loader(path)

    why = explain_provider_failure("tensorrt", CUDA_BUILD, load_library=load, capi_dir=tmp_path)
    assert "libnvinfer.so.10" in why and TRT in why


def test_reason_when_everything_loads_points_at_onnx_runtime_log(tmp_path: Path) -> None:
    loader = FakeLoader()
    why = explain_provider_failure("cuda", CUDA_BUILD, load_library=loader, capi_dir=tmp_path)
    assert "log above" in why
    assert loader.opened == [
        "libcuda.so.1",
        "libonnxruntime_providers_shared.so",
        "libonnxruntime_providers_cuda.so",
    ]


def test_predict_keeps_the_same_promise(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from maskx.cli import main
    from service.testing import make_image

    image = tmp_path / "a.jpg"
    image.write_bytes(make_image(64, 48))
    argv = ["predict", "--model", str(model_path), str(image), "--out", str(tmp_path / "o")]
    assert main([*argv, "--providers", "cuda", "--no-progress"]) == 1
    assert "CUDA provider cannot run here" in capsys.readouterr().err
    allowed = [*argv, "--providers", "cuda", "--allow-cpu-fallback", "--no-progress"]
    assert main(allowed) == 0
    assert (tmp_path / "o" / "a.json").is_file()
