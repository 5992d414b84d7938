"""Box conventions: what the "+1" of Detectron's legacy boxes changes, for boxes held in
maskx's continuous convention.

maskx holds every box, inside the model and out of it, as a *continuous* (x1, y1, x2, y2):
width ``x2 - x1``. Detectron's *legacy* boxes count pixels inclusively: width ``x2 - x1 + 1``.
The two describe the same box when ``legacy = continuous - (0, 0, 1, 1)``. Under that mapping
several of Detectron's "+1" formulas are the continuous ones exactly, so they need no code:

* ``bbox_transform`` / ``bbox_transform_inv`` (widths ``x2 - x1 + 1``, centre ``x1 + w / 2``,
  predicted ``x2 = ctr + w / 2 - 1``) is torchvision's ``BoxCoder`` on the continuous box;
* IoU and NMS with ``+1`` areas are the plain ones on the continuous box (ONNX
  ``NonMaxSuppression`` has no ``+1`` and needs none);
* the ``+1`` widths of the RPN's min-size filter are continuous widths.

What does differ, and is implemented here, is where a legacy coordinate meets an integer grid:
clipping (legacy ``[0, W - 1]``), the box fed to RoIAlign (the legacy corner, not the
continuous one) and the FPN level formula (``map_rois_to_fpn_levels`` adds its epsilon inside
the logarithm). All functions are traceable for ONNX export.
"""

from __future__ import annotations

import torch
from torch import Tensor

CONTINUOUS = "continuous"
LEGACY = "legacy"


def check_box_convention(convention: str) -> None:
    """Raise ValueError unless ``convention`` is ``continuous`` or ``legacy``."""
    if convention not in (CONTINUOUS, LEGACY):
        raise ValueError(f"box_convention must be {CONTINUOUS!r} or {LEGACY!r}, got {convention!r}")


def clip_boxes(boxes: Tensor, sizes: Tensor, convention: str = CONTINUOUS) -> Tensor:
    """Clip continuous boxes to per-box image sizes.

    Args:
        boxes: float [N, 4] continuous (x1, y1, x2, y2).
        sizes: int or float [N, 2], (height, width) of the image each box belongs to.
        convention: ``continuous`` clips every coordinate to [0, W] x [0, H] (torchvision's
            ``clip_boxes_to_image``); ``legacy`` clips the legacy box to [0, W - 1] x [0, H - 1]
            (Detectron's ``clip_tiled_boxes``), i.e. x1 to [0, W - 1] and x2 to [1, W].
    Returns:
        float [N, 4], continuous.
    """
    check_box_convention(convention)
    h = sizes[:, 0:1].to(boxes.dtype)
    w = sizes[:, 1:2].to(boxes.dtype)
    zero = torch.zeros_like(h)
    if convention == LEGACY:
        # Detectron's order, max(min(x, W - 1), 0), and on the legacy x2 = continuous x2 - 1.
        one = torch.ones_like(h)
        x1 = torch.max(torch.min(boxes[:, 0:1], w - one), zero)
        y1 = torch.max(torch.min(boxes[:, 1:2], h - one), zero)
        x2 = torch.max(torch.min(boxes[:, 2:3] - one, w - one), zero) + one
        y2 = torch.max(torch.min(boxes[:, 3:4] - one, h - one), zero) + one
        return torch.cat([x1, y1, x2, y2], dim=1)
    x = torch.min(torch.max(boxes[:, 0::2], zero), w)
    y = torch.min(torch.max(boxes[:, 1::2], zero), h)
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)


def wide_enough(boxes: Tensor, min_size: float) -> Tensor:
    """bool [N]: width and height of continuous boxes [N, 4] both >= ``min_size``.

    The same test in both conventions: a legacy box's ``x2 - x1 + 1`` is the continuous width.
    """
    return ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)


def padded_sizes(sizes: Tensor, divisible: int) -> Tensor:
    """(height, width) [N, 2] rounded up to multiples of ``divisible``: the padded blob an
    image alone is batched into (Detectron's ``im_info`` at test time, one image per batch)."""
    return torch.div(sizes + (divisible - 1), divisible, rounding_mode="floor") * divisible


def roi_align_boxes(rois: Tensor, convention: str = CONTINUOUS) -> Tensor:
    """The RoI boxes RoIAlign (``aligned=False``) is fed, from continuous RoIs.

    Args:
        rois: float [N, 5] (batch index, x1, y1, x2, y2), continuous.
    Returns:
        float [N, 5]: the same for ``continuous`` (torchvision); for ``legacy`` the inclusive
        corner (x2 - 1, y2 - 1), which is what Caffe2's RoIAlign reads in Detectron.
    """
    check_box_convention(convention)
    if convention == CONTINUOUS:
        return rois
    return rois - torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0], dtype=rois.dtype, device=rois.device)


def fpn_levels(
    boxes: Tensor,
    k_min: int,
    k_max: int,
    convention: str = CONTINUOUS,
    canonical_scale: float = 224.0,
    canonical_level: float = 4.0,
) -> Tensor:
    """Pyramid level index (0 = ``k_min``) of continuous boxes [N, 4], int64 [N].

    Both follow Eqn. (1) of the FPN paper on the square root of the box area (the continuous
    area is the legacy ``+1`` area). ``continuous``: torchvision's ``LevelMapper``,
    ``floor(k0 + log2(s / s0) + 1e-6)``; ``legacy``: Detectron's ``map_rois_to_fpn_levels``,
    ``floor(k0 + log2(s / s0 + 1e-6))``. Both are clamped to [k_min, k_max].
    """
    check_box_convention(convention)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    s = torch.sqrt(area)
    eps = torch.tensor(1e-6, dtype=s.dtype, device=s.device)
    if convention == LEGACY:
        level = torch.floor(canonical_level + torch.log2(s / canonical_scale + eps))
    else:
        level = torch.floor(canonical_level + torch.log2(s / canonical_scale) + eps)
    level = torch.clamp(level, min=k_min, max=k_max)
    return (level.to(torch.int64) - k_min).to(torch.int64)


def jitter_boxes(boxes: Tensor, ratio: float, image_size: tuple[int, int]) -> Tensor:
    """Deep-MARC's ``random_jitter_boxes`` (``jitter_mode: default``) on continuous boxes.

    Args:
        boxes: float [N, 4] (x1, y1, x2, y2).
        ratio: r in [0, 1): each side of a box moves from the box's centre to ``(1 + u) / 2`` of
            the box's extent on its axis, ``u`` drawn uniformly in ``[-r, r]`` per side and box
            (torch's global generator, so a seeded run jitters alike).
        image_size: (h, w) the boxes are clipped to.

    Returns:
        float [N, 4], the jittered boxes clipped to [0, w] x [0, h].
    """
    if boxes.numel() == 0 or ratio == 0:
        return boxes
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2  # [N, 2] (cx, cy)
    size = (boxes[:, 2:] - boxes[:, :2]).abs().clamp_min(1e-6)  # [N, 2] (w, h)
    u = (torch.rand(boxes.shape[0], 4, device=boxes.device, dtype=boxes.dtype) * 2 - 1) * ratio
    half = size.repeat(1, 2) * (1 + u) / 2  # [N, 4]: x1, y1, x2, y2 half-extents
    out = torch.cat([centre - half[:, :2], centre + half[:, 2:]], dim=1)
    h, w = image_size
    limit = out.new_tensor([w, h, w, h])
    return torch.minimum(out.clamp_min(0), limit)
