"""Draw a ``/segment`` response over its image: masks, boxes, labels with scores, a legend.

Pillow and numpy only (the service never imports torch). Colours follow the paper's figure:
classes with mask supervision (set A, ``mask_source == "supervised"``) are drawn in greens,
classes whose masks come from the learned weight transfer (set B, ``"transferred"``) in reds and
oranges. The demo page (``static/app.js``) uses the same palette, so a PNG from ``maskx predict``
and the browser view look alike.
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Hue ranges in degrees (start, span) per mask source; keep in sync with static/app.js.
HUE_RANGES: dict[str, tuple[float, float]] = {
    "supervised": (85.0, 85.0),  # yellow-green .. teal
    "transferred": (330.0, 65.0),  # magenta .. red .. orange (wraps past 360)
}
SOURCE_TITLES: dict[str, str] = {
    "supervised": "A: supervised mask",
    "transferred": "B: transferred mask",
}
MASK_ALPHA = 0.45
_GOLDEN = 0.6180339887498949


def class_color(label: int, mask_source: str) -> tuple[int, int, int]:
    """Return the RGB colour of a class: a hue family per ``mask_source``, a hue per ``label``.

    Successive labels are spread over the family's hue range by the golden ratio so that
    neighbouring classes differ visibly. Unknown sources raise ``ValueError``.
    """
    if mask_source not in HUE_RANGES:
        raise ValueError(f"mask_source must be one of {sorted(HUE_RANGES)}, got {mask_source!r}")
    start, span = HUE_RANGES[mask_source]
    frac = (int(label) * _GOLDEN) % 1.0
    hue = ((start + span * frac) % 360.0) / 360.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return round(r * 255), round(g * 255), round(b * 255)


def family_color(mask_source: str) -> tuple[int, int, int]:
    """Return the representative RGB colour of a ``mask_source`` family (middle of its range)."""
    if mask_source not in HUE_RANGES:
        raise ValueError(f"mask_source must be one of {sorted(HUE_RANGES)}, got {mask_source!r}")
    start, span = HUE_RANGES[mask_source]
    r, g, b = colorsys.hsv_to_rgb(((start + span / 2) % 360.0) / 360.0, 0.85, 0.95)
    return round(r * 255), round(g * 255), round(b * 255)


def rle_runs(counts: str | bytes, size: Sequence[int]) -> np.ndarray:
    """Run lengths (int64) of a COCO compressed RLE string, checked against ``size`` [h, w].

    ``counts`` is the ASCII string of pycocotools' ``rleToString``: 5-bit groups offset by 48
    with a continuation bit, each run from the third on stored as a delta to the run two back.
    Raises ``ValueError`` when the string is truncated or the runs do not add up to ``h * w``.
    """
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    height, width = (int(v) for v in size)
    runs: list[int] = []
    p = 0
    n = len(counts)
    while p < n:
        x = 0
        k = 0
        more = True
        while more:
            if p >= n:
                raise ValueError(f"RLE counts string is truncated at byte {p}")
            c = counts[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    total = sum(runs)
    if total != height * width or any(r < 0 for r in runs):
        raise ValueError(
            f"RLE runs sum to {total}, expected height*width = {height}*{width} = {height * width}"
        )
    return np.asarray(runs, dtype=np.int64)


def rle_decode(counts: str | bytes, size: Sequence[int]) -> np.ndarray:
    """Decode a COCO compressed RLE into a binary mask.

    ``size`` is ``[height, width]``; runs alternate 0 and 1 starting with 0 and go down the
    columns (Fortran order). Returns uint8 ``[height, width]`` with values 0/1.
    """
    height, width = (int(v) for v in size)
    runs = rle_runs(counts, size)
    values = np.zeros(len(runs), dtype=np.uint8)
    values[1::2] = 1
    return np.repeat(values, runs).reshape(width, height).T.copy()


def rle_decode_window(counts: str | bytes, size: Sequence[int]) -> tuple[int, int, np.ndarray]:
    """Decode only the bounding window of a COCO compressed RLE mask.

    Returns ``(x0, y0, region)``: ``region`` is bool ``[h_r, w_r]``, the tightest window that
    holds every foreground pixel, at column ``x0`` and row ``y0`` of the ``size`` [h, w] image
    (an empty ``[0, 0]`` region for an empty mask). Costs the window's size, not the image's,
    which matters for 100 masks on a 12-megapixel photo.
    """
    height = int(size[0])
    runs = rle_runs(counts, size)
    starts = np.concatenate([[0], np.cumsum(runs)[:-1]])
    ones = np.flatnonzero((np.arange(len(runs)) % 2 == 1) & (runs > 0))
    if ones.size == 0:
        return 0, 0, np.zeros((0, 0), dtype=bool)
    first = int(starts[ones[0]])
    last = int(starts[ones[-1]] + runs[ones[-1]] - 1)
    col0, col1 = first // height, last // height
    lo, hi = col0 * height, (col1 + 1) * height
    # Clip every run to the window's columns; runs outside it get length 0.
    lengths = np.clip(starts + runs, lo, hi) - np.clip(starts, lo, hi)
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    columns = np.repeat(values, lengths).reshape(col1 - col0 + 1, height).T
    rows = np.flatnonzero(columns.any(axis=1))
    return col0, int(rows[0]), columns[rows[0] : rows[-1] + 1].copy()


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` (bool [H, W]) with a 4-neighbour outside it: the drawn contour.

    Everything beyond the array counts as outside, as in the demo page's drawing.
    """
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def render_overlay(
    image: Image.Image,
    response: Mapping[str, Any],
    *,
    legend: bool = True,
    mask_alpha: float = MASK_ALPHA,
) -> Image.Image:
    """Draw the detections of a ``/segment`` response over ``image``.

    ``image`` must be the image as the service saw it (EXIF orientation applied), of size
    ``response["image"]["width"] x ["height"]``. Each detection's mask (COCO RLE, ``size`` =
    [H, W]) is blended in at ``mask_alpha`` with a solid contour, its box is outlined and its
    label reads ``"name 0.97"``, all in the colour of its class and ``mask_source``.

    With ``legend``, a strip listing each class present, and the meaning of the two hue
    families, is appended **below** the image, so that pixels away from detections are left
    exactly as they were. Returns a new RGB image; ``image`` is not modified.
    """
    base = image.convert("RGB")
    width, height = base.size
    declared = response.get("image") or {}
    if declared and (declared.get("width"), declared.get("height")) != (width, height):
        raise ValueError(
            f"response image size {declared.get('width')}x{declared.get('height')} does not match "
            f"the image's {width}x{height}; pass the image with EXIF orientation applied"
        )
    detections = list(response.get("detections") or [])
    pixels = np.array(base, dtype=np.uint8)

    # Masks first, lowest score first, so the most confident detection ends on top.
    for det in sorted(detections, key=lambda d: float(d.get("score", 0.0))):
        mask_rle = det.get("mask")
        if not mask_rle:
            continue
        if [int(v) for v in mask_rle["size"]] != [height, width]:
            raise ValueError(
                f"detection {det.get('name')!r}: mask size {list(mask_rle['size'])} differs "
                f"from the image's [{height}, {width}]"
            )
        x0, y0, region = rle_decode_window(mask_rle["counts"], mask_rle["size"])
        if region.size == 0:
            continue
        colour = np.array(class_color(det["label"], det["mask_source"]), dtype=np.float32)
        window = pixels[y0 : y0 + region.shape[0], x0 : x0 + region.shape[1]]
        blended = window[region] * (1.0 - mask_alpha) + colour * mask_alpha
        window[region] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
        window[_boundary(region)] = colour.astype(np.uint8)

    out = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(out)
    font_size = max(11, min(18, round(min(width, height) / 28)))
    font = _font(font_size)
    line = max(1, round(min(width, height) / 200))
    for det in sorted(detections, key=lambda d: float(d.get("score", 0.0))):
        colour = class_color(det["label"], det["mask_source"])
        x1, y1, x2, y2 = (float(v) for v in det["box"])
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=line)
        text = f"{det.get('name', det['label'])} {float(det.get('score', 0.0)):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        # Label above the box when there is room, else just inside its top edge.
        ty = y1 - th - 4 if y1 - th - 4 >= 0 else y1
        tx = min(max(0.0, x1), max(0.0, width - tw - 4))
        draw.rectangle([tx, ty, tx + tw + 4, ty + th + 4], fill=colour)
        draw.text((tx + 2 - left, ty + 2 - top), text, fill=(0, 0, 0), font=font)

    if not legend:
        return out
    return _append_legend(out, detections, font)


