"""deploy/k8s: the manifests parse, refer to each other consistently, and use the worker's real
port, probe paths and setting names."""

from __future__ import annotations

import re
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
    # Not applied by default: Helm values and the optional Prometheus Operator resources.
    assert files - resources == {
        "kustomization.yaml",
        "prometheus-adapter-values.yaml",
        "servicemonitor.yaml",
        "prometheusrule.yaml",
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


def test_prometheus_rule_carries_the_alerts_of_the_compose_stack() -> None:
    rule = load("prometheusrule.yaml")[0]
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"], "prometheusrule.yaml differs from alerts.yml"


def sanitized(label: str) -> str:
    """A Kubernetes label name as Prometheus' kubernetes_sd turns it into a target label."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", label)


def labels_of(series: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="([^"]*)"', series))


def test_alert_tests_label_series_as_the_scrape_configs_do(deployment: dict[str, Any]) -> None:
    """The promtool cases feed series labelled as compose, the pod-annotation job and the
    ServiceMonitor label them; each label set is derived here from the files that make it."""
    selector_label = "app_kubernetes_io_name"
    cases = yaml.safe_load((DEPLOY / "prometheus" / "alerts.test.yml").read_text())["tests"]
    down = [labels_of(s["series"]) for s in cases[0]["input_series"]]
    by_job = {labels["job"]: labels for labels in down if labels.get(selector_label) != "web"}
    # Compose: prometheus.yml's maskx job and its static labels.
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "maskx")
    static = job["static_configs"][0]
    compose = {"job": "maskx", "instance": static["targets"][0], **static["labels"]}
    assert by_job["maskx"] == compose
    # Pod annotations: labelmap copies the pod template's labels.
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    value = pod_labels["app.kubernetes.io/name"]
    annotated = by_job["kubernetes-pods"]
    assert annotated[sanitized("app.kubernetes.io/name")] == value
    assert {"namespace", "pod"} <= annotated.keys()
    # ServiceMonitor: job and service are the Service's name, endpoint its port name, and the
    # pod label arrives through podTargetLabels.
    monitor = load("servicemonitor.yaml")[0]
    service = one("Service")
    assert "jobLabel" not in monitor["spec"]
    assert "app.kubernetes.io/name" in monitor["spec"]["podTargetLabels"]
    monitored = by_job[service["metadata"]["name"]]
    assert monitored["service"] == service["metadata"]["name"]
    assert monitored["endpoint"] == monitor["spec"]["endpoints"][0]["port"]
    assert monitored["container"] == deployment["spec"]["template"]["spec"]["containers"][0]["name"]
    assert monitored[selector_label] == value
    # The alerts select the workers by that very label and value.
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert f'up{{{selector_label}="{value}"}}' in exprs["MaskxTargetDown"]
    assert f'deployment="{deployment["metadata"]["name"]}"' in exprs["MaskxPodsNotReady"]
    assert all('job="' not in e for e in exprs.values()), "no alert may depend on a job name"
