"""Numbers through a reduced-width file: every blob lands where the authors' graph uses it."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model import build_model
from tests.training.detectron.conftest import SMALL, TINY
from training.checkpoint import load_checkpoint, load_model_from_checkpoint
from training.detectron.importer import (
    DETECTRON_CONVENTIONS,
    DetectronImportError,
    convert_blobs,
    import_detectron,
)
from training.detectron.pickle_io import load_detectron_pickle
from training.detectron.writer import write_spec_file


@pytest.fixture(scope="module")
def imported(small_file, small_classes, tmp_path_factory):
    path, blobs = small_file
    out = tmp_path_factory.mktemp("ckpt") / "small.pt"
    report = import_detectron(path, small_classes, out)
    model, vocab, ckpt = load_model_from_checkpoint(out)
    return report, model, vocab, ckpt, blobs, out


def test_every_blob_is_consumed_once_and_every_parameter_filled(imported):
    report, model, _, ckpt, blobs, _ = imported
    state = ckpt.model
    assert set(state) == set(model.state_dict())
    assert sorted(report.loaded.values()) == sorted(set(report.loaded.values()))  # no key twice
    skipped = {n for names in report.skipped.values() for n in names}
    assert skipped | set(report.loaded) == set(blobs) and not skipped & set(report.loaded)
    assert {k: len(v) for k, v in report.skipped.items()} == {
        "momentum": 16, "jcvbackup": 4, "imagenet_classifier": 2, "imagenet_conv_bias": 17,
    }  # fmt: skip
    for blob, key in report.loaded.items():
        want = blobs[blob][:, ::-1] if blob == "conv1_w" else blobs[blob]
        np.testing.assert_array_equal(state[key].numpy(), want, err_msg=blob)
    # Frozen BN is AffineChannel: mean 0, var + eps exactly 1, so it computes x·s + b.
    bn = model.backbone.body.layer2[0].bn1
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert torch.equal(bn.running_var + bn.eps, torch.ones_like(bn.running_var))


def test_settings_inferred_from_the_shapes_and_the_cfg(imported):
    report, model, vocab, _, _, _ = imported
    cfg = report.model_config
    assert (cfg.num_classes, cfg.backbone, cfg.resnet_blocks, cfg.resnet_width) == (
        11, "resnet50", (1, 1, 1, 1), 8
    )  # fmt: skip
    assert (cfg.fpn_channels, cfg.box_head_dim, cfg.mask_head_dim, cfg.transfer_hidden) == (
        8, 16, 4, 4
    )  # fmt: skip
    assert (cfg.mask_predictor, cfg.transfer_input, cfg.transfer_layers) == (
        "transfer", "cls+box", 2
    )  # fmt: skip
    assert cfg.transfer_activation == "leaky_relu" and cfg.stop_gradient
    assert cfg.mlp and cfg.mlp_input_size == 28 and cfg.norm == "frozen_bn"
    assert cfg.stride_in_1x1 and model.backbone.body.layer3[0].conv1.stride == (2, 2)
    assert (cfg.min_size, cfg.max_size, cfg.box_candidates_per_img) == (800, 1333, None)
    assert (cfg.box_score_thresh, cfg.box_nms_thresh, cfg.box_detections_per_img) == (
        0.05, 0.5, 100
    )  # fmt: skip
    assert cfg.image_mean == pytest.approx((122.7717 / 255, 115.9465 / 255, 102.9801 / 255))
    assert cfg.image_std == pytest.approx((1 / 255,) * 3)
    assert cfg.extra["imported_from"]["format"] == "detectron"
    assert any("NUM_CLASSES = 81" in n and "using the weights" in n for n in report.notes)
    assert len(report.unsupported) + sum(k in cfg.to_dict() for k in DETECTRON_CONVENTIONS) == 6
    assert vocab.names[0] == "class_0" and all(vocab.mask_classes)  # K != 3001: all in A


def test_stem_reads_bgr_through_the_flip_and_affine_channel(imported):
    """Detectron: conv1 on BGR 0..255 minus the BGR means, then x·s + b; maskx: the same on RGB
    0..1 through its normalisation."""
    _, model, _, _, blobs, _ = imported
    rgb = torch.rand(1, 3, 32, 48)
    bgr255 = rgb.flip(1) * 255 - torch.tensor([102.9801, 115.9465, 122.7717])[None, :, None, None]
    ref = F.conv2d(bgr255, torch.from_numpy(blobs["conv1_w"]), stride=2, padding=3)
    ref = ref * torch.from_numpy(blobs["res_conv1_bn_s"])[None, :, None, None]
    ref = ref + torch.from_numpy(blobs["res_conv1_bn_b"])[None, :, None, None]
    normalised = model.transform.normalize(rgb[0])[None]
    body = model.backbone.body
    torch.testing.assert_close(body.bn1(body.conv1(normalised)), ref, rtol=1e-5, atol=1e-3)


def _caffe2_mask_logits(blobs, features, labels):
    """The authors' Caffe2 graph in NumPy: ConvTranspose (col2im of Wᵀ·X) → ReLU; τ on
    Concat(cls_score_w, Reshape(bbox_pred_w, [K+1, -1])) → FC → LeakyReLU(0.1) → FC, as a
    bias-free 1×1 conv; plus the MLP FC on the C,H,W-flattened deconv output, reshaped to
    (-1, 1, 28, 28)."""
    x = features.astype(np.float64)
    n, _, h, w = x.shape
    wt, bt = blobs["conv5_mask_w"], blobs["conv5_mask_b"]  # (C_in, C_out, 2, 2)
    y = np.einsum("ncij,coab->noiajb", x, wt).reshape(n, wt.shape[1], 2 * h, 2 * w)
    y = np.maximum(y + bt[None, :, None, None], 0)
    k1 = blobs["cls_score_w"].shape[0]
    embed = np.concatenate([blobs["cls_score_w"], blobs["bbox_pred_w"].reshape(k1, -1)], axis=1)
    hid = embed @ blobs["bbox2mask_mlp_l1_w"].T + blobs["bbox2mask_mlp_l1_b"]
    hid = np.where(hid > 0, hid, 0.1 * hid)
    mask_w = hid @ blobs["mask_fcn_logits_w_flat_w"].T + blobs["mask_fcn_logits_w_flat_b"]
    fcn = np.einsum("nchw,nc->nhw", y, mask_w[labels])
    mlp = y.reshape(n, -1) @ blobs["mask_mlp_logits_raw_w"].T + blobs["mask_mlp_logits_raw_b"]
    return fcn + mlp.reshape(n, 28, 28), mask_w


def test_mask_logits_equal_the_authors_graph(imported):
    """τ's input order (cls then box, box rows reshaped row-major), the deconv layout and the
    MLP's flatten order, all at once: a wrong one changes the logits."""
    _, model, _, _, blobs, _ = imported
    rng = np.random.default_rng(0)
    features = rng.standard_normal((3, SMALL.mask_dim, 14, 14)).astype(np.float32)
    labels = np.array([1, 7, 11])
    want, mask_w = _caffe2_mask_logits(blobs, features, labels)
    heads = model.roi_heads
    with torch.no_grad():
        got = heads.mask_predictor(
            torch.from_numpy(features), torch.from_numpy(labels), heads.box_predictor
        )
        kernels = heads.mask_predictor.all_class_kernels(heads.box_predictor)
    np.testing.assert_allclose(kernels.numpy(), mask_w[1:], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)
    # A wrong τ input order (box before cls) would give other kernels.
    k1 = blobs["cls_score_w"].shape[0]
    swapped = np.concatenate([blobs["bbox_pred_w"].reshape(k1, -1), blobs["cls_score_w"]], 1)
    assert not np.allclose(swapped @ blobs["bbox2mask_mlp_l1_w"].T,
                           np.concatenate([blobs["cls_score_w"],
                                           blobs["bbox_pred_w"].reshape(k1, -1)], 1)
                           @ blobs["bbox2mask_mlp_l1_w"].T)  # fmt: skip


