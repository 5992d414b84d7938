"""Score the service with pycocotools as a user would, beside ``maskx evaluate``.

``python -m maskx.bench.coco_results_check --root artifacts/demo`` (after ``make demo-model``):
serves ``ROOT/model.onnx`` with ``maskx serve``, posts every validation image with
``format=coco&image_id=…``, loads the answers with ``COCO.loadRes``, scores them with
``COCOeval`` (mask AP on all classes, A and B), and prints them beside what ``maskx evaluate``
gives for ``ROOT/run/checkpoints/model_final.pt`` on the same images.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _mask_ap(gt: Any, results: list[dict], cat_ids: list[int] | None = None) -> float:
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, gt.loadRes(results), "segm")
        if cat_ids is not None:
            evaluator.params.catIds = cat_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return 100 * max(float(evaluator.stats[0]), 0.0)


def main(argv: list[str] | None = None) -> int:
    import httpx
    from pycocotools.coco import COCO

    from training.evaluate_cli import run_evaluation

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("artifacts/demo"))
    parser.add_argument("--port", type=int, default=8799)
    args = parser.parse_args(argv)
    root: Path = args.root
    annotations = root / "synth" / "annotations" / "instances_val.json"
    images = root / "synth" / "images" / "val"
    checkpoint = root / "run" / "checkpoints" / "model_final.pt"
    reference = run_evaluation(str(checkpoint), str(annotations), str(images), progress=False)

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotations))
    server = subprocess.Popen(
        [sys.executable, "-m", "maskx.cli", "serve", "--model", str(root / "model.onnx"),
         "--host", "127.0.0.1", "--port", str(args.port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    results: list[dict] = []
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{args.port}", timeout=120)
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.TransportError):
                if client.get("/readyz").status_code == 200:
                    break
            if time.monotonic() > deadline or server.poll() is not None:
                print("maskx serve did not become ready", file=sys.stderr)
                return 1
            time.sleep(0.5)
        for image_id in sorted(gt.getImgIds()):
            query = {"format": "coco", "image_id": image_id, "score_threshold": 0,
                     "max_detections": 1000}  # fmt: skip
            body = (images / gt.imgs[image_id]["file_name"]).read_bytes()
            r = client.post("/v1/segment", params=query, content=body,
                            headers={"content-type": "image/png"})  # fmt: skip
            r.raise_for_status()
            results += r.json()
    finally:
        server.terminate()
        server.wait()
    a_names = set((root / "synth" / "mask_classes_A.txt").read_text().split())
    cats = gt.loadCats(gt.getCatIds())
    subsets = {
        "all": None,
        "A": [c["id"] for c in cats if c["name"] in a_names],
        "B": [c["id"] for c in cats if c["name"] not in a_names],
    }
    print(f"{len(results)} detections over HTTP for {len(gt.getImgIds())} images")
    print("mask AP   maskx evaluate   HTTP format=coco + COCOeval")
    for name, cat_ids in subsets.items():
        ours = 100 * (reference["segm"][name]["AP"] or 0.0)
        print(f"{name:<9} {ours:14.2f}   {_mask_ap(gt, results, cat_ids):14.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
