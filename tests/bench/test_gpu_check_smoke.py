"""``maskx/bench/gpu_check.sh --device cpu --quick``: every case of the GPU check runs on the CPU with
only torch and torchvision importable (the GPU machine has nothing else), the table comes last,
and a failing or over-budget case still leaves the table and the JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BLOCKED = ("yaml", "pycocotools", "onnx", "onnxruntime", "tqdm", "fastapi", "pydantic")

# Imports of these fail as if the package were missing. find_spec still answers (with no
# origin), because torch probes optional packages with importlib.util.find_spec.
SITECUSTOMIZE = f"""
import importlib.machinery
import sys


class _Missing:
    def create_module(self, spec):
        raise ModuleNotFoundError(
            f"No module named {{spec.name!r}} (not installed on the GPU machine)", name=spec.name
        )

    def exec_module(self, module):
        pass


class _NotOnTheGpuMachine:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            return importlib.machinery.ModuleSpec(name, _Missing(), origin=None)
        return None


sys.meta_path.insert(0, _NotOnTheGpuMachine())
"""


def run_check(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    block = tmp_path / "block"
    block.mkdir(exist_ok=True)
    (block / "sitecustomize.py").write_text(SITECUSTOMIZE)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env.update(PYTHON=sys.executable, PYTHONPATH=str(block), OUT=str(out))
    run = subprocess.run(
        [
            "bash",
            str(REPO / "maskx" / "bench" / "gpu_check.sh"),
            "--device",
            "cpu",
            "--quick",
            *args,
        ],
        cwd=tmp_path,  # the script must find the repository by itself
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    path = out / "gpu_check.json"
    assert path.is_file(), run.stdout[-3000:] + run.stderr[-3000:]
    return run, json.loads(path.read_text())


def table_is_last(stdout: str) -> None:
    lines = stdout.rstrip().splitlines()
    header = max(i for i, line in enumerate(lines) if line.startswith("case "))
    assert lines[header - 1].startswith("== maskx gpu_check on cpu")
    assert all(not line.startswith("[") for line in lines[header:])  # no progress after it


def test_blocked_packages_are_missing_in_the_check_environment(tmp_path: Path) -> None:
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(SITECUSTOMIZE)
    code = "import torchvision\ntry:\n    import yaml\nexcept ImportError as e:\n    print(e)"
    run = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(block)},
        capture_output=True,
        text=True,
    )
    assert "not installed on the GPU machine" in run.stdout, run.stdout + run.stderr


def test_quick_cpu_run_measures_every_case(tmp_path: Path) -> None:
    run, result = run_check(tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = {r["case"]: r for r in result["rows"]}
    expected = {
        "correctness cpu vs device",
        *(f"infer {p} K={k}" for p in ("fp32", "bf16") for k in (80, 3000)),
        *(f"train {p} {m}" for p in ("fp32", "bf16") for m in ("Mask^X", "torchvision")),
        "train fp16 Mask^X",
    }
    assert set(rows) == expected, sorted(rows)
    assert all(r["status"] == "ok" for r in rows.values()), rows
    assert rows["correctness cpu vs device"]["matched"] == 100
    assert all(rows[f"infer fp32 K={k}"]["detections"] == 100 for k in (80, 3000))
    assert all(
        r["latency_ms"] > 0 for name, r in rows.items() if name.startswith(("infer", "train"))
    )
    assert set(result["info"]["ratios"]) >= {
        "infer fp32 latency K=3000/K=80", "train fp32 step Mask^X/torchvision",
    }  # fmt: skip
    assert result["info"]["torch"] and result["info"]["settings"]["backbone"] == "tiny"
    table_is_last(run.stdout)


def test_failing_case_still_prints_the_table(tmp_path: Path) -> None:
    run, result = run_check(tmp_path, "--only", "infer,correctness", "--k-small", "0")
    assert run.returncode == 1
    rows = {r["case"]: r for r in result["rows"]}
    assert rows["inference"]["status"] == "error" and "num_classes" in rows["inference"]["note"]
    assert rows["correctness cpu vs device"]["status"] == "ok"  # ran after the failure
    table_is_last(run.stdout)


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGALRM"), reason="needs SIGALRM")
def test_spent_budget_skips_the_remaining_cases(tmp_path: Path) -> None:
    run, result = run_check(tmp_path, "--budget-s", "0.01")
    assert run.returncode == 0
    assert [r["status"] for r in result["rows"]] == ["skipped"] * 3
    table_is_last(run.stdout)


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGALRM"), reason="needs SIGALRM")
def test_nested_alarm_rearms_the_outer_budget() -> None:
    import importlib.util
    import time

    spec = importlib.util.spec_from_file_location(
        "gpu_check", REPO / "maskx" / "bench" / "gpu_check.py"
    )
    assert spec is not None and spec.loader is not None
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    t0 = time.monotonic()
    with pytest.raises(gpu_check.BudgetExceeded), gpu_check._alarm(0.5):
        with gpu_check._alarm(5):  # a case inside a case group
            time.sleep(0.1)
        time.sleep(5)  # the group's own budget must still stop this
    assert time.monotonic() - t0 < 2