def _append_legend(
    image: Image.Image,
    detections: Sequence[Mapping[str, Any]],
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
) -> Image.Image:
    """Return ``image`` with a legend strip below it (white background, one row per entry)."""
    entries: list[tuple[tuple[int, int, int], str]] = [
        (family_color(source), title) for source, title in SOURCE_TITLES.items()
    ]
    seen: dict[tuple[int, str], str] = {}
    for det in detections:
        seen.setdefault((int(det["label"]), det["mask_source"]), str(det.get("name", "")))
    for (label, source), name in sorted(seen.items()):
        entries.append((class_color(label, source), f"{name} ({label}, {source})"))

    probe = ImageDraw.Draw(image)
    row = max(probe.textbbox((0, 0), "Ag", font=font)[3], 10) + 6
    swatch = row - 6
    width, height = image.size
    # Lay entries out in as many columns as fit the image width.
    col_width = max(probe.textlength(text, font=font) for _, text in entries) + swatch + 16
    columns = max(1, int(width // col_width))
    rows = -(-len(entries) // columns)
    strip = rows * row + 8
    # A narrow image gets a wider canvas (white to its right) rather than a clipped legend.
    out = Image.new("RGB", (max(width, int(col_width) + 8), height + strip), (255, 255, 255))
    out.paste(image, (0, 0))
    draw = ImageDraw.Draw(out)
    for i, (colour, text) in enumerate(entries):
        c, r = divmod(i, rows)
        x = 4 + c * col_width
        y = height + 4 + r * row
        draw.rectangle([x, y + 1, x + swatch, y + 1 + swatch], fill=colour, outline=(0, 0, 0))
        draw.text((x + swatch + 6, y), text, fill=(0, 0, 0), font=font)
    return out
