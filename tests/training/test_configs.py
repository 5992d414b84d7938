"""Every shipped config parses, validates and builds its model (its heads and class count with
tiny widths for speed), and the model trains and predicts on one small image."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.config import TrainConfig, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads(path):
    cfg = load_config(path)
    assert cfg.model.num_classes >= 1
    d = cfg.to_dict()
    assert set(d) == {"model", "data", "solver", "train"}
    assert TrainConfig.from_dict(d) == cfg  # round-trips through the checkpoint dict


def test_paper_settings_are_the_papers():
    cfg = load_config(Path(CONFIGS[0]).parent / "coco_r50_voc2nonvoc.yaml")
    assert (cfg.solver.lr, cfg.solver.max_iter, list(cfg.solver.steps)) == (
        0.02,
        90000,
        [60000, 80000],
    )
    assert (cfg.model.min_size, cfg.model.max_size, cfg.model.box_batch_size_per_image) == (
        800,
        1333,
        512,
    )
    assert cfg.model.transfer_input == "cls+box" and cfg.model.stop_gradient and cfg.model.mlp


# Every shipped config: (scheme, data kind, mask predictor, MLP, mask classes, words its header
# must say). A new config must be added here, so that its name, header and settings are checked.
EXPECTED = {
    "coco_r50_voc2nonvoc_class_agnostic": ("end_to_end", "coco", "class_agnostic", False, "voc",
                                           ("class-agnostic", "no mlp")),
    "coco_r50_voc2nonvoc_class_agnostic_mlp": ("end_to_end", "coco", "class_agnostic", True,
                                               "voc", ("class-agnostic", "+ mlp")),
    "coco_r50_nonvoc2voc": ("end_to_end", "coco", "transfer", True, "nonvoc",
                            ("mask^x", "nonvoc→voc")),
    "coco_r50_voc2nonvoc": ("end_to_end", "coco", "transfer", True, "voc",
                            ("mask^x", "voc→nonvoc")),
    "coco_r50_oracle": ("end_to_end", "coco", "class_specific", False, "all",
                        ("oracle", "class-specific")),
    "coco_r50_nonvoc2voc_class_agnostic": ("end_to_end", "coco", "class_agnostic", False,
                                           "nonvoc", ("class-agnostic", "no mlp")),
    "coco_r50_nonvoc2voc_class_agnostic_mlp": ("end_to_end", "coco", "class_agnostic", True,
                                               "nonvoc", ("class-agnostic", "+ mlp")),
    "coco_r50_voc2nonvoc_transfer_gt_resnet8": ("end_to_end", "coco", "transfer", False, "voc",
                                                ("deep-marc", "resnet-8")),
    "coco_r50_voc2nonvoc_class_agnostic_mlp_gt_resnet8": ("end_to_end", "coco", "class_agnostic",
                                                          True, "voc", ("deep-marc",)),
    "coco_r101_voc2nonvoc": ("end_to_end", "coco", "transfer", True, "voc",
                             ("mask^x", "voc→nonvoc")),
    "coco_r101_nonvoc2voc": ("end_to_end", "coco", "transfer", True, "nonvoc",
                             ("mask^x", "nonvoc→voc")),
    "coco_r101_voc2nonvoc_class_agnostic": ("end_to_end", "coco", "class_agnostic", False, "voc",
                                            ("class-agnostic", "no mlp")),
    "coco_r101_voc2nonvoc_class_agnostic_mlp": ("end_to_end", "coco", "class_agnostic", True,
                                                "voc", ("class-agnostic", "+ mlp")),
    "coco_r101_nonvoc2voc_class_agnostic": ("end_to_end", "coco", "class_agnostic", False,
                                            "nonvoc", ("class-agnostic", "no mlp")),
    "coco_r101_nonvoc2voc_class_agnostic_mlp": ("end_to_end", "coco", "class_agnostic", True,
                                                "nonvoc", ("class-agnostic", "+ mlp")),
    "coco_r101_oracle": ("end_to_end", "coco", "class_specific", False, "all",
                         ("oracle", "class-specific")),
    "coco_r101_voc2nonvoc_transfer_gt_resnet8": ("end_to_end", "coco", "transfer", False, "voc",
                                                 ("deep-marc", "resnet-8")),
    "coco_r101_voc2nonvoc_class_agnostic_mlp_gt_resnet8": ("end_to_end", "coco", "class_agnostic",
                                                           True, "voc", ("deep-marc",)),
    "experiment_hue": ("end_to_end", "coco", "transfer", True, "mask_classes_A.txt",
                       ("hue_ring", "mechanism")),
    "experiment_synth": ("end_to_end", "coco", "transfer", True, "mask_classes_A.txt",
                         ("synthetic", "experiment")),
    "tiny_synth": ("end_to_end", "coco", "transfer", True, "mask_classes_A.txt",
                   ("synthetic",)),
    "vg3000_r50_end_to_end": ("end_to_end", "vg+coco", "transfer", True, "all",
                          ("end to end", "vg boxes", "coco", "masks")),
    "vg3000_r50_stage1": ("stage1", "vg", "transfer", True, "all", ("stage 1",)),
    "vg3000_r50_stage2": ("stage2", "coco_in_vg", "transfer", True, "all", ("stage 2",)),
}  # fmt: skip


def _header(path: Path) -> str:
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# "))
    return " ".join(lines).lower()


def test_every_config_is_declared():
    assert sorted(p.stem for p in CONFIGS) == sorted(EXPECTED)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_does_what_its_name_and_header_say(path):
    cfg = load_config(path)
    scheme, kind, predictor, mlp, mask_classes, words = EXPECTED[path.stem]
    assert (cfg.train.scheme, cfg.data.kind) == (scheme, kind)
    assert (cfg.model.mask_predictor, cfg.model.mlp) == (predictor, mlp)
    assert cfg.data.mask_classes == mask_classes
    header = _header(path)
    for word in words:
        assert word in header, f"{path.name}: the header does not say {word!r}"
    # The name's promises: scheme, predictor and MLP.
    name = path.stem
    if "stage1" in name or "stage2" in name:
        assert cfg.train.scheme == name[name.index("stage") :][:6]
        assert f"stage {name[name.index('stage') + 5]}" in header
    else:
        assert cfg.train.scheme == "end_to_end"
        assert "stage 2:" not in header and not header.startswith("stage")
    # Only stage 2 starts from another run's checkpoint.
    assert (cfg.train.init_checkpoint is not None) == (cfg.train.scheme == "stage2")
    if "class_agnostic" in name:
        assert cfg.model.mask_predictor == "class_agnostic"
        assert cfg.model.mlp == ("_mlp" in name)
    if "oracle" in name:
        assert cfg.model.mask_predictor == "class_specific" and cfg.data.mask_classes == "all"
    if "end_to_end" in name:
        assert cfg.data.kind == "vg+coco" and cfg.train.init_checkpoint is None


# Widths small enough to build and run every config in well under a second; everything that
# distinguishes the configs (predictor, MLP, transfer input, stop-gradient, K) is kept.
TINY_WIDTHS = {"backbone": "tiny", "backbone_weights": None, "fpn_channels": 32,
               "box_head_dim": 64, "mask_head_dim": 32, "transfer_hidden": 32,
               "min_size": 64, "max_size": 64, "rpn_pre_nms_top_n_train": 100,
               "rpn_post_nms_top_n_train": 50, "rpn_pre_nms_top_n_test": 100,
               "rpn_post_nms_top_n_test": 50, "box_batch_size_per_image": 32,
               "rpn_batch_size_per_image": 32}  # fmt: skip
PREDICTORS = {"transfer": "WeightTransferMaskPredictor",
              "class_agnostic": "ClassAgnosticMaskPredictor",
              "class_specific": "ClassSpecificMaskPredictor"}  # fmt: skip


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_builds_a_model_that_trains_and_predicts(path):
    from model import build_model
    from training.trainer import resolve_model_config, set_trainable

    cfg = load_config(path)
    # K comes from the data at training time: the VG vocabulary, or the COCO categories.
    k = cfg.data.vg_num_classes if cfg.data.kind in ("vg", "vg+coco", "coco_in_vg") else 80
    cfg = resolve_model_config(cfg, k)
    torch.manual_seed(0)
    model = build_model(cfg.model.replace(**TINY_WIDTHS))
    rh = model.roi_heads
    assert model.num_classes == k and rh.box_predictor.cls_score.out_features == k + 1
    assert type(rh.mask_predictor).__name__ == PREDICTORS[cfg.model.mask_predictor]
    assert (rh.mask_predictor.mlp is not None) == cfg.model.mlp
    if cfg.model.mask_predictor == "transfer":
        kernels = rh.mask_predictor.all_class_kernels(rh.box_predictor)
        assert tuple(kernels.shape) == (k, TINY_WIDTHS["mask_head_dim"])
    keys = set_trainable(model, cfg.train.scheme)
    image = torch.rand(3, 64, 64)
    target = {"boxes": torch.tensor([[8.0, 8.0, 40.0, 48.0]]), "labels": torch.tensor([k]),
              "masks": torch.zeros(1, 64, 64, dtype=torch.uint8), "has_mask": torch.tensor([True])}  # fmt: skip
    target["masks"][0, 8:48, 8:40] = 1
    losses = model.train()([image], [target])
    loss = sum(losses[key] for key in keys)
    assert torch.isfinite(loss) and loss.requires_grad
    loss.backward()
    model.eval()
    with torch.no_grad():
        (out,) = model([image])
    assert out["masks"].shape[1:] == (1, 64, 64)
