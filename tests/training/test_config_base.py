"""Config inheritance (``_BASE_``): deep merge with the file winning, recursion, cycles and
missing bases named, types checked on the merged result, and the shipped configs resolving to
exactly what they resolved to before they were rewritten on shared bases."""

from __future__ import annotations

import json

import pytest
import yaml

from maskx.cli import main as maskx
from model.config import ConfigError
from tests.helpers import REPO, TINY_CONFIG, tiny_train_overrides
from training.config import TrainConfig, load_config, merge_configs, read_config_file

CONFIGS = REPO / "configs"
# Every config that existed before the shared bases, as it resolved then (only the fields that
# differ from the defaults of that time), keyed by today's file name: two class-agnostic configs
# were renamed to say their split (coco_r50_class_agnostic*.yaml → coco_r50_voc2nonvoc_*) and
# the VG ones to say their depth (vg3000_* → vg3000_r50_*).
BEFORE = json.loads(
    (REPO / "tests" / "fixtures" / "configs" / "resolved_before_base.json").read_text()
)


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_rewritten_configs_resolve_to_what_they_did_before(name):
    # The expected side goes through today's TrainConfig, so that a field added since counts at
    # its default on both sides; every value the old file set must come out the same.
    expected = TrainConfig.from_dict(BEFORE[name]).to_dict()
    assert load_config(CONFIGS / name).to_dict() == expected


def test_the_coco_and_vg_configs_inherit_instead_of_repeating():
    for path in sorted(CONFIGS.glob("*.yaml")):
        if path.stem.startswith(("coco_", "vg3000_")):
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
            assert raw["_BASE_"].startswith("base/"), path.name
            # A run config states only what makes it differ: a few lines, not a full config.
            assert sum(len(v) for k, v in raw.items() if isinstance(v, dict)) <= 6, path.name


@pytest.mark.parametrize("path", sorted((CONFIGS / "base").glob("*.yaml")), ids=lambda p: p.name)
def test_every_base_is_a_valid_config_by_itself(path):
    assert load_config(path).to_dict()["model"]["backbone"] in ("resnet50", "resnet101")


def test_merge_is_deep_and_the_file_wins(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "root.yaml").write_text(
        "model: {backbone: tiny, min_size: 64, max_size: 64, extra: {a: 1, b: 2}}\n"
        "solver: {lr: 0.5, steps: [10, 20], max_iter: 30}\n"
    )
    (tmp_path / "sub" / "mid.yaml").write_text(
        "_BASE_: root.yaml\nsolver: {lr: 0.25}\nmodel: {extra: {b: 3}}\n"
    )
    (tmp_path / "leaf.yaml").write_text(  # a base is found relative to the file naming it
        "_BASE_: sub/mid.yaml\nsolver: {steps: [5]}\ntrain: {seed: 7}\n"
    )
    raw = read_config_file(tmp_path / "leaf.yaml")
    assert "_BASE_" not in raw
    assert raw["solver"] == {"lr": 0.25, "steps": [5], "max_iter": 30}  # lists are replaced
    assert raw["model"]["extra"] == {"a": 1, "b": 3}  # mappings merge at every depth
    cfg = load_config(tmp_path / "leaf.yaml", ["solver.lr=0.125"])  # --set wins over both
    assert (cfg.solver.lr, cfg.solver.steps, cfg.solver.max_iter) == (0.125, (5,), 30)
    assert (cfg.model.backbone, cfg.model.min_size, cfg.train.seed) == ("tiny", 64, 7)
    assert "_BASE_" not in json.dumps(cfg.to_dict())


def test_merge_configs_leaves_its_arguments_alone():
    base = {"solver": {"lr": 1.0, "steps": [1]}}
    child = {"solver": {"lr": 2.0}}
    assert merge_configs(base, child) == {"solver": {"lr": 2.0, "steps": [1]}}
    assert base == {"solver": {"lr": 1.0, "steps": [1]}} and child == {"solver": {"lr": 2.0}}


