"""Detectron's inference conventions in maskx, checked against a NumPy restatement of
Detectron's own code (``detectron_reference.py``, written from the authors' repository, not
from maskx). Each convention is also shown to matter: torchvision's convention, maskx's
default, gives a different answer on the same input.

Tolerances: float32 arithmetic against float64 (or float32) NumPy; boxes to 1e-3 px relative
1e-5, pooled features to 1e-5, discrete results (anchor grids, levels, kept indices) exact.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.ops import nms, roi_align

from model import ConfigError, ModelConfig, build_model
from model.anchors import DetectronAnchorGenerator, detectron_cell_anchors, nominal_stride
from model.boxes import clip_boxes, fpn_levels, padded_sizes, roi_align_boxes
from model.pooling import MaskXRoIAlign
from model.postprocess import rank_within_group, select_detections, select_proposals

from . import detectron_reference as ref
from .helpers import tiny_config

TO_CONTINUOUS = np.array([0.0, 0.0, 1.0, 1.0])
"""legacy (x1, y1, x2, y2) + this = the continuous box of the same pixels."""


def _legacy_boxes(rng: np.random.Generator, n: int, h: int, w: int, spill: float = 0.0):
    """n legacy boxes with corners in [-spill, W + spill) etc., x2 >= x1 - 1 (width >= 0)."""
    x1 = rng.uniform(-spill, w + spill, n)
    y1 = rng.uniform(-spill, h + spill, n)
    bw = rng.uniform(0.5, w / 2, n)
    bh = rng.uniform(0.5, h / 2, n)
    return np.stack([x1, y1, x1 + bw - 1, y1 + bh - 1], axis=1)


# ----------------------------------------------------------------------------- config
def test_defaults_are_todays_behaviour_and_bad_values_name_the_field() -> None:
    cfg = ModelConfig()
    assert (cfg.anchor_style, cfg.box_convention) == ("torchvision", "continuous")
    assert cfg.rpn_min_size == 1e-3 and cfg.clip_proposals_to_padded is False
    assert (cfg.resize_rule, cfg.mask_paste) == ("floor", "maskx")
    model = build_model(tiny_config())
    assert model.rpn.min_size == 1e-3  # torchvision's RegionProposalNetwork value
    assert type(model.rpn.anchor_generator) is AnchorGenerator
    for field, bad in [("anchor_style", "caffe2"), ("box_convention", "+1"),
                       ("resize_rule", "round"), ("mask_paste", "cv2"), ("rpn_min_size", -1),
                       ("clip_proposals_to_padded", "yes")]:  # fmt: skip
        with pytest.raises(ConfigError, match=field):
            ModelConfig(**{field: bad})
    detectron = ModelConfig(anchor_style="detectron", box_convention="legacy", rpn_min_size=0.0,
                            clip_proposals_to_padded=True, resize_rule="detectron",
                            mask_paste="detectron")  # fmt: skip
    assert ModelConfig.from_dict(detectron.to_dict()) == detectron


# ----------------------------------------------------------------------------- anchors
def test_cell_anchors_are_generate_anchors_plus_one() -> None:
    for stride, size in [(4, 32), (8, 64), (16, 128), (32, 256), (64, 512), (16, 32)]:
        expected = ref.generate_anchors(stride, (size,), (0.5, 1, 2)) + TO_CONTINUOUS
        got = detectron_cell_anchors(stride, (size,), (0.5, 1.0, 2.0), dtype=torch.float64)
        np.testing.assert_array_equal(got.numpy(), expected)
    # _ratio_enum rounds half to even: stride 16, ratio 0.5 has hs = round(11.5) = 12.
    got = detectron_cell_anchors(16, (16,), (0.5,), dtype=torch.float64)[0]
    assert float(got[3] - got[1]) == 12.0


def test_fpn_anchors_match_detectron_on_every_level() -> None:
    """Levels 2..6 of a 96 x 160 padded image; P6's grid (2 x 3) gives torchvision a stride of
    160 // 3 = 53 where Detectron has 2**6 = 64."""
    h, w = 96, 160
    grids = [(24, 40), (12, 20), (6, 10), (3, 5), (2, 3)]
    feats = [torch.zeros(1, 8, gh, gw) for gh, gw in grids]
    images = ImageList(torch.zeros(1, 3, h, w), [(h, w)])
    sizes, ratios = ((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5
    ours = DetectronAnchorGenerator(sizes, ratios)(images, feats)[0].numpy()
    expected = np.concatenate(
        [
            ref.fpn_level_anchors(lvl, gh, gw)
            for lvl, (gh, gw) in zip(range(2, 7), grids, strict=True)
        ]
    )
    np.testing.assert_allclose(ours, expected + TO_CONTINUOUS, rtol=0, atol=1e-4)
    theirs = AnchorGenerator(sizes, ratios)(images, feats)[0].numpy()
    assert theirs.shape == ours.shape
    assert np.abs(theirs - ours).max() > 1.0  # torchvision's anchors are not Detectron's
    assert nominal_stride(w, 3) == 64 and w // 3 == 53


def test_fpn_anchors_of_a_thin_image_use_the_levels_strides() -> None:
    """A 32-pixel-high image: P5 is 1 x 4 and P6 1 x 2, whose strides cannot be told from the
    sizes (32 / 1 says 32 along y, 128 / 2 says 64 along x). The model's generator takes the
    levels' strides, 2**level, and gives Detectron's anchors there too."""
    h, w = 32, 128
    grids = [(8, 32), (4, 16), (2, 8), (1, 4), (1, 2)]
    feats = [torch.zeros(1, 8, gh, gw) for gh, gw in grids]
    images = ImageList(torch.zeros(1, 3, h, w), [(h, w)])
    sizes, ratios = ((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5
    with pytest.raises(ValueError, match="different strides"):
        DetectronAnchorGenerator(sizes, ratios)(images, feats)
    model = build_model(ModelConfig(num_classes=2, backbone="tiny", anchor_style="detectron"))
    ours = model.rpn.anchor_generator(images, feats)[0].numpy()
    expected = np.concatenate(
        [
            ref.fpn_level_anchors(lvl, gh, gw)
            for lvl, (gh, gw) in zip(range(2, 7), grids, strict=True)
        ]
    )
    np.testing.assert_allclose(ours, expected + TO_CONTINUOUS, rtol=0, atol=1e-4)


def test_rpn_head_channels_enumerate_anchors_as_detectron() -> None:
    """Detectron reads scores [A, H, W] and deltas [4A, H, W] in (y, x, anchor) order."""
    rng = np.random.default_rng(0)
    a, h, w = 3, 4, 5
    scores, deltas = rng.normal(size=(1, a, h, w)), rng.normal(size=(1, 4 * a, h, w))
    obj, dl = concat_box_prediction_layers([torch.from_numpy(scores)], [torch.from_numpy(deltas)])
    np.testing.assert_array_equal(obj[:, 0].numpy(), scores[0].transpose(1, 2, 0).reshape(-1))
    np.testing.assert_array_equal(dl.numpy(), deltas[0].transpose(1, 2, 0).reshape(-1, 4))


# ----------------------------------------------------------------------------- boxes
def test_box_decoding_is_bbox_transform_on_the_continuous_box() -> None:
    rng = np.random.default_rng(1)
    legacy = _legacy_boxes(rng, 200, 600, 800)
    deltas = rng.normal(scale=0.5, size=(200, 4))
    deltas[:5, 2:] = 10.0  # beyond the clamp log(1000 / 16) once divided by the weights
    weights = (10.0, 10.0, 5.0, 5.0)
    expected = ref.bbox_transform(legacy, deltas * np.array(weights), weights) + TO_CONTINUOUS
    coder = BoxCoder(weights)
    cont = torch.tensor(legacy + TO_CONTINUOUS, dtype=torch.float32)
    d = torch.tensor(deltas * np.array(weights), dtype=torch.float32)
    got = coder.decode_single(d, cont).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)
    # The "+1" matters: the legacy box fed as if it were continuous decodes elsewhere.
    wrong = coder.decode_single(d, torch.tensor(legacy, dtype=torch.float32)).numpy()
    assert np.abs(wrong - expected).max() > 0.5


def test_legacy_clipping_is_clip_tiled_boxes() -> None:
    rng = np.random.default_rng(2)
    h, w = 50, 70
    legacy = _legacy_boxes(rng, 300, h, w, spill=30)
    legacy[:10, 2] = legacy[:10, 0] - 0.6  # widths under one pixel (a clipped decode can give)
    expected = ref.clip_tiled_boxes(legacy, (h, w)) + TO_CONTINUOUS
    cont = torch.tensor(legacy + TO_CONTINUOUS)
    sizes = torch.tensor([[h, w]]).expand(len(legacy), 2)
    np.testing.assert_allclose(clip_boxes(cont, sizes, "legacy").numpy(), expected, atol=1e-9)
    torchvision_clip = clip_boxes(cont, sizes, "continuous").numpy()
    assert np.abs(torchvision_clip - expected).max() >= 0.5


def test_nms_plus_one_is_plain_nms_on_continuous_boxes() -> None:
    rng = np.random.default_rng(3)
    legacy = _legacy_boxes(rng, 300, 80, 80).astype(np.float32)
    scores = rng.permutation(300).astype(np.float32) / 300
    for thresh in (0.3, 0.5, 0.7):
        expected = ref.nms(np.hstack([legacy, scores[:, None]]), thresh)
        cont = torch.from_numpy(legacy + TO_CONTINUOUS.astype(np.float32))
        got = nms(cont, torch.from_numpy(scores), thresh).numpy()
        np.testing.assert_array_equal(got, expected)
    # Without the "+1", small boxes overlap less: NMS on the legacy box keeps other boxes.
    without = nms(torch.from_numpy(legacy), torch.from_numpy(scores), 0.5).numpy()
    assert not np.array_equal(without, ref.nms(np.hstack([legacy, scores[:, None]]), 0.5))


def test_fpn_level_mapping_is_map_rois_to_fpn_levels() -> None:
    rng = np.random.default_rng(4)
    legacy = _legacy_boxes(rng, 500, 800, 1333)
    # Square boxes a hair under 112, 224 and 448 px: Detectron's epsilon inside the log2 and
    # torchvision's outside it round them to different levels (up, up, down for Detectron).
    edge = np.array([[0, 0, s - 1, s - 1] for s in (111.99985, 223.99981, 447.99972)])
    legacy = np.vstack([legacy, edge])
    expected = ref.map_rois_to_fpn_levels(legacy, 2, 5) - 2
    cont = torch.tensor(legacy + TO_CONTINUOUS)
    got = fpn_levels(cont, 2, 5, "legacy").numpy()
    np.testing.assert_array_equal(got, expected)
    torchvision_levels = fpn_levels(cont, 2, 5, "continuous").numpy()
    assert (torchvision_levels[-3:] != expected[-3:]).all()


# ----------------------------------------------------------------------------- RoIAlign
def test_torchvision_roi_align_unaligned_is_caffe2_roi_align() -> None:
    """Caffe2's RoIAlign (no half-pixel offset, malformed RoIs forced to 1 x 1, sampling 2) is
    torchvision's ``roi_align(aligned=False)``: the kernel it was ported from."""
    rng = np.random.default_rng(5)
    feats = rng.normal(size=(2, 3, 13, 17)).astype(np.float32)
    legacy = _legacy_boxes(rng, 12, 52, 68, spill=8)
    legacy[0] = [10, 10, 10.2, 10.3]  # under one feature cell: forced to 1 x 1
    rois = np.hstack([rng.integers(0, 2, (12, 1)).astype(float), legacy])
    expected = ref.roi_align(feats, rois, 7, 0.25, 2)
    got = roi_align(torch.from_numpy(feats), torch.tensor(rois, dtype=torch.float32), 7, 0.25, 2,
                    aligned=False).numpy()  # fmt: skip
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    aligned = roi_align(torch.from_numpy(feats), torch.tensor(rois, dtype=torch.float32), 7, 0.25,
                        2, aligned=True).numpy()  # fmt: skip
    assert np.abs(aligned - expected).max() > 1e-2


def test_legacy_pooler_is_detectrons_multilevel_roi_align() -> None:
    rng = np.random.default_rng(6)
    h, w = 256, 320
    feats = {str(i): torch.from_numpy(rng.normal(size=(1, 4, h >> (i + 2), w >> (i + 2))))
             .float() for i in range(4)}  # fmt: skip
    legacy = np.vstack([_legacy_boxes(rng, 40, h, w), [[3, 5, 250, 200], [0, 0, 6, 9]]])
    rois = np.hstack([np.zeros((len(legacy), 1)), legacy])
    levels = ref.map_rois_to_fpn_levels(legacy, 2, 5).astype(int)
    expected = np.stack([
        ref.roi_align(feats[str(lvl - 2)].numpy(), rois[i : i + 1], 7, 2.0**-lvl, 2)[0]
        for i, lvl in enumerate(levels)
    ])  # fmt: skip
    cont = torch.tensor(np.hstack([rois[:, :1], legacy + TO_CONTINUOUS]), dtype=torch.float32)
    pooler = MaskXRoIAlign(["0", "1", "2", "3"], 7, 2, box_convention="legacy")
    got = pooler.pool(feats, cont, [(h, w)]).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(roi_align_boxes(cont, "legacy").numpy()[:, 1:], legacy, atol=1e-4)
    torchvision_pool = MaskXRoIAlign(["0", "1", "2", "3"], 7, 2).pool(feats, cont, [(h, w)])
    assert np.abs(torchvision_pool.numpy() - expected).max() > 1e-2


# ----------------------------------------------------------------------------- proposals
def test_proposals_are_generate_proposals_then_collect() -> None:
    """Two FPN levels of one image with Detectron's test settings (pre/post NMS top-n per
    level, NMS 0.7, RPN_MIN_SIZE 0, clipped to the padded blob im_info) against maskx's
    ``select_proposals`` with the Detectron options."""
    rng = np.random.default_rng(7)
    valid, padded = (90, 115), (96, 128)
    a, pre, post = 3, 60, 40
    grids = {2: (24, 32), 3: (12, 16)}
    im_info = np.array([padded[0], padded[1], 1.0])
    logits = {lvl: rng.normal(size=(a, gh, gw)) for lvl, (gh, gw) in grids.items()}
    deltas = {lvl: rng.normal(scale=0.6, size=(4 * a, gh, gw)) for lvl, (gh, gw) in grids.items()}
    anchors = {lvl: ref.fpn_level_anchors(lvl, gh, gw) for lvl, (gh, gw) in grids.items()}
    rois, probs = [], []
    for lvl in grids:
        r, p = ref.generate_proposals_one_level(
            1 / (1 + np.exp(-logits[lvl])), deltas[lvl], im_info, anchors[lvl], pre, post, 0.7, 0.0
        )
        rois.append(r)
        probs.append(p)
    expected = ref.collect_fpn_proposals(rois, probs, post)

    def ours(**options):
        obj = np.concatenate([logits[lvl].transpose(1, 2, 0).reshape(-1) for lvl in grids])
        dl = np.concatenate([deltas[lvl].transpose(1, 2, 0).reshape(-1, 4) for lvl in grids])
        anc = np.concatenate([anchors[lvl] for lvl in grids]) + TO_CONTINUOUS
        props = BoxCoder((1.0, 1.0, 1.0, 1.0)).decode_single(
            torch.tensor(dl, dtype=torch.float32), torch.tensor(anc, dtype=torch.float32)
        )
        sizes = torch.tensor([valid])
        clip = padded_sizes(sizes, 32) if options.pop("padded") else sizes
        boxes, _, batch = select_proposals(
            props[None], torch.tensor(obj, dtype=torch.float32)[None],
            [len(anchors[lvl]) for lvl in grids], clip, pre_nms_top_n=pre,
            post_nms_top_n=post, nms_thresh=0.7, **options,
        )  # fmt: skip
        assert (batch == 0).all()
        return boxes.numpy()

    got = ours(padded=True, min_size=0.0, box_convention="legacy")
    assert got.shape == expected.shape == (post, 4)
    np.testing.assert_allclose(got, expected + TO_CONTINUOUS, rtol=1e-5, atol=1e-3)
    assert expected[:, 2].max() > valid[1] - 1  # clipping to the padded blob mattered
    default = ours(padded=False, min_size=1e-3, box_convention="continuous")
    assert default.shape != got.shape or np.abs(default - got).max() > 1.0


def test_model_rpn_clips_to_the_padded_image_only_when_asked() -> None:
    torch.manual_seed(0)
    image = [torch.rand(3, 128, 150)]  # at the model's scale, padded to 128 x 160
    tops = {}
    for padded in (False, True):
        cfg = tiny_config(clip_proposals_to_padded=padded, rpn_min_size=0.0)
        model = build_model(cfg).eval()
        with torch.no_grad():
            images, _ = model.transform(image)
            assert images.tensors.shape[-2:] == (128, 160) and images.image_sizes == [(128, 150)]
            proposals, _ = model.rpn(images, model.backbone(images.tensors))
        tops[padded] = proposals[0].amax(0)
    assert tops[False][2] <= 150
    assert tops[True][2] > 150


# ----------------------------------------------------------------------------- detections
def test_detections_are_box_results_with_nms_and_limit() -> None:
    rng = np.random.default_rng(8)
    h, w, r, k = 120, 160, 80, 5
    legacy = _legacy_boxes(rng, r, h, w)
    legacy[:6, 0] = rng.uniform(-40, -30, 6)  # off the left edge: clipping decides
    legacy[:6, 2] = legacy[:6, 0] + 10
    logits = rng.normal(scale=2.0, size=(r, k + 1))
    deltas = rng.normal(scale=1.0, size=(r, 4 * (k + 1)))
    scores = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    weights = (10.0, 10.0, 5.0, 5.0)
    boxes = ref.clip_tiled_boxes(ref.bbox_transform(legacy, deltas, weights), (h, w))
    exp_scores, exp_boxes, exp_labels = ref.box_results_with_nms_and_limit(scores, boxes, 0.05,
                                                                            0.5, 30)  # fmt: skip
    assert len(exp_scores) == 30  # the limit cut
    d = torch.tensor(deltas, dtype=torch.float32).view(r, k + 1, 4)

    def ours(convention):
        b, s, lab, _ = select_detections(
            torch.tensor(logits, dtype=torch.float32),
            torch.arange(r, dtype=torch.float32)[:, None],  # features: the RoI index
            torch.tensor(legacy + TO_CONTINUOUS, dtype=torch.float32),
            torch.zeros(r, dtype=torch.int64),
            torch.tensor([[h, w]]),
            box_deltas=lambda f, labels: d[f[:, 0].long(), labels],
            box_coder=BoxCoder(weights),
            score_thresh=0.05, nms_thresh=0.5, detections_per_img=30, candidates_per_img=None,
            box_convention=convention,
        )  # fmt: skip
        return b.numpy(), s.numpy(), lab.numpy()

    got_boxes, got_scores, got_labels = ours("legacy")
    order = np.argsort(-exp_scores, kind="stable")
    np.testing.assert_allclose(got_scores, exp_scores[order], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got_labels, exp_labels[order])
    np.testing.assert_allclose(got_boxes, exp_boxes[order] + TO_CONTINUOUS, rtol=1e-5, atol=1e-3)
    assert (exp_boxes[:, 0] == 0).any() and (exp_boxes[:, 2] == 0).any()  # the edge cases ran
    tv_boxes, _, _ = ours("continuous")
    same = tv_boxes.shape == got_boxes.shape and np.allclose(tv_boxes, got_boxes, atol=1e-3)
    assert not same


# ----------------------------------------------------------------------------- composed
def _detectron_model():
    torch.manual_seed(0)
    cfg = tiny_config(anchor_style="detectron", box_convention="legacy", rpn_min_size=0.0,
                      clip_proposals_to_padded=True, box_candidates_per_img=None)  # fmt: skip
    model = build_model(cfg).eval()
    with torch.no_grad():  # spread the class scores, so that float rounding decides no rank
        model.roi_heads.box_predictor.cls_score.weight.mul_(300.0)
        model.roi_heads.box_predictor.bbox_pred.weight.mul_(30.0)
    image = torch.rand(3, 128, 150, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        images, _ = model.transform([image])
        features = model.backbone(images.tensors)
    return cfg, model, images, features


def test_model_rpn_is_detectrons_rpn() -> None:
    """The model's RPN (its own head's outputs) against GenerateProposals on every level and
    collect, with the tiny config's anchor sizes (16 at P2) and top-n."""
    cfg, model, images, features = _detectron_model()
    with torch.no_grad():
        objectness, deltas = model.rpn.head(list(features.values()))
        ours, _ = model.rpn(images, features)
    padded = images.tensors.shape[-2:]
    im_info = np.array([padded[0], padded[1], 1.0])
    rois, probs = [], []
    for lvl, (obj, dl) in enumerate(zip(objectness, deltas, strict=True), start=2):
        h, w = obj.shape[-2:]
        anchors = ref.fpn_level_anchors(lvl, h, w, start_size=cfg.anchor_sizes[0])
        r, p = ref.generate_proposals_one_level(
            torch.sigmoid(obj[0]).numpy(), dl[0].numpy(), im_info, anchors,
            cfg.rpn_pre_nms_top_n_test, cfg.rpn_post_nms_top_n_test, cfg.rpn_nms_thresh, 0.0,
        )  # fmt: skip
        rois.append(r)
        probs.append(p)
    expected = ref.collect_fpn_proposals(rois, probs, cfg.rpn_post_nms_top_n_test)
    assert ours[0].shape == expected.shape == (cfg.rpn_post_nms_top_n_test, 4)
    np.testing.assert_allclose(ours[0].numpy(), expected + TO_CONTINUOUS, rtol=1e-5, atol=1e-3)


def test_in_a_batch_an_image_has_the_anchors_of_its_own_blob() -> None:
    """Detectron runs each image alone, in a blob padded to its own size. Batched beside a
    larger image, an image keeps exactly the anchors of that blob: the cells of the batch past
    its own padded size do not exist for it (else proposals born there, clipped to its edge,
    would change its detections with its batch companions)."""
    _, model, _, _ = _detectron_model()
    small = torch.rand(3, 128, 150, generator=torch.Generator().manual_seed(1))
    large = torch.rand(3, 160, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        alone, _ = model.transform([small])
        batch, _ = model.transform([small, large])
        assert tuple(batch.tensors.shape[-2:]) == (160, 160) != tuple(alone.tensors.shape[-2:])
        feats_alone = list(model.backbone(alone.tensors).values())
        feats_batch = list(model.backbone(batch.tensors).values())
        anchors_alone = model.rpn.anchor_generator(alone, feats_alone)[0]
        anchors_batch = model.rpn.anchor_generator(batch, feats_batch)[0]
        valid = model.rpn.anchor_valid(
            feats_batch, torch.as_tensor(batch.image_sizes), tuple(batch.tensors.shape[-2:])
        )
    assert valid is not None and valid.shape == (2, len(anchors_batch))
    for k, image in enumerate((alone, model.transform([large])[0])):
        with torch.no_grad():
            own = model.rpn.anchor_generator(image, list(model.backbone(image.tensors).values()))[0]
        assert len(own) < len(anchors_batch)
        np.testing.assert_array_equal(anchors_batch[valid[k]].numpy(), own.numpy())
    assert len(anchors_alone) == int(valid[0].sum())


def test_model_box_head_inference_is_detectrons() -> None:
    """RoI heads on given proposals: Detectron's multi-level RoIAlign, the model's box head,
    bbox_transform, clip_tiled_boxes and box_results_with_nms_and_limit."""
    cfg, model, images, features = _detectron_model()
    rng = np.random.default_rng(9)
    h, w = images.image_sizes[0]
    legacy = _legacy_boxes(rng, 60, h, w)
    legacy[:, :2] = np.maximum(legacy[:, :2], 0)
    with torch.no_grad():
        ours, _ = model.roi_heads(
            features, [torch.tensor(legacy + TO_CONTINUOUS, dtype=torch.float32)], [(h, w)]
        )
    levels = ref.map_rois_to_fpn_levels(legacy, 2, 5).astype(int)
    rois = np.hstack([np.zeros((len(legacy), 1)), legacy])
    pooled = np.stack([
        ref.roi_align(features[str(lvl - 2)].numpy(), rois[i : i + 1], 7, 2.0**-lvl, 2)[0]
        for i, lvl in enumerate(levels)
    ])  # fmt: skip
    box = model.roi_heads.box_predictor
    with torch.no_grad():
        feats = model.roi_heads.box_head(torch.tensor(pooled, dtype=torch.float32))
        logits = box.cls_score(feats).double().numpy()
        deltas = box.bbox_pred(feats).double().numpy()
    scores = np.exp(logits - logits.max(1, keepdims=True))
    scores /= scores.sum(1, keepdims=True)
    boxes = ref.clip_tiled_boxes(ref.bbox_transform(legacy, deltas, (10.0, 10.0, 5.0, 5.0)), (h, w))
    exp_scores, exp_boxes, exp_labels = ref.box_results_with_nms_and_limit(
        scores, boxes, cfg.box_score_thresh, cfg.box_nms_thresh, cfg.box_detections_per_img
    )
    order = np.argsort(-exp_scores, kind="stable")
    got = ours[0]
    assert len(order) > 20
    np.testing.assert_array_equal(got["labels"].numpy(), exp_labels[order])
    np.testing.assert_allclose(got["scores"].numpy(), exp_scores[order], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["boxes"].numpy(), exp_boxes[order] + TO_CONTINUOUS, rtol=1e-5,
                               atol=2e-3)  # fmt: skip


def test_a_model_with_detectron_conventions_trains(batch) -> None:
    """The conventions apply in training too (RoIAlign of the sampled RoIs, proposal clipping):
    one step gives finite losses and gradients reach the backbone through the legacy pooler."""
    torch.manual_seed(0)
    cfg = tiny_config(anchor_style="detectron", box_convention="legacy", rpn_min_size=0.0,
                      clip_proposals_to_padded=True)  # fmt: skip
    model = build_model(cfg).train()
    images, targets = batch
    losses = model(images, targets)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier",
                           "loss_box_reg", "loss_mask"}  # fmt: skip
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.backbone.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_rank_within_group_counts_each_groups_elements_in_input_order():
    """The rank that bounds the candidates per image: each element's position among the earlier
    elements of its own group, as an int64 tensor, whatever the other groups hold."""
    group = torch.tensor([1, 0, 1, 1, 2, 0, 1])
    rank = rank_within_group(group, 3)
    assert rank.dtype == torch.int64
    assert rank.tolist() == [0, 0, 1, 2, 0, 1, 3]
    assert rank_within_group(torch.zeros(0, dtype=torch.int64), 2).tolist() == []
