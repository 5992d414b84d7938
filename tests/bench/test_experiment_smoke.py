"""``maskx bench experiment``: the plan, the arithmetic of the summary, and a real end-to-end
run of all six variants on a tiny synthetic set (2 steps each, in process)."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from maskx.bench import experiment


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    experiment.add_arguments(parser)
    return parser.parse_args(argv)


def test_plan_is_seed_major_and_variant_overrides_win(tmp_path: Path) -> None:
    runs = experiment.plan_runs(
        tmp_path, ["oracle", "agnostic"], [0, 1], ["data.mask_classes=voc", "model.mlp=true"]
    )
    assert [(r.variant, r.seed) for r in runs] == [
        ("agnostic", 0), ("oracle", 0), ("agnostic", 1), ("oracle", 1),
    ]  # fmt: skip
    assert runs[0].folder == tmp_path / "agnostic" / "seed0"
    # The last value of a key wins in load_config: the variant's own settings come last.
    oracle = runs[1].overrides
    assert oracle.index("data.mask_classes=all") > oracle.index("data.mask_classes=voc")
    assert runs[0].overrides[-1] == "model.mlp=false"
    assert "train.seed=1" in runs[2].overrides
    with pytest.raises(ValueError, match="unknown variant"):
        experiment.plan_runs(tmp_path, ["agnostic", "mystery"], [0], [])


def test_every_variant_builds_a_valid_config() -> None:
    from training.config import load_config

    seen = set()
    for name, (_, overrides) in experiment.VARIANTS.items():
        filled = [o.format(out="/o", seed=0, root="/r") for o in overrides]
        cfg = load_config(experiment.DEFAULT_CONFIG, filled)
        m = cfg.model
        seen.add((m.mask_predictor, m.mlp, m.stop_gradient, cfg.data.mask_classes,
                  m.transfer_input, m.head_init, cfg.train.scheme, cfg.train.init_parts,
                  cfg.data.root, m.mask_train_rois, m.mask_head_arch, m.mask_head_layers))  # fmt: skip
        # Identical budget: the variants may only touch the mask predictor, τ's input, the
        # head init, the mask set, the scheme and the checkpoint they start from; only the
        # pretraining step trains on other data (the disjoint set C).
        allowed = {
            "model.mask_predictor", "model.mlp", "model.stop_gradient", "data.mask_classes",
            "model.transfer_input", "model.class_vectors", "model.head_init", "train.scheme",
            "train.init_checkpoint", "train.init_parts", "model.mask_train_rois",
            "model.mask_head_arch", "model.mask_head_layers",
        }  # fmt: skip
        # The mask head's width and every other field stay the preset's.
        assert m.mask_head_dim == 64, name
        if name == "pretrain_c":
            allowed.add("data.root")
            assert cfg.data.root == "/o/data_c" and cfg.data.mask_classes == "all"
        assert {o.split("=")[0] for o in overrides} <= allowed, name
        if cfg.train.scheme == "stage2":
            assert cfg.train.init_checkpoint == "/o/stage1/seed0/checkpoints/model_final.pt"
            assert experiment.DEPENDS[name] == "stage1"
        if name.startswith("pretrained"):
            assert cfg.train.init_checkpoint == "/o/pretrain_c/seed0/checkpoints/model_final.pt"
            assert experiment.DEPENDS[name] == "pretrain_c"
            head = name.startswith("pretrained_head_")
            assert cfg.train.init_parts == (("backbone", "mask_head") if head else ("backbone",))
            assert cfg.train.scheme == "end_to_end"
    assert len(seen) == len(experiment.VARIANTS)


def test_budget_overrides_scale_the_schedule() -> None:
    over = experiment.budget_overrides(100, 4)
    assert "solver.max_iter=100" in over and "solver.steps=[73, 93]" in over
    assert "solver.batch_size=4" in over and "solver.warmup_iters=7" in over
    assert experiment.budget_overrides(None, None) == []
    with pytest.raises(ValueError, match="--steps"):
        experiment.budget_overrides(0, None)


def _row(variant: str, seed: int, b: float, a: float = 50.0) -> dict:
    row = {"variant": variant, "seed": seed}
    for key, *_ in experiment.METRICS:
        row[key] = a
    row["mask_AP_B"] = b
    return row


def test_summary_mean_std_and_gap_share() -> None:
    rows = [_row("agnostic", 0, 10.0), _row("agnostic", 1, 12.0), _row("oracle", 0, 30.0),
            _row("oracle", 1, 32.0), _row("transfer_mlp", 0, 16.0), _row("transfer_mlp", 1, 18.0)]  # fmt: skip
    summary = experiment.summarise(rows)
    assert list(summary) == ["agnostic", "transfer_mlp", "oracle"]  # display order
    assert summary["agnostic"]["mask_AP_B"] == {"mean": 11.0, "std": round(math.sqrt(2), 3)}
    # (17 - 11) / (31 - 11)
    assert experiment.gap_share(summary, "transfer_mlp", "agnostic") == pytest.approx(0.3)
    assert experiment.gap_share(summary, "transfer", "agnostic") is None  # not run
    flat = experiment.summarise([_row("agnostic", 0, 20.0), _row("oracle", 0, 20.0)])
    assert experiment.gap_share(flat, "agnostic", "agnostic") is None  # no gap to close
    table = experiment.format_table(summary)
    assert "| class-agnostic | 2 | 11.00 ± 1.41 |" in table


def test_partial_experiment_states_n_and_the_missing_seeds(tmp_path: Path) -> None:
    """A gather before every run finished: mean over the finished seeds, no std for one seed
    (not ± 0), the missing seeds and the not-yet-run variants named; the chart leaves out what
    has no seed."""
    rows = [_row("agnostic_mlp", 0, 10.0), _row("agnostic_mlp", 1, 14.0), _row("oracle", 0, 30.0),
            _row("agnostic_mlp_gt", 0, 12.0, a=40.0)]  # fmt: skip
    planned = ["agnostic_mlp", "oracle", "agnostic_mlp_gt", "transfer_gt_resnet8"]
    summary = experiment.summarise(rows, planned, [0, 1, 2])
    assert list(summary) == ["agnostic_mlp", "agnostic_mlp_gt", "transfer_gt_resnet8", "oracle"]
    assert summary["agnostic_mlp"]["mask_AP_B"] == {"mean": 12.0, "std": round(math.sqrt(8), 3)}
    assert summary["agnostic_mlp"]["missing_seeds"] == [2]
    assert summary["oracle"]["mask_AP_B"] == {"mean": 30.0, "std": None}
    assert summary["transfer_gt_resnet8"]["seeds"] == []
    assert summary["transfer_gt_resnet8"]["mask_AP_B"]["mean"] is None
    # (12 - 12) / (30 - 12) on the means of what finished; the variant not run has no share.
    assert experiment.gap_share(summary, "agnostic_mlp_gt", "agnostic_mlp") == pytest.approx(0.0)
    assert experiment.gap_share(summary, "transfer_gt_resnet8", "agnostic_mlp") is None
    table = experiment.format_table(summary)
    assert "| class-agnostic + MLP | 2 of 3 (missing 2) | 12.00 ± 2.83 |" in table
    assert "| class-agnostic + MLP + gt | 1 of 3 (missing 1, 2) | 12.00 (n=1) |" in table
    assert "| transfer + gt + ResNet-8 | 0 of 3 (not run yet) | – |" in table
    oracle_line = next(line for line in table.splitlines() if "oracle" in line)
    assert "±" not in oracle_line  # one seed: no spread stated, not ± 0
    complete = experiment.summarise([_row("oracle", s, 30.0) for s in (0, 1, 2)], ["oracle"],
                                    [0, 1, 2])  # fmt: skip
    assert "| oracle (all masks) | 3 | 30.00 ± 0.00 |" in experiment.format_table(complete)
    png = experiment.plot_chart(summary, tmp_path / "c.png", "partial")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(experiment.finished(summary)) == ["agnostic_mlp", "agnostic_mlp_gt", "oracle"]


def test_nearest_a_match_and_its_chance() -> None:
    torch = pytest.importorskip("torch")
    shapes = ["disk", "ring", "disk", "ring", "disk"]
    in_a = [True, True, False, False, False]
    # B rows 2 and 3 point at the A class of their shape; row 4 (a disk) at the ring.
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.2, 0.8], [0.1, 0.9]])
    assert experiment.nearest_a_match(v, shapes, in_a) == pytest.approx(2 / 3)
    assert experiment.nearest_a_match(v, shapes, [True] * 5) is None
    assert experiment.chance_match(shapes, in_a) == pytest.approx(0.5)
    assert experiment.chance_match(["a", "b", "c", "c"], [True, True, False, False]) == 0.0


def test_dataset_with_other_parameters_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dataset.json").write_text(json.dumps({"config": {"num_classes": 12}}))
    with pytest.raises(ValueError, match="num_classes"):
        experiment.ensure_dataset(
            tmp_path, {"classes": 100, "images": 10, "val_images": 5, "image_size": 64}
        )
    same = {"num_classes": 96, "train_images": 10, "val_images": 5, "image_size": 64}
    (tmp_path / "dataset.json").write_text(json.dumps({"config": same}))  # all 40 appearances
    with pytest.raises(ValueError, match="appearances"):
        experiment.ensure_dataset(
            tmp_path,
            {"classes": 96, "images": 10, "val_images": 5, "image_size": 64, "appearances": 4},
        )


def test_bad_data_root_and_steps_fail_with_a_message(tmp_path: Path, capsys) -> None:
    assert experiment.main(parse(["--out", str(tmp_path), "--data-root", str(tmp_path)])) == 2
    assert "holds no synthetic set" in capsys.readouterr().err
    (tmp_path / "annotations").mkdir()
    argv = ["--out", str(tmp_path), "--data-root", str(tmp_path), "--steps", "0"]
    assert experiment.main(parse(argv)) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err


def test_module_imports_nothing_heavy() -> None:
    code = ("import sys, maskx.bench.experiment; "
            "heavy = [m for m in ('torch', 'matplotlib') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")  # fmt: skip
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_tiny_experiment_end_to_end_and_resume(tmp_path: Path, capsys) -> None:
    pytest.importorskip("torchvision")
    out = tmp_path / "exp"
    argv = ["--out", str(out), "--seeds", "0", "--steps", "2", "--batch-size", "2",
            "--classes", "24", "--images", "6", "--val-images", "3", "--image-size", "64",
            "--jobs", "1", "--set", "model.min_size=64", "--set", "model.max_size=64",
            "--set", "data.workers=0"]  # fmt: skip
    assert experiment.main(parse(argv)) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    main_variants = [v for v in experiment.VARIANTS if v in experiment.PRESET_VARIANTS["main"]]
    assert [r["variant"] for r in results["runs"]] == main_variants
    assert results["missing_runs"] == []
    assert results["budget"]["max_iter"] == 2 and results["budget"]["batch_size"] == 2
    for r in results["runs"]:
        assert r["step"] == 2
        cfg = (Path(r["folder"]) / "config.yaml").read_text()
        assert "max_iter: 2" in cfg
        assert all(r[k] is None or 0.0 <= r[k] <= 100.0 for k, *_ in experiment.METRICS)
    oracle_cfg = (out / "oracle" / "seed0" / "config.yaml").read_text()
    assert "mask_classes: all" in oracle_cfg and "mask_predictor: class_specific" in oracle_cfg
    assert set(results["summary"]) == set(main_variants)
    png = out / "experiment_mask_ap.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| transfer + MLP | 1 |" in printed and "gap share" in printed
    by_variant = {r["variant"]: r for r in results["runs"]}
    diag = by_variant["transfer_mlp"]["nearest_a_class"]
    assert set(diag) == {"chance", "w_det_cls", "w_det_box", "w_det_cls+box", "w_seg"}
    assert all(set(d) == set(experiment.ATTRIBUTES) for d in diag.values())
    assert all(0.0 <= x <= 1.0 for d in diag.values() for x in d.values())
    assert "w_seg" in by_variant["oracle"]["nearest_a_class"]
    assert "nearest_a_class" not in by_variant["agnostic"]
    # The oracle trained with masks for all classes is scored on the experiment's A/B split.
    split = json.loads((out / "oracle" / "seed0" / "metrics_AB.json").read_text())
    assert split["segm"]["B"]["AP"] is not None
    assert by_variant["oracle"]["mask_AP_B"] is not None
    assert (
        json.loads((out / "oracle" / "seed0" / "metrics.json").read_text())["segm"]["B"]["AP"]
        is None
    )

    # Second call: every run is done, nothing retrains (metrics untouched), results regathered.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/seed0/metrics.json")}
    assert len(stamps) == 6
    assert experiment.main(parse([*argv, "--no-diagnose", "--probe-shape-kernels"])) == 0
    assert printed.count("training ...") == 6
    again = capsys.readouterr().out
    assert again.count("done, skipped") == 6 and "training ..." not in again
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # The probe swaps only B kernels: A's mask AP is the run's own.
    probed = json.loads((out / "results.json").read_text())["runs"]
    for row in probed:
        probe = Path(row["folder"]) / "metrics_probe_shape.json"
        assert probe.is_file() == row["variant"].startswith("transfer"), row["variant"]
        if probe.is_file():
            a_ap = json.loads(probe.read_text())["segm"]["A"]["AP"]
            assert 100 * a_ap == pytest.approx(row["mask_AP_A"], abs=1e-3)
            assert "probe_same_shape_kernels_mask_AP_B" in row

    # Same folder, another budget: refused instead of mixing budgets in one table.
    assert experiment.main(parse([*argv, "--steps", "3", "--no-diagnose"])) == 2
    assert "solver.max_iter" in capsys.readouterr().err


def test_chart_title_names_the_dataset_variant() -> None:
    assert experiment.dataset_title(None) == "Synthetic set"
    main = {"num_classes": 100, "num_mask_classes": 25, "config": {"appearances": 0}}
    assert experiment.dataset_title(main) == "Synthetic set (100 classes, 25 in A)"
    few = {"num_classes": 96, "num_mask_classes": 24, "config": {"appearances": 4}}
    assert experiment.dataset_title(few) == "Synthetic set (96 classes, 4 appearances, 24 in A)"


def test_gather_without_the_checks_keeps_what_an_earlier_gather_measured(tmp_path: Path) -> None:
    check = {"chance": {"shape": 0.04}, "w_seg": {"shape": 0.05}}
    earlier = {"runs": [{"variant": "transfer_mlp", "seed": 0, "nearest_a_class": check,
                         experiment.PROBE_KEY: 3.97}]}  # fmt: skip
    path = tmp_path / "results.json"
    path.write_text(json.dumps(earlier))
    rows = [{"variant": "transfer_mlp", "seed": 0}, {"variant": "transfer_mlp", "seed": 1}]
    experiment.keep_previous_checks(rows, path, ["nearest_a_class"])
    assert rows[0]["nearest_a_class"] == check and "nearest_a_class" not in rows[1]
    assert experiment.PROBE_KEY not in rows[0]  # only the keys asked for
    experiment.keep_previous_checks(rows, path, [experiment.PROBE_KEY])
    assert rows[0][experiment.PROBE_KEY] == 3.97
    experiment.keep_previous_checks(rows, tmp_path / "missing.json", ["x"])  # no file: no change


def test_hue_ring_preset_smoke_with_stagewise_controls_and_diagnostics(tmp_path: Path) -> None:
    """The mechanism preset end to end in seconds: τ-input controls, stage 1 → stage 2 with a
    mask branch of another kind, the oracle's A/B scores and the transfer diagnostics."""
    pytest.importorskip("torchvision")
    out = tmp_path / "hue"
    variants = ["agnostic_mlp", "transfer_mlp", "random_tau", "attribute_tau", "oracle",
                "stage1", "stagewise_agnostic_mlp", "stagewise_transfer_mlp"]  # fmt: skip
    argv = ["--preset", "hue_ring", "--quick", "--out", str(out), "--steps", "2",
            "--batch-size", "2", "--images", "6", "--val-images", "3", "--jobs", "1",
            "--variants", *variants, "--transfer-diagnostics", "--ceiling-steps", "2"]  # fmt: skip
    assert experiment.main(parse(argv)) == 0
    meta = json.loads((out / "data" / "dataset.json").read_text())
    assert meta["preset"] == "hue_ring" and meta["num_classes"] == 36
    assert meta["num_mask_classes"] == 12
    results = json.loads((out / "results.json").read_text())
    ran = {r["variant"] for r in results["runs"]}
    assert ran == set(variants) - {"stage1"}  # the detector is a step, not a row
    assert results["missing_runs"] == []
    cfg = (out / "stagewise_agnostic_mlp" / "seed0" / "config.yaml").read_text()
    assert "scheme: stage2" in cfg and "stage1/seed0/checkpoints/model_final.pt" in cfg
    by = {r["variant"]: r for r in results["runs"]}
    assert "ridge_tau" in by["oracle"] and "ceiling" in by["transfer_mlp"]
    assert set(by["transfer_mlp"]["w_det_row_drift"]) == {"cls", "box"}
    assert all(r["true_box_mask_AP_B"] is not None for r in results["runs"])
    assert "true_box_mask_AP_B" in results["summary"]["transfer_mlp"]


