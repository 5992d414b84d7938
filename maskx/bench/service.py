"""``maskx bench service``: HTTP latency and throughput of ``maskx serve`` on loopback at several
concurrencies, against bare ONNX Runtime on the same model and image, in one run.

The server runs in its own process (as in production, so the load generator does not share its
GIL); the load generator is async httpx. Without ``--model`` a synthetic contract graph with a
small convolution stack is built (maskx.service.testing), so the figures measure the serving
overhead around a model of known cost; pass an exported model for real figures.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, help="ONNX model (default: synthetic test graph)")
    parser.add_argument(
        "--conv-layers", type=int, default=6, help="cost of the synthetic graph (6)"
    )
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument(
        "--concurrency", default="1,4,16", help="comma list of client concurrencies (1,4,16)"
    )
    parser.add_argument("--requests", type=int, default=64, help="requests per level (64)")
    parser.add_argument("--bare-runs", type=int, default=30, help="bare ONNX Runtime runs (30)")
    parser.add_argument("--providers", default="cpu", help="MASKX_PROVIDERS for both sides")
    parser.add_argument("--max-batch-size", type=int, default=4)
    parser.add_argument("--max-batch-delay-ms", type=float, default=2.0)
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def bare_runtime_ms(model: Path, providers: str, data: bytes, runs: int) -> dict[str, float]:
    """p50/p99 of one ONNX Runtime call on the prepared image (decode excluded), and of the
    whole in-process pipeline (decode + run + paste + RLE)."""
    from maskx.service.pipeline import Pipeline
    from maskx.service.postprocess import SegmentParams

    pipeline = Pipeline.from_model(model, providers.split(","))
    image = pipeline.prepare(data)
    for _ in range(3):
        pipeline.infer([image])
    run_t, full_t = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        pipeline.infer([image])
        run_t.append((time.perf_counter() - t0) * 1000)
    for _ in range(max(runs // 3, 1)):
        t0 = time.perf_counter()
        pipeline.segment(data, SegmentParams())
        full_t.append((time.perf_counter() - t0) * 1000)
    return {
        "ort_p50_ms": statistics.median(run_t),
        "ort_p99_ms": _percentile(run_t, 0.99),
        "pipeline_p50_ms": statistics.median(full_t),
    }


async def _load(url: str, data: bytes, concurrency: int, total: int) -> dict[str, float]:
    import httpx

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    remaining = total

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            r = await client.post("/segment", content=data, headers={"content-type": "image/jpeg"})
            latencies.append((time.perf_counter() - t0) * 1000)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        import asyncio

        for _ in range(min(concurrency, 4)):  # open connections, warm the server path
            await client.post("/segment", content=data, headers={"content-type": "image/jpeg"})
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {
        "concurrency": concurrency,
        "requests": total,
        "p50_ms": statistics.median(latencies),
        "p99_ms": _percentile(latencies, 0.99),
        "throughput_rps": total / wall,
        "non_200": sum(n for s, n in statuses.items() if s != 200),
    }


def _start_server(model: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    import httpx

    port = _free_port()
    env = os.environ | {"MASKX_LOG_LEVEL": "warning"}
    cmd = [sys.executable, "-m", "maskx.cli", "serve", "--model", str(model), "--host",
           "127.0.0.1", "--port", str(port), "--providers", args.providers,
           "--max-batch-size", str(args.max_batch_size),
           "--max-batch-delay-ms", str(args.max_batch_delay_ms),
           "--queue-size", str(max(64, args.max_batch_size))]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}"
    until = time.monotonic() + 120
    while time.monotonic() < until:
        if proc.poll() is not None:
            raise RuntimeError(f"maskx serve exited with {proc.returncode}: {' '.join(cmd)}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.terminate()
    raise TimeoutError(f"{url}/readyz did not turn ready in 120 s")


def main(args: argparse.Namespace) -> int:
    import asyncio

    from maskx.service.testing import build_test_model, make_image

    levels = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    data = make_image(args.width, args.height, quality=90)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or build_test_model(
            Path(tmp) / "bench.onnx",
            conv_layers=args.conv_layers,
            conv_channels=32,
            metadata=None,
        )
        bare = bare_runtime_ms(model, args.providers, data, args.bare_runs)
        proc, url = _start_server(model, args)
        try:
            rows = [asyncio.run(_load(url, data, c, args.requests)) for c in levels]
        finally:
            proc.terminate()
            proc.wait(30)
    ratio = rows[0]["p50_ms"] / bare["ort_p50_ms"] if levels and levels[0] == 1 else None
    result: dict[str, Any] = {
        "image": [args.height, args.width],
        "model": str(args.model) if args.model else f"synthetic ({args.conv_layers} conv layers)",
        "providers": args.providers,
        "max_batch_size": args.max_batch_size,
        "bare": bare,
        "http": rows,
        "http_p50_over_ort_p50_at_c1": ratio,
    }
    print(f"maskx serve on loopback, {args.width}x{args.height} JPEG, model: {result['model']}")
    print(
        f"bare ONNX Runtime: p50 {bare['ort_p50_ms']:.1f} ms, p99 {bare['ort_p99_ms']:.1f} ms; "
        f"in-process pipeline (decode+run+paste+RLE) p50 {bare['pipeline_p50_ms']:.1f} ms"
    )
    print(f"{'concurrency':>11}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}{'non-200':>9}")
    for row in rows:
        print(
            f"{row['concurrency']:>11}{row['p50_ms']:>10.1f}{row['p99_ms']:>10.1f}"
            f"{row['throughput_rps']:>10.1f}{row['non_200']:>9}"
        )
    if ratio is not None:
        print(f"HTTP p50 / bare ONNX Runtime p50 at concurrency 1: {ratio:.2f} (goal <= 1.15)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if all(r["non_200"] == 0 for r in rows) else 1
