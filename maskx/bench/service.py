"""``maskx bench service``: HTTP latency and throughput of ``maskx serve`` on loopback, against bare
ONNX Runtime on the same model and image, in one run.

Two measurements:

* **Overhead at concurrency 1** (the ratio): rounds of three calls in a random order each round,
  so that drift and noise hit all three alike — a bare ``onnxruntime.InferenceSession.run`` with
  default session options on the already decoded and padded image, the in-process pipeline
  (decode + run + paste + RLE, no HTTP), and one ``POST /segment`` over a keep-alive connection
  (stdlib ``http.client``: the cheapest Python client, so the figure is the server's cost).
* **Concurrency 1, 4, 16**: p50/p99 latency and throughput from ``wrk`` (C, one thread, one
  connection per concurrent client) when it is on PATH, else from an async httpx client.

The server runs in its own process, as in production. Without ``--model`` a synthetic contract
graph with a small convolution stack is built (service.testing), so the figures measure
the serving overhead around a model of known cost; pass an exported model for real figures.

``--baseline-src DIR`` starts a second server from another source tree (e.g. the previous commit,
``git archive HEAD~1 | tar -x -C DIR``) with the same interpreter and flags, and times it in the
same interleaved rounds: a before/after comparison on the same model in one run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from maskx.cli import add_output_argument

# Quiet time before each timed call: ONNX Runtime's worker threads spin for a while after a run,
# and three sessions (bare, in-process, server) spinning against each other on a small machine
# would measure the contention, not the call.
PAUSE_S = 0.05
WARMUP_ROUNDS = 3  # untimed rounds that warm every path up
IDLE_S = 3.0  # reconnect (untimed) a keep-alive connection idle longer than this
# The path every source tree answers: an alias of /v1/segment (the same handler) since the API
# took its version prefix, the only path before it, so --baseline-src can time older trees.
SEGMENT_PATH = "/segment"

WRK_SCRIPT = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "image/jpeg"
local f = assert(io.open(os.getenv("MASKX_BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "MASKX_WRK {\"requests\": %d, \"duration_us\": %d, \"p50_us\": %d, \"p99_us\": %d, " ..
    "\"non_2xx\": %d, \"socket_errors\": %d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
"""


# The server settings this benchmark passes on to `maskx serve`, with its own defaults: the CPU
# provider, and no spinning (three sessions share the cores here).
SERVER_DEFAULTS = {"providers": "cpu", "ort_spinning": False, "max_batch_size": 4,
                   "max_batch_delay_ms": 5.0}  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from service.flags import BENCH_FLAGS, add_setting_flags

    parser.add_argument("--model", type=Path, help="ONNX model (default: synthetic test graph)")
    parser.add_argument(
        "--conv-layers", type=int, default=6, help="cost of the synthetic graph (6)"
    )
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument(
        "--concurrency", default="1,4,16", help="comma list of client concurrencies (1,4,16)"
    )
    parser.add_argument(
        "--duration", type=float, default=8.0, help="seconds per concurrency level (8)"
    )
    parser.add_argument(
        "--rounds", type=int, default=60, help="interleaved rounds for the overhead ratio (60)"
    )
    parser.add_argument(
        "--client",
        choices=("auto", "wrk", "httpx"),
        default="auto",
        help="load generator for the concurrency levels (auto: wrk when on PATH)",
    )
    parser.add_argument(
        "--score-threshold",
        type=float,
        help="score_threshold of every request (default: the server's, 0.5); 0 returns every "
        "detection the graph keeps, so paste + RLE + JSON are measured at their largest",
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="also serve from this source tree (same interpreter, PYTHONPATH=DIR) and time it "
        "in the same rounds: before/after on one model in one run",
    )
    add_setting_flags(parser, BENCH_FLAGS, defaults=SERVER_DEFAULTS)
    # --out, as on every maskx command; --json, the earlier spelling, still works.
    add_output_argument(parser, dest="json", old=("--json",), type=Path, metavar="FILE.json",
                        help="write the figures to this JSON file")  # fmt: skip


