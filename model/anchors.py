"""Detectron's RPN anchors (``detectron/modeling/generate_anchors.py`` and ``FPN.py``), in
maskx's continuous box convention.

Detectron builds each FPN level's anchors from a reference window (0, 0, stride - 1,
stride - 1): ``_ratio_enum`` rounds the widths and heights of each aspect ratio to integers
(``np.round``, half to even, as ``torch.round``), ``_scale_enum`` scales them by
``size / stride`` around the window's centre ((stride - 1) / 2), and the level's anchors are
these shifted by ``arange(W) * stride`` and ``arange(H) * stride``, ordered (y, x, anchor) as
the RPN head's channels are. The boxes are legacy ("+1") boxes; maskx holds them as the
continuous boxes they describe, (x1, y1, x2 + 1, y2 + 1) (see :mod:`model.boxes`).

torchvision instead centres anchors on ``stride * i`` and rounds each anchor's half-sides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList


def detectron_cell_anchors(
    stride: int,
    sizes: Sequence[float],
    aspect_ratios: Sequence[float],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
) -> Tensor:
    """Detectron's ``generate_anchors(stride, sizes, aspect_ratios)`` as continuous boxes.

    Args:
        stride: the level's stride in input pixels (Detectron: 2**level).
        sizes: anchor sizes (square roots of the areas before rounding) at this level.
        aspect_ratios: height / width ratios.
    Returns:
        [len(aspect_ratios) * len(sizes), 4] continuous (x1, y1, x2, y2) around the cell at
        (0, 0), ratio-major then size (Detectron's and torchvision's order).
    """
    ratios = torch.tensor([float(r) for r in aspect_ratios], dtype=torch.float64)
    scales = torch.tensor([float(s) / stride for s in sizes], dtype=torch.float64)
    centre = (stride - 1) / 2.0
    # _ratio_enum on the reference window: integer widths and heights of the same area.
    ws = torch.round(torch.sqrt(stride * stride / ratios))
    hs = torch.round(ws * ratios)
    # _scale_enum around the same centre.
    ws = (ws[:, None] * scales[None, :]).reshape(-1)
    hs = (hs[:, None] * scales[None, :]).reshape(-1)
    legacy = torch.stack(
        [centre - 0.5 * (ws - 1), centre - 0.5 * (hs - 1),
         centre + 0.5 * (ws - 1), centre + 0.5 * (hs - 1)], dim=1
    )  # fmt: skip
    continuous = legacy + torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    return continuous.to(dtype=dtype, device=device)


def nominal_stride(image_size: int, grid_size: int) -> int:
    """The power of two nearest ``image_size / grid_size`` (Detectron's 2**level: a P6 map of
    13 cells on an 800-pixel image has stride 64, not 800 // 13 = 61 as torchvision computes)."""
    if image_size <= 0 or grid_size <= 0:
        raise ValueError(f"need positive sizes, got image {image_size}, feature map {grid_size}")
    return 2 ** round(math.log2(image_size / grid_size))


class DetectronAnchorGenerator(AnchorGenerator):
    """Anchors of Detectron's FPN RPN: per level, :func:`detectron_cell_anchors` at the level's
    nominal stride, shifted by ``arange(grid) * stride``.

    Args:
        sizes: one tuple of sizes per feature map (maskx: one size per level).
        aspect_ratios: one tuple of height / width ratios per feature map.
        strides: each level's stride (Detectron's 2**level). Without them the stride is
            inferred from the image and feature sizes (:func:`nominal_stride`), which cannot be
            done where a small side makes a coarse level's grid a single cell (a 32-pixel-high
            image's P6 is 1 × 2 at stride 64 whichever way it is rounded).

    ``forward(image_list, feature_maps)`` returns, per image, continuous anchors [A_total, 4]
    ordered level by level, then (y, x, anchor), as torchvision's generator does.
    """

    def __init__(
        self,
        sizes: Sequence[Sequence[float]],
        aspect_ratios: Sequence[Sequence[float]],
        strides: Sequence[int] | None = None,
    ) -> None:
        super().__init__(tuple(tuple(s) for s in sizes), tuple(tuple(r) for r in aspect_ratios))
        if strides is not None and len(strides) != len(self.sizes):
            raise ValueError(f"need one stride per level ({len(self.sizes)}), got {list(strides)}")
        self.strides = None if strides is None else tuple(int(s) for s in strides)

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        image_h, image_w = image_list.tensors.shape[-2:]
        dtype, device = feature_maps[0].dtype, feature_maps[0].device
        levels = []
        for k, (feature, sizes, ratios) in enumerate(
            zip(feature_maps, self.sizes, self.aspect_ratios, strict=True)
        ):
            grid_h, grid_w = feature.shape[-2:]
            # Python ints: the stride is a constant of the architecture (also when traced),
            # while the grid below stays dynamic.
            if self.strides is not None:
                stride = self.strides[k]
            elif (stride := nominal_stride(int(image_h), int(grid_h))) != nominal_stride(
                int(image_w), int(grid_w)
            ):
                raise ValueError(
                    f"feature map {tuple(feature.shape[-2:])} of an image "
                    f"{(int(image_h), int(image_w))} has different strides along y and x"
                )
            cell = detectron_cell_anchors(stride, sizes, ratios, dtype=dtype, device=device)
            shift_x = torch.arange(grid_w, dtype=dtype, device=device) * stride
            shift_y = torch.arange(grid_h, dtype=dtype, device=device) * stride
            shift_y, shift_x = torch.meshgrid(shift_y, shift_x, indexing="ij")
            shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            levels.append((shifts.view(-1, 1, 4) + cell.view(1, -1, 4)).reshape(-1, 4))
        anchors = torch.cat(levels)
        return [anchors for _ in range(len(image_list.image_sizes))]
