"""The serving image's promises, checked on a real worker process.

* The worker imports and answers with torch unimportable (the serving image has no torch).
* Every metric that the Grafana dashboard, the alert rules, the HPA and the Prometheus Adapter
  name exists in that worker's ``/metrics``, with the label values they select on, so the
  monitoring files cannot drift from the service.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.helpers import DEPLOY, SAMPLE_IMAGE, Worker

# A metric reference in PromQL: a name of the worker's own registry (maskx_*, and the process_*
# and python_* collectors), optionally followed by a {label matcher} set. Recording-rule names
# (maskx:...) contain a colon and are not service metrics.
METRIC_REF = re.compile(r"(?<![\w:])((?:maskx|process|python)_[a-z0-9_]+)\b(?:\{([^}]*)\})?")
# NVIDIA's DCGM exporter (docker-compose.gpu.yml): the dashboard's GPU panels read these fields
# of its default counter set (etc/default-counters.csv); no worker exports them.
DCGM_REF = re.compile(r"\bDCGM_FI_[A-Z0-9_]+\b")
DCGM_DEFAULT_FIELDS = {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"}
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
# Labels that Prometheus or Kubernetes attach at scrape time, not the service.
TARGET_LABELS = {"instance", "job", "namespace", "pod", "le", "service"}


def promql_references(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """``[(metric_name, [(label, op, value), ...]), ...]`` for each maskx_* metric in ``expr``."""
    return [(m.group(1), MATCHER.findall(m.group(2) or "")) for m in METRIC_REF.finditer(expr)]


def test_promql_reference_parser() -> None:
    refs = promql_references(
        'sum(rate(maskx_requests_total{route="/segment", status=~"5.."}[5m])) '
        "/ maskx:request_error_ratio:5m + maskx_queue_depth"
    )
    assert refs == [
        ("maskx_requests_total", [("route", "=", "/segment"), ("status", "=~", "5..")]),
        ("maskx_queue_depth", []),
    ]


def _walk_exprs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from _walk_exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk_exprs(item)


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "maskx.json").read_text())
    exprs = list(_walk_exprs(dashboard["panels"]))
    for var in dashboard["templating"]["list"]:
        exprs.append(var["definition"])
    return exprs


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def autoscaling_exprs() -> list[str]:
    """HPA metric names (custom metrics served under the same name) and the adapter's queries."""
    hpa = yaml.safe_load((DEPLOY / "k8s" / "hpa.yaml").read_text())
    names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    adapter = yaml.safe_load((DEPLOY / "k8s" / "prometheus-adapter-values.yaml").read_text())
    queries = [rule["seriesQuery"] for rule in adapter["rules"]["custom"]]
    return names + queries


SOURCES = {
    "deploy/grafana/dashboards/maskx.json": dashboard_exprs,
    "deploy/prometheus/alerts.yml": alert_exprs,
    "deploy/k8s/hpa.yaml + prometheus-adapter-values.yaml": autoscaling_exprs,
    "deploy/smoke.sh": lambda: [
        line for line in (DEPLOY / "smoke.sh").read_text().splitlines() if "query=" in line
    ],
}


@pytest.fixture(scope="module")
def scraped(worker: Worker) -> dict[str, list[dict[str, str]]]:
    """``{sample_name: [labels, ...]}`` from /metrics after some real traffic."""
    with httpx.Client(base_url=worker.url, timeout=30) as client:
        for path in ("/v1/segment", "/v1/segment", "/segment"):  # the API and its alias
            files = {"image": ("synth-1.png", SAMPLE_IMAGE.read_bytes(), "image/png")}
            assert client.post(path, files=files).status_code == 200
        bad = client.post(
            "/segment", content=b"not an image", headers={"content-type": "image/png"}
        )
        assert bad.status_code == 400, bad.text
        assert client.get("/healthz").status_code == 200
        text = client.get("/metrics").text
    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(dict(sample.labels))
    return samples


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_referenced_metric_exists(source: str, scraped: dict[str, list[dict]]) -> None:
    refs = [ref for expr in SOURCES[source]() for ref in promql_references(expr)]
    assert refs, f"{source}: no maskx_* metric found (did the parser or the file change?)"
    problems = []
    for name, matchers in refs:
        if name not in scraped:
            problems.append(f"{name}: not in /metrics")
            continue
        for label, op, value in matchers:
            if label in TARGET_LABELS:
                continue
            if label == "status" and op == "=":
                # Status values appear in /metrics only once a request got that status (a 429
                # needs a full queue), so check the form; the label itself is checked below.
                if not re.fullmatch(r"[1-5][0-9][0-9]", value):
                    problems.append(f"{name}{{status={value!r}}}: not an HTTP status code")
                op = "=~"
            if not any(label in labels for labels in scraped[name]):
                problems.append(f"{name}: no label {label!r} in /metrics")
            elif op == "=" and not any(labels.get(label) == value for labels in scraped[name]):
                seen = sorted({labels.get(label, "") for labels in scraped[name]})
                problems.append(f"{name}{{{label}={value!r}}}: /metrics has only {seen}")
            elif op == "=~" and label != "status":
                # PromQL anchors a regex at both ends; every value it names must be exported
                # (a route regex that matches no route selects nothing).
                seen = {labels.get(label, "") for labels in scraped[name]}
                if not any(re.fullmatch(value, v) for v in seen):
                    problems.append(
                        f"{name}{{{label}=~{value!r}}}: /metrics has only {sorted(seen)}"
                    )
    assert not problems, f"{source} refers to metrics the worker does not export:\n" + "\n".join(
        problems
    )