def _query(score: float | None) -> str:
    return urlencode({} if score is None else {"score_threshold": score})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def overhead_at_c1(
    model: Path,
    providers: str,
    data: bytes,
    port: int,
    rounds: int,
    score: float | None,
    baseline_port: int | None = None,
) -> dict[str, float]:
    """p50s of bare ONNX Runtime, the in-process pipeline and HTTP (and HTTP to the baseline
    server on ``baseline_port``), interleaved per round; ``score`` is the requests'
    ``score_threshold`` (None: the default)."""
    import numpy as np
    import onnxruntime as ort

    from service.pipeline import Pipeline
    from service.postprocess import SegmentParams
    from service.preprocess import pad_batch
    from service.runtime import load_runtime, select_providers

    pipeline = Pipeline(load_runtime(model, providers.split(","), spinning=True))
    image = pipeline.prepare(data)
    batch, sizes = pad_batch([image.pixels], pipeline.info.size_divisible)
    provider_list, _ = select_providers(providers.split(","), ort.get_available_providers())
    # Default session options: ONNX Runtime as anyone would call it.
    session = ort.InferenceSession(str(model), providers=provider_list)
    feeds = {"images": batch, "image_sizes": np.asarray(sizes)}
    headers = {"Content-Type": "image/jpeg"}

    def bare() -> None:
        session.run(None, feeds)

    params = SegmentParams() if score is None else SegmentParams(score_threshold=score)
    detections: list[int] = []
    server_inference: list[float] = []  # the server's own runtime call, same request
    baseline_inference: list[float] = []  # the same, from the baseline server

    def in_process() -> None:
        pipeline.segment(data, params)

    def over_http(conn: http.client.HTTPConnection, record: bool) -> None:
        conn.request("POST", SEGMENT_PATH + "?" + _query(score), body=data, headers=headers)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"POST /segment answered {response.status}: {body[:200]!r}")
        answer = json.loads(body)
        if record:
            detections.append(len(answer["detections"]))
            server_inference.append(answer["timing_ms"]["inference"])
        else:
            baseline_inference.append(answer["timing_ms"]["inference"])

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    calls = {"ort": bare, "pipeline": in_process, "http": lambda: over_http(conn, True)}
    connections = {"http": conn}
    if baseline_port is not None:
        base = http.client.HTTPConnection("127.0.0.1", baseline_port, timeout=120)
        calls["http_baseline"] = lambda: over_http(base, False)
        connections["http_baseline"] = base
    last_used: dict[str, float] = {}
    times: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls)
    rng = random.Random(0)
    for round_index in range(WARMUP_ROUNDS + rounds):
        rng.shuffle(order)
        for name in order:
            if name in connections and time.monotonic() - last_used.get(name, 0.0) > IDLE_S:
                # uvicorn closes a keep-alive connection idle for 5 s (a round can take that
                # long on a loaded machine): open a fresh one before the timer starts.
                connections[name].close()
                connections[name].connect()
            time.sleep(PAUSE_S)
            t0 = time.perf_counter()
            calls[name]()
            last_used[name] = time.monotonic()
            if round_index >= WARMUP_ROUNDS:
                times[name].append((time.perf_counter() - t0) * 1000)
    conn.close()
    baseline: dict[str, float] = {}
    if baseline_port is not None:
        base.close()
        baseline = {
            "http_baseline_p50_ms": statistics.median(times["http_baseline"]),
            "http_baseline_p99_ms": _percentile(times["http_baseline"], 0.99),
            "per_round_ratio_baseline_p50": statistics.median(
                h / o for h, o in zip(times["http_baseline"], times["ort"], strict=True)
            ),
            "same_request_overhead_baseline_p50_ms": statistics.median(
                h - i
                for h, i in zip(
                    times["http_baseline"], baseline_inference[WARMUP_ROUNDS:], strict=True
                )
            ),
        }
    return baseline | {
        "rounds": rounds,
        "ort_p50_ms": statistics.median(times["ort"]),
        "ort_p99_ms": _percentile(times["ort"], 0.99),
        "pipeline_p50_ms": statistics.median(times["pipeline"]),
        "http_p50_ms": statistics.median(times["http"]),
        "http_p99_ms": _percentile(times["http"], 0.99),
        "detections_per_image": statistics.median(detections),
        # Robust to drift on a noisy machine: each round's own HTTP / bare ratio.
        "per_round_ratio_p50": statistics.median(
            h / o for h, o in zip(times["http"], times["ort"], strict=True)
        ),
        # Immune to drift between calls: one request's HTTP time against the runtime call made
        # for that very request inside the server (its timing_ms.inference: the batch's
        # pad + ONNX Runtime run + split, measured around the inference thread's work).
        "same_request_ratio_p50": statistics.median(
            h / i for h, i in zip(times["http"], server_inference[WARMUP_ROUNDS:], strict=True)
        ),
        "same_request_overhead_p50_ms": statistics.median(
            h - i for h, i in zip(times["http"], server_inference[WARMUP_ROUNDS:], strict=True)
        ),
    }


