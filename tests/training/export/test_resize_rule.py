"""One resize rule for the service, the exporter's verification images and the eager model."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from service.preprocess import decode_image
from service.resize import resize_pixels, resize_scale, resized_size
from training.export.onnx_export import build_metadata, letterbox

# Many sizes: every short/long ratio band, odd sides, sizes whose scaled side lands just under
# or over an integer (where rounding and flooring part), squares, and the 800 / 1333 scale.
SCALES = [(320, 512), (96, 96), (800, 1333)]


def _sizes(seed: int, n: int, top: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    fixed = [(480, 640), (640, 480), (333, 1000), (257, 259), (100, 100), (1, 7), (31, 2)]
    return fixed + [tuple(int(v) for v in rng.integers(1, top, 2)) for _ in range(n)]


@pytest.mark.parametrize(("min_size", "max_size"), SCALES)
def test_service_exporter_and_eager_transform_resize_alike(min_size: int, max_size: int) -> None:
    transform = GeneralizedRCNNTransform(min_size, max_size, [0.0] * 3, [1.0] * 3)
    rounded = 0
    for h, w in _sizes(min_size, 40, 600):
        want = resized_size(h, w, min_size, max_size)
        image = torch.zeros(3, h, w, dtype=torch.uint8)
        assert tuple(letterbox(image, min_size, max_size).shape[1:]) == want, (h, w)
        eager, _ = transform([image.float()])
        assert tuple(eager.image_sizes[0]) == want, (h, w)
        scale = resize_scale(h, w, min_size, max_size)
        rounded += (round(h * scale), round(w * scale)) != want
    assert rounded > 5  # sizes where rounding instead of flooring would have been caught


def test_letterbox_pixels_are_the_services() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    for rule in ("floor", "detectron"):
        size = resized_size(50, 70, 64, 80, rule)
        want = resize_pixels(rgb, size, rule, resize_scale(50, 70, 64, 80, rule))
        got = letterbox(chw, 64, 80, rule).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(got, want)
    # The service decoding the same pixels gives the exporter's input exactly.
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    served = decode_image(buf.getvalue(), min_size=64, max_size=80, max_pixels=10**6,
                          resize_rule="detectron")  # fmt: skip
    np.testing.assert_array_equal(served.pixels, letterbox(chw, 64, 80, "detectron").numpy())


def test_eager_transform_keeps_detectron_sized_images() -> None:
    # A Detectron-resized image has its short side at min_size or its long side at max_size,
    # so torchvision's transform (the eager model's, floor rule) leaves it as it is: feeding
    # the eager model images resized by the service's rule is the eager path for those models.
    transform = GeneralizedRCNNTransform(800, 1333, [0.0] * 3, [1.0] * 3)
    rng = np.random.default_rng(1)
    sizes = [(480, 640), (480, 800), (1600, 2667), (1600, 2665), (801, 1200)]
    sizes += [tuple(int(v) for v in rng.integers(2, 3000, 2)) for _ in range(20)]
    for h, w in sizes:
        size = resized_size(h, w, 800, 1333, "detectron")
        assert resized_size(*size, 800, 1333, "floor") == size, (h, w)
    for size in {resized_size(h, w, 800, 1333, "detectron") for h, w in sizes[:3]}:
        eager, _ = transform([torch.zeros(3, *size)])
        assert tuple(eager.image_sizes[0]) == size


class _Vocab:
    names = ("a", "b")
    mask_classes = (True, False)
    source_ids = (1, 2)


def test_build_metadata_reads_the_rules_from_the_model_config() -> None:
    from model import build_model
    from tests.model.helpers import tiny_config

    model = build_model(tiny_config(num_classes=2)).eval()
    common = {"train_config": None, "checkpoint_sha256": None, "name": "m", "version": "1"}
    default = build_metadata(model, _Vocab(), model_config={}, **common)
    assert (default.resize_rule, default.mask_paste) == ("floor", "maskx")
    config = {"resize_rule": "detectron", "mask_paste": "detectron"}
    imported = build_metadata(model, _Vocab(), model_config=config, **common)
    assert (imported.resize_rule, imported.mask_paste) == ("detectron", "detectron")
    text = imported.to_json()
    assert '"resize_rule":"detectron"' in text and '"mask_paste":"detectron"' in text
    with pytest.raises(ValueError, match="resize_rule='nearest'"):
        build_metadata(model, _Vocab(), model_config={"resize_rule": "nearest"}, **common)


def test_eager_reference_takes_images_at_the_services_size_as_they_are() -> None:
    from model import build_model
    from tests.model.helpers import tiny_config
    from training.export.onnx_export import eager_reference

    torch.manual_seed(0)
    model = build_model(tiny_config(num_classes=2, box_score_thresh=0.0)).eval()
    lo, hi = 128, 160
    g = torch.Generator().manual_seed(0)
    # Flooring is not idempotent: 303 * (160 / 303) floors to 159, and the model's transform
    # would stretch the service's 52 x 159 input to 160 wide. The reference must take it as
    # the graph does (it used to refuse such images).
    size = resized_size(100, 303, lo, hi)
    assert size == (52, 159) and resized_size(*size, lo, hi) != size
    small = letterbox(torch.randint(0, 256, (3, 100, 303), dtype=torch.uint8, generator=g), lo, hi)
    (ref,) = eager_reference(model, [small])
    assert len(ref["boxes"]) > 0
    assert float(ref["boxes"][:, 2].max()) <= 159 and float(ref["boxes"][:, 3].max()) <= 52
    # At a size the transform keeps, the reference is the model's own eval output.
    kept = torch.randint(0, 256, (3, 128, 150), dtype=torch.uint8, generator=g)
    assert resized_size(128, 150, lo, hi) == (128, 150)
    (ref,) = eager_reference(model, [kept])
    with torch.no_grad():
        (out,) = model([kept.float() / 255.0])
    assert len(ref["boxes"]) > 0
    torch.testing.assert_close(ref["boxes"], out["boxes"])
    torch.testing.assert_close(ref["scores"], out["scores"])
