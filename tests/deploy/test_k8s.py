"""deploy/k8s: the manifests parse, refer to each other consistently, and use the worker's real
port, probe paths and setting names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from service.app import create_app
from service.settings import Settings
from tests.deploy.helpers import DEPLOY

K8S = DEPLOY / "k8s"


# Files that are not Kubernetes objects: kustomize's own file and Helm values.
NOT_OBJECTS = {"kustomization.yaml", "prometheus-adapter-values.yaml"}


def load(name: str) -> list[dict[str, Any]]:
    """The Kubernetes objects of ``deploy/k8s/name``, each with apiVersion, kind and a name."""
    docs = [d for d in yaml.safe_load_all((K8S / name).read_text()) if d is not None]
    for doc in docs:
        for key in ("apiVersion", "kind", "metadata"):
            assert key in doc, f"deploy/k8s/{name}: a document lacks {key!r}"
        assert doc["metadata"].get("name"), f"deploy/k8s/{name}: a {doc['kind']} has no name"
    return docs


def one(kind: str) -> dict[str, Any]:
    files = sorted(p.name for p in K8S.glob("*.yaml") if p.name not in NOT_OBJECTS)
    found = [d for name in files for d in load(name) if d["kind"] == kind]
    assert len(found) == 1, f"deploy/k8s: want one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    return one("Deployment")


@pytest.fixture(scope="module")
def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_every_manifest_parses_and_kustomization_lists_them() -> None:
    files = {p.name for p in K8S.glob("*.yaml")}
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    resources = set(kustomization["resources"])
    assert resources <= files, f"kustomization.yaml lists missing files {resources - files}"
    # Not applied by default: Helm values and an optional Prometheus Operator resource.
    assert files - resources == {
        "kustomization.yaml",
        "prometheus-adapter-values.yaml",
        "servicemonitor.yaml",
    }
    for name in files - NOT_OBJECTS:
        load(name)


def test_port_and_probes_match_the_worker(container: dict[str, Any]) -> None:
    settings = Settings()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": settings.port}
    routes = {getattr(r, "path", None) for r in create_app(settings).routes}
    probes = {
        kind: container[kind]["httpGet"]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    for kind, probe in probes.items():
        assert probe["path"] in routes, f"{kind} path {probe['path']} is not a worker route"
        assert probe["port"] in ports, f"{kind} port {probe['port']!r} is not a container port"


def test_settings_names_and_values_are_valid(container: dict[str, Any]) -> None:
    data = one("ConfigMap")["data"]
    fields = set(Settings.model_fields)
    names = {k.removeprefix("MASKX_").lower(): v for k, v in data.items()}
    assert all(k.startswith("MASKX_") for k in data), sorted(data)
    unknown = set(names) - fields
    assert not unknown, f"configmap.yaml sets unknown settings {sorted(unknown)}"
    assert fields - set(names) == {"api_key"}, "every setting but the secret is in the ConfigMap"
    settings = Settings(**names)  # the values themselves validate
    assert settings.port == container["ports"][0]["containerPort"]
    assert str(settings.model_path).startswith("/models/")
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True
    env_names = {e["name"] for e in container.get("env", [])}
    assert env_names == {"MASKX_API_KEY"}
    assert container["envFrom"][0]["configMapRef"]["name"] == one("ConfigMap")["metadata"]["name"]


def test_gpu_and_security(deployment: dict[str, Any], container: dict[str, Any]) -> None:
    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    dockerfile_uid = 10001  # USER in the Dockerfile's serving stages (test_dockerfile checks)
    assert pod["securityContext"]["runAsUser"] == dockerfile_uid
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # The worker drains for up to 30 s after SIGTERM; the pod must wait at least as long.
    assert pod["terminationGracePeriodSeconds"] >= 35
    claim = next(v for v in pod["volumes"] if v["name"] == "models")["persistentVolumeClaim"]
    pvc = one("PersistentVolumeClaim")
    assert claim["claimName"] == pvc["metadata"]["name"]


def test_model_claim_binds_on_a_default_storage_class() -> None:
    """No storageClassName means the cluster's default class, and default classes offer
    ReadWriteOnce; a ReadOnlyMany claim there stays Pending, and its pods with it."""
    spec = one("PersistentVolumeClaim")["spec"]
    assert "storageClassName" not in spec
    assert spec["accessModes"] == ["ReadWriteOnce"]


def test_selectors_and_references_agree(deployment: dict[str, Any]) -> None:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for kind in ("Service", "PodDisruptionBudget"):
        doc = one(kind)
        selector = doc["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert selector.items() <= labels.items(), f"{kind} selector does not select the pods"
    service_port = one("Service")["spec"]["ports"][0]
    assert service_port["targetPort"] == "http"
    hpa = one("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] > one("PodDisruptionBudget")["spec"]["minAvailable"]


def test_hpa_metric_is_served_by_the_adapter() -> None:
    hpa = one("HorizontalPodAutoscaler")
    names = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert names == {"maskx_queue_depth"}
    adapter = yaml.safe_load((K8S / "prometheus-adapter-values.yaml").read_text())
    served = {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
    assert names <= served, f"HPA uses {names}, the adapter serves {served}"
    for rule in adapter["rules"]["custom"]:
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


def test_scrape_annotations_point_at_the_metrics_route(deployment: dict[str, Any]) -> None:
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(Settings().port)
    assert annotations["prometheus.io/path"] == "/metrics"
    monitor = yaml.safe_load((K8S / "servicemonitor.yaml").read_text())
    assert monitor["spec"]["endpoints"][0]["port"] == one("Service")["spec"]["ports"][0]["name"]


def test_readme_mentions_every_manifest() -> None:
    readme = (DEPLOY / "README.md").read_text()
    missing = [p.name for p in K8S.glob("*.yaml") if p.name not in readme]
    assert not missing, f"deploy/README.md does not mention {missing}"
    assert Path(DEPLOY / "smoke.sh").name in readme
