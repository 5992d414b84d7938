"""The `serve-gpu` image: onnxruntime-gpu alone, a worker that refuses to serve a GPU model on the
CPU without being told to, and the same detections as `maskx serve` on the host.

The CUDA base image cannot be pulled here (no Docker Hub), so the stage is built on the local
Debian base instead (CUDA_IMAGE is a build argument; the stage installs its Python with apt). What
that checks: the `gpu` lock's packages (onnxruntime-gpu with the CUDA provider, not the CPU build
of the same module, no torch), the image's own settings (MASKX_PROVIDERS=cuda,cpu, strict) and its
entry point serving a model end to end. Without a GPU the CUDA provider cannot run: the worker must
exit naming the missing driver, and with MASKX_ALLOW_CPU_FALLBACK=true it must serve what the host
serves and say that it fell back. Where Docker can hand a GPU to the container (`nvidia-smi` works
and `--gpus all` runs), the same request runs on CUDA and the worker must report that provider.
An image with the CPU onnxruntime, a default that falls back silently, a broken entry point or a
model path that is not the mounted one fails here. Slow (the onnxruntime-gpu wheel is large):
`make test-docker`.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.deploy.docker_helpers import (
    TEST_PREFIX,
    assert_same_detections,
    build_image,
    ensure_engine,
    export_tiny_model,
    host_worker,
    python_base_image,
    remove_container,
    run,
    segment,
    start_container,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def image() -> str:
    ensure_engine()
    return build_image(
        "serve-gpu", f"{TEST_PREFIX}/segmenter:gpu-env", CUDA_IMAGE=python_base_image()
    ).tag


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gpu-model")
    folder.chmod(0o755)  # the container's user (uid 10001) reads it
    model = export_tiny_model(folder)
    assert stat.S_IMODE(model.stat().st_mode) == 0o644
    return folder


def _docker_has_gpu() -> bool:
    """Whether containers here can be given a GPU (a driver on the host and Docker's GPU hook)."""
    if shutil.which("nvidia-smi") is None:
        return False
    probe = subprocess.run(
        ["docker", "run", "--rm", "--gpus", "all", "--entrypoint", "true", python_base_image()],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    return probe.returncode == 0


def test_gpu_image_has_onnxruntime_gpu_only(image: str) -> None:
    listed = run(["docker", "run", "--rm", "--entrypoint", "pip", image, "list"]).stdout.lower()
    names = {line.split()[0] for line in listed.splitlines()[2:] if line.strip()}
    assert "onnxruntime-gpu" in names, sorted(names)
    assert "onnxruntime" not in names, "the GPU image also has the CPU onnxruntime"
    assert not names & {"torch", "torchvision"}
    providers = run(
        ["docker", "run", "--rm", "--entrypoint", "python", image, "-c",
         "import onnxruntime; print(onnxruntime.get_available_providers())"]
    ).stdout  # fmt: skip
    assert "CUDAExecutionProvider" in providers, providers


def test_without_a_gpu_the_worker_exits_and_names_the_reason(image: str, model_dir: Path) -> None:
    if _docker_has_gpu():
        pytest.skip("Docker hands a GPU to containers here: the CUDA provider can run")
    name = f"{TEST_PREFIX}-serve-gpu-strict"
    remove_container(name)
    try:
        # The image's own settings, nothing overridden: it must stop by itself, not serve.
        run(["docker", "run", "-d", "--name", name, "-v", f"{model_dir}:/models:ro", image])
        try:
            code = run(["docker", "wait", name], timeout=180).stdout.strip()
        except subprocess.TimeoutExpired:
            pytest.fail("the worker kept running for 180 s without its GPU", pytrace=False)
        proc = run(["docker", "logs", name], check=False)
    finally:
        remove_container(name)
    log = proc.stdout + proc.stderr
    assert code != "0", f"the worker exited 0 without its GPU:\n{log[-3000:]}"
    assert "MASKX_PROVIDERS=cuda,cpu" in log and "CUDA" in log, log[-3000:]
    assert "no NVIDIA driver" in log, log[-3000:]
    assert "MASKX_ALLOW_CPU_FALLBACK=true" in log, "the message says how to serve anyway"


def test_serves_the_hosts_detections_and_reports_its_provider(
    image: str, model_dir: Path, tmp_path: Path
) -> None:
    gpu = _docker_has_gpu()
    name = f"{TEST_PREFIX}-serve-gpu"
    if gpu:
        url = start_container(image, model_dir, name, docker_args=["--gpus", "all"])
    else:
        url = start_container(image, model_dir, name, MASKX_ALLOW_CPU_FALLBACK="true")
    try:
        in_container = segment(url)
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        about = httpx.get(f"{url}/v1/model", timeout=10).json()
    finally:
        remove_container(name)
    with host_worker(model_dir / "model.onnx", tmp_path / "host.log") as host:
        on_host = segment(host.url)
    assert in_container["model"] == on_host["model"]
    assert_same_detections(in_container, on_host)
    info = next(line for line in metrics.splitlines() if line.startswith("maskx_model_info{"))
    fallback = [
        line for line in metrics.splitlines() if line.startswith("maskx_provider_fallback{")
    ]
    want = "CUDAExecutionProvider" if gpu else "CPUExecutionProvider"
    assert f'provider="{want}"' in info, info
    assert about["provider"] == want and about["provider_fallback"] is not gpu, about
    assert fallback and all(line.endswith(" 0.0" if gpu else " 1.0") for line in fallback)
    if not gpu:
        assert "no NVIDIA driver" in (about["fallback_reason"] or ""), about
