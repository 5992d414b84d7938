"""Clean failures: bad data or settings exit 2 with a message naming the field or path, with no
traceback and no half-made run folder; ``maskx --version``."""

from __future__ import annotations

import shutil

import pytest

from maskx.cli import main as maskx
from tests.helpers import TINY_CONFIG, tiny_train_overrides


def _train(synth_root, out, **extra) -> list[str]:
    argv = ["train", "--config", str(TINY_CONFIG), "--out", str(out)]
    for s in tiny_train_overrides(synth_root, **extra):
        argv += ["--set", s]
    return argv


def test_missing_dataset_exits_2_naming_the_path_and_makes_no_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert maskx(_train(tmp_path / "no-data", out)) == 2
    err = capsys.readouterr().err
    assert "data.train_annotations" in err and str(tmp_path / "no-data") in err
    assert "Traceback" not in err and not out.exists()


def test_missing_image_folder_is_named(synth_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert maskx(_train(synth_root, out, **{"data.val_images": "images/nope"})) == 2
    err = capsys.readouterr().err
    assert "data.val_images" in err and str(synth_root / "images" / "nope") in err
    assert not out.exists()


def test_a_run_that_cannot_start_after_loading_leaves_no_folder(synth_root, tmp_path, capsys):
    # The data loads, then the trainer finds fewer images than one step's batch.
    out = tmp_path / "run"
    assert maskx(_train(synth_root, out, **{"solver.batch_size": 64})) == 2
    assert "smaller than one step's batch" in capsys.readouterr().err
    assert not out.exists()


def test_unreadable_annotation_file_is_named(synth_root, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    ann = root / "annotations" / "instances_train.json"
    ann.unlink()
    ann.mkdir()  # a folder where the file should be: open() fails
    assert maskx(_train(root, tmp_path / "run")) == 2
    assert f"data.train_annotations: file {ann} is not a file" in capsys.readouterr().err


def test_evaluate_exits_2_on_missing_or_unreadable_annotations(trained_checkpoint, tmp_path,
                                                                synth_root, capsys):  # fmt: skip
    out = tmp_path / "eval" / "metrics.json"
    base = ["evaluate", "--checkpoint", str(trained_checkpoint), "--images",
            str(synth_root / "images" / "val"), "--out", str(out), "--workers", "0",
            "--no-progress", "--device", "cpu"]  # fmt: skip
    missing = tmp_path / "missing.json"
    assert maskx([*base, "--annotations", str(missing)]) == 2
    assert f"{missing}: annotation file not found" in capsys.readouterr().err
    folder = tmp_path / "a-folder.json"
    folder.mkdir()
    assert maskx([*base, "--annotations", str(folder)]) == 2
    assert f"{folder}: cannot read the annotation file" in capsys.readouterr().err
    assert not out.parent.exists()


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        maskx(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"maskx {version('maskx')}"