def _load_wrk(
    url: str, body: Path, concurrency: int, duration: float, query: str
) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT)
        script = f.name
    try:
        run = subprocess.run(
            ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--timeout",
             "120s", "-s", script, url + SEGMENT_PATH + "?" + query],
            env=os.environ | {"MASKX_BENCH_BODY": str(body)},
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    finally:
        os.unlink(script)
    line = next((x for x in run.stdout.splitlines() if x.startswith("MASKX_WRK ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{run.stdout}\n{run.stderr}")
    stats = json.loads(line.removeprefix("MASKX_WRK "))
    return {
        "concurrency": concurrency,
        "requests": stats["requests"],
        "p50_ms": stats["p50_us"] / 1000,
        "p99_ms": stats["p99_us"] / 1000,
        "throughput_rps": stats["requests"] / (stats["duration_us"] / 1e6),
        "non_200": stats["non_2xx"] + stats["socket_errors"],
    }


async def _load_httpx(
    url: str, data: bytes, concurrency: int, duration: float, query: str
) -> dict[str, float]:
    import asyncio

    import httpx

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    headers = {"content-type": "image/jpeg"}

    async def worker(client: httpx.AsyncClient, until: float) -> None:
        while time.perf_counter() < until:
            t0 = time.perf_counter()
            r = await client.post(SEGMENT_PATH + "?" + query, content=data, headers=headers)
            latencies.append((time.perf_counter() - t0) * 1000)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client, t0 + duration) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "p50_ms": statistics.median(latencies),
        "p99_ms": _percentile(latencies, 0.99),
        "throughput_rps": len(latencies) / wall,
        "non_200": sum(n for s, n in statuses.items() if s != 200),
    }


def _start_server(
    model: Path, args: argparse.Namespace, src: Path | None = None
) -> tuple[subprocess.Popen, int]:
    """``maskx serve`` in its own process (from source tree ``src`` when given)."""

    from service.flags import BENCH_FLAGS, setting_values, settings_to_argv

    port = _free_port()
    env = os.environ | {"MASKX_LOG_LEVEL": "warning"}
    if src is not None:
        env["PYTHONPATH"] = str(src.resolve())
    server_flags = settings_to_argv(setting_values(args, BENCH_FLAGS))
    cmd = [sys.executable, "-m", "maskx.cli", "serve", "--model", str(model), "--host",
           "127.0.0.1", "--port", str(port), "--queue-size", str(max(64, args.max_batch_size)),
           *server_flags]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=src)
    wait_ready(proc, f"http://127.0.0.1:{port}", cmd, timeout_s=120)
    return proc, port


def wait_ready(proc: subprocess.Popen, url: str, cmd: list[str], *, timeout_s: float) -> None:
    """Poll ``url``/readyz until it answers 200; RuntimeError if the server process exits,
    TimeoutError (after terminating it) if ``timeout_s`` passes first."""
    import httpx

    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        if proc.poll() is not None:
            raise RuntimeError(f"maskx serve exited with {proc.returncode}: {' '.join(cmd)}")
        try:
            if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.terminate()
    raise TimeoutError(f"{url}/readyz did not turn ready in {timeout_s:g} s")


