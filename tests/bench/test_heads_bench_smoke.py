"""``maskx bench heads``: a ``--quick`` run end to end, and the measuring helpers on their own."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from maskx.bench import heads


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    heads.add_arguments(parser)
    return parser.parse_args(argv)


def test_quick_run_prints_ratios_and_writes_json(tmp_path: Path, capsys) -> None:
    out = tmp_path / "heads.json"
    assert heads.main(parse(["--quick", "--json", str(out)])) == 0
    result = json.loads(out.read_text())
    assert set(result["eval"]) == {
        "transfer K=80", "transfer K=3000", "transfer+mlp K=80", "transfer+mlp K=3000",
    }  # fmt: skip
    for name, v in result["eval"].items():
        assert v["detections"] == 100, name
        assert v["latency_s"] > 0 and len(v["latency_runs_s"]) == 2
        assert v["cpu_s"] > 0 and v["roi_heads_s"] > 0
        if sys.platform.startswith("linux"):
            assert v["memory"]["method"] == "VmHWM after clear_refs"
            assert v["memory"]["peak_increase_mb"] > 1, v["memory"]  # a forward allocates
    for tag in ("transfer", "transfer+mlp"):
        small = result["eval"][f"{tag} K=80"]["largest"]["mask_branch"]
        large = result["eval"][f"{tag} K=3000"]["largest"]["mask_branch"]
        # The mask branch's largest tensor does not depend on K: the [N, D, 28, 28] deconv map
        # of the 100 detections (the quick model has D=64), never [N, K, 28, 28].
        assert small == large
        assert small["shape"] == [100, 64, 28, 28]
    train = result["train"]
    assert set(train["models"]) == {"Mask^X (transfer)", "torchvision MaskRCNN"}
    assert all(math.isfinite(m["last_loss"]) and m["step_s"] > 0 for m in train["models"].values())
    # The twin is built from the same modules: only torchvision's mask logits layer (K+1
    # channels, which Mask^X replaces by the weight transfer) has no counterpart.
    assert train["not_shared_parameters"] == [
        "roi_heads.mask_predictor.mask_fcn_logits.weight",
        "roi_heads.mask_predictor.mask_fcn_logits.bias",
    ]
    assert set(result["ratios"]) >= {
        "transfer latency K=3000/K=80",
        "transfer+mlp peak RSS K=3000/K=80",
        "train step Mask^X/torchvision",
        "transfer CPU time K=3000/K=80",
    }
    assert result["ratios"]["transfer mask-branch max K=3000/K=80"] == 1.0
    text = capsys.readouterr().out
    assert "train step Mask^X/torchvision" in text and "goal <= 1.10" in text


def test_train_only_run_reports_per_round_ratios(tmp_path: Path, capsys) -> None:
    out = tmp_path / "train.json"
    argv = ["--quick", "--no-eval", "--no-memory", "--train-repeats", "3", "--json", str(out)]
    assert heads.main(parse([*argv, "--train-instances", "2"])) == 0
    few = json.loads(out.read_text())["train"]["mask_rois_per_step"]
    assert heads.main(parse(argv)) == 0
    result = json.loads(out.read_text())
    assert "eval" not in result
    # Both models train their mask branch on the same RoIs; more instances, more mask RoIs
    # (every ground-truth box is a positive RoI).
    rois = result["train"]["mask_rois_per_step"]
    assert rois["Mask^X (transfer)"] == rois["torchvision MaskRCNN"] >= 5
    assert rois["Mask^X (transfer)"] > few["Mask^X (transfer)"]
    models = result["train"]["models"]
    ours, theirs = models["Mask^X (transfer)"], models["torchvision MaskRCNN"]
    paired = result["train"]["paired_ratios"]
    # One ratio per round, each from the two steps of that round (not from the medians).
    assert paired["step_s"] == pytest.approx(
        [a / b for a, b in zip(ours["step_runs_s"], theirs["step_runs_s"], strict=True)]
    )
    assert len(paired["cpu_s"]) == 3
    name = "train step Mask^X/torchvision, median of per-round ratios"
    assert result["ratios"][name] == pytest.approx(sorted(paired["step_s"])[1])
    # The goal stays on the ratio of the medians; the per-round figure informs.
    assert result["goal_ratios"] == ["train step Mask^X/torchvision"]
    assert "per-round ratios (wall):" in capsys.readouterr().out


def test_no_eval_and_no_train_is_refused() -> None:
    with pytest.raises(SystemExit, match="nothing to measure"):
        heads.main(parse(["--quick", "--no-eval", "--no-train"]))


def test_interleaved_times_alternates_cases() -> None:
    calls: list[str] = []
    cases = {name: (lambda name=name: calls.append(name)) for name in "AB"}
    cpu: dict[str, list[float]] = {}
    times = heads.interleaved_times(cases, repeats=3, warmup=1, cpu_times=cpu)
    # warm-up A B, then rounds A B, B A, A B
    assert calls == ["A", "B", "A", "B", "B", "A", "A", "B"]
    assert {k: len(v) for k, v in times.items()} == {"A": 3, "B": 3}
    assert {k: len(v) for k, v in cpu.items()} == {"A": 3, "B": 3}


def test_largest_allocation_ignores_views_and_sees_new_tensors() -> None:
    mode = heads._make_largest_allocation_mode()()
    big = torch.zeros(1000)
    with mode:
        big.view(10, 100)  # shares storage: not an allocation
        big[:10].clone()
    assert mode.nbytes == 40 and mode.shape == (10,)
    with mode:
        torch.ones(50, 20) * 2
    assert mode.nbytes == 4000 and mode.shape == (50, 20)


def test_copy_shared_weights_copies_matching_entries_only() -> None:
    src = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    dst = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 5))
    kept = heads.copy_shared_weights(dst, src)
    assert kept == ["1.weight", "1.bias"]
    assert torch.equal(dst[0].weight, src[0].weight)
    assert not torch.equal(dst[1].weight[:2], src[1].weight)


def test_bad_k_order_is_rejected() -> None:
    with pytest.raises(SystemExit, match="k-small"):
        heads.main(parse(["--quick", "--k-small", "100", "--k-large", "10"]))


def test_bench_modules_import_no_torch_at_module_level() -> None:
    code = (
        "import sys, maskx.bench.heads, maskx.bench.train;"
        "heavy = [m for m in ('torch', 'torchvision', 'yaml') if m in sys.modules];"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
