"""Image bytes -> the model's input: decode, orient, convert to RGB, resize, pad.

Work is bounded before it is spent: the pixel count comes from the header and is checked
**before** any pixel is decoded (decompression bombs); so is a JPEG's scan count (libjpeg walks
every block of the image once per scan, so a small progressive file with thousands of scans
costs seconds: libjpeg-turbo's own answer is a scan limit, ``djpeg -maxscans``). Large JPEGs
are decoded in draft mode at the smallest power-of-two reduction that still covers the model's
input size (``floor`` rule only: Detectron decodes at full size). Under the ``floor`` rule any
other image that is not RGB and at least 4x the input size is box-reduced first (in bands, in a
mode that keeps 16 bits and transparency) and converted after; under ``detectron`` the mode
conversion (16-bit, alpha on white, palette) runs in bands of rows. Either way no full-size
float64 copy or RGBA canvas is made. The size and the resampling follow the model's ``resize_rule`` (:mod:`service.resize`).
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import ServiceError
from service.resize import resize_pixels, resize_scale, resized_size

# Formats Pillow may try; anything else (SVG, HTML, PDF, ...) is rejected without parsing.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")  # JPEG includes MPO
_EXIF_ORIENTATION = 0x0112
Image.init()  # register every plugin now: ``Image.open(formats=...)`` only looks at loaded ones
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
# A marker inside entropy-coded JPEG data: 0xFF followed by a byte that is not a stuffed zero, a
# restart marker (RST0..7) or another fill 0xFF.
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
DEFAULT_MAX_JPEG_SCANS = 32
# Rows converted at a time: bounds the temporaries of a conversion to about a band's pixels.
_CONVERT_BAND_PIXELS = 1 << 20


@dataclass
class PreparedImage:
    """One image ready for batching.

    ``pixels`` is uint8 ``[3, h, w]`` RGB at the model's scale (not yet padded; possibly a
    strided view, copied once by :func:`pad_batch`); ``height`` and
    ``width`` are the image as displayed (EXIF orientation applied), the frame of every
    coordinate in the response.
    """

    pixels: np.ndarray
    height: int
    width: int

    @property
    def input_size(self) -> tuple[int, int]:
        return int(self.pixels.shape[1]), int(self.pixels.shape[2])

    @property
    def scale_xy(self) -> tuple[float, float]:
        """Factors that map input pixels back to displayed pixels (x, y)."""
        h, w = self.input_size
        return self.width / w, self.height / h


def model_input_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """(h, w) after scaling the short side to ``min_size`` with the long side at most ``max_size``.

    The ``floor`` rule of :func:`service.resize.resized_size` (torchvision's
    ``GeneralizedRCNNTransform``: floor of size × scale).
    """
    return resized_size(height, width, min_size, max_size, "floor")


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Open ``data`` lazily (header only) and enforce the pixel bound before decoding."""
    if not data:
        raise ServiceError("empty_body", "the request body is empty; send image bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ServiceError("image_too_large", f"image pixel count over the limit: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ServiceError(
            "undecodable_image",
            "the body is not a decodable image (supported: " + ", ".join(ALLOWED_FORMATS) + ")",
        ) from exc
    except Exception as exc:  # Pillow raises many types on corrupt headers
        raise ServiceError("undecodable_image", f"cannot read the image header: {exc}") from exc
    width, height = image.size
    if width < 1 or height < 1:
        raise ServiceError("undecodable_image", f"image has an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ServiceError(
            "image_too_large",
            f"image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels} (MASKX_MAX_PIXELS)",
        )
    return image


def jpeg_scan_count(data: bytes, stop_after: int | None = None) -> int:
    """Scans (SOS markers) of the first image of JPEG ``data``, read from its markers alone.

    Segments before a scan are skipped by their length (an EXIF thumbnail inside APP1 is not
    counted); a scan's entropy-coded data runs to the next marker that is not a stuffed zero or
    a restart. Stops at the first EOI (an MPO's later frames are never decoded) or as soon as
    the count passes ``stop_after``. Costs one regex search per scan, no pixel work.
    """
    n, i, scans = len(data), 2, 0
    while i + 4 <= n:
        if data[i] != 0xFF:  # junk between segments: libjpeg skips to the next marker too
            found = _JPEG_MARKER.search(data, i)
            if found is None:
                break
            i = found.start()
            continue
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD9:  # EOI
            break
        if 0xD0 <= marker <= 0xD7 or marker in (0x01, 0xD8):
            i += 2
            continue
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        if marker == 0xDA:
            scans += 1
            if stop_after is not None and scans > stop_after:
                break
            found = _JPEG_MARKER.search(data, i)
            if found is None:
                break
            i = found.start()
    return scans


def check_decode_cost(image: Image.Image, data: bytes, max_jpeg_scans: int) -> None:
    """Refuse a JPEG with more than ``max_jpeg_scans`` scans before decoding it (413
    ``image_too_complex``): decoding costs every block of the image once per scan, however
    small the file, and no deadline can interrupt libjpeg once it runs."""
    if image.format not in ("JPEG", "MPO"):
        return
    scans = jpeg_scan_count(data, stop_after=max_jpeg_scans)
    if scans > max_jpeg_scans:
        raise ServiceError(
            "image_too_complex",
            f"the JPEG has more than {max_jpeg_scans} scans (MASKX_MAX_JPEG_SCANS); "
            "re-encode it (a baseline or standard progressive JPEG has at most 10)",
        )


def _gray_scale(image: Image.Image) -> tuple[float, float]:
    """(multiplier, divisor) that bring a 16-bit, 32-bit or float image onto 0..255.

    Read from the whole image's extrema (one pass in C, no copy), so that every band of
    :func:`_to_rgb` is scaled alike: float images in 0..1 are stretched by 255, 16-bit ranges
    above 255 divided by 257, anything else kept (and clipped).
    """
    extrema = image.getextrema()
    top = float(extrema[1]) if isinstance(extrema, tuple) else 0.0
    if image.mode == "F" and top <= 1.0:
        return 255.0, 1.0
    if top > 255.0:
        return 1.0, 257.0
    return 1.0, 1.0


def _band_to_rgb(band: Image.Image, gray: tuple[float, float] | None) -> Image.Image:
    """One band of rows -> 8-bit RGB (see :func:`_to_rgb`)."""
    if gray is not None:
        # float64 of one band only; rint(x / 257) of an integer never ties, so this equals
        # the full-image arithmetic it replaces.
        arr = np.asarray(band, dtype=np.float64)
        if gray[0] != 1.0:
            arr = arr * gray[0]
        elif gray[1] != 1.0:
            arr = arr / gray[1]
        levels = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(levels, mode="L").convert("RGB")
    if band.mode in ("RGBA", "LA", "PA") or (band.mode == "P" and "transparency" in band.info):
        # Transparent pixels carry arbitrary colours; show them on white, as viewers do.
        rgba = band.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return band.convert("RGB")


# Modes Pillow's ``reduce`` takes (it refuses I;16, P, 1); the others are converted per band.
_REDUCIBLE = ("L", "I", "F", "RGB", "CMYK")
# ImageOps.exif_transpose's methods, for an image that no longer carries its EXIF block.
_ORIENT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )


