"""docker-compose.yml, its GPU override and the local stand-ins, validated without starting them.

Debian's ``docker-compose`` (1.29) validates the files against the Compose specification schema,
merges them and interpolates variables offline; its merge is the real one, so the GPU override
must only add (1.29 knows no ``!reset``). The stack itself runs in test_compose_stack.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import Settings
from tests.deploy.helpers import DEPLOY, ROOT, require_tool, run_tool

BASE = ROOT / "docker-compose.yml"
GPU = ROOT / "docker-compose.gpu.yml"
LOCAL = DEPLOY / "docker-compose.local.yml"
MONITORING = ("prometheus", "grafana")


def compose_config(*files: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """``docker-compose -f ... config`` (schema validation, merge, interpolation) as a dict.

    ``env`` replaces the environment, so the documented defaults are what gets interpolated."""
    tool = require_tool("docker-compose")
    args = [tool, "--project-directory", str(ROOT)]
    for f in files:
        args += ["-f", str(f)]
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    out = run_tool([*args, "config"], env={**clean, **(env or {})})
    return yaml.safe_load(out)


@pytest.fixture(scope="module")
def cpu_model() -> dict[str, Any]:
    return compose_config(BASE)


@pytest.fixture(scope="module")
def gpu_model() -> dict[str, Any]:
    return compose_config(BASE, GPU)


def gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of each published port, either syntax."""
    out = []
    for p in service.get("ports", []):
        if isinstance(p, str):
            *host, target = p.split("/")[0].split(":")
            ip = host[0] if len(host) == 2 else "0.0.0.0"
            out.append((ip, int(host[-1]), int(target)))
        else:
            out.append((p.get("host_ip", "0.0.0.0"), int(p["published"]), int(p["target"])))
    return out


def test_default_stack_is_the_cpu_worker_fed_by_the_model_builder(
    cpu_model: dict[str, Any],
) -> None:
    services = cpu_model["services"]
    assert set(services) == {
        "segmenter", "model-builder", "prometheus-key", "prometheus", "grafana-password",
        "grafana", "trainer",
    }  # fmt: skip
    seg = services["segmenter"]
    assert seg["build"]["target"] == "serve-cpu"
    assert seg["environment"]["MASKX_PROVIDERS"] == "cpu"
    assert not any(gpu_devices(s) for s in services.values()), "no GPU on the default stack"
    # No CPU limit unless asked for: a limit above the host's CPU count refuses to start.
    assert float(seg["deploy"]["resources"]["limits"]["cpus"]) == 0
    assert seg["restart"] == "unless-stopped"
    probe = " ".join(seg["healthcheck"]["test"])
    assert "/readyz" in probe and "/healthz" not in probe, "healthy must mean ready"
    assert published(seg) == [("0.0.0.0", 8000, Settings().port)]
    # The worker waits for the one-shot builder, which writes into the volume the worker reads.
    assert seg["depends_on"]["model-builder"]["condition"] == "service_completed_successfully"
    builder = services["model-builder"]
    assert builder["build"]["target"] == "trainer"
    assert builder["entrypoint"] == ["build-demo-model"]
    assert builder["restart"] == "no"
    assert volume_strings(seg) == ["maskx-models:/models:ro"]
    assert volume_strings(builder) == ["maskx-models:/models:rw"]
    assert "maskx-models" in cpu_model["volumes"]
    for name in MONITORING:
        assert services[name]["restart"] == "unless-stopped"
        assert services[name]["healthcheck"]["test"]


def test_a_model_of_the_users_replaces_the_volume_for_both() -> None:
    services = compose_config(BASE, env={"MASKX_MODEL_DIR": "/srv/models"})["services"]
    assert volume_strings(services["segmenter"]) == ["/srv/models:/models:ro"]
    assert volume_strings(services["model-builder"]) == ["/srv/models:/models:rw"]


