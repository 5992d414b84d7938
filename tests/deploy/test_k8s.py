"""deploy/k8s: the manifests parse, refer to each other consistently, and use the worker's real
port, probe paths and setting names."""

from __future__ import annotations

import os
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
# Kustomize components: the shared-volume and baked-image model sources.
COMPONENTS = ("model-volume", "model-baked")
# Kubernetes versions whose schemas the manifests must satisfy (kubernetes-validate bundles them).
K8S_VERSIONS = ("1.29.0", "1.33.0")


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
    # The other model sources are components, applied from an overlay.
    for component in COMPONENTS:
        doc = yaml.safe_load((K8S / component / "kustomization.yaml").read_text())
        assert doc["kind"] == "Component", component
    for name in files - NOT_OBJECTS:
        load(name)


def test_port_and_probes_match_the_worker(container: dict[str, Any]) -> None:
    settings = Settings()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": settings.port}
    # The paths the worker documents (included routers are not flattened into app.routes).
    routes = set(create_app(settings).openapi()["paths"])
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
    for init in pod["initContainers"]:
        assert init["securityContext"] == container["securityContext"], init["name"]
    # The root filesystem is read-only: TensorRT's cache folder is a volume of the pod.
    cache = one("ConfigMap")["data"]["MASKX_TRT_CACHE_DIR"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == cache)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert "emptyDir" in volume and not mount.get("readOnly")


def test_each_replica_fetches_its_own_checked_model(
    deployment: dict[str, Any], container: dict[str, Any]
) -> None:
    """No volume that pins the replicas to one node: an init container running the serving
    image fills a pod-local emptyDir from MASKX_MODEL_URL, checked by MASKX_MODEL_SHA256, and
    the worker reads it read-only at MASKX_MODEL_PATH."""
    from maskx.cli import COMMANDS
    from service.model_source import FetchSettings

    pod = deployment["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["image"] == container["image"], "the init container runs the serving image"
    assert init["command"][0] == "maskx" and init["command"][1] in COMMANDS
    assert init["command"][1:] == ["fetch-model"]
    volume = next(v for v in pod["volumes"] if v["name"] == "models")
    assert set(volume) == {"name", "emptyDir"}, "the model volume must be pod-local"
    assert not any("persistentVolumeClaim" in v for v in pod["volumes"])
    settings_map = one("ConfigMap")
    model_path = Path(settings_map["data"]["MASKX_MODEL_PATH"])
    init_mount = next(m for m in init["volumeMounts"] if m["name"] == "models")
    worker_mount = next(m for m in container["volumeMounts"] if m["name"] == "models")
    assert init_mount["mountPath"] == worker_mount["mountPath"] == str(model_path.parent)
    assert not init_mount.get("readOnly") and worker_mount["readOnly"] is True
    # Its settings: the worker's ConfigMap (MASKX_MODEL_PATH) and the generated maskx-model.
    refs = [e["configMapRef"]["name"] for e in init["envFrom"]]
    assert refs == [settings_map["metadata"]["name"], "maskx-model"]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    (generator,) = kustomization["configMapGenerator"]
    assert generator["name"] == "maskx-model"
    literals = dict(item.split("=", 1) for item in generator["literals"])
    assert set(literals) == {"MASKX_MODEL_URL", "MASKX_MODEL_SHA256"}
    env = {k.removeprefix("MASKX_").lower(): v for k, v in literals.items()}
    fetch = FetchSettings(**env, model_path=model_path)  # the values validate
    assert fetch.model_path == model_path


def render(components: tuple[str, ...] = (), tmp_path: Path | None = None) -> list[dict]:
    """``kubectl kustomize`` of deploy/k8s, with ``components`` from an overlay in ``tmp_path``."""
    import shutil
    import subprocess

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl absent: kustomize rendering not checked (apt-get install kubectl)")
    target = K8S
    if components:
        assert tmp_path is not None
        rel = Path(os.path.relpath(K8S, tmp_path))
        (tmp_path / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "resources": [str(rel)],
                    "components": [str(rel / c) for c in components],
                }
            )
        )
        target = tmp_path
    out = subprocess.run(
        [kubectl, "kustomize", str(target)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def validate(docs: list[dict], source: str) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="the dev extra's kubernetes-validate (make setup)"
    )

    for doc in docs:
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{source}: {doc['kind']} {doc['metadata']['name']} (Kubernetes "
                            f"{version}): {exc.message} at {list(exc.path)}")  # fmt: skip


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    """Every object file, strictly (unknown fields refused); the operator's CRDs excepted."""
    files = sorted(p.name for p in K8S.glob("*.yaml") if p.name not in NOT_OBJECTS)
    crds = {"servicemonitor.yaml", "prometheusrule.yaml"}
    for name in files:
        if name not in crds:
            validate(load(name), f"deploy/k8s/{name}")
    validate(load("model-volume/models-pvc.yaml"), "deploy/k8s/model-volume/models-pvc.yaml")


def test_a_wrong_field_fails_the_schema_check(deployment: dict[str, Any]) -> None:
    import copy

    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["initContainers"][0]["envFrom"][0]["configMap"] = {}
    with pytest.raises(pytest.fail.Exception, match="initContainers"):
        validate([broken], "broken")


def test_kustomize_renders_valid_objects_that_reference_the_generated_config() -> None:
    docs = render()
    validate(docs, "kubectl kustomize deploy/k8s")
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        ["Namespace", "ConfigMap", "ConfigMap", "Deployment", "Service",
         "PodDisruptionBudget", "HorizontalPodAutoscaler"]
    )  # fmt: skip
    maps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    init = deployment["spec"]["template"]["spec"]["initContainers"][0]
    refs = {e["configMapRef"]["name"] for e in init["envFrom"]}
    assert refs <= maps, f"the init container names {refs}, kustomize made {maps}"
    assert any(r.startswith("maskx-model-") for r in refs), "generated name (hash suffix)"
    assert all(d["metadata"].get("namespace") == "maskx" for d in docs if d["kind"] != "Namespace")


@pytest.mark.parametrize("component", COMPONENTS)
def test_model_source_components_render_valid_pods(component: str, tmp_path: Path) -> None:
    docs = render((component,), tmp_path)
    validate(docs, f"deploy/k8s + {component}")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    if component == "model-volume":
        claim = volumes["models"]["persistentVolumeClaim"]
        pvc = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
        assert claim == {"claimName": pvc["metadata"]["name"], "readOnly": True}
        # Replicas on several nodes need a volume that several nodes mount.
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
        assert mounts["/models"]["readOnly"] is True
    else:
        assert "models" not in volumes and "/models" not in mounts, "the image holds /models"


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
