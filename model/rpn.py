"""The region proposal network: torchvision's, with proposal selection done by
:func:`model.postprocess.select_proposals` (shared with the ONNX export) and Detectron's
options (box convention, minimum size, clipping to the padded image)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.rpn import RegionProposalNetwork

from .anchors import nominal_stride
from .boxes import CONTINUOUS, check_box_convention, padded_sizes
from .postprocess import select_proposals


class MaskXRPN(RegionProposalNetwork):
    """torchvision's ``RegionProposalNetwork`` (same arguments and state dict) plus:

    Args:
        min_size: proposals narrower or lower than this (input pixels) are dropped
            (torchvision: 1e-3; Detectron ``RPN_MIN_SIZE``: 0).
        box_convention: how proposals are clipped (:func:`model.boxes.clip_boxes`).
        clip_to_padded: clip to the image's size rounded up to ``size_divisible`` (the blob
            Detectron clips to, ``im_info``) instead of its valid region.
        size_divisible: the padding multiple of the model's transform.

    ``forward`` is torchvision's: per image, proposals [P_i, 4] (continuous), and the losses
    in training.
    """

    def __init__(
        self,
        *args,
        min_size: float = 1e-3,
        box_convention: str = CONTINUOUS,
        clip_to_padded: bool = False,
        size_divisible: int = 32,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        check_box_convention(box_convention)
        self.min_size = min_size
        self.box_convention = box_convention
        self.clip_to_padded = clip_to_padded
        self.size_divisible = size_divisible
        self._valid: Tensor | None = None

    def forward(self, images, features, targets=None):  # type: ignore[override]
        # torchvision's forward hands filter_proposals no feature maps, so the anchors that
        # exist for each image are worked out here and read there (one call's lifetime).
        self._valid = self.anchor_valid(
            list(features.values()),
            torch.as_tensor(images.image_sizes, device=images.tensors.device),
            tuple(images.tensors.shape[-2:]),
        )
        try:
            return super().forward(images, features, targets)
        finally:
            self._valid = None

    def anchor_valid(
        self, features: list[Tensor], image_sizes: Tensor, batch_size_hw: tuple[int, int]
    ) -> Tensor | None:
        """bool [B, A]: the anchors each image of a batch has alone, or None (no restriction).

        With ``clip_to_padded`` (Detectron's convention) an image has the anchors of its own
        padded blob: a cell whose top-left ``(x·stride, y·stride)`` lies past the image's size
        rounded up to ``size_divisible`` does not exist in Detectron, where every image is run
        alone. A batch padded to a larger image would otherwise add proposals (clipped to the
        image's edge) that change its detections with its batch companions. Without it,
        torchvision's behaviour: every anchor of the batch tensor.
        """
        if not self.clip_to_padded:
            return None
        padded = self.clip_sizes(image_sizes)  # [B, 2]
        strides = getattr(self.anchor_generator, "strides", None)
        per_cell = self.anchor_generator.num_anchors_per_location()
        masks = []
        for k, feature in enumerate(features):
            grid_h, grid_w = feature.shape[-2:]
            stride = strides[k] if strides else nominal_stride(batch_size_hw[0], int(grid_h))
            ys = torch.arange(grid_h, device=padded.device) * stride
            xs = torch.arange(grid_w, device=padded.device) * stride
            inside = (ys[None, :, None] < padded[:, 0, None, None]) & (
                xs[None, None, :] < padded[:, 1, None, None]
            )  # [B, H, W]
            masks.append(inside[..., None].expand(-1, -1, -1, per_cell[k]).flatten(1))
        return torch.cat(masks, dim=1)

    def clip_sizes(self, image_sizes: Tensor) -> Tensor:
        """int64 [B, 2]: the (height, width) proposals are clipped to, from the valid sizes."""
        if self.clip_to_padded:
            return padded_sizes(image_sizes, self.size_divisible)
        return image_sizes

    def select(
        self,
        proposals: Tensor,
        objectness: Tensor,
        image_sizes: Tensor,
        num_anchors_per_level: list[int],
        valid: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:func:`~model.postprocess.select_proposals` with this RPN's settings (train or
        test top-n); ``image_sizes`` int64 [B, 2] are the valid sizes, ``valid`` the anchors
        each image has (:meth:`anchor_valid`). Returns boxes [P, 4], scores [P], batch [P]."""
        return select_proposals(
            proposals,
            objectness.detach(),
            num_anchors_per_level,
            self.clip_sizes(image_sizes),
            pre_nms_top_n=self.pre_nms_top_n(),
            post_nms_top_n=self.post_nms_top_n(),
            nms_thresh=self.nms_thresh,
            min_size=self.min_size,
            score_thresh=self.score_thresh,
            box_convention=self.box_convention,
            valid=valid,
        )

    def filter_proposals(
        self,
        proposals: Tensor,
        objectness: Tensor,
        image_shapes: list[tuple[int, int]],
        num_anchors_per_level: list[int],
    ) -> tuple[list[Tensor], list[Tensor]]:
        # One image at a time: NMS groups then hold one image's levels, as in torchvision, so
        # that default models give torchvision's proposals to the last bit.
        b = proposals.shape[0]
        sizes = torch.as_tensor(image_shapes, dtype=torch.int64, device=proposals.device)
        objectness = objectness.reshape(b, -1)
        boxes, scores = [], []
        valid = self._valid
        for i in range(b):
            box, score, _ = self.select(
                proposals[i : i + 1],
                objectness[i : i + 1],
                sizes[i : i + 1],
                num_anchors_per_level,
                None if valid is None else valid[i : i + 1],
            )
            boxes.append(box)
            scores.append(score)
        return boxes, scores
