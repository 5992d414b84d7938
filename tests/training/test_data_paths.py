"""Files an annotation or a checkpoint names are read only where they belong: an image path
stays inside the image folder, and loading a checkpoint reads no path its config holds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from model import ModelConfig, build_model
from training.checkpoint import load_model_from_checkpoint
from training.datasets.coco import CocoDataset
from training.datasets.errors import DatasetError
from training.datasets.visual_genome import VisualGenomeDataset

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.mark.parametrize("file_name", ["../outside.jpg", "sub/../../outside.jpg", "/etc/hostname"])
def test_a_coco_image_path_outside_the_image_folder_is_refused(tmp_path, file_name) -> None:
    images = tmp_path / "images"
    shutil.copytree(FIXTURES / "coco_tiny", images)
    (tmp_path / "outside.jpg").write_bytes((images / "img_rgb.jpg").read_bytes())
    data = json.loads((images / "annotations.json").read_text())
    data["images"][0]["file_name"] = file_name
    ann = tmp_path / "annotations.json"
    ann.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="leaves the image folder") as err:
        CocoDataset(ann, images)
    assert repr(file_name) in str(err.value) or file_name in str(err.value)
    data["images"][0]["file_name"] = "img_rgb.jpg"  # the same file, inside: accepted
    ann.write_text(json.dumps(data))
    CocoDataset(ann, images)


def test_a_visual_genome_url_cannot_lead_outside_the_image_folder(tmp_path) -> None:
    root = tmp_path / "vg"
    shutil.copytree(FIXTURES / "vg_tiny", root)
    data = json.loads((root / "image_data.json").read_text())
    data[0]["url"] = "https://example.invalid/../../secret.jpg"
    (root / "image_data.json").write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="leaves the image folder"):
        VisualGenomeDataset(root / "image_data.json", root / "objects.json", num_classes=83)


def test_loading_a_checkpoint_reads_no_file_its_config_names(tmp_path) -> None:
    """The attribute control's class vectors are saved in the state dict: a checkpoint whose
    config names a vectors file loads without reading it (it may be anyone's path)."""
    vectors = tmp_path / "attrs.json"
    vectors.write_text(json.dumps([[float(i), 1.0] for i in range(6)]))
    cfg = ModelConfig(num_classes=6, backbone="tiny", box_head_dim=32, mask_head_dim=16,
                      transfer_hidden=8, transfer_input="attribute",
                      class_vectors=str(vectors))  # fmt: skip
    model = build_model(cfg)
    ckpt = tmp_path / "model.pt"
    torch.save(
        {"format": "maskx-checkpoint", "format_version": 1, "model": model.state_dict(),
         "model_config": cfg.to_dict(), "step": 0, "metrics": {},
         "vocab": {"names": [f"c{i}" for i in range(6)], "mask_classes": [True] * 6,
                   "source_ids": list(range(1, 7))}},
        ckpt,
    )  # fmt: skip
    vectors.write_text("not json: reading this file fails")
    loaded, _, _ = load_model_from_checkpoint(ckpt)
    got = loaded.roi_heads.mask_predictor.class_vectors
    assert torch.equal(got, model.roi_heads.mask_predictor.class_vectors)
    assert got[3].tolist() == [2.0, 1.0]
