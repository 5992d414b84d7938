"""ONNX export: baked mask weights, parity with eager PyTorch, empty outputs, errors."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

import maskx
from maskx.cli import main as cli_main
from model import build_model
from service.contract import ModelMetadata
from tests.model.helpers import tiny_config
from training.checkpoint import (
    file_sha256,
    load_checkpoint,
    load_model_from_checkpoint,
    save_atomic,
)
from training.export.onnx_export import (
    METADATA_KEY,
    OUTPUT_NAMES,
    default_model_version,
    eager_reference,
    export_model,
    pad_batch,
    verify_export,
)


def _synth_images(synth_root, n=2):
    from PIL import Image

    files = sorted((synth_root / "images" / "val").glob("*.png"))[:n]
    return [torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1).contiguous()
            for f in files]  # fmt: skip


def test_k3000_export_bakes_the_transfer(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config(num_classes=3000, box_head_dim=1024, mask_head_dim=32)
    model = build_model(cfg).eval()
    out = export_model(model, tmp_path / "k3000.onnx", {"name": "k3000"}, sample_size=(128, 128))
    proto = onnx.load(out)
    shapes = {init.name: tuple(init.dims) for init in proto.graph.initializer}
    assert (3000, 32) in shapes.values(), "W_seg [K, D] must be a constant of the graph"
    # No layer of the transfer MLP: nothing reads a 5120-wide (cls+box, D=1024) embedding.
    embed = 5 * 1024
    for node in proto.graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            for name in node.input:
                if name in shapes:
                    assert embed not in shapes[name], (node.name, shapes[name])
    tau = model.roi_heads.mask_predictor.weight_transfer.layers[0].weight.detach().numpy()
    for init in proto.graph.initializer:
        arr = numpy_helper.to_array(init)
        assert arr.shape != tau.shape and arr.shape != tau.T.shape
    # The baked weights equal τ(W_det) of every class.
    w = next(
        numpy_helper.to_array(i) for i in proto.graph.initializer if tuple(i.dims) == (3000, 32)
    )
    box = model.roi_heads.box_predictor
    expected = model.roi_heads.mask_predictor.all_class_kernels(box).numpy()
    np.testing.assert_allclose(w, expected, rtol=1e-6, atol=1e-7)


def test_trained_checkpoint_parity_two_sizes_and_batch(trained_checkpoint, synth_root, tmp_path):
    model, vocab, _ = load_model_from_checkpoint(trained_checkpoint)
    path = tmp_path / "m.onnx"
    assert cli_main(["export", "--checkpoint", str(trained_checkpoint), "--output", str(path),
                     "--no-verify"]) == 0  # fmt: skip
    meta = json.loads({p.key: p.value for p in onnx.load(path).metadata_props}[METADATA_KEY])
    assert meta["classes"] == list(vocab.names) and meta["mask_classes"] == list(vocab.mask_classes)
    assert len(meta["checkpoint_sha256"]) == 64 and meta["min_size"] == 96
    assert meta["training_config"]["solver"]["max_iter"] == 40

    imgs = _synth_images(synth_root)
    sizes = [imgs[0], imgs[1][:, :64, :96].contiguous(), imgs[0][:, :96, :64].contiguous()]
    model.roi_heads.score_thresh = 0.0  # plenty of detections to compare
    export_model(model, path, meta)
    report = verify_export(model, path, sizes)
    print(report.table())
    checked = [c for c in report.cases if c.detections_eager > 0]
    assert len(checked) >= 4
    for c in report.cases:
        assert c.same_detections, c
        assert c.max_box_rel_diff <= 1e-3 and c.max_mask_diff <= 1e-3, c


def test_no_detections_then_next_call_works(trained_checkpoint, synth_root, tmp_path):
    model, _, _ = load_model_from_checkpoint(trained_checkpoint)
    model.roi_heads.score_thresh = 0.02
    path = export_model(model, tmp_path / "m.onnx", {"name": "t"})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    img = _synth_images(synth_root, 1)[0]
    # The padding of a zero-size valid region: nothing can be detected.
    batch, sizes = pad_batch([torch.zeros(3, 96, 96, dtype=torch.uint8)])
    out = sess.run(OUTPUT_NAMES, {"images": batch.numpy(), "image_sizes": np.array([[0, 0]])})
    assert [o.shape[0] for o in out] == [0] * 5
    assert out[4].shape == (0, 28, 28) and out[0].shape == (0, 4)
    batch, sizes = pad_batch([img])
    out = sess.run(OUTPUT_NAMES, {"images": batch.numpy(), "image_sizes": sizes.numpy()})
    ref = eager_reference(model, [img])[0]
    assert out[0].shape[0] == ref["boxes"].shape[0] > 0
    np.testing.assert_array_equal(out[2], ref["labels"].numpy())


def test_corrupt_checkpoint_and_unwritable_output(tmp_path, trained_checkpoint, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    assert cli_main(["export", "--checkpoint", str(bad), "--output", str(tmp_path / "x.onnx")]) == 2
    assert "bad.pt" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
    missing_dir = tmp_path / "no" / "such" / "m.onnx"
    code = cli_main(
        ["export", "--checkpoint", str(trained_checkpoint), "--output", str(missing_dir)]
    )
    assert code == 2 and "does not exist" in capsys.readouterr().err
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if not __import__("os").access(ro, __import__("os").W_OK):  # root ignores modes
            code = cli_main(["export", "--checkpoint", str(trained_checkpoint),
                             "--output", str(ro / "m.onnx")])  # fmt: skip
            assert code == 2 and "not writable" in capsys.readouterr().err
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_failed_export_leaves_no_partial_file(tmp_path, monkeypatch):
    model = build_model(tiny_config()).eval()

    def boom(*a, **k):
        raise RuntimeError("tracing failed")

    monkeypatch.setattr(torch.onnx, "export", boom)
    with pytest.raises(RuntimeError, match="tracing failed"):
        export_model(model, tmp_path / "m.onnx", {"name": "t"})
    assert list(tmp_path.iterdir()) == []


def test_cli_verification_passes_on_trained_model(trained_checkpoint, tmp_path, capsys):
    code = cli_main(["export", "--checkpoint", str(trained_checkpoint),
                     "--output", str(tmp_path / "m.onnx")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "verification passed" in out and "batch of 2" in out


def test_two_checkpoints_export_under_two_versions(trained_checkpoint, tmp_path):
    """Without --model-version the version is derived from the checkpoint's sha256: a
    checkpoint whose weights differ by one value gets another version."""
    ckpt = load_checkpoint(trained_checkpoint)
    name = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    ckpt["model"][name] = ckpt["model"][name] + 1e-3
    other = save_atomic(ckpt, tmp_path / "other.pt")
    metas = []
    for src in (trained_checkpoint, other):
        out = tmp_path / f"{src.stem}.onnx"
        assert cli_main(["export", "--checkpoint", str(src), "--output", str(out),
                         "--no-verify"]) == 0  # fmt: skip
        meta = json.loads({p.key: p.value for p in onnx.load(out).metadata_props}[METADATA_KEY])
        assert meta["version"] == f"0.1.0+{file_sha256(src)[:12]}"
        assert meta["checkpoint_sha256"] == file_sha256(src)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta["exported_at"])
        assert meta["maskx_version"] == maskx.__version__ and meta["precision"] == "fp32"
        metas.append(meta)
    assert metas[0]["version"] != metas[1]["version"]
    # The service reads the same identity back.
    info = ModelMetadata.from_dict(metas[1])
    assert (info.checkpoint_sha256, info.precision) == (file_sha256(other), "fp32")
    assert info.score_floor == metas[1]["score_threshold"] > 0


def test_default_model_version_needs_a_hex_digest():
    assert default_model_version("AB" * 32) == "0.1.0+abababababab"
    with pytest.raises(ValueError, match="sha256"):
        default_model_version("not-a-digest")


def test_export_at_another_test_scale_records_it_and_verifies(trained_checkpoint, tmp_path, capsys):
    path = tmp_path / "m480.onnx"
    code = cli_main(["export", "--checkpoint", str(trained_checkpoint), "--output", str(path),
                     "--min-size", "256", "--max-size", "320",
                     "--model-version", "2.0.0-rc1"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "verification passed" in out
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = json.loads(sess.get_modelmeta().custom_metadata_map["maskx"])
    assert (meta["min_size"], meta["max_size"]) == (256, 320)
    assert meta["version"] == "2.0.0-rc1", "an explicit --model-version wins over the derived one"
    assert cli_main(["export", "--checkpoint", str(trained_checkpoint), "--output",
                     str(tmp_path / "bad.onnx"), "--min-size", "400", "--max-size", "300"]) == 2  # fmt: skip
    assert "--min-size" in capsys.readouterr().err
    assert not (tmp_path / "bad.onnx").exists()


def test_fp16_export_halves_the_backbone_keeps_the_contract_and_verifies(
    trained_checkpoint, tmp_path, capsys
):
    path = tmp_path / "m16.onnx"
    code = cli_main(["export", "--checkpoint", str(trained_checkpoint), "--output", str(path),
                     "--fp16"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "float16 backbone" in out and "within the float16 tolerances" in out
    proto = onnx.load(str(path))
    half = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    full = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
    assert half and full  # backbone weights in float16, heads and baked mask weights float32
    types = {
        v.name: v.type.tensor_type.elem_type for v in [*proto.graph.input, *proto.graph.output]
    }
    assert types["images"] == onnx.TensorProto.UINT8
    assert types["mask_probs"] == types["boxes"] == types["scores"] == onnx.TensorProto.FLOAT
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["maskx"])
    assert meta["precision"] == "fp16-backbone"


def test_matching_allows_only_detections_at_the_score_edge() -> None:
    from training.export.onnx_export import _compare

    boxes = np.array([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 70]], np.float32)
    ref = {"boxes": torch.from_numpy(boxes), "labels": torch.tensor([1, 2, 3]),
           "scores": torch.tensor([0.9, 0.5, 0.0502]),
           "mask_probs": torch.zeros(3, 28, 28)}  # fmt: skip

    def got(keep: list[int]) -> dict[str, np.ndarray]:
        return {k: v.numpy()[keep] for k, v in ref.items()}

    # the third detection (score 0.0502, the lowest kept) missing on one side: allowed
    edge = _compare("edge", ref, got([0, 1]), 1e-2, 5e-2, 1e-2, match=True)
    assert edge.passed and "1+0 at the score edge" in edge.note
    # a confident detection missing: not allowed
    assert not _compare("gap", ref, got([0, 2]), 1e-2, 5e-2, 1e-2, match=True).passed
    # without matching, any difference in the lists fails
    assert not _compare("strict", ref, got([0, 1]), 1e-2, 5e-2, 1e-2).passed


def test_near_equal_scores_may_swap_but_nothing_else_may_differ() -> None:
    """Two detections of other classes with scores equal up to float rounding may come out of
    the graph in either order; a list out of score order, a detection replaced or a score
    beyond the tolerance still fails."""
    from training.export.onnx_export import _compare

    boxes = np.array([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 70]], np.float32)
    ref = {"boxes": torch.from_numpy(boxes), "labels": torch.tensor([1, 2, 3]),
           "scores": torch.tensor([0.9, 0.50000006, 0.5]),
           "mask_probs": torch.zeros(3, 28, 28)}  # fmt: skip

    def got(order: list[int], **changes) -> dict[str, np.ndarray]:
        out = {k: v.numpy()[order].copy() for k, v in ref.items()}
        out.update(changes)
        return out

    swapped = got([0, 2, 1], scores=np.array([0.9, 0.50000006, 0.5], np.float32))
    case = _compare("swap", ref, swapped, 1e-3, 1e-3, 1e-4)
    assert case.passed and "order differs among near-equal scores" in case.note
    unsorted = got([0, 2, 1])  # scores 0.9, 0.5, 0.50000006: not by score
    assert not _compare("unsorted", ref, unsorted, 1e-3, 1e-3, 1e-4).passed
    moved = got([0, 2, 1], scores=np.array([0.9, 0.50000006, 0.5], np.float32))
    moved["boxes"][1] += 30.0  # the pair no longer overlaps: another detection
    assert not _compare("moved", ref, moved, 1e-3, 1e-3, 1e-4).passed
    far = got([0, 2, 1], scores=np.array([0.9, 0.51, 0.5], np.float32))
    assert not _compare("far", ref, far, 1e-3, 1e-3, 1e-4).passed


def test_detectron_conventions_export_matches_eager(tmp_path):
    """Every Detectron option on (quantised anchors, "+1" boxes, RPN min size 0, proposals
    clipped to the padded image, no candidate cap): the graph runs the model's own functions,
    so ONNX Runtime gives eager PyTorch's detections, at two sizes and batched."""
    torch.manual_seed(0)
    cfg = tiny_config(anchor_style="detectron", box_convention="legacy", rpn_min_size=0.0,
                      clip_proposals_to_padded=True, box_candidates_per_img=None,
                      box_score_thresh=0.0)  # fmt: skip
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(3)
    images = [torch.randint(0, 256, (3, 128, 150), dtype=torch.uint8, generator=g),
              torch.randint(0, 256, (3, 100, 160), dtype=torch.uint8, generator=g)]  # fmt: skip
    path = export_model(model, tmp_path / "detectron.onnx", {"name": "d"}, sample_size=(128, 160))
    report = verify_export(model, path, images)
    print(report.table())
    assert sum(c.detections_eager for c in report.cases) > 100
    for c in report.cases:
        if c.name == "flat grey image":
            # An untrained model on a flat image: copies of one box a stride apart with scores
            # equal up to float rounding, whose ties ONNX Runtime and PyTorch break differently.
            assert c.detections_eager == c.detections_onnx and c.max_score_diff <= 1e-6, c
        else:
            assert c.passed, report.table()


