"""Evaluation on every rank: shards without repeats, detections gathered to rank 0, and the
same AP under ``torchrun`` (2 gloo processes on the CPU) as in one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, TINY_CONFIG, tiny_train_overrides
from tests.training.test_run_logs import step_lines
from training.datasets import InferenceSampler
from training.evaluate_cli import RESULTS_FILE, format_metrics, run_evaluation

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_inference_shards_cover_the_set_once_in_order():
    for size in (0, 1, 7, 8):
        shards = [list(InferenceSampler(size, 3, rank)) for rank in range(3)]
        # DistributedSampler would pad 7 to 9 with repeats: two images counted twice.
        assert [i for s in shards for i in s] == list(range(size))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError, match="rank 3"):
        InferenceSampler(4, 3, 3)


def _odd_val_set(synth_root: Path, tmp_path: Path, keep: int = 7) -> Path:
    # An odd image count: shards of 4 and 3, where a padding sampler would repeat one.
    data = json.loads((synth_root / "annotations" / "instances_val.json").read_text())
    ids = {img["id"] for img in data["images"][:keep]}
    data["images"] = [img for img in data["images"] if img["id"] in ids]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    out = tmp_path / "val7.json"
    out.write_text(json.dumps(data))
    return out


def _assert_two_process_logs(out: Path, max_iter: int, images_per_gpu: int) -> str:
    """log.txt has a line with ETA per step, env.json says 2 processes and their images per
    step, and the logged losses are the mean over both ranks (not rank 0's). Returns log.txt."""
    env = json.loads((out / "env.json").read_text())
    assert env["world_size"] == 2 and len(env["devices"]) == 2
    assert env["images_per_gpu"] == images_per_gpu
    assert env["images_per_step"] == 2 * images_per_gpu * env["accumulate"]
    text = (out / "log.txt").read_text()
    assert f"= {env['images_per_step']} images per step" in text
    lines = step_lines(text)
    assert [int(m[1]) for m in lines] == list(range(1, max_iter + 1))
    assert all(int(m[2]) == max_iter and m[3].count(":") == 2 for m in lines)
    last = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in last if "eval" not in r][-1]
    ranks = [json.loads((out / f"rank{r}_losses.json").read_text()) for r in (0, 1)]
    # The ranks saw other images: their losses differ, so rank 0's alone would be caught.
    assert any(abs(ranks[0][k] - ranks[1][k]) > 1e-6 for k in ranks[0])
    for k in ranks[0]:
        assert last[k] == pytest.approx((ranks[0][k] + ranks[1][k]) / 2, rel=1e-5, abs=1e-7)
    return text


def _sorted_results(path: Path) -> list[tuple]:
    results = json.loads(path.read_text())
    return sorted((r["image_id"], r["category_id"], r["score"], *r["bbox"]) for r in results)


def test_two_process_evaluate_scores_like_one(trained_checkpoint, synth_root, tmp_path):
    ann = _odd_val_set(synth_root, tmp_path)
    images = synth_root / "images" / "val"
    one_results = tmp_path / "one" / RESULTS_FILE
    one = run_evaluation(str(trained_checkpoint), str(ann), str(images), device="cpu",
                         workers=0, progress=False, results_path=one_results)  # fmt: skip

    out = tmp_path / "two" / "metrics.json"
    cmd = [*TORCHRUN, "-m", "maskx.cli", "evaluate", "--checkpoint", str(trained_checkpoint),
                      "--annotations", str(ann), "--images", str(images), "--out", str(out),
                      "--device", "cpu", "--workers", "0", "--no-progress"]  # fmt: skip
    res = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    two = json.loads(out.read_text())
    # Printed once (rank 0), with the AP of one process to the printed precision.
    assert res.stdout.count("segm all") == 1
    assert format_metrics(one) in res.stdout
    assert format_metrics(two) == format_metrics(one)
    assert one["bbox"]["all"]["AP"] > 0, "an untrained model would make equality trivial"
    # Every image's detections once: the same results file as one process writes.
    two_results = out.parent / RESULTS_FILE
    a, b = _sorted_results(two_results), _sorted_results(one_results)
    assert len(a) == len(b) > 0
    assert [r[:2] for r in a] == [r[:2] for r in b]
    # One thread per process here, two in this one: float sums may round apart.
    flat = [[v for r in rows for v in r[2:]] for rows in (a, b)]
    assert flat[0] == pytest.approx(flat[1], abs=1e-3)
    assert {r["image_id"] for r in json.loads(two_results.read_text())} <= {
        img["id"] for img in json.loads(ann.read_text())["images"]
    }


