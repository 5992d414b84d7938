"""A padded, mixed-size batch through a real exported model equals eager PyTorch per image.

Every other export test sends images whose sides are multiples of 32 (nothing padded) or a
batch of one shape. The service pads every mixed-size batch, so the graph's handling of the
padding (pixels outside ``image_sizes`` are 0 after normalisation, as torchvision's batching
leaves them; proposals and boxes clipped to each image's own size) is only tested here.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.training.export.helpers import assert_same_detections, split_outputs
from training.checkpoint import load_model_from_checkpoint
from training.export.onnx_export import OUTPUT_NAMES, eager_reference, export_model, pad_batch


def _synth_image(synth_root, index: int) -> torch.Tensor:
    from PIL import Image

    files = sorted((synth_root / "images" / "val").glob("*.png"))
    rgb = np.array(Image.open(files[index]).convert("RGB"))
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


@pytest.fixture(scope="module")
def exported(trained_checkpoint, tmp_path_factory):
    """(eager model, ONNX Runtime session) of the tiny trained checkpoint, score threshold 0
    so that every image has many detections to compare."""
    model, _, _ = load_model_from_checkpoint(trained_checkpoint)
    model.roi_heads.score_thresh = 0.0
    path = export_model(model, tmp_path_factory.mktemp("padded") / "m.onnx", {"name": "t"})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return model, session


def test_padded_mixed_size_batch_equals_eager_per_image(exported, synth_root):
    model, session = exported
    t = model.transform
    assert (int(t.min_size[-1]), int(t.max_size), int(t.size_divisible)) == (96, 96, 32)
    # Both keep their shape in the model's transform (long side at max_size = 96), neither side
    # of the first is a multiple of 32, and the two pad along different axes in the batch:
    # 70×96 gets 26 rows of padding, 96×64 gets 32 columns.
    images = [
        _synth_image(synth_root, 0)[:, :70, :96].contiguous(),
        _synth_image(synth_root, 1)[:, :, :64].contiguous(),
    ]
    batch, sizes = pad_batch(images)
    assert tuple(batch.shape) == (2, 3, 96, 96)
    assert sizes.tolist() == [[70, 96], [96, 64]]
    out = session.run(list(OUTPUT_NAMES), {"images": batch.numpy(), "image_sizes": sizes.numpy()})
    got = split_outputs(out, 2)
    # Eager on the same two images: torchvision's transform pads them into the same 96×96 batch.
    eager = eager_reference(model, images)
    for k, img in enumerate(images):
        ref = {key: v.numpy() for key, v in eager[k].items()}
        assert ref["labels"].shape[0] >= 10, "too few detections to compare"
        assert_same_detections(f"image {k} {tuple(img.shape[1:])} in the batch", ref, got[k])
        # every box inside its own image's valid region, not the padded batch's
        h, w = img.shape[1:]
        assert (got[k]["boxes"][:, 2] <= w).all() and (got[k]["boxes"][:, 3] <= h).all()
    # Each image alone, padded only to its own multiple of 32 (70×96 → 96×96: padded even
    # alone). Alone and in the batch differ for the 96×64 image, in eager as in the graph:
    # past the first convolution the padded columns hold non-zero features that a lone image's
    # border (zero padding of every convolution) does not have.
    for k, img in enumerate(images):
        ref = {key: v.numpy() for key, v in eager_reference(model, [img])[0].items()}
        alone_batch, alone_sizes = pad_batch([img])
        alone = session.run(
            list(OUTPUT_NAMES),
            {"images": alone_batch.numpy(), "image_sizes": alone_sizes.numpy()},
        )
        assert_same_detections(f"image {k} alone", ref, split_outputs(alone, 1)[0])


def test_padding_content_does_not_reach_the_detections(exported, synth_root):
    """What lies outside ``image_sizes`` is ignored: noise in the padding changes nothing."""
    _, session = exported
    img = _synth_image(synth_root, 2)[:, :70, :96].contiguous()
    batch, sizes = pad_batch([img])
    clean = session.run(list(OUTPUT_NAMES), {"images": batch.numpy(), "image_sizes": sizes.numpy()})
    g = torch.Generator().manual_seed(0)
    noisy = batch.clone()
    noisy[:, :, 70:, :] = torch.randint(0, 256, noisy[:, :, 70:, :].shape, generator=g).to(
        torch.uint8
    )
    dirty = session.run(list(OUTPUT_NAMES), {"images": noisy.numpy(), "image_sizes": sizes.numpy()})
    assert clean[0].shape[0] > 0
    for name, a, b in zip(OUTPUT_NAMES, clean, dirty, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)
