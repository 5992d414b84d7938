"""``maskx import-detectron`` end to end: the checkpoint loads, runs and exports."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from maskx.cli import main as cli_main
from tests.training.detectron.conftest import SMALL
from training.checkpoint import load_model_from_checkpoint
from training.detectron.writer import Call, Global, write_detectron_pickle
from training.export.onnx_export import METADATA_KEY


def test_import_then_predict_and_export(small_file, small_classes, tmp_path, capsys):
    path, _ = small_file
    out = tmp_path / "imported.pt"
    code = cli_main(["import-detectron", str(path), "--classes", str(small_classes),
                     "--out", str(out), "--name", "vg3k-small"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert f"{SMALL.num_classes} classes" in capsys.readouterr().out
    model, vocab, ckpt = load_model_from_checkpoint(out)
    assert len(vocab) == SMALL.num_classes and ckpt.model_config["extra"]["name"] == "vg3k-small"
    model.transform.min_size, model.transform.max_size = (96,), 128  # a quick run on the CPU
    torch.manual_seed(0)
    with torch.no_grad():
        (pred,) = model([torch.rand(3, 80, 120)])
    assert pred["boxes"].shape[1] == 4 and pred["masks"].shape[1:] == (1, 80, 120)
    assert len(pred["labels"]) > 0 and int(pred["labels"].max()) <= SMALL.num_classes
    # maskx export takes it. (Not verified against eager here: random weights give many tied
    # scores, whose order NMS may break either way.)
    onnx_path = tmp_path / "imported.onnx"
    code = cli_main(["export", "--checkpoint", str(out), "--output", str(onnx_path),
                     "--min-size", "96", "--max-size", "128", "--no-verify"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    meta = json.loads({p.key: p.value for p in onnx.load(onnx_path).metadata_props}[METADATA_KEY])
    assert meta["classes"] == list(vocab.names) and meta["model_config"]["stride_in_1x1"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "absent.pkl", "does not exist"),
        (lambda d: write_detectron_pickle(
            d / "evil.pkl", {"x": Call(Global("os", "system"), (b"true",))}, None),
         "asks for os.system"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_with_a_message(tmp_path, small_classes, capsys, make, message):
    code = cli_main(["import-detectron", str(make(tmp_path)), "--classes", str(small_classes),
                     "--out", str(tmp_path / "o.pt")])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("maskx import-detectron: ") and message in err
    assert not (tmp_path / "o.pt").exists()


def test_bad_vocabulary_or_output_exits_2(small_file, small_classes, tmp_path, capsys):
    path, _ = small_file
    binary = tmp_path / "classes.txt"
    binary.write_bytes(b"\xff\xfe\x00")
    code = cli_main(["import-detectron", str(path), "--classes", str(binary),
                     "--out", str(tmp_path / "o.pt")])  # fmt: skip
    assert code == 2 and "cannot be read as text" in capsys.readouterr().err
    blocked = tmp_path / "file"
    blocked.write_text("")
    code = cli_main(["import-detectron", str(path), "--classes", str(small_classes),
                     "--out", str(blocked / "o.pt")])  # fmt: skip
    assert code == 2 and "cannot write" in capsys.readouterr().err