@pytest.mark.slow
def test_two_process_training_evaluates_on_every_rank(synth_root, tmp_path):
    out = tmp_path / "ddp"
    worker = Path(__file__).with_name("ddp_worker.py")
    val = _odd_val_set(synth_root, tmp_path)
    sets = tiny_train_overrides(
        synth_root,
        **{"solver.max_iter": 3, "train.eval_period": 2, "train.checkpoint_period": 0,
           "data.val_annotations": str(val), "train.dist_timeout_minutes": 5},
    )  # fmt: skip
    cmd = [*TORCHRUN, str(worker), str(TINY_CONFIG), str(out), *sets]
    res = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    evals = [
        json.loads(line)
        for line in (out / "metrics.jsonl").read_text().splitlines()
        if '"eval"' in line
    ]
    assert [e["step"] for e in evals] == [2, 3]
    _assert_two_process_logs(out, max_iter=3, images_per_gpu=2)
    final = json.loads((out / "metrics.json").read_text())
    assert final["step"] == 3
    # Both ranks returned rank 0's metrics (the worker writes what each rank got).
    assert json.loads((out / "rank1_metrics.json").read_text()) == final
    single = run_evaluation(
        str(out / "checkpoints" / "model_final.pt"), str(val), str(synth_root / "images" / "val"),
        device="cpu", workers=0, progress=False,
    )  # fmt: skip
    assert format_metrics(final) == format_metrics(single)


def test_two_process_visual_genome_run_holds_out_coco_val_and_scores_like_one(tmp_path):
    fixtures = REPO / "tests" / "fixtures"
    vg, coco = fixtures / "vg_tiny", fixtures / "coco_tiny"
    # COCO val whose image 1 is COCO id 139, the VG fixture's image 1: held out of training.
    data = json.loads((coco / "annotations.json").read_text())
    data["images"][0]["id"] = 139
    for ann in data["annotations"]:
        ann["image_id"] = 139 if ann["image_id"] == 1 else ann["image_id"]
    val = tmp_path / "val.json"
    val.write_text(json.dumps(data))
    out = tmp_path / "vg"
    sets = tiny_train_overrides(
        tmp_path,
        **{"data.kind": "vg", "data.vg_image_data": str(vg / "image_data.json"),
           "data.vg_objects": str(vg / "objects.json"), "data.vg_images": str(vg),
           "data.vg_num_classes": 83, "data.mask_classes": "all", "data.flip_map": "null",
           "data.train_annotations": "null", "data.train_images": "null",
           "data.val_annotations": str(val), "data.val_images": str(coco),
           "data.aspect_ratio_grouping": "false", "solver.batch_size": 1,
           "solver.max_iter": 2, "train.eval_period": 1, "train.checkpoint_period": 0,
           "train.scheme": "stage1"},
    )  # fmt: skip
    worker = Path(__file__).with_name("ddp_worker.py")
    cmd = [*TORCHRUN, str(worker), str(TINY_CONFIG), str(out), *sets]
    res = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "held out 1 images that are in COCO val" in res.stderr
    text = _assert_two_process_logs(out, max_iter=2, images_per_gpu=1)
    assert "held out 1 images that are in COCO val" in text
    final = json.loads((out / "metrics.json").read_text())
    assert final["step"] == 2 and "bbox" in final and "segm" not in final
    assert json.loads((out / "rank1_metrics.json").read_text()) == final
    single = run_evaluation(str(out / "checkpoints" / "model_final.pt"), str(val), str(coco),
                            device="cpu", workers=0, progress=False)  # fmt: skip
    assert format_metrics(final) == format_metrics({"bbox": single["bbox"]})


def test_the_process_group_timeout_is_the_setting(monkeypatch):
    from datetime import timedelta

    import torch.distributed as dist

    from training import distributed
    from training.config import TrainConfig

    seen = {}
    monkeypatch.setattr(distributed, "_timeout", None)  # restored after the test
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: seen.update(kw))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    info, device = distributed.init_distributed("cpu", 7)
    assert (info.rank, info.world_size, device.type) == (1, 2, "cpu")
    assert seen == {"backend": "gloo", "timeout": timedelta(minutes=7)}
    assert TrainConfig().train.dist_timeout_minutes == 30  # detectron2's default
    with pytest.raises(ValueError, match="timeout"):
        distributed.init_distributed("cpu", 0)