def test_generic_features_first_pretrains_on_a_disjoint_ring_and_starts_from_it(
    tmp_path: Path,
) -> None:
    """pretrain_c trains on the shifted ring C with every mask; the pretrained variants take
    its backbone (and, in the ablation, mask head) and are rows; pretraining is a step."""
    pytest.importorskip("torchvision")
    out = tmp_path / "hue"
    variants = ["pretrain_c", "pretrained_agnostic_mlp", "pretrained_head_transfer_mlp"]
    argv = ["--preset", "hue_ring", "--quick", "--out", str(out), "--steps", "2",
            "--batch-size", "2", "--images", "6", "--val-images", "3", "--jobs", "1",
            "--variants", *variants]  # fmt: skip
    assert experiment.main(parse(argv)) == 0
    c_meta = json.loads((out / "data_c" / "dataset.json").read_text())
    ab_meta = json.loads((out / "data" / "dataset.json").read_text())
    assert c_meta["config"]["hue_offset"] == 0.5 and ab_meta["config"]["hue_offset"] == 0.0
    c_names = {c["name"] for c in json.loads(
        (out / "data_c" / "annotations" / "instances_train.json").read_text())["categories"]}  # fmt: skip
    ab_names = {c["name"] for c in json.loads(
        (out / "data" / "annotations" / "instances_train.json").read_text())["categories"]}  # fmt: skip
    assert not c_names & ab_names
    pre_cfg = (out / "pretrain_c" / "seed0" / "config.yaml").read_text()
    assert "data_c" in pre_cfg and "mask_classes: all" in pre_cfg
    results = json.loads((out / "results.json").read_text())
    assert {r["variant"] for r in results["runs"]} == set(variants) - {"pretrain_c"}
    assert [r["variant"] for r in results["step_runs"]] == ["pretrain_c"]
    # Two steps at LR 2e-3 move a weight by ~0.004: a part taken from C stays within that of
    # C's weights, a part with its own initialisation is far from them.
    import torch

    from training.checkpoint import load_checkpoint

    def final(run: str) -> dict[str, torch.Tensor]:
        return load_checkpoint(out / run / "seed0" / "checkpoints" / "model_final.pt")["model"]

    c = final("pretrain_c")

    def distance(state: dict[str, torch.Tensor], prefix: str) -> float:
        names = [n for n in c if n.startswith(prefix) and n.endswith("weight") and n in state]
        assert names, prefix
        return max(float((state[n] - c[n]).abs().max()) for n in names)

    backbone_only, with_head = (
        final("pretrained_agnostic_mlp"),
        final("pretrained_head_transfer_mlp"),
    )
    assert distance(backbone_only, "backbone.") < 0.02
    assert distance(with_head, "backbone.") < 0.02
    assert distance(with_head, "roi_heads.mask_head.") < 0.02
    assert distance(backbone_only, "roi_heads.mask_head.") > 0.05
    assert distance(backbone_only, "roi_heads.box_head.") > 0.05