def _tiny(tmp_path, **kw):
    return write_spec_file(tmp_path / "tiny.pkl", TINY, **kw)[0]


@pytest.mark.parametrize(
    ("edits", "message"),
    [
        ({"res3_1_branch2b_bn_s": None}, r"missing 1 blob\(s\).*'res3_1_branch2b_bn_s'"),
        ({"fpn_res3_1_sum_w": None}, r"missing 1 blob\(s\).*'fpn_res3_1_sum_w'"),
        ({"bbox2mask_mlp_l9_w": np.zeros(3, np.float32)}, r"unknown blob\(s\).*bbox2mask_mlp_l9_w"),
        ({"res4_0_branch2a_b": np.full(32, 0.5, np.float32)},
         r"'res4_0_branch2a_b' is a bias of a ResNet conv .* not zero"),
        ({"fc7_b": np.zeros(3, np.float32)}, r"'fc7_b' has shape \(3,\), expected \(8,\)"),
        ({"mask_fcn_logits_w_flat_w": None}, "not a Mask\\^X model"),
    ],
)  # fmt: skip
def test_bad_files_are_refused_naming_the_blob(tmp_path, edits, message):
    path = _tiny(tmp_path, edits=edits)
    with pytest.raises(DetectronImportError, match=message):
        convert_blobs(load_detectron_pickle(path), source=str(path))


