"""A real Prometheus server scrapes /metrics and answers a histogram_quantile over it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.settings import Settings
from service.testing import make_image
from tests.service.helpers import LiveServer

PROMETHEUS = shutil.which("prometheus")
QUERY = "histogram_quantile(0.5, sum by (le) (rate(maskx_request_duration_seconds_bucket[1m])))"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus binary absent (apt-get install prometheus)"
)
def test_prometheus_scrapes_and_computes_a_latency_quantile(
    settings: Settings, tmp_path: Path
) -> None:
    with LiveServer(create_app(settings)) as live:
        live.wait_ready()
        target = live.url.removeprefix("http://")
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: maskx\n    static_configs: [{{targets: ['{target}']}}]\n"
        )
        port = free_port()
        prom = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            api = f"http://127.0.0.1:{port}/api/v1/query"
            data = make_image(64, 48)
            value = None
            until = time.monotonic() + 45
            while value is None and time.monotonic() < until:
                assert prom.poll() is None, prom.stderr.read().decode() if prom.stderr else ""
                for _ in range(3):
                    httpx.post(live.url + "/segment", content=data,
                               headers={"content-type": "image/jpeg"})  # fmt: skip
                time.sleep(0.5)
                try:
                    result = httpx.get(api, params={"query": QUERY}, timeout=5).json()
                except httpx.HTTPError:
                    continue
                series = result.get("data", {}).get("result", [])
                if series and series[0]["value"][1] not in ("NaN", "+Inf"):
                    value = float(series[0]["value"][1])
            assert value is not None, "Prometheus never returned a latency quantile"
            assert 0 < value < 10
            up = httpx.get(api, params={"query": 'up{job="maskx"}'}).json()
            assert up["data"]["result"][0]["value"][1] == "1"
        finally:
            prom.terminate()
            prom.wait(10)
