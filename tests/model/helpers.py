"""Builders the model tests share: a tiny config and a synthetic batch."""

from __future__ import annotations

import torch

from model import ModelConfig


def tiny_config(**changes) -> ModelConfig:
    """A model small enough for CPU unit tests (about 2 M parameters)."""
    base = dict(
        num_classes=10,
        backbone="tiny",
        fpn_channels=32,
        min_size=128,
        max_size=160,
        anchor_sizes=(16, 32, 64, 128, 256),
        rpn_pre_nms_top_n_train=200,
        rpn_post_nms_top_n_train=100,
        rpn_pre_nms_top_n_test=200,
        rpn_post_nms_top_n_test=100,
        rpn_batch_size_per_image=64,
        box_head_dim=64,
        box_batch_size_per_image=64,
        mask_head_dim=32,
        mask_head_layers=2,
        transfer_hidden=32,
    )
    base.update(changes)
    return ModelConfig(**base)


def synthetic_batch(seed: int = 0, with_masks: bool = True):
    """Two images with rectangles/ellipses and their targets (masks for some instances)."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for size in ((128, 160), (120, 150)):
        h, w = size
        img = torch.rand(3, h, w, generator=g) * 0.2
        boxes, labels, masks = [], [], []
        for k in range(3):
            x1 = int(torch.randint(0, w - 50, (1,), generator=g))
            y1 = int(torch.randint(0, h - 50, (1,), generator=g))
            bw = int(torch.randint(20, 48, (1,), generator=g))
            bh = int(torch.randint(20, 48, (1,), generator=g))
            label = int(torch.randint(1, 11, (1,), generator=g))
            m = torch.zeros(h, w, dtype=torch.uint8)
            yy, xx = torch.meshgrid(torch.arange(bh), torch.arange(bw), indexing="ij")
            if label % 2:  # odd classes are ellipses, even classes rectangles
                ell = ((yy - bh / 2) / (bh / 2)) ** 2 + ((xx - bw / 2) / (bw / 2)) ** 2 <= 1
                m[y1 : y1 + bh, x1 : x1 + bw] = ell.to(torch.uint8)
            else:
                m[y1 : y1 + bh, x1 : x1 + bw] = 1
            img[:, m.bool()] = torch.tensor([label / 10, 1 - label / 10, 0.5])[:, None]
            boxes.append([x1, y1, x1 + bw, y1 + bh])
            labels.append(label)
            masks.append(m)
            del k
        t = {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}
        if with_masks:
            t["masks"] = torch.stack(masks)
            t["has_mask"] = torch.tensor([True, False, True])
        images.append(img)
        targets.append(t)
    return images, targets
