"""``maskx bench export`` runs end to end on a trained checkpoint and reports its figures."""

from __future__ import annotations

import json
import math
import time

from maskx.cli import main
from training.checkpoint import load_checkpoint


def test_export_bench_prints_ratio_and_writes_json(trained_checkpoint, tmp_path, capsys):
    out = tmp_path / "bench.json"
    repeats = 3
    start = time.perf_counter()
    code = main(["bench", "export", "--checkpoint", str(trained_checkpoint), "--repeats",
                 str(repeats), "--warmup", "1", "--json", str(out)])  # fmt: skip
    wall_s = time.perf_counter() - start
    assert code == 0
    text = capsys.readouterr().out
    assert "speed-up ONNX Runtime / eager" in text
    figures = json.loads(out.read_text())
    # Judged by this test's own clock: at least half of the timed runs of each kind last their
    # median or longer, and all of them ran inside the call (a figure in seconds reported as
    # milliseconds, or a median over fewer runs than asked, breaks one of the two bounds).
    eager_s, ort_s = figures["eager_ms_median"] / 1e3, figures["onnxruntime_ms_median"] / 1e3
    assert eager_s > 0 and ort_s > 0
    assert math.ceil(repeats / 2) * (eager_s + ort_s) + figures["export_s"] <= wall_s
    # Judged by the checkpoint: the graph carries every float32 weight of the model as an
    # initializer except the weight transfer function, whose output W_seg [K, D] it holds
    # instead, plus the graph itself (well under a megabyte at this size).
    state = load_checkpoint(trained_checkpoint)["model"]
    nbytes = {k: v.numel() * v.element_size() for k, v in state.items() if v.is_floating_point()}
    in_graph = sum(n for k, n in nbytes.items() if ".weight_transfer." not in k)
    k_classes = state["roi_heads.box_predictor.cls_score.weight"].shape[0] - 1
    width = state["roi_heads.mask_predictor.conv5_mask.weight"].shape[1]
    w_seg = k_classes * width * 4
    file_bytes = figures["onnx_file_mb"] * 1e6
    assert in_graph <= file_bytes <= in_graph + w_seg + 1_000_000, (in_graph, w_seg, figures)
