"""The region proposal network: torchvision's, with proposal selection done by
:func:`model.postprocess.select_proposals` (shared with the ONNX export) and Detectron's
options (box convention, minimum size, clipping to the padded image)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.rpn import RegionProposalNetwork

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
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:func:`~model.postprocess.select_proposals` with this RPN's settings (train or
        test top-n); ``image_sizes`` int64 [B, 2] are the valid sizes. Returns boxes [P, 4],
        scores [P], batch [P]."""
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
        for i in range(b):
            box, score, _ = self.select(
                proposals[i : i + 1], objectness[i : i + 1], sizes[i : i + 1], num_anchors_per_level
            )
            boxes.append(box)
            scores.append(score)
        return boxes, scores