@pytest.mark.parametrize(
    "predictor",
    [
        {"mask_predictor": "class_agnostic", "mlp": True},
        {"mask_predictor": "transfer", "mlp": False},
        {"mask_predictor": "class_specific", "mlp": True},
    ],
    ids=lambda p: f"{p['mask_predictor']}-mlp{p['mlp']}",
)
def test_resnet_mask_head_with_gt_training_exports_and_matches_eager(tmp_path, predictor):
    """Deep-MARC's options (ResNet mask head, mask loss on ground-truth boxes) with each
    predictor: the graph holds the head's GroupNorm blocks and ONNX Runtime gives eager
    PyTorch's detections and masks, at two sizes and batched."""
    torch.manual_seed(0)
    cfg = tiny_config(mask_head_arch="resnet", mask_head_layers=4, mask_train_rois="gt",
                      box_score_thresh=0.0, **predictor)  # fmt: skip
    model = build_model(cfg)
    # One training step so that the head's GroupNorm affine terms are not their identity init.
    from tests.model.helpers import synthetic_batch

    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    sum(model(*synthetic_batch()).values()).backward()
    opt.step()
    model.eval()
    g = torch.Generator().manual_seed(3)
    images = [torch.randint(0, 256, (3, 128, 150), dtype=torch.uint8, generator=g),
              torch.randint(0, 256, (3, 100, 160), dtype=torch.uint8, generator=g)]  # fmt: skip
    path = export_model(model, tmp_path / "deep.onnx", {"name": "d"}, sample_size=(128, 160))
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert ops & {"GroupNormalization", "InstanceNormalization"}, "the head's GroupNorm"
    report = verify_export(model, path, images)
    print(report.table())
    assert sum(c.detections_eager for c in report.cases) > 20
    for c in report.cases:
        if c.name == "flat grey image":
            # Untrained: copies of one box a stride apart with tied scores (see above).
            assert c.detections_eager == c.detections_onnx, c
        else:
            assert c.passed, report.table()