def test_a_renamed_blob_is_refused_naming_both(tmp_path):
    _, blobs = write_spec_file(tmp_path / "a.pkl", TINY)
    path = _tiny(tmp_path, edits={"fc6_w": None, "fc6_weight": blobs["fc6_w"]})
    with pytest.raises(DetectronImportError, match="'fc6_w'"):
        convert_blobs(load_detectron_pickle(path))
    path = _tiny(tmp_path, edits={"fc6_w_momentum": blobs["fc6_w"]})
    convert_blobs(load_detectron_pickle(path))  # a momentum of any weight is skipped


@pytest.mark.parametrize("protocol", [0, 2])
def test_protocol_0_and_2_files_import_alike(tmp_path, protocol):
    path, blobs = write_spec_file(tmp_path / "w.pkl", TINY, protocol=protocol, seed=5)
    state, report = convert_blobs(load_detectron_pickle(path))
    assert not report.architecture.mlp and report.architecture.resnet_blocks == (1, 2, 1, 1)
    np.testing.assert_array_equal(state["roi_heads.box_head.fc6.weight"].numpy(), blobs["fc6_w"])


def test_the_vocabulary_must_have_k_classes(tmp_path, small_file, caplog):
    path = _tiny(tmp_path)
    classes = tmp_path / "c.txt"
    classes.write_text("a\nb\nc\n")
    with pytest.raises(DetectronImportError, match=r"has 3 classes but the weights have K = 5"):
        import_detectron(path, classes, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()
    # A COCO json: categories in list order (Detectron's), names and ids kept; A by file.
    cats = [{"id": 7, "name": "dog"}, {"id": 2, "name": "cat"}, {"id": 3, "name": "cow"},
            {"id": 9, "name": "owl"}, {"id": 4, "name": "yak"}]  # fmt: skip
    coco = tmp_path / "c.json"
    coco.write_text(__import__("json").dumps({"categories": cats}))
    split = tmp_path / "a.txt"
    split.write_text("dog\n3\n")
    with caplog.at_level(logging.INFO, logger="training.detectron.importer"):
        import_detectron(path, coco, tmp_path / "out.pt", mask_classes=split, name="tiny")
    ckpt = load_checkpoint(tmp_path / "out.pt")
    assert ckpt["vocab"]["names"] == ["dog", "cat", "cow", "owl", "yak"]
    assert ckpt["vocab"]["source_ids"] == [7, 2, 3, 9, 4]
    assert ckpt["vocab"]["mask_classes"] == [True, False, True, False, False]
    assert ckpt["model_config"]["extra"]["name"] == "tiny"
    assert (tmp_path / "out.pt").stat().st_mode & 0o777 == 0o644
    assert "skipped 14 blob(s) by rule 'momentum'" in caplog.text  # no MLP: 14


def test_vg3k_default_mask_set_is_the_first_80_classes(tmp_path):
    # Only the class count matters for the default; the weights are the tiny model's with
    # K rows grown to 3001.
    spec = TINY.__class__(**{**TINY.__dict__, "num_classes": 3001})
    path = write_spec_file(tmp_path / "vg.pkl", spec)[0]
    classes = tmp_path / "vg.txt"
    classes.write_text("".join(f"c{i}\n" for i in range(3001)))
    report = import_detectron(path, classes, tmp_path / "vg.pt")
    flags = load_checkpoint(tmp_path / "vg.pt")["vocab"]["mask_classes"]
    assert sum(flags) == 80 and all(flags[:80])
    assert any("first 80" in n for n in report.notes)


def test_imported_checkpoint_initialises_training(imported, tmp_path):
    from training.checkpoint import init_from_checkpoint

    report, _, _, _, _, out = imported
    model = build_model(report.model_config.replace(extra={}))
    result = init_from_checkpoint(model, out)
    assert not result["skipped"] and len(result["loaded"]) == len(model.state_dict())