def main(args: argparse.Namespace) -> int:
    import asyncio

    from service.testing import build_test_model, make_image

    levels = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "httpx"
    data = make_image(args.width, args.height, quality=90)
    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "image.jpg"
        body.write_bytes(data)
        model = args.model or build_test_model(
            Path(tmp) / "bench.onnx",
            conv_layers=args.conv_layers,
            conv_channels=32,
            metadata=None,
        )
        proc, port = _start_server(model, args)
        baseline = None
        if args.baseline_src is not None:
            baseline = _start_server(model, args, args.baseline_src)
        url = f"http://127.0.0.1:{port}"
        query = _query(args.score_threshold)
        try:
            c1 = overhead_at_c1(
                model,
                args.providers,
                data,
                port,
                args.rounds,
                args.score_threshold,
                baseline_port=None if baseline is None else baseline[1],
            )
            if baseline is not None:  # the load levels measure this tree only
                baseline[0].terminate()
                baseline[0].wait(30)
                baseline = None
            rows = []
            for c in levels:
                if client == "wrk":
                    rows.append(_load_wrk(url, body, c, args.duration, query))
                else:
                    rows.append(asyncio.run(_load_httpx(url, data, c, args.duration, query)))
        finally:
            proc.terminate()
            proc.wait(30)
            if baseline is not None:
                baseline[0].terminate()
                baseline[0].wait(30)
    ratio = c1["http_p50_ms"] / c1["ort_p50_ms"]
    result: dict[str, Any] = {
        "image": [args.height, args.width],
        "model": str(args.model) if args.model else f"synthetic ({args.conv_layers} conv layers)",
        "providers": args.providers,
        "score_threshold": args.score_threshold,
        "max_batch_size": args.max_batch_size,
        "max_batch_delay_ms": args.max_batch_delay_ms,
        "server_ort_spinning": args.ort_spinning,
        "baseline_src": str(args.baseline_src) if args.baseline_src else None,
        "client": client,
        "c1": c1,
        "http": rows,
        "http_p50_over_ort_p50_at_c1": ratio,
    }
    print(f"maskx serve on loopback, {args.width}x{args.height} JPEG, model: {result['model']}")
    print(
        f"concurrency 1, {c1['rounds']} interleaved rounds: bare ONNX Runtime p50 "
        f"{c1['ort_p50_ms']:.2f} ms; in-process pipeline (decode+run+paste+RLE) "
        f"{c1['pipeline_p50_ms']:.2f} ms; HTTP {c1['http_p50_ms']:.2f} ms "
        f"(p99 {c1['http_p99_ms']:.2f} ms); {c1['detections_per_image']:g} detections per image"
    )
    print(f"load generator: {client}, {args.duration:g} s per level")
    print(f"{'concurrency':>11}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}{'non-200':>9}")
    for row in rows:
        print(
            f"{row['concurrency']:>11}{row['p50_ms']:>10.1f}{row['p99_ms']:>10.1f}"
            f"{row['throughput_rps']:>10.1f}{row['non_200']:>9}"
        )
    print(
        f"HTTP p50 / bare ONNX Runtime p50 at concurrency 1: {ratio:.3f} (goal <= 1.15); "
        f"median of per-round ratios {c1['per_round_ratio_p50']:.3f}"
    )
    if "http_baseline_p50_ms" in c1:
        base_ratio = c1["http_baseline_p50_ms"] / c1["ort_p50_ms"]
        result["baseline_http_p50_over_ort_p50_at_c1"] = base_ratio
        print(
            f"baseline ({args.baseline_src}), same rounds: HTTP p50 {c1['http_baseline_p50_ms']:.2f}"
            f" ms, / bare ONNX Runtime p50 {base_ratio:.3f}; median of per-round ratios "
            f"{c1['per_round_ratio_baseline_p50']:.3f}  |  this tree {ratio:.3f}; same-request "
            f"overhead p50 {c1['same_request_overhead_baseline_p50_ms']:.2f} ms  |  this tree "
            f"{c1['same_request_overhead_p50_ms']:.2f} ms"
        )
    print(
        f"same request, HTTP / the server's own runtime call: p50 "
        f"{c1['same_request_ratio_p50']:.3f}, overhead p50 {c1['same_request_overhead_p50_ms']:.2f} ms "
        "(decode, hand-offs, paste + RLE, JSON, HTTP)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if all(r["non_200"] == 0 for r in rows) else 1