def test_dashboard_covers_the_operator_views() -> None:
    names = {name for expr in dashboard_exprs() for name, _ in promql_references(expr)}
    wanted = {
        "maskx_request_duration_seconds_bucket",  # latency quantiles
        "maskx_requests_total",  # throughput and status codes
        "maskx_queue_depth",
        "maskx_queue_capacity",
        "maskx_in_flight_requests",
        "maskx_batch_size_bucket",
        "maskx_queue_wait_seconds_sum",  # per-stage time
        "maskx_preprocess_seconds_sum",
        "maskx_inference_seconds_sum",
        "maskx_postprocess_seconds_sum",
        "maskx_detections_per_image_sum",
        "maskx_model_info",
        "maskx_rejected_requests_total",  # 429 by reason
        "maskx_inference_failures_total",
        "maskx_ready",
        "maskx_healthy",
        "maskx_provider_fallback",
        "process_resident_memory_bytes",  # process memory
        "process_cpu_seconds_total",
    }
    assert wanted <= names, f"dashboard lacks panels for {sorted(wanted - names)}"
    by_status = [e for e in dashboard_exprs() if re.search(r"by \([^)]*\bstatus\b", e)]
    assert by_status, "dashboard has no panel by status code"
    gpu = {name for expr in dashboard_exprs() for name in DCGM_REF.findall(expr)}
    assert {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED"} <= gpu, "no GPU utilisation/memory"
    assert gpu <= DCGM_DEFAULT_FIELDS, f"not in the DCGM exporter's defaults: {gpu}"


def test_process_panels_keep_to_the_worker() -> None:
    """Prometheus scrapes itself too: a process_* panel must not plot Prometheus' memory."""
    for expr in dashboard_exprs():
        if re.search(r"\bprocess_", expr):
            assert "and on (job, instance) maskx_model_info" in expr, expr


def test_worker_runs_without_torch(worker: Worker, tmp_path: Path) -> None:
    """The worker process (torch blocked from its first line) answered, and never tried torch."""
    with httpx.Client(base_url=worker.url, timeout=30) as client:
        files = {"image": ("synth-1.png", SAMPLE_IMAGE.read_bytes(), "image/png")}
        response = client.post("/segment", files=files, params={"score_threshold": 0})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["detections"], body
        assert all(d["mask"]["counts"] for d in body["detections"])
        model = client.get("/v1/model").json()
    assert model["name"] == "maskx-test", model
    report = worker.stop()  # SIGTERM: the worker drains, exits, and writes the report
    assert worker.process.returncode == 0, worker.log_path.read_text()
    assert report["loaded"] == [], f"torch modules were loaded: {report['loaded']}"
    from_maskx = [a for a in report["attempts"] if a["importer"].startswith("maskx")]
    assert not from_maskx, f"maskx code tried to import torch: {from_maskx}"


def test_torch_blocker_blocks_and_records(tmp_path: Path) -> None:
    """The blocker the worker runs under really hides torch, and names who asked."""
    import subprocess
    import sys

    from tests.deploy.helpers import TORCH_BLOCKER

    report = tmp_path / "report.json"
    program = TORCH_BLOCKER + (
        "\ntry:\n    import torchvision.ops\nexcept ModuleNotFoundError:\n    print('blocked')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", program, str(report)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "blocked"
    data = json.loads(report.read_text())
    assert data == {"attempts": [{"module": "torchvision", "importer": "__main__"}], "loaded": []}