def test_an_empty_section_keeps_the_bases_values(tmp_path):
    (tmp_path / "base.yaml").write_text("solver: {lr: 0.5}\ntrain: {seed: 4}\n")
    (tmp_path / "leaf.yaml").write_text("_BASE_: base.yaml\nsolver:\n  # lr: 0.1\ntrain: {}\n")
    cfg = load_config(tmp_path / "leaf.yaml")
    assert (cfg.solver.lr, cfg.train.seed) == (0.5, 4)
    # A field set to null does replace the base's value.
    (tmp_path / "nulls.yaml").write_text("_BASE_: base.yaml\nsolver: {clip_grad_norm: null}\n")
    (tmp_path / "base.yaml").write_text("solver: {clip_grad_norm: 5.0}\n")
    assert load_config(tmp_path / "nulls.yaml").solver.clip_grad_norm is None


def test_a_missing_base_is_named_with_the_file_that_names_it(tmp_path):
    (tmp_path / "leaf.yaml").write_text("_BASE_: base/nowhere.yaml\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "leaf.yaml")
    message = str(err.value)
    assert str(tmp_path / "base" / "nowhere.yaml") in message and "does not exist" in message
    assert f"the _BASE_ of {str(tmp_path / 'leaf.yaml')!r}" in message


def test_a_cycle_of_bases_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("_BASE_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_BASE_: a.yaml\n")
    with pytest.raises(ConfigError, match="_BASE_ makes a cycle") as err:
        load_config(tmp_path / "a.yaml")
    assert "a.yaml -> " in str(err.value) and "b.yaml -> " in str(err.value)
    (tmp_path / "self.yaml").write_text("_BASE_: self.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "self.yaml")


def test_a_base_that_is_not_a_path_is_refused(tmp_path):
    (tmp_path / "leaf.yaml").write_text("_BASE_: [a.yaml, b.yaml]\n")
    with pytest.raises(ConfigError, match="_BASE_ must be the path of another config file"):
        load_config(tmp_path / "leaf.yaml")


def test_types_are_checked_on_the_merged_config(tmp_path):
    (tmp_path / "base.yaml").write_text("solver: {lr: abc}\n")
    (tmp_path / "leaf.yaml").write_text("_BASE_: base.yaml\ntrain: {seed: 1}\n")
    with pytest.raises(ConfigError, match="solver.lr='abc': expected float, got str"):
        load_config(tmp_path / "leaf.yaml")
    # The file may correct its base's value: only the merged result is checked.
    (tmp_path / "fixed.yaml").write_text("_BASE_: base.yaml\nsolver: {lr: 0.5}\n")
    assert load_config(tmp_path / "fixed.yaml").solver.lr == 0.5


def test_maskx_train_saves_the_resolved_config_and_resumes_with_it(synth_root, tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(f"_BASE_: {TINY_CONFIG}\ntrain: {{seed: 3}}\n")
    out = tmp_path / "run"
    sets = tiny_train_overrides(
        synth_root, **{"solver.max_iter": 2, "data.val_annotations": "null"}
    )
    argv = ["train", "--config", str(child), "--out", str(out)]
    for s in sets:
        argv += ["--set", s]
    assert maskx([*argv, "--set", "solver.max_iter=1"]) == 0
    saved = (out / "config.yaml").read_text(encoding="utf-8")
    assert "_BASE_" not in saved
    # The merged config (the model section as training resolved it from the data: K = 12).
    merged = load_config(child, [*sets, "solver.max_iter=1"]).to_dict()
    written = yaml.safe_load(saved)
    assert {k: written[k] for k in ("data", "solver", "train")} == {
        k: merged[k] for k in ("data", "solver", "train")
    }
    assert written["train"]["seed"] == 3 and written["model"]["num_classes"] == 12
    # Resume compares the saved file with the merged config: the same command is accepted, a
    # longer schedule (solver.max_iter differs) refused with exit 2; config.yaml stays as it was.
    assert maskx([*argv, "--set", "solver.max_iter=1"]) == 0
    assert maskx(argv) == 2
    assert (out / "config.yaml").read_text(encoding="utf-8") == saved
