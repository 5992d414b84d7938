"""Smoke tests of ``maskx bench service`` and ``maskx bench postprocess`` with tiny settings."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import pytest

from maskx.bench import postprocess as bench_postprocess
from maskx.bench import service as bench_service


def parse(module: object, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)  # type: ignore[attr-defined]
    return parser.parse_args(argv)


def test_postprocess_bench_prints_and_writes_json(tmp_path: Path, capsys) -> None:
    pytest.importorskip("torchvision")
    out = tmp_path / "pp.json"
    args = parse(bench_postprocess, ["--detections", "4", "--width", "160", "--height", "120",
                                     "--repeats", "1", "--json", str(out)])  # fmt: skip
    assert bench_postprocess.main(args) == 0
    result = json.loads(out.read_text())
    assert result["identical_rle"] == 4 and result["ours_ms"] > 0 and result["speedup"] > 0
    assert "speed-up" in capsys.readouterr().out


@pytest.mark.parametrize("client", ["wrk", "httpx"])
def test_service_bench_prints_and_writes_json(tmp_path: Path, capsys, client: str) -> None:
    if client == "wrk" and shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (make system-deps)")
    out = tmp_path / "svc.json"
    args = parse(bench_service, ["--conv-layers", "1", "--width", "160", "--height", "120",
                                 "--concurrency", "1,2", "--duration", "1", "--rounds", "3",
                                 "--score-threshold", "0", "--client", client,
                                 "--json", str(out)])  # fmt: skip
    start = time.perf_counter()
    assert bench_service.main(args) == 0
    wall_s = time.perf_counter() - start
    result = json.loads(out.read_text())
    assert result["client"] == client
    assert [row["concurrency"] for row in result["http"]] == [1, 2]
    assert all(row["non_200"] == 0 and row["requests"] > 0 for row in result["http"])
    assert all(0 < row["p50_ms"] <= row["p99_ms"] for row in result["http"])
    for row in result["http"]:
        # Closed-loop clients: each of the c connections sends its requests one after another,
        # and at least half of the requests took the p50 or longer, so their time adds up to at
        # most c connections busy for the whole call (this test's clock, not the bench's).
        busy_s = row["requests"] / 2 * row["p50_ms"] / 1e3
        assert busy_s <= row["concurrency"] * wall_s, (row, wall_s)
    c1 = result["c1"]
    assert c1["detections_per_image"] > 0  # score_threshold=0 reached the server
    assert c1["http_p50_ms"] > 0 and c1["ort_p50_ms"] > 0
    # the same request's HTTP time includes its server-side runtime call
    assert c1["same_request_ratio_p50"] > 1 and c1["same_request_overhead_p50_ms"] > 0
    # Three calls per round, each at least its median in half of the rounds, all in the call.
    rounds = c1["rounds"]
    assert rounds == 3
    slowest_half = (rounds + 1) // 2 * (c1["ort_p50_ms"] + c1["http_p50_ms"]) / 1e3
    assert slowest_half <= wall_s, (c1, wall_s)
    assert "HTTP p50 / bare ONNX Runtime p50" in capsys.readouterr().out


def test_bench_modules_import_nothing_heavy_at_module_level() -> None:
    import subprocess
    import sys

    code = (
        "import sys, maskx.bench.service, maskx.bench.postprocess;"
        "heavy = [m for m in ('torch', 'onnxruntime', 'fastapi') if m in sys.modules];"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
