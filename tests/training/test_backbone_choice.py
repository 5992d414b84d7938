"""No silent from-scratch: a ResNet config without backbone weights is refused; from scratch
on purpose is spelled ``model.backbone_weights=none``; ``model.norm=sync_bn`` on several
processes."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from model import ModelConfig, build_model
from model.config import ConfigError
from tests.helpers import REPO
from training.config import check_backbone_weights, load_config
from training.trainer import resolve_model_config, use_sync_batchnorm

R50 = REPO / "configs" / "coco_r50_voc2nonvoc.yaml"


def test_resnet_config_without_weights_is_refused_naming_the_field_and_the_way_out():
    cfg = load_config(R50)
    with pytest.raises(ConfigError, match="model.backbone_weights") as err:
        check_backbone_weights(cfg)
    assert "--set model.backbone_weights=none" in str(err.value)
    # Named weights, from scratch on purpose, or a backbone from init_checkpoint all pass.
    check_backbone_weights(load_config(R50, ["model.backbone_weights=/w/r50.pth"]))
    check_backbone_weights(load_config(R50, ["model.backbone_weights=none"]))
    check_backbone_weights(load_config(R50, ["train.init_checkpoint=s1.pt"]))
    with pytest.raises(ConfigError, match="model.backbone_weights"):
        check_backbone_weights(
            load_config(R50, ["train.init_checkpoint=s1.pt", "train.init_parts=[rpn]"])
        )
    # The tiny backbone is made for from-scratch work: no refusal.
    check_backbone_weights(load_config(REPO / "configs" / "tiny_synth.yaml"))


def test_maskx_train_exits_2_before_making_the_run_folder(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "maskx.cli", "train", "--config", str(R50), "--out", str(out)]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "model.backbone_weights" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()


def test_from_scratch_on_purpose_builds_without_a_weights_file():
    cfg = resolve_model_config(load_config(R50, ["model.backbone_weights=none"]), 3)
    assert cfg.model.backbone_weights is None  # nothing to load, nothing the checkpoint names
    assert cfg.model.norm == "bn" and cfg.model.trainable_backbone_layers == 5
    cfg = resolve_model_config(
        load_config(R50, ["model.backbone_weights=none", "model.norm=sync_bn"]), 3
    )
    assert cfg.model.norm == "sync_bn"


def _tiny_model() -> nn.Module:
    return build_model(ModelConfig(backbone="tiny", num_classes=3, norm="sync_bn", min_size=64,
                                   max_size=64, fpn_channels=16, tiny_widths=(8, 8, 8, 8)))  # fmt: skip


def test_sync_bn_converts_on_several_processes_keeping_the_tensors():
    model = _tiny_model()
    params = {n: p for n, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert use_sync_batchnorm(model, "sync_bn", 1, torch.device("cpu")) is model
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    assert use_sync_batchnorm(model, "bn", 8, torch.device("cuda", 0)) is model

    converted = use_sync_batchnorm(model, "sync_bn", 8, torch.device("cuda", 0))
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in converted.modules()) > 0
    assert not any(type(m) is nn.BatchNorm2d for m in converted.modules())
    # Same Parameter objects (the optimizer keeps them) and the same state dict keys/values.
    assert all(p is params[n] for n, p in converted.named_parameters())
    after = converted.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(after[k], state[k]) for k in state)


def test_sync_bn_on_cpu_processes_is_refused():
    with pytest.raises(ConfigError, match="model.norm=sync_bn"):
        use_sync_batchnorm(_tiny_model(), "sync_bn", 2, torch.device("cpu"))


def test_unknown_norm_names_the_choices():
    with pytest.raises(ConfigError, match="sync_bn"):
        ModelConfig(norm="group_norm")


def test_the_backbone_choice_is_logged(synth_root, tmp_path, caplog):
    import logging

    from tests.helpers import TINY_CONFIG, tiny_train_overrides
    from training.trainer import Trainer

    cfg = load_config(TINY_CONFIG, tiny_train_overrides(synth_root, **{"solver.max_iter": 1}))
    with caplog.at_level(logging.INFO, logger="maskx.train"):
        Trainer(cfg, tmp_path / "run", hooks=[])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("backbone")]
    assert lines == ["backbone tiny: from scratch; norm bn; 5 trainable stages; 1 process(es) × 2 "
                     "images"]  # fmt: skip
