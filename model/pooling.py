"""Multi-scale RoIAlign over the FPN levels, one code path for eager inference, training and
the ONNX export, in either box convention (:mod:`model.boxes`)."""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

from .boxes import CONTINUOUS, check_box_convention, fpn_levels, roi_align_boxes


class MaskXRoIAlign(MultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` (``aligned=False``) with a box convention.

    Args:
        featmap_names, output_size, sampling_ratio: as ``MultiScaleRoIAlign``.
        box_convention: ``continuous`` is torchvision's pooler exactly; ``legacy`` maps RoIs to
            levels as Detectron's ``map_rois_to_fpn_levels`` and feeds RoIAlign the inclusive
            corner (x2 - 1, y2 - 1), as Detectron feeds Caffe2's RoIAlign (whose arithmetic is
            torchvision's ``roi_align`` with ``aligned=False``).

    No parameters: a model's state dict is the same with either convention.
    """

    def __init__(
        self,
        featmap_names: list[str],
        output_size: int | tuple[int, int],
        sampling_ratio: int,
        *,
        box_convention: str = CONTINUOUS,
    ) -> None:
        super().__init__(featmap_names, output_size, sampling_ratio)
        check_box_convention(box_convention)
        self.box_convention = box_convention

    def forward(
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        """Pool per-image continuous boxes [N_i, 4] → [sum N_i, C, S, S] (torchvision's API)."""
        return self.pool(x, _convert_to_roi_format(boxes), image_shapes)

    def pool(
        self, features: dict[str, Tensor], rois: Tensor, image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        """Pool RoIs of a whole batch; traceable (the export adapter calls it).

        Args:
            features: the FPN maps by name (only ``featmap_names`` are read).
            rois: float [N, 5] (batch index, x1, y1, x2, y2), continuous, input pixels.
            image_shapes: (H, W) of the images (only used, once, to infer each level's scale).
        Returns:
            float [N, C, S, S].
        """
        x = _filter_input(features, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                x, image_shapes, self.canonical_scale, self.canonical_level
            )
        levels = fpn_levels(
            rois[:, 1:],
            self.map_levels.k_min,
            self.map_levels.k_max,
            self.box_convention,
            self.canonical_scale,
            self.canonical_level,
        )
        fed = roi_align_boxes(rois, self.box_convention)
        out = torch.zeros(
            (rois.shape[0], x[0].shape[1], *self.output_size), dtype=x[0].dtype, device=x[0].device
        )
        for level, (feature, scale) in enumerate(zip(x, self.scales, strict=True)):
            idx = torch.where(levels == level)[0]
            pooled = roi_align(
                feature,
                fed[idx],
                output_size=self.output_size,
                spatial_scale=scale,
                sampling_ratio=self.sampling_ratio,
                aligned=False,
            )
            if torchvision._is_tracing():
                # scatter (not index_put) so that the traced graph is one ScatterElements per
                # level
                index = idx.view(-1, 1, 1, 1).expand(-1, *pooled.shape[1:])
                out = out.scatter(0, index, pooled.to(out.dtype))
            else:
                # In place, as torchvision's pooler: an out-of-place scatter copies the whole
                # [N, C, S, S] output per level, and its backward once more.
                out[idx] = pooled.to(out.dtype)
        return out
