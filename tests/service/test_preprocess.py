"""Decode, orientation, modes, bounds and padding."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from service.errors import ServiceError
from service.preprocess import decode_image, model_input_size, pad_batch
from service.testing import make_image

LIMITS = {"min_size": 320, "max_size": 512, "max_pixels": 40_000_000}


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` × ``height`` followed by a tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("h", "w", "expected"),
    [
        ((480, 640), None, (320, 426)),
        ((1080, 1920), None, (288, 512)),
        ((100, 100), None, (320, 320)),
    ],
)
def test_model_input_size_follows_torchvision(h, w, expected) -> None:
    height, width = h
    assert model_input_size(height, width, 320, 512) == expected


def test_model_input_size_matches_torchvision_transform() -> None:
    torch = pytest.importorskip("torch")
    transform = pytest.importorskip("torchvision.models.detection.transform")
    t = transform.GeneralizedRCNNTransform(320, 512, [0.0] * 3, [1.0] * 3)
    for h, w in [(480, 640), (333, 1000), (1000, 333), (257, 259), (1080, 1920)]:
        out, _ = t([torch.zeros(3, h, w)])
        assert tuple(out.image_sizes[0]) == model_input_size(h, w, 320, 512), (h, w)


def test_decode_resizes_to_model_scale() -> None:
    img = decode_image(make_image(640, 480), **LIMITS)
    assert (img.width, img.height) == (640, 480)
    assert img.pixels.shape == (3, 320, 426) and img.pixels.dtype == np.uint8
    assert img.scale_xy == pytest.approx((640 / 426, 1.5))


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "P", "CMYK", "1", "I;16"])
def test_modes_become_rgb(mode: str) -> None:
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "I;16" else "PNG")
    if mode == "I;16":
        arr = (np.linspace(0, 65535, 200 * 150).reshape(150, 200)).astype(np.uint16)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "TIFF")
        data = buf.getvalue()
    else:
        data = make_image(200, 150, fmt=fmt, mode=mode)
    img = decode_image(data, **LIMITS)
    assert img.pixels.shape == (3, 320, 426)
    if mode == "I;16":
        # the 16-bit ramp spans the 8-bit range instead of saturating at 255
        assert img.pixels.min() < 10 and img.pixels.max() > 245
        assert len(np.unique(img.pixels)) > 100


def test_animated_gif_gives_first_frame() -> None:
    frames = [Image.new("RGB", (64, 48), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    img = decode_image(buf.getvalue(), **LIMITS)
    r, _g, b = img.pixels[:, 100, 100].astype(int)
    assert r > 200 and b < 50


def test_exif_orientation_6_swaps_the_frame() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = make_image(320, 240, exif=exif.tobytes())
    img = decode_image(data, **LIMITS)
    assert (img.width, img.height) == (240, 320)
    assert img.pixels.shape == (3, 426, 320)


def test_exif_orientation_can_be_ignored_for_stored_pixel_annotations() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = make_image(320, 240, exif=exif.tobytes())
    shown = decode_image(data, **LIMITS)
    stored = decode_image(data, **LIMITS, exif_orientation=False)
    assert (stored.width, stored.height) == (320, 240)  # COCO's frame: as stored
    assert stored.pixels.shape == (3, 320, 426)
    plain = decode_image(make_image(320, 240), **LIMITS)
    assert (shown.width, shown.height) != (stored.width, stored.height)
    assert (plain.width, plain.height) == (stored.width, stored.height)


def test_large_jpeg_uses_draft_mode_and_keeps_full_size_frame(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from PIL import JpegImagePlugin

    drafts: list[tuple[tuple[int, int] | None, tuple[int, int]]] = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):  # type: ignore[no-untyped-def]
        result = real_draft(self, mode, size)
        drafts.append((size, self.size))  # what was asked, what the decoder will produce
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    data = make_image(4000, 3000, quality=80)
    img = decode_image(data, **LIMITS)
    assert (img.width, img.height) == (4000, 3000)
    assert img.pixels.shape == (3, 320, 426)
    # Decoded at 1/8 (500×375), the smallest power-of-two reduction that still covers 426×320,
    # instead of 12 million pixels.
    assert drafts == [((426, 320), (500, 375))]
    # A small JPEG is asked for its input size too, and decoded whole: no reduction covers it.
    drafts.clear()
    small = decode_image(make_image(640, 480), **LIMITS)
    assert small.pixels.shape == (3, 320, 426) and drafts == [((426, 320), (640, 480))]


def test_pixel_bound_is_checked_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(self: Image.Image) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_decoding)
    for w, h in [(8000, 6000), (60000, 60000)]:
        with pytest.raises(ServiceError) as err:
            decode_image(png_header_only(w, h), **LIMITS)
        assert err.value.code == "image_too_large" and err.value.status == 413


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty_body"),
        (b"hello, this is text", "undecodable_image"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "undecodable_image"),
        (b"<!doctype html><html><body>hi</body></html>", "undecodable_image"),
        (make_image(640, 480)[:2000], "undecodable_image"),
        (np.random.default_rng(0).bytes(5000), "undecodable_image"),
    ],
    ids=["empty", "text", "svg", "html", "truncated-jpeg", "random"],
)
def test_bad_bytes_raise_coded_errors(data: bytes, code: str) -> None:
    with pytest.raises(ServiceError) as err:
        decode_image(data, **LIMITS)
    assert err.value.code == code and 400 <= err.value.status < 500


def test_pad_batch_pads_to_multiples() -> None:
    a = np.full((3, 320, 426), 7, np.uint8)
    b = np.full((3, 426, 320), 9, np.uint8)
    batch, sizes = pad_batch([a, b], 32)
    assert batch.shape == (2, 3, 448, 448)
    assert sizes.tolist() == [[320, 426], [426, 320]]
    assert batch[0, :, :320, :426].min() == 7 and batch[0, :, 320:].max() == 0
    assert batch[1, :, :426, :320].min() == 9 and batch[1, :, :, 320:].max() == 0
