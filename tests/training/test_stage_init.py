"""Stage 2 (or any run) starting from another run's checkpoint, and evaluation on another
A/B split (``maskx evaluate --mask-classes``)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from model import ModelConfig, build_model
from training.checkpoint import CheckpointError, init_from_checkpoint, load_checkpoint


def _model_like(ckpt: dict, **changes) -> torch.nn.Module:
    cfg = ModelConfig.from_dict(ckpt["model_config"]).replace(**changes)
    torch.manual_seed(123)
    return build_model(cfg)


def test_detector_weights_load_and_a_mask_branch_of_another_kind_keeps_its_init(
    trained_checkpoint, caplog
):
    ckpt = load_checkpoint(trained_checkpoint)  # transfer + MLP
    model = _model_like(ckpt, mask_predictor="class_agnostic", mlp=False)
    own_fcn = model.roi_heads.mask_predictor.mask_fcn_logits.weight.detach().clone()
    with caplog.at_level(logging.INFO):
        report = init_from_checkpoint(model, trained_checkpoint, (), logging.getLogger("t"))
    state = model.state_dict()
    for name in ("backbone.body.stem.0.weight", "roi_heads.box_predictor.cls_score.weight"):
        if name in state:
            assert torch.equal(state[name], ckpt["model"][name])
    assert "roi_heads.box_predictor.cls_score.weight" in report["loaded"]
    assert any(k.startswith("backbone.") for k in report["loaded"])
    # The class-agnostic kernel is not in the file: it keeps its own initialisation, and the
    # transfer function of the file is not taken.
    assert torch.equal(model.roi_heads.mask_predictor.mask_fcn_logits.weight, own_fcn)
    assert any("weight_transfer" in k for k in report["skipped"])
    assert "roi_heads.mask_predictor.mask_fcn_logits.weight" in report["kept_own_init"]
    assert "mask branch is of another kind" in caplog.text


def test_only_the_parts_asked_for_are_taken(trained_checkpoint):
    ckpt = load_checkpoint(trained_checkpoint)
    model = _model_like(ckpt)
    before = model.roi_heads.box_predictor.cls_score.weight.detach().clone()
    report = init_from_checkpoint(model, trained_checkpoint, ("backbone",))
    assert report["loaded"] and all(k.startswith("backbone.") for k in report["loaded"])
    assert torch.equal(model.roi_heads.box_predictor.cls_score.weight, before)
    with pytest.raises(ValueError, match="unknown"):
        init_from_checkpoint(model, trained_checkpoint, ("head",))


def test_another_architecture_is_refused_with_the_names(trained_checkpoint):
    ckpt = load_checkpoint(trained_checkpoint)
    model = _model_like(ckpt, box_head_dim=ckpt["model_config"]["box_head_dim"] * 2)
    with pytest.raises(CheckpointError, match="does not match the model.*box_head"):
        init_from_checkpoint(model, trained_checkpoint)


def test_evaluate_scores_another_split(trained_checkpoint, synth_root: Path, tmp_path: Path):
    from training.evaluate_cli import run_evaluation

    ann = synth_root / "annotations" / "instances_val.json"
    images = synth_root / "images" / "val"
    names = load_checkpoint(trained_checkpoint)["vocab"]["names"]
    split = tmp_path / "a.txt"
    split.write_text("\n".join(names[:4]) + "\n")
    four = run_evaluation(str(trained_checkpoint), str(ann), str(images), workers=0,
                          progress=False, mask_classes=str(split))  # fmt: skip
    everything = run_evaluation(str(trained_checkpoint), str(ann), str(images), workers=0,
                                progress=False, mask_classes="all")  # fmt: skip
    # With 4 classes in A, B (the other 8) is scored; with every class in A there is no B,
    # and A is then the whole set.
    assert four["segm"]["B"]["AP"] is not None
    assert everything["segm"]["B"]["AP"] is None
    assert everything["segm"]["A"]["AP"] == pytest.approx(everything["segm"]["all"]["AP"])
    assert four["segm"]["all"]["AP"] == pytest.approx(everything["segm"]["all"]["AP"])
    with pytest.raises(Exception, match="nope"):
        run_evaluation(str(trained_checkpoint), str(ann), str(images), workers=0,
                       progress=False, mask_classes=str(tmp_path / "nope.txt"))  # fmt: skip
