"""``maskx bench mask_heads --quick``: every variant is timed and the mask branch's FLOPs are
the same at K=3000 and K=80 with each head and RoI choice."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from maskx.bench import mask_heads


def test_quick_run_reports_every_variant_and_flat_k(tmp_path: Path, capsys) -> None:
    pytest.importorskip("torchvision")
    parser = argparse.ArgumentParser()
    mask_heads.add_arguments(parser)
    out = tmp_path / "mh.json"
    assert mask_heads.main(parser.parse_args(["--quick", "--json", str(out)])) == 0
    result = json.loads(out.read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert list(rows) == ["fcn2 + proposals", "fcn2 + gt", "resnet4 + gt", "resnet4 + proposals"]
    assert result["flat_in_k"] and all(r["branch_flops_k_ratio"] == 1.0 for r in rows.values())
    assert rows["fcn2 + proposals"]["train_vs_today"] == 1.0
    # The deeper head has more weights and more FLOPs per RoI than today's.
    assert rows["resnet4 + gt"]["head_params"] > rows["fcn2 + gt"]["head_params"]
    assert (
        rows["resnet4 + gt"]["branch_gflop_100_rois"] > rows["fcn2 + gt"]["branch_gflop_100_rois"]
    )
    assert all(r["train_step_s"] > 0 and r["inference_s"] > 0 for r in rows.values())
    assert "K=3000 and K=80: True" in capsys.readouterr().out
