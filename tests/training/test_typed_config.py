"""Types are checked on load and on --set: exit 2 naming the field, the value and the type."""

from __future__ import annotations

import pytest

from maskx.cli import main as maskx
from model.config import ConfigError
from tests.helpers import TINY_CONFIG
from training.config import load_config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("solver.lr=abc", "solver.lr='abc': expected float, got str"),
        ("train.seed=1.5", "train.seed=1.5: expected int, got float"),
        ("train.deterministic=2", "train.deterministic=2: expected bool, got int"),
        ("model.fpn_channels=abc", "model.fpn_channels='abc': expected int, got str"),
        ("solver.steps=[10, x]", "solver.steps=[10, 'x']: expected a list of int, got list"),
        ("solver.clip_grad_norm=big", "expected float or null, got str"),
        ("data.root=2017", "data.root=2017: expected str or null, got int"),
    ],
)
def test_wrong_types_are_refused_naming_field_value_and_type(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(TINY_CONFIG, [override])
    assert message in str(err.value)


def test_ints_are_taken_as_floats_and_lists_as_tuples():
    cfg = load_config(TINY_CONFIG, ["solver.lr=1", "solver.steps=[5, 7]", "data.root='2017'"])
    assert cfg.solver.lr == 1.0 and isinstance(cfg.solver.lr, float)
    assert cfg.solver.steps == (5, 7) and cfg.data.root == "2017"


def test_a_config_file_is_checked_too(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("solver:\n  batch_size: two\n")
    with pytest.raises(ConfigError, match="solver.batch_size='two': expected int"):
        load_config(bad)


def test_maskx_train_exits_2_on_a_wrong_type(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--config", str(TINY_CONFIG), "--out", str(out), "--set", "solver.lr=abc"]
    assert maskx(argv) == 2
    assert "solver.lr='abc': expected float, got str" in capsys.readouterr().err
    assert not out.exists()
