"""``maskx bench detectron --quick``: a Detectron-format file from disk to HTTP, twice (K and the
cut K), with the figures the full-size run reports."""

from __future__ import annotations

import json

import pytest

from maskx.cli import main


@pytest.mark.slow
def test_quick_run_imports_exports_verifies_serves_and_cuts_alike(tmp_path, capsys):
    out = tmp_path / "figures.json"
    code = main(["bench", "detectron", "--quick", "--requests", "1", "--out",
                 str(tmp_path / "work"), "--json", str(out)])  # fmt: skip
    assert code == 0
    assert "served: p50 latency (s)" in capsys.readouterr().out
    figures = json.loads(out.read_text())["figures"]
    full, cut = figures["K=30"], figures["K=20"]
    for f, k in ((full, 30), (cut, 20)):
        assert f["export"]["exit_code"] == 0  # verified against eager
        assert f["serve"]["num_classes"] == k
        assert f["serve"]["detections"], "the calibrated classifier should fire on the image"
    # Classes past the cut never score: both models answer with the same detections, and the
    # flat image of the verification gave none (else verification would have had ties).
    assert full["serve"]["detections"] == cut["serve"]["detections"]
    # A is the first cut - 1 classes in both models; the last class of the cut model scores
    # too, so that both mask sources are answered.
    sources = {name: source for name, source, _ in full["serve"]["detections"]}
    assert set(sources.values()) <= {"supervised", "transferred"}
    assert all((source == "transferred") == (name == "cow") for name, source in sources.items())
    assert full["weights"] > cut["weights"]
    assert not (tmp_path / "work").exists()  # large files removed unless --keep
