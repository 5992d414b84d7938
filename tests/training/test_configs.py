"""Every shipped config parses, validates and builds its model (its heads and class count with
tiny widths for speed), and the model trains and predicts on one small image; its name and
header say what it holds (depth, split, predictor, MLP, Deep-MARC options), no two configs are
the same run, and the docs name only configs that exist."""

from __future__ import annotations

import json
import re
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


# The name of a paper config is a sentence in a small grammar, and each word promises settings:
#   coco_<depth>_<split>[_<method>] | coco_<depth>_oracle | vg3000_<depth>_<scheme>
# depth r50 | r101: the ResNet trunk, its weights file and its schedule (the authors': R-50 2
# images per GPU at LR 0.02 for 90k steps, R-101 1 image per GPU at LR 0.01 for 180k: the same
# images and the same LR per image); split voc2nonvoc | nonvoc2voc: the mask classes A; method
# words: class_agnostic | transfer (the predictor; none: Mask^X, transfer + MLP), mlp (the MLP
# is on; with a named predictor and no ``mlp`` it is off), gt (Deep-MARC's mask RoIs), resnet<N>
# (Deep-MARC's ResNet mask head of N convs; none: the paper's 4-conv FCN).
PAPER_NAME = re.compile(
    r"^(?:coco_(?P<depth>r50|r101)_(?:(?P<oracle>oracle)|(?P<split>voc2nonvoc|nonvoc2voc)"
    r"(?:_(?P<method>[a-z0-9_]+))?)|vg3000_(?P<vg_depth>r50|r101)_(?P<scheme>stage1|stage2|end_to_end))$"
)
METHOD_WORDS = re.compile(r"^(?P<predictor>class_agnostic|transfer)(?P<mlp>_mlp)?(?P<gt>_gt)?"
                          r"(?:_resnet(?P<resnet>\d+))?$")  # fmt: skip
SCHEDULES = {50: (2, 0.02, 90000, (60000, 80000)), 101: (1, 0.01, 180000, (120000, 160000))}
PAPER_CONFIGS = [p for p in CONFIGS if p.stem.startswith(("coco_", "vg3000_"))]


def promised_by_name(stem: str) -> dict[str, object]:
    """The settings a paper config's name promises, as ``section.field`` → value."""
    m = PAPER_NAME.match(stem)
    assert m, f"{stem}.yaml: a paper config's name must read {PAPER_NAME.pattern}"
    depth = int((m["depth"] or m["vg_depth"])[1:])
    batch, lr, max_iter, steps = SCHEDULES[depth]
    out: dict[str, object] = {
        "model.backbone": f"resnet{depth}", "solver.batch_size": batch, "solver.lr": lr,
        "solver.max_iter": max_iter, "solver.steps": steps, "model.mask_train_rois": "proposals",
        "model.mask_head_arch": "fcn", "model.mask_head_layers": 4,
    }  # fmt: skip
    if m["scheme"]:
        kinds = {"stage1": "vg", "stage2": "coco_in_vg", "end_to_end": "vg+coco"}
        out.update({"train.scheme": m["scheme"], "data.kind": kinds[m["scheme"]],
                    "data.mask_classes": "all", "model.mask_predictor": "transfer",
                    "model.mlp": True})  # fmt: skip
        return out
    out.update({"train.scheme": "end_to_end", "data.kind": "coco"})
    if m["oracle"]:
        out.update({"data.mask_classes": "all", "model.mask_predictor": "class_specific",
                    "model.mlp": False})  # fmt: skip
        return out
    out["data.mask_classes"] = {"voc2nonvoc": "voc", "nonvoc2voc": "nonvoc"}[m["split"]]
    if m["method"] is None:  # Mask^X R-CNN as the paper names it: transfer + MLP
        out.update({"model.mask_predictor": "transfer", "model.mlp": True})
        return out
    w = METHOD_WORDS.match(m["method"])
    assert w, f"{stem}.yaml: method words {m['method']!r} must read {METHOD_WORDS.pattern}"
    out.update({"model.mask_predictor": w["predictor"], "model.mlp": bool(w["mlp"])})
    if w["gt"]:
        out["model.mask_train_rois"] = "gt"
    if w["resnet"]:
        out.update({"model.mask_head_arch": "resnet", "model.mask_head_layers": int(w["resnet"])})
    return out


