"""Prometheus config and alert rules, checked by promtool (Debian's ``prometheus`` package)."""

from __future__ import annotations

import pytest
import yaml

from tests.deploy.helpers import DEPLOY, require_tool, run_tool

PROM = DEPLOY / "prometheus"


@pytest.mark.parametrize("name", ["prometheus.yml", "prometheus-gpu.yml"])
def test_promtool_check_config(name: str) -> None:
    """Also checks every rule file that the config loads."""
    out = run_tool([require_tool("promtool"), "check", "config", str(PROM / name)])
    assert "SUCCESS" in out


def test_promtool_check_rules() -> None:
    out = run_tool([require_tool("promtool"), "check", "rules", str(PROM / "alerts.yml")])
    assert "SUCCESS" in out


def test_alert_unit_tests() -> None:
    """alerts.test.yml feeds synthetic series and states which alerts fire, and when."""
    run_tool([require_tool("promtool"), "test", "rules", "alerts.test.yml"], cwd=PROM)


def test_the_required_alerts_exist_and_are_tested() -> None:
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    required = {
        "MaskxTargetDown",
        "MaskxHighP99Latency",
        "MaskxHighErrorRate",
        "MaskxQueueSaturated",
        "MaskxRequestsRejected",
        "MaskxNoWorkerScraped",
        "MaskxProviderFallback",
        "MaskxWorkerUnhealthy",
        "MaskxInferenceFailures",
        "MaskxWorkerNotReady",
        "MaskxPodsNotReady",
    }
    assert required <= alerts, f"missing alerts: {sorted(required - alerts)}"
    cases = yaml.safe_load((PROM / "alerts.test.yml").read_text())["tests"]
    fired = {
        t["alertname"] for case in cases for t in case["alert_rule_test"] if t.get("exp_alerts")
    }
    assert alerts <= fired, (
        f"alerts never shown firing in alerts.test.yml: {sorted(alerts - fired)}"
    )
