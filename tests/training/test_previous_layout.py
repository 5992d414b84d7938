"""Files written by the previous layout (``maskx.model``/``maskx.training``/``maskx.service``)
load, export and serve unchanged: checkpoints and ONNX files record no module paths.

The fixtures in ``tests/fixtures/previous_layout/`` were written by commit c5efdd5 (see the
``make_fixtures.py`` there): a tiny transfer + MLP model, 12 synthetic classes, 4 steps.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from maskx.cli import main as cli_main
from service.app import create_app
from service.settings import Settings
from training.checkpoint import load_checkpoint, load_model_from_checkpoint

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "previous_layout"
CHECKPOINT = FIXTURES / "checkpoint.pt"
ONNX = FIXTURES / "model.onnx"


def _image(seed: int = 0, size: int = 96) -> np.ndarray:
    """An RGB uint8 image with a few flat-coloured rectangles, like the synthetic set."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 40, np.uint8)
    for _ in range(4):
        x, y = rng.integers(0, size - 30, 2)
        img[y : y + 24, x : x + 24] = rng.integers(60, 255, 3)
    return img


def _run(path: Path, image: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    chw = np.ascontiguousarray(image.transpose(2, 0, 1))[None]
    sizes = np.array([[image.shape[0], image.shape[1]]], np.int64)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"images": chw, "image_sizes": sizes}), strict=True))


def test_previous_checkpoint_loads_and_predicts() -> None:
    ckpt = load_checkpoint(CHECKPOINT)
    assert ckpt["step"] == 4 and ckpt["model_config"]["mlp"] is True
    model, vocab, _ = load_model_from_checkpoint(CHECKPOINT)
    assert len(vocab) == 12 and model.roi_heads.mask_predictor is not None
    model.eval()
    with torch.no_grad():
        out = model([torch.from_numpy(_image()).permute(2, 0, 1).float() / 255])[0]
    assert set(out) >= {"boxes", "labels", "scores", "masks"}
    # What it predicts is what it predicted then: the ONNX file the previous layout exported
    # from this checkpoint is the reference, per image, at the export's own tolerances.
    from training.export.onnx_export import eager_reference

    for seed in (0, 1):
        image = _image(seed)
        ref = eager_reference(model, [torch.from_numpy(image).permute(2, 0, 1).contiguous()])[0]
        old = _run(ONNX, image)
        assert ref["labels"].shape[0] == old["labels"].shape[0] > 0, seed
        np.testing.assert_array_equal(ref["labels"].numpy(), old["labels"])
        np.testing.assert_allclose(ref["boxes"].numpy(), old["boxes"], rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(ref["scores"].numpy(), old["scores"], rtol=0, atol=1e-4)
        np.testing.assert_allclose(ref["mask_probs"].numpy(), old["mask_probs"], rtol=0, atol=1e-3)


def test_previous_checkpoint_exports_to_the_graph_the_previous_exporter_wrote(
    tmp_path: Path,
) -> None:
    fresh = tmp_path / "fresh.onnx"
    assert cli_main(["export", "--checkpoint", str(CHECKPOINT), "--output", str(fresh),
                     "--name", "old-layout"]) == 0  # fmt: skip
    for seed in (0, 1):
        old, new = _run(ONNX, _image(seed)), _run(fresh, _image(seed))
        assert old.keys() == new.keys()
        for key in old:
            np.testing.assert_allclose(new[key], old[key], rtol=1e-4, atol=1e-5, err_msg=key)


@pytest.mark.parametrize("route", ["/v1/model", "/segment"])
def test_previous_onnx_file_serves(route: str) -> None:
    settings = Settings(model_path=ONNX, providers="cpu", warmup=True)
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 60  # warm-up runs after start-up
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the previous-layout model never became ready"
            time.sleep(0.05)
        if route == "/v1/model":
            info = client.get("/v1/model").json()
            assert info["name"] == "old-layout" and info["num_classes"] == 12
            return
        buf = io.BytesIO()
        Image.fromarray(_image()).save(buf, format="PNG")
        r = client.post("/segment?score_threshold=0", content=buf.getvalue(),
                        headers={"content-type": "image/png"})  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["image"] == {"width": 96, "height": 96}
    assert body["detections"], json.dumps(body)[:500]
    assert all(d["mask"]["size"] == [96, 96] for d in body["detections"])