def test_pretraining_on_the_shapes_preset_builds_a_disjoint_class_table(tmp_path: Path) -> None:
    """On the shapes preset C is the generator's class table 1: the same shapes and palette,
    none of the A/B set's classes, other images."""
    out = tmp_path / "x"
    argv = ["--quick", "--out", str(out), "--images", "3", "--val-images", "2", "--no-train",
            "--variants", "pretrain_c", "pretrained_agnostic_mlp"]  # fmt: skip
    assert experiment.main(parse(argv)) == 0

    def categories(folder: str) -> list[dict]:
        path = out / folder / "annotations" / "instances_train.json"
        return json.loads(path.read_text())["categories"]

    c, ab = categories("data_c"), categories("data")
    assert len(c) == len(ab) == 100
    assert not {x["name"] for x in c} & {x["name"] for x in ab}
    shapes = {x["name"].rsplit("-", 2)[0] for x in ab}
    assert {x["name"].rsplit("-", 2)[0] for x in c} == shapes
    meta = json.loads((out / "data_c" / "dataset.json").read_text())
    assert meta["config"]["class_set"] == 1
    first = out / "data" / "images" / "train" / "000001.png"
    assert first.read_bytes() != (out / "data_c" / "images" / "train" / "000001.png").read_bytes()


def test_pretraining_on_shapes_with_a_data_root_is_refused(tmp_path: Path, capsys) -> None:
    argv = ["--out", str(tmp_path / "x"), "--data-root", str(tmp_path), "--variants",
            "pretrain_c", "pretrained_agnostic_mlp", "--no-train"]  # fmt: skip
    assert experiment.main(parse(argv)) == 2
    assert "--data-root" in capsys.readouterr().err