def _value(cfg: TrainConfig, key: str) -> object:
    section, field = key.split(".")
    return getattr(getattr(cfg, section), field)


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.name)
def test_a_paper_configs_name_promises_its_content(path):
    cfg = load_config(path)
    promised = promised_by_name(path.stem)
    got = {key: _value(cfg, key) for key in promised}
    assert got == promised
    # The depth names the weights file too: the header's command (and any file the config names).
    depth = promised["model.backbone"]
    other = {"resnet50": "resnet101", "resnet101": "resnet50"}[depth]
    header = _header(path)
    if cfg.train.init_checkpoint is None:  # stage 2 takes its trunk from stage 1
        assert f"model.backbone_weights=/path/{depth}-imagenet.pth" in header
    assert other not in header and f"{other}-" not in path.read_text(encoding="utf-8")
    weights = cfg.model.backbone_weights
    assert weights is None or depth in Path(weights).name
    assert {"resnet50": "r-50-fpn", "resnet101": "r-101-fpn"}[depth] in header
    # The split and the Deep-MARC options are said in the header as the name says them.
    if cfg.data.kind == "coco" and cfg.data.mask_classes != "all":
        arrow, other_arrow = {"voc": ("voc→nonvoc", "nonvoc→voc"),
                              "nonvoc": ("nonvoc→voc", "voc→nonvoc")}[cfg.data.mask_classes]  # fmt: skip
        assert arrow in header and other_arrow not in header
    deep_marc = cfg.model.mask_train_rois == "gt" or cfg.model.mask_head_arch == "resnet"
    assert ("deep-marc" in header) == deep_marc


def test_the_name_grammar_refuses_names_that_promise_nothing_or_the_wrong_thing():
    assert promised_by_name("coco_r101_nonvoc2voc")["solver.lr"] == 0.01
    assert promised_by_name("coco_r50_voc2nonvoc_transfer")["model.mlp"] is False
    for bad in ("coco_r50_class_agnostic", "coco_voc2nonvoc", "coco_r50_voc2nonvoc_mlp",
                "coco_r50_voc2nonvoc_class_agnostic_resnet", "vg3000_stage1", "coco_r34_oracle"):  # fmt: skip
        with pytest.raises(AssertionError, match="must read"):
            promised_by_name(bad)


@pytest.mark.parametrize("path", sorted(set(CONFIGS) - set(PAPER_CONFIGS)), ids=lambda p: p.name)
def test_a_config_that_names_no_depth_has_no_resnet_trunk(path):
    cfg = load_config(path)
    assert not re.search(r"(^|_)r\d+(_|$)", path.stem)
    assert cfg.model.backbone not in ("resnet50", "resnet101"), f"{path.name}: say the depth"


def test_no_config_is_a_copy_of_another():
    # Two files that resolve to the same run would be one result reported under two names.
    resolved: dict[str, str] = {}
    for path in CONFIGS:
        key = json.dumps(load_config(path).to_dict(), sort_keys=True)
        assert key not in resolved, f"{path.name} resolves to the same config as {resolved[key]}"
        resolved[key] = path.name


def test_the_table_has_both_depths_and_both_splits():
    names = {p.stem for p in PAPER_CONFIGS}
    for depth in ("r50", "r101"):
        assert f"coco_{depth}_oracle" in names
        for split in ("voc2nonvoc", "nonvoc2voc"):
            for method in ("", "_class_agnostic", "_class_agnostic_mlp"):
                assert f"coco_{depth}_{split}{method}" in names
        for method in ("_transfer_gt_resnet8", "_class_agnostic_mlp_gt_resnet8"):
            assert f"coco_{depth}_voc2nonvoc{method}" in names


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


def test_every_config_the_docs_name_exists():
    repo = CONFIGS[0].parents[1]
    docs = [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]
    named = {
        (doc.name, m)
        for doc in docs
        for m in re.findall(r"configs/[a-z0-9_/]+\.yaml", doc.read_text(encoding="utf-8"))
    }
    missing = sorted((d, m) for d, m in named if not (repo / m).is_file())
    assert not missing, f"docs name configs that do not exist: {missing}"
    # The README's table lists every paper config by its name's tail.
    readme = (repo / "README.md").read_text(encoding="utf-8")
    for path in PAPER_CONFIGS:
        tail = path.stem.split("_", 2)[2] if path.stem.startswith("coco_") else path.name
        assert f"`{tail}`" in readme or f"`{tail}.yaml`" in readme, path.name
