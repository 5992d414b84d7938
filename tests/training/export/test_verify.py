"""The export verification fails when the graph and eager PyTorch differ: on a box, a score or
a mask probability beyond its tolerance; the tolerance options move the line; `maskx export`
exits 1 on a failed verification."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from maskx.cli import main as cli_main
from training.checkpoint import load_model_from_checkpoint
from training.export import onnx_export
from training.export.onnx_export import _compare, export_model, verify_export

BOX_RTOL, SCORE_ATOL, MASK_ATOL = 1e-3, 1e-4, 1e-3  # `maskx export`'s float32 tolerances


def _reference() -> dict[str, torch.Tensor]:
    boxes = torch.tensor([[10.0, 10.0, 50.0, 60.0], [100.0, 20.0, 140.0, 90.0]])
    g = torch.Generator().manual_seed(0)
    return {"boxes": boxes, "labels": torch.tensor([3, 1]), "scores": torch.tensor([0.9, 0.4]),
            "mask_probs": torch.rand(2, 28, 28, generator=g)}  # fmt: skip


def _graph(ref: dict[str, torch.Tensor], field: str, delta: float) -> dict[str, np.ndarray]:
    """ref as the graph would return it, with ``delta`` added to one element of ``field``."""
    got = {k: v.numpy().copy() for k, v in ref.items()}
    got[field].reshape(-1)[-1] += delta
    return got


@pytest.mark.parametrize(
    ("field", "over", "under"),
    [
        # the last box coordinate is 90 px: a relative 1e-3 is 0.09 px
        ("boxes", 0.1, 0.08),
        ("scores", 2e-4, 5e-5),
        ("mask_probs", 2e-3, 5e-4),
    ],
)
def test_one_value_beyond_its_tolerance_fails_the_case(field: str, over: float, under: float):
    ref = _reference()
    assert _compare("same", ref, _graph(ref, field, 0.0), BOX_RTOL, MASK_ATOL, SCORE_ATOL).passed
    near = _compare("near", ref, _graph(ref, field, under), BOX_RTOL, MASK_ATOL, SCORE_ATOL)
    assert near.passed, near
    far = _compare("far", ref, _graph(ref, field, over), BOX_RTOL, MASK_ATOL, SCORE_ATOL)
    assert not far.passed and far.same_detections, far
    measured = {"boxes": far.max_box_rel_diff, "scores": far.max_score_diff,
                "mask_probs": far.max_mask_diff}  # fmt: skip
    expected = over / 90.0 if field == "boxes" else over
    assert measured[field] == pytest.approx(expected, rel=1e-3)
    assert all(v == 0 for k, v in measured.items() if k != field), measured
    # a wider tolerance for that value lets the same difference pass
    wide = {"box_rtol": BOX_RTOL, "mask_atol": MASK_ATOL, "score_atol": SCORE_ATOL}
    wide[{"boxes": "box_rtol", "scores": "score_atol", "mask_probs": "mask_atol"}[field]] = 1.0
    assert _compare("wide", ref, _graph(ref, field, over), **wide).passed


def test_another_label_or_a_missing_detection_fails_whatever_the_tolerances():
    ref = _reference()
    loose = {"box_rtol": 1.0, "mask_atol": 1.0, "score_atol": 1.0}
    other_label = _graph(ref, "labels", 1)
    case = _compare("label", ref, other_label, **loose)
    assert not case.passed and not case.same_detections
    missing = {k: v.numpy()[:1] for k, v in ref.items()}
    assert not _compare("missing", ref, missing, **loose).passed


def _shift_mask_logits(model: torch.nn.Module, by: float = 0.5) -> torch.nn.Module:
    """A copy whose mask logits are all ``by`` higher (boxes, scores and labels unchanged)."""
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        shifted.roi_heads.mask_predictor.conv5_mask.bias += by
    return shifted


def test_verify_export_fails_on_a_graph_with_other_masks(trained_checkpoint, tmp_path):
    model, _, _ = load_model_from_checkpoint(trained_checkpoint)
    model.roi_heads.score_thresh = 0.0  # detections on every image
    path = export_model(_shift_mask_logits(model), tmp_path / "m.onnx", {"name": "t"})
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 96, 96), dtype=torch.uint8, generator=g),
              torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8, generator=g)]  # fmt: skip
    report = verify_export(model, path, images)
    print(report.table())
    assert not report.passed
    # the cases against eager (the batch-of-2 cases compare the graph with itself)
    against_eager = [c for c in report.cases if not c.name.startswith("batch of 2")]
    assert len(against_eager) == 3 and all(c.detections_eager > 0 for c in against_eager)
    for c in against_eager:
        assert c.same_detections and c.max_box_rel_diff <= BOX_RTOL, c
        assert c.max_mask_diff > 0.05 and not c.passed, c
    assert verify_export(model, path, images, mask_atol=1.0).passed


def test_cli_exits_1_when_verification_fails_and_the_override_moves_the_line(
    trained_checkpoint, tmp_path, monkeypatch, capsys
):
    real_export = onnx_export.export_model

    def export_other_masks(model, output, metadata, **kwargs):  # type: ignore[no-untyped-def]
        return real_export(_shift_mask_logits(model), output, metadata, **kwargs)

    monkeypatch.setattr(onnx_export, "export_model", export_other_masks)
    argv = ["export", "--checkpoint", str(trained_checkpoint), "--output",
            str(tmp_path / "m.onnx")]  # fmt: skip
    assert cli_main(argv) == 1
    captured = capsys.readouterr()
    assert "verification FAILED" in captured.err and "FAIL" in captured.out
    assert (tmp_path / "m.onnx").is_file()  # written, as the message says
    assert cli_main([*argv, "--mask-atol", "1"]) == 0, capsys.readouterr().out
    assert "verification passed" in capsys.readouterr().out
