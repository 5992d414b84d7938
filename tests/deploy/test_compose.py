"""docker-compose.yml and its CPU override, validated without a Docker engine.

Debian's ``docker-compose`` (1.29) validates a file against the Compose specification schema and
interpolates variables offline. It predates the ``!reset`` tag that the CPU override needs, so the
override is merged here by the Compose specification's merge rules (mappings merge, sequences
append, ``!reset`` removes) and the merged model is validated by the same tool.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import Settings
from tests.deploy.conftest import DEPLOY, ROOT, require_tool, run_tool

BASE = ROOT / "docker-compose.yml"
CPU = ROOT / "docker-compose.cpu.yml"


class _Reset:
    """The ``!reset`` tag: drop the value inherited from the files before."""


RESET = _Reset()


class _ComposeLoader(yaml.SafeLoader):
    pass


_ComposeLoader.add_constructor("!reset", lambda loader, node: RESET)

# Compose replaces these instead of appending (merge rules, "Exceptions").
REPLACED_SEQUENCES = {"command", "entrypoint", "test"}


def merge(base: Any, override: Any, key: str = "") -> Any:
    """Merge two Compose models by the Compose specification's rules."""
    if override is RESET:
        return RESET
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for k, v in override.items():
            out[k] = merge(base[k], v, k) if k in base else v
        return {k: v for k, v in out.items() if v is not RESET}
    if isinstance(base, list) and isinstance(override, list) and key not in REPLACED_SEQUENCES:
        return base + override
    return copy.deepcopy(override)


def test_merge_rules() -> None:
    base = {"a": {"x": [1], "command": ["a"], "keep": 1, "gone": {"y": 2}}}
    over = {"a": {"x": [2], "command": ["b"], "gone": RESET}}
    assert merge(base, over) == {"a": {"x": [1, 2], "command": ["b"], "keep": 1}}


def compose_config(*files: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """``docker-compose -f ... config`` (schema validation + interpolation) as a dict.

    ``env`` replaces the environment, so the documented defaults are what gets interpolated."""
    tool = require_tool("docker-compose")
    args = [tool, "--project-directory", str(ROOT)]
    for f in files:
        args += ["-f", str(f)]
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    out = run_tool([*args, "config"], env={**clean, **(env or {})})
    return yaml.safe_load(out)


@pytest.fixture(scope="module")
def gpu_model() -> dict[str, Any]:
    return compose_config(BASE)


@pytest.fixture(scope="module")
def cpu_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    merged = merge(
        yaml.load(BASE.read_text(), Loader=_ComposeLoader),
        yaml.load(CPU.read_text(), Loader=_ComposeLoader),
    )
    # compose_config passes --project-directory, so relative paths resolve as in the real files.
    path = tmp_path_factory.mktemp("compose") / "docker-compose.merged.yml"
    path.write_text(yaml.safe_dump(merged, sort_keys=False))
    return compose_config(path)


def gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def test_gpu_stack(gpu_model: dict[str, Any]) -> None:
    services = gpu_model["services"]
    assert set(services) == {"segmenter", "prometheus", "grafana", "trainer"}
    seg = services["segmenter"]
    assert seg["build"]["target"] == "serve-gpu"
    assert gpu_devices(seg) == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    limits = seg["deploy"]["resources"]["limits"]
    assert float(limits["cpus"]) > 0 and limits["memory"]
    assert seg["restart"] == "unless-stopped"
    assert "/healthz" in " ".join(seg["healthcheck"]["test"])
    assert any(v.endswith(":/models:ro") for v in volume_strings(seg)), seg["volumes"]
    assert [(p["published"], p["target"]) for p in seg["ports"]] == [(8000, Settings().port)]
    for name in ("prometheus", "grafana"):
        assert services[name]["restart"] == "unless-stopped"
        assert services[name]["healthcheck"]["test"]


def volume_strings(service: dict[str, Any]) -> list[str]:
    """Volumes as ``source:target[:mode]`` whichever syntax the tool printed."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, str):
            out.append(v)
        else:
            out.append(f"{v['source']}:{v['target']}" + (":ro" if v.get("read_only") else ""))
    return out


def test_trainer_is_a_profile(gpu_model: dict[str, Any]) -> None:
    trainer = gpu_model["services"]["trainer"]
    assert trainer["profiles"] == ["trainer"]
    assert trainer["build"]["target"] == "trainer"
    assert gpu_devices(trainer), "the trainer reserves a GPU in the GPU stack"


def test_worker_environment_matches_settings(gpu_model: dict[str, Any]) -> None:
    """Every MASKX_* variable is a Settings field, all fields are set, and with nothing in the
    environment the values are the documented defaults (except where the container differs)."""
    env = gpu_model["services"]["segmenter"]["environment"]
    fields = set(Settings.model_fields)
    names = {k.removeprefix("MASKX_").lower() for k in env if k.startswith("MASKX_")}
    assert not names - fields, f"unknown settings in docker-compose.yml: {sorted(names - fields)}"
    assert not fields - names, f"settings missing from docker-compose.yml: {sorted(fields - names)}"
    from_compose = Settings(**{k.removeprefix("MASKX_").lower(): v for k, v in env.items()})
    defaults = Settings()
    differs = {
        f
        for f in fields
        if getattr(from_compose, f) != getattr(defaults, f) and f not in {"model_path"}
    }
    assert not differs, f"compose defaults differ from Settings defaults for {sorted(differs)}"
    assert str(from_compose.model_path) == "/models/model.onnx"


def test_environment_overrides_reach_the_worker() -> None:
    model = compose_config(
        BASE, env={"MASKX_MAX_BATCH_SIZE": "8", "MASKX_MODEL_DIR": "/srv/models"}
    )
    seg = model["services"]["segmenter"]
    assert seg["environment"]["MASKX_MAX_BATCH_SIZE"] == "8"
    assert any(v.startswith("/srv/models:/models") for v in volume_strings(seg)), seg["volumes"]


def test_cpu_variant(cpu_model: dict[str, Any], gpu_model: dict[str, Any]) -> None:
    seg = cpu_model["services"]["segmenter"]
    assert seg["build"]["target"] == "serve-cpu"
    assert seg["environment"]["MASKX_PROVIDERS"] == "cpu"
    assert not gpu_devices(seg), "the CPU variant must not reserve a GPU"
    assert not gpu_devices(cpu_model["services"]["trainer"])
    # Everything else is inherited from the GPU stack.
    gpu_env = gpu_model["services"]["segmenter"]["environment"]
    assert {k: v for k, v in seg["environment"].items() if k != "MASKX_PROVIDERS"} == {
        k: v for k, v in gpu_env.items() if k != "MASKX_PROVIDERS"
    }
    assert (
        seg["deploy"]["resources"]["limits"]
        == gpu_model["services"]["segmenter"]["deploy"]["resources"]["limits"]
    )
    assert seg["image"].endswith("-cpu"), "CPU and GPU images need distinct tags"


def test_mounted_files_exist_and_prometheus_scrapes_the_worker(gpu_model: dict[str, Any]) -> None:
    for name in ("prometheus", "grafana"):
        for vol in volume_strings(gpu_model["services"][name]):
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
    uids = {p["datasource"]["uid"] for p in dash["panels"]}
    assert uids == {ds["uid"]}, f"dashboard panels use data sources {uids}, provisioned {ds['uid']}"
    providers = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "maskx.yml").read_text()
    )["providers"]
    assert providers[0]["options"]["path"] == "/etc/grafana/dashboards"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