def test_builder_script_skips_an_existing_model_and_builds_a_missing_one(tmp_path: Path) -> None:
    """deploy/build-demo-model.sh with a stub `maskx` on PATH: the decision and the commands."""
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    stub = bin_dir / "maskx"
    stub.write_text(
        f'#!/bin/sh\necho "$*" >> {calls}\n'
        'if [ "$1" = export ]; then while [ "$1" != --output ]; do shift; done; : > "$2"; fi\n'
    )
    stub.chmod(0o755)
    models = tmp_path / "models"
    models.mkdir()
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "MASKX_MODELS_DIR": str(models)}
    script = str(DEPLOY / "build-demo-model.sh")
    first = subprocess.run(["sh", script], env=env, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr
    assert (models / "model.onnx").exists()
    lines = calls.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["synth", "train", "export"], lines
    assert "--max-iter 600" in lines[1] and "tiny_synth.yaml" in lines[1]
    second = subprocess.run(["sh", script], env=env, capture_output=True, text=True, check=False)
    assert second.returncode == 0 and "nothing to build" in second.stdout
    assert len(calls.read_text().splitlines()) == 3, "an existing model must not be rebuilt"


def test_gpu_override_adds_the_gpu_and_keeps_the_rest(
    gpu_model: dict[str, Any], cpu_model: dict[str, Any]
) -> None:
    seg = gpu_model["services"]["segmenter"]
    assert seg["build"]["target"] == "serve-gpu"
    assert seg["environment"]["MASKX_PROVIDERS"] == "cuda,cpu"
    assert gpu_devices(seg) == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert gpu_devices(gpu_model["services"]["trainer"])
    assert gpu_model["services"]["trainer"]["profiles"] == ["trainer"]
    cpu_seg = cpu_model["services"]["segmenter"]
    gpu_only = {"MASKX_PROVIDERS", "MASKX_TRT_CACHE_DIR"}
    assert {k: v for k, v in seg["environment"].items() if k not in gpu_only} == {
        k: v for k, v in cpu_seg["environment"].items() if k not in gpu_only
    }
    # TensorRT's caches live in a volume, at the folder the image makes for the worker's user.
    cache = seg["environment"]["MASKX_TRT_CACHE_DIR"]
    assert cpu_seg["environment"]["MASKX_TRT_CACHE_DIR"] == ""
    assert f"trt-cache:{cache}:rw" in volume_strings(seg)
    assert "trt-cache" in gpu_model["volumes"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"install -d -o 10001 -g 10001 {cache}" in dockerfile
    assert seg["image"] != cpu_seg["image"], "CPU and GPU images need distinct tags"
    assert seg["build"]["args"]["GPU_LOCK"] == "gpu-cuda13.txt"


def test_gpu_stack_scrapes_the_dcgm_exporter(
    gpu_model: dict[str, Any], cpu_model: dict[str, Any]
) -> None:
    """The dashboard's GPU panels have a source: the GPU file runs NVIDIA's DCGM exporter with
    the GPUs and points Prometheus at a config that scrapes it; the CPU stack has neither."""
    dcgm = gpu_model["services"]["dcgm-exporter"]
    assert gpu_devices(dcgm) == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "dcgm-exporter" not in cpu_model["services"]
    command = gpu_model["services"]["prometheus"]["command"]
    config_arg = next(a for a in command if a.startswith("--config.file="))
    config = DEPLOY / "prometheus" / Path(config_arg.split("=", 1)[1]).name
    assert config.name == "prometheus-gpu.yml"
    # Everything else about Prometheus (storage, retention) stays as in the CPU stack.
    cpu_command = cpu_model["services"]["prometheus"]["command"]
    assert [a for a in command if a != config_arg] == [
        a for a in cpu_command if not a.startswith("--config.file=")
    ]
    gpu_cfg = yaml.safe_load(config.read_text())
    cpu_cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in gpu_cfg["scrape_configs"]}
    assert jobs.pop("dcgm")["static_configs"][0]["targets"] == ["dcgm-exporter:9400"]
    assert list(jobs.values()) == cpu_cfg["scrape_configs"]
    assert {k: v for k, v in gpu_cfg.items() if k != "scrape_configs"} == {
        k: v for k, v in cpu_cfg.items() if k != "scrape_configs"
    }


def test_monitoring_binds_to_loopback_and_has_no_default_password(
    cpu_model: dict[str, Any],
) -> None:
    services = cpu_model["services"]
    for name in MONITORING:
        for ip, _, _ in published(services[name]):
            assert ip == "127.0.0.1", f"{name} is published on {ip}"
    # Opting in publishes them on the address asked for.
    opened = compose_config(BASE, env={"MONITORING_BIND": "0.0.0.0"})["services"]
    assert {ip for n in MONITORING for ip, _, _ in published(opened[n])} == {"0.0.0.0"}
    # Anyone who reaches Prometheus could stop it through the lifecycle API.
    assert not any("lifecycle" in a for a in services["prometheus"]["command"])
    # No password in any service's environment unless the user sets one.
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if "PASSWORD" in key and not key.endswith("__FILE"):
                assert not value, f"{name}: {key} defaults to {value!r}"
    grafana = services["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/grafana-secret/admin-password"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana
    assert services["grafana"]["depends_on"]["grafana-password"]["condition"] == (
        "service_completed_successfully"
    )
    # The user's password reaches the one-shot that stores it.
    chosen = compose_config(BASE, env={"GRAFANA_ADMIN_PASSWORD": "s3cret"})["services"]
    assert chosen["grafana-password"]["environment"]["GRAFANA_ADMIN_PASSWORD"] == "s3cret"


def test_local_override_builds_prometheus_and_leaves_grafana_out() -> None:
    services = compose_config(BASE, LOCAL)["services"]
    prom = services["prometheus"]
    assert Path(prom["build"]["context"]) == DEPLOY / "prometheus-local"
    assert prom["command"] == compose_config(BASE)["services"]["prometheus"]["command"]
    for name in ("grafana", "grafana-password"):
        assert services[name]["profiles"] == ["grafana"]


def volume_strings(service: dict[str, Any]) -> list[str]:
    """Volumes as ``source:target[:mode]`` whichever syntax the tool printed."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, str):
            out.append(v)
        else:
            out.append(f"{v['source']}:{v['target']}" + (":ro" if v.get("read_only") else ""))
    return out


def test_worker_environment_matches_settings(cpu_model: dict[str, Any]) -> None:
    """Every MASKX_* variable is a Settings field, all fields are set, and with nothing in the
    environment the values are the documented defaults (except where the container differs)."""
    env = cpu_model["services"]["segmenter"]["environment"]
    fields = set(Settings.model_fields)
    names = {k.removeprefix("MASKX_").lower() for k in env if k.startswith("MASKX_")}
    assert not names - fields, f"unknown settings in docker-compose.yml: {sorted(names - fields)}"
    assert not fields - names, f"settings missing from docker-compose.yml: {sorted(fields - names)}"
    from_compose = Settings(**{k.removeprefix("MASKX_").lower(): v for k, v in env.items()})
    defaults = Settings()
    differs = {
        f
        for f in fields
        if getattr(from_compose, f) != getattr(defaults, f)
        and f not in {"model_path", "providers", "host"}
    }
    assert not differs, f"compose defaults differ from Settings defaults for {sorted(differs)}"
    assert str(from_compose.model_path) == "/models/model.onnx"
    # The container names its provider: the CPU image has no other (the GPU override: cuda,cpu).
    assert from_compose.providers == "cpu"
    # Inside the container the worker listens on every address; by hand, on loopback only.
    assert (from_compose.host, defaults.host) == ("0.0.0.0", "127.0.0.1")


def test_prometheus_sends_the_workers_key(cpu_model: dict[str, Any]) -> None:
    """With MASKX_API_KEY set /metrics needs it: the one-shot writes it where the scrape job's
    credentials_file points (empty without a key, and the worker then ignores the header)."""
    services = cpu_model["services"]
    for name in ("prometheus.yml", "prometheus-gpu.yml"):
        prom = yaml.safe_load((DEPLOY / "prometheus" / name).read_text())
        job = next(j for j in prom["scrape_configs"] if j["job_name"] == "maskx")
        assert job["authorization"] == {
            "type": "Bearer",
            "credentials_file": "secrets/maskx-api-key",
        }
    assert (DEPLOY / "prometheus" / "secrets" / "maskx-api-key").read_text() == ""
    assert "prometheus-secret:/etc/prometheus/secrets:ro" in volume_strings(services["prometheus"])
    assert services["prometheus"]["depends_on"]["prometheus-key"]["condition"] == (
        "service_completed_successfully"
    )
    key = services["prometheus-key"]
    assert volume_strings(key) == ["prometheus-secret:/run/maskx-secrets:rw"]
    assert "/run/maskx-secrets/maskx-api-key" in " ".join(key["entrypoint"])
    chosen = compose_config(BASE, env={"MASKX_API_KEY": "k3y"})["services"]
    assert chosen["prometheus-key"]["environment"]["MASKX_API_KEY"] == "k3y"
    assert chosen["segmenter"]["environment"]["MASKX_API_KEY"] == "k3y"


def test_mounted_files_exist_and_prometheus_scrapes_the_worker(cpu_model: dict[str, Any]) -> None:
    for name in ("prometheus", "grafana"):
        for vol in volume_strings(cpu_model["services"][name]):
            source = vol.split(":")[0]
            if source.startswith("/"):
                assert Path(source).exists(), f"{name} mounts {source}, which does not exist"
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "maskx")
    assert job["static_configs"][0]["targets"] == [f"segmenter:{Settings().port}"]
    assert job.get("metrics_path", "/metrics") == "/metrics"


def test_grafana_provisioning_is_consistent() -> None:
    import json

    ds = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    assert ds["url"] == "http://prometheus:9090"
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "maskx.json").read_text())
    uids = {p["datasource"]["uid"] for p in dash["panels"] if p["type"] != "row"}
    assert uids == {ds["uid"]}, f"dashboard panels use data sources {uids}, provisioned {ds['uid']}"
    providers = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "maskx.yml").read_text()
    )["providers"]
    assert providers[0]["options"]["path"] == "/etc/grafana/dashboards"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_services_are_hardened(cpu_model: dict[str, Any]) -> None:
    """No capabilities, no privilege gain, a process bound; the worker and Prometheus cannot
    write their own image."""
    services = cpu_model["services"]
    for name in ("segmenter", "prometheus", "prometheus-key", "grafana"):
        service = services[name]
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert 0 < int(service["pids_limit"]) <= 4096, name
    for name in ("segmenter", "prometheus"):
        assert services[name]["read_only"] is True, name
    assert "/tmp" in services["segmenter"]["tmpfs"]
    for name in ("grafana-password", "model-builder"):
        assert "no-new-privileges:true" in services[name]["security_opt"], name
