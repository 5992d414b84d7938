"""The service on a real exported Mask^X model (trained briefly), through real uvicorn."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
from PIL import Image

from service.app import create_app
from service.settings import Settings
from tests.service.helpers import LiveServer

from .test_live import assert_masks_match_reference_paste


def _exported(trained_checkpoint: Path, tmp_path: Path) -> Path:
    from training.checkpoint import load_model_from_checkpoint
    from training.export.onnx_export import build_metadata, export_model

    model, vocab, ckpt = load_model_from_checkpoint(trained_checkpoint)
    meta = build_metadata(
        model, vocab, model_config=ckpt.model_config, train_config=ckpt.train_config,
        checkpoint_sha256=None, name="tiny", version="test",
    )  # fmt: skip
    return export_model(model, tmp_path / "tiny.onnx", meta)


def _png(path: Path, scale: int) -> bytes:
    img = Image.open(path).convert("RGB")
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_exported_model_masks_over_http(trained_checkpoint, synth_root, tmp_path):
    model = _exported(trained_checkpoint, tmp_path)
    settings = Settings(model_path=model, providers="cpu", warmup=False, max_batch_delay_ms=2)
    files = sorted((synth_root / "images" / "val").glob("*.png"))[:2]
    # Same size: padding in a shared batch then changes nothing, so batch-of-1 is the reference.
    images = [_png(files[0], 2), _png(files[1], 2)]
    assert assert_masks_match_reference_paste(model, settings, images, "image/png") >= 4


def test_exported_model_metadata_served(trained_checkpoint, synth_root, tmp_path):
    model = _exported(trained_checkpoint, tmp_path)
    settings = Settings(model_path=model, providers="cpu", warmup=True)
    with LiveServer(create_app(settings)) as live:
        live.wait_ready()
        info = httpx.get(live.url + "/v1/model").json()
        files = sorted((synth_root / "images" / "val").glob("*.png"))
        r = httpx.post(live.url + "/segment?score_threshold=0.01",
                       files={"image": ("a.png", _png(files[0], 2), "image/png")})  # fmt: skip
    assert info["name"] == "tiny" and info["num_classes"] == 12
    body = r.json()
    assert r.status_code == 200 and body["image"] == {"width": 192, "height": 192}
    supervised = dict(zip(info["classes"], info["mask_classes"], strict=True))
    assert body["detections"], "a trained model finds objects on a training-like image"
    for det in body["detections"]:
        expected = "supervised" if supervised[det["name"]] else "transferred"
        assert det["mask_source"] == expected
        assert info["classes"][det["label"] - 1] == det["name"]
        x1, y1, x2, y2 = det["box"]
        assert 0 <= x1 <= x2 <= 192 and 0 <= y1 <= y2 <= 192