def test_deep_marc_variants_smoke(tmp_path: Path) -> None:
    """``--deep-marc`` on the hue preset in seconds: the eight variants train and are gathered,
    each run's config holds its mask RoIs and head, the gap shares against class-agnostic + MLP
    are reported, and a finished run of another head is refused."""
    pytest.importorskip("torchvision")
    out = tmp_path / "dm"
    argv = ["--preset", "hue_ring", "--quick", "--deep-marc", "--out", str(out), "--steps", "2",
            "--batch-size", "2", "--images", "6", "--val-images", "3", "--jobs", "1"]  # fmt: skip
    assert experiment.main(parse(argv)) == 0
    results = json.loads((out / "results.json").read_text())
    assert {r["variant"] for r in results["runs"]} == set(experiment.DEEP_MARC_VARIANTS)
    assert results["missing_runs"] == []
    import yaml

    def model_cfg(variant: str) -> dict:
        return yaml.safe_load((out / variant / "seed0" / "config.yaml").read_text())["model"]

    assert model_cfg("agnostic_mlp")["mask_train_rois"] == "proposals"
    assert model_cfg("agnostic_mlp")["mask_head_arch"] == "fcn"
    deep = model_cfg("agnostic_mlp_gt_resnet8")
    assert (deep["mask_train_rois"], deep["mask_head_arch"], deep["mask_head_layers"]) == (
        "gt", "resnet", 8)  # fmt: skip
    t = model_cfg("transfer_gt_resnet8")
    assert (t["mask_predictor"], t["mlp"], t["mask_head_layers"]) == ("transfer", False, 8)
    assert model_cfg("agnostic_mlp_gt_resnet4")["mask_head_dim"] == model_cfg("oracle")[
        "mask_head_dim"]  # fmt: skip
    assert "agnostic_mlp_gt_resnet8_vs_agnostic_mlp" in results["gap_share_mask_AP_B"]
    # A finished fcn run is not reused for a ResNet head.
    (out / "agnostic_mlp_gt" / "seed0" / "config.yaml").write_text(
        (out / "agnostic_mlp_gt" / "seed0" / "config.yaml").read_text().replace(
            "mask_head_arch: fcn", "mask_head_arch: resnet"))  # fmt: skip
    assert experiment.main(parse(argv)) == 2
