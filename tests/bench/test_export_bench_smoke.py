"""``maskx bench export`` runs end to end on a trained checkpoint and reports its figures."""

from __future__ import annotations

import json

from maskx.cli import main


def test_export_bench_prints_ratio_and_writes_json(trained_checkpoint, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "export", "--checkpoint", str(trained_checkpoint), "--repeats", "2",
                 "--warmup", "1", "--json", str(out)])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "speed-up ONNX Runtime / eager" in text
    figures = json.loads(out.read_text())
    assert figures["eager_ms_median"] > 0 and figures["onnxruntime_ms_median"] > 0
    assert figures["onnx_file_mb"] > 0.1
    ratio = figures["eager_ms_median"] / figures["onnxruntime_ms_median"]
    assert abs(ratio - figures["speedup_onnxruntime_vs_eager"]) < 1e-9


def test_export_bench_names_a_missing_checkpoint(tmp_path, capsys):
    assert main(["bench", "export", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "none.pt" in capsys.readouterr().out