def reduce_before_convert(image: Image.Image, factor: int) -> Image.Image:
    """``image`` box-reduced by ``factor`` in bands of rows, before any conversion to RGB.

    For the ``floor`` rule only, whose bilinear resize is antialiased (Pillow's own
    ``reducing_gap`` does the same): a 16-bit or transparent image is reduced in a mode that
    keeps its information (16-bit as 32-bit integers, transparency premultiplied so that the
    colours of transparent pixels do not bleed), and only then converted, so no full-size
    float64 copy or RGBA canvas is ever made. Returns mode ``I`` (from 16-bit), ``RGBA`` (any
    transparency), ``L``, ``I``, ``F``, ``CMYK`` as given, else ``RGB``; size
    ``ceil(w / factor)`` × ``ceil(h / factor)``.
    """
    alpha = _has_alpha(image)
    if alpha:
        final = "RGBA"
    elif image.mode.startswith("I;16"):
        final = "I"
    elif image.mode in _REDUCIBLE:
        final = image.mode
    elif image.mode == "1":
        final = "L"
    else:
        final = "RGB"
    width, height = image.size
    out = Image.new(final, (-(-width // factor), -(-height // factor)))
    rows = factor * max(1, _CONVERT_BAND_PIXELS // max(width * factor, 1))
    for top in range(0, height, rows):
        band = image.crop((0, top, width, min(height, top + rows)))
        if "transparency" in image.info:
            band.info["transparency"] = image.info["transparency"]
        if alpha:
            small = band.convert("RGBA").convert("RGBa").reduce(factor).convert("RGBA")
        else:
            small = (band if band.mode == final else band.convert(final)).reduce(factor)
        out.paste(small, (0, top // factor))
    return out


def _to_rgb(image: Image.Image, gray: tuple[float, float] | None = None) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB (16-bit and float images are scaled, not clipped).

    Converted in bands of rows into one RGB image: a full-size float64 copy or RGBA canvas
    (8 and 4 bytes a pixel, then a second one for the composite) would cost several times the
    decoded image; a band costs at most ``_CONVERT_BAND_PIXELS`` of them. Every conversion here
    is per pixel, so banding changes no value.
    """
    if image.mode == "RGB":
        return image
    if gray is None and (image.mode.startswith("I;16") or image.mode in ("I", "F")):
        gray = _gray_scale(image)
    width, height = image.size
    rows = max(1, _CONVERT_BAND_PIXELS // max(width, 1))
    if rows >= height:
        return _band_to_rgb(image, gray)
    out = Image.new("RGB", image.size)
    for top in range(0, height, rows):
        box = (0, top, width, min(height, top + rows))
        band = image.crop(box)
        if "transparency" in image.info:
            band.info["transparency"] = image.info["transparency"]
        out.paste(_band_to_rgb(band, gray), box[:2])
    return out


def decode_image(
    data: bytes,
    *,
    min_size: int,
    max_size: int,
    max_pixels: int,
    resize_rule: str = "floor",
    max_jpeg_scans: int = DEFAULT_MAX_JPEG_SCANS,
    exif_orientation: bool = True,
) -> PreparedImage:
    """Decode ``data`` into a :class:`PreparedImage` at the model's scale under ``resize_rule``
    (:mod:`service.resize`). ``exif_orientation``: show the image as its EXIF orientation says
    (a photo as displayed); False keeps the stored pixels, the frame of COCO annotations.

    Raises :class:`ServiceError` (``empty_body``, ``undecodable_image``, ``image_too_large``,
    ``image_too_complex``). Animated images give their first frame.
    """
    image = open_image(data, max_pixels)
    check_decode_cost(image, data, max_jpeg_scans)
    try:
        orientation = int(image.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # a broken EXIF block must not reject an otherwise good image
        orientation = 1
    if not exif_orientation:
        orientation = 1
    stored_w, stored_h = image.size
    swapped = orientation in _SWAPPING_ORIENTATIONS
    width, height = (stored_h, stored_w) if swapped else (stored_w, stored_h)
    in_h, in_w = resized_size(height, width, min_size, max_size, resize_rule)
    detectron = resize_rule == "detectron"
    try:
        if image.format in ("JPEG", "MPO") and not detectron:
            # Decode at a 1/2, 1/4 or 1/8 scale when that still covers the input size.
            image.draft(None, (in_h, in_w) if swapped else (in_w, in_h))
        image.load()
        gray = None
        # Stored pixels per input pixel, at least 2 left for the bilinear filter to average.
        factor = min(stored_w // (2 * (in_h if swapped else in_w)),
                     stored_h // (2 * (in_w if swapped else in_h)))  # fmt: skip
        if not detectron and image.mode not in ("RGB", "L") and factor >= 2:
            # Reduce, then convert: conversion never runs at full size where the rule allows
            # it (Detectron's resamples the 8-bit full-size image, so it converts first).
            if image.mode.startswith("I;16") or image.mode in ("I", "F"):
                gray = _gray_scale(image)  # of the whole image, as without the reduction
            image = reduce_before_convert(image, factor)
            if orientation in _ORIENT:
                image = image.transpose(_ORIENT[orientation])
        elif swapped or orientation != 1:
            image = ImageOps.exif_transpose(image)
        if not detectron and image.mode == "L" and image.size != (in_w, in_h):
            # Pillow filters each band alike, so resizing the grey image and replicating it
            # equals resizing its RGB copy: exact, and nothing of 3 bytes a pixel at full size.
            image = image.resize((in_w, in_h), Image.Resampling.BILINEAR)
        image = _to_rgb(image, gray)
        if detectron:
            scale = resize_scale(height, width, min_size, max_size, resize_rule)
            pixels = resize_pixels(np.asarray(image), (in_h, in_w), resize_rule, scale)
        else:
            if image.size != (in_w, in_h):
                image = image.resize((in_w, in_h), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.uint8)
    except ServiceError:
        raise
    except Exception as exc:  # truncated or corrupt pixel data
        raise ServiceError("undecodable_image", f"cannot decode the image: {exc}") from exc
    # A [3, h, w] view of the decoded [h, w, 3] pixels: pad_batch's one strided copy into the
    # batch does the transpose (measured: 1.4 -> 0.4 ms at 640x480 for decode's last step).
    return PreparedImage(pixels=pixels.transpose(2, 0, 1), height=height, width=width)


def pad_batch(images: list[np.ndarray], size_divisible: int) -> tuple[np.ndarray, np.ndarray]:
    """Stack uint8 ``[3, h_i, w_i]`` images into zero-padded ``[B, 3, H, W]``.

    H and W are the largest h_i, w_i rounded up to ``size_divisible``. Returns the batch and
    ``image_sizes`` int64 ``[B, 2]`` (h_i, w_i).
    """
    if not images:
        raise ValueError("pad_batch needs at least one image")
    sizes = np.array([img.shape[1:] for img in images], dtype=np.int64)
    d = size_divisible
    height = int(-(-sizes[:, 0].max() // d) * d)
    width = int(-(-sizes[:, 1].max() // d) * d)
    batch = np.zeros((len(images), 3, height, width), dtype=np.uint8)
    for i, img in enumerate(images):
        batch[i, :, : img.shape[1], : img.shape[2]] = img
    return batch, sizes
