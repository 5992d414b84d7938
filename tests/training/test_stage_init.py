"""Stage 2 (or any run) starting from another run's checkpoint, and evaluation on another
A/B split (``maskx evaluate --mask-classes``)."""

from __future__ import annotations

import json
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
    for name in ("backbone.body.conv1.weight", "roi_heads.box_predictor.cls_score.weight"):
        assert name in state and name in ckpt["model"], name  # no comparison skipped silently
        assert not torch.equal(state[name], _model_like(ckpt, mask_predictor="class_agnostic",
                                                        mlp=False).state_dict()[name])  # fmt: skip
        assert torch.equal(state[name], ckpt["model"][name])
    assert "roi_heads.box_predictor.cls_score.weight" in report["loaded"]
    assert any(k.startswith("backbone.") for k in report["loaded"])
    # The class-agnostic kernel is not in the file: it keeps its own initialisation, and the
    # transfer function of the file is not taken.
    assert torch.equal(model.roi_heads.mask_predictor.mask_fcn_logits.weight, own_fcn)
    assert any("weight_transfer" in k for k in report["skipped"])
    assert "roi_heads.mask_predictor.mask_fcn_logits.weight" in report["kept_own_init"]
    assert "mask branch is of another kind" in caplog.text


def _stage_trainer(synth_root: Path, out: Path, scheme: str, init: Path | None = None):
    from tests.helpers import TINY_CONFIG, tiny_train_overrides
    from training.config import load_config
    from training.trainer import Trainer

    extra = {"train.scheme": scheme, "solver.max_iter": 2, "solver.lr": 0.01,
             "train.checkpoint_period": 0, "data.val_annotations": "null"}  # fmt: skip
    if init is not None:
        extra["train.init_checkpoint"] = str(init)
    cfg = load_config(TINY_CONFIG, tiny_train_overrides(synth_root, **extra))
    return Trainer(cfg, out, resume=False, hooks=[])


def _is_mask_branch(name: str) -> bool:
    return name.startswith(("roi_heads.mask_head.", "roi_heads.mask_predictor."))


def test_stage2_trains_the_mask_branch_alone(trained_checkpoint, synth_root: Path, tmp_path):
    """Stage 2 from a checkpoint: after two steps every detector tensor (backbone, FPN, RPN,
    box head and predictor, BatchNorm statistics included) is bit-identical to the file's, and
    the mask branch has moved."""
    ckpt = load_checkpoint(trained_checkpoint)["model"]
    trainer = _stage_trainer(synth_root, tmp_path, "stage2", trained_checkpoint)
    assert trainer.loss_keys == ["loss_mask"]
    start = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    assert start.keys() == ckpt.keys()
    assert all(torch.equal(start[k], ckpt[k]) for k in ckpt), "stage 2 must start from the file"
    for _ in range(2):
        losses = trainer.step()
    assert losses["loss_mask"] > 0
    end = trainer.model.state_dict()
    detector = [k for k in end if not _is_mask_branch(k)]
    mask = [k for k in end if _is_mask_branch(k)]
    assert any(k.startswith("backbone.body.") and "running_mean" in k for k in detector)
    assert any(k.startswith("roi_heads.box_predictor.") for k in detector) and mask
    changed = [k for k in detector if not torch.equal(end[k], start[k])]
    assert changed == [], f"stage 2 changed detector tensors: {changed[:5]}"
    assert any(not torch.equal(end[k], start[k]) for k in mask), "the mask branch did not train"


def test_stage1_trains_the_detector_without_mask_loss(synth_root: Path, tmp_path):
    """Stage 1: the mask loss is left out and the mask branch keeps its initialisation
    bit for bit, while the detector (backbone and box predictor) trains."""
    trainer = _stage_trainer(synth_root, tmp_path, "stage1")
    assert "loss_mask" not in trainer.loss_keys
    assert {"loss_classifier", "loss_box_reg", "loss_objectness"} <= set(trainer.loss_keys)
    start = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    for _ in range(2):
        trainer.step()
    end = trainer.model.state_dict()
    mask = [k for k in end if _is_mask_branch(k)]
    assert mask and all(torch.equal(end[k], start[k]) for k in mask), "stage 1 moved the masks"
    for part in ("backbone.body.conv1.weight", "roi_heads.box_predictor.cls_score.weight"):
        assert not torch.equal(end[part], start[part]), f"stage 1 did not train {part}"


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
    # The 40-step model's mask AP is 0 everywhere, so the lines above cannot tell splits
    # apart; its box AP is not (0.0024 on the 4 classes, 0.0011 on the other 8, when
    # measured). COCO's AP of a class set is the mean of its classes' APs over the classes
    # with ground truth, so "all" is the mean of A and B weighted by those counts: a split
    # that scored the wrong classes as A or B breaks it.
    gt = json.loads(ann.read_text())
    present = {c["name"] for c in gt["categories"]
               if any(a["category_id"] == c["id"] for a in gt["annotations"])}  # fmt: skip
    n_a = len(present & set(names[:4]))
    n_b = len(present - set(names[:4]))
    assert n_a > 0 and n_b > 0
    box = four["bbox"]
    assert box["all"]["AP"] > 0 and box["A"]["AP"] != pytest.approx(box["B"]["AP"])
    weighted = (n_a * box["A"]["AP"] + n_b * box["B"]["AP"]) / (n_a + n_b)
    assert box["all"]["AP"] == pytest.approx(weighted, rel=1e-6)
    assert everything["bbox"]["A"]["AP"] == pytest.approx(box["all"]["AP"])
    with pytest.raises(Exception, match="nope"):
        run_evaluation(str(trained_checkpoint), str(ann), str(images), workers=0,
                       progress=False, mask_classes=str(tmp_path / "nope.txt"))  # fmt: skip
