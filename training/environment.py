"""The environment record of a run (``env.json``): what ran, on what, with how many images per
step — so that a run folder read a week later says it (detectron2's ``collect_env``)."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

ENV_FILE = "env.json"
PACKAGES = ("torch", "torchvision", "onnx", "onnxruntime", "numpy", "pycocotools")


def code_version(source: Path | None = None) -> dict[str, Any]:
    """``{"maskx": version, "git_commit": sha or None, "git_dirty": bool or None}``.

    The commit is read only when the package's source folder is a git checkout (an editable
    install); an installed wheel, or no ``git`` on the machine, gives None without failing.
    """
    if source is None:
        source = Path(__file__).resolve().parents[1]
    try:
        version = importlib.metadata.version("maskx")
    except importlib.metadata.PackageNotFoundError:
        version = None
    out: dict[str, Any] = {"maskx": version, "git_commit": None, "git_dirty": None}
    if not (source / ".git").exists():
        return out
    try:
        commit = _git(source, "rev-parse", "HEAD")
        status = _git(source, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return out
    out["git_commit"] = commit.strip() or None
    out["git_dirty"] = bool(status.strip())
    return out


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
    ).stdout


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages a run's numbers depend on (None: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    # torch's own string carries the build (e.g. "+cu130"), which the metadata may not.
    out["torch"] = torch.__version__
    return out


def device_name(device: torch.device) -> str:
    """``cuda:0 NVIDIA H200`` or ``cpu (x86_64)``."""
    if device.type == "cuda":
        return f"{device} {torch.cuda.get_device_name(device)}"
    return f"{device.type} ({platform.machine() or 'unknown'})"


def collect_environment(
    *,
    world_size: int,
    devices: list[str],
    images_per_gpu: int,
    accumulate: int,
    seed: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The record written to ``env.json`` at the start of a run.

    ``devices``: every rank's device name, in rank order. ``images_per_step`` is the effective
    batch: images per GPU (process) × world size × gradient-accumulation micro-batches.
    """
    return {
        "code": code_version(),
        "packages": package_versions(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "world_size": world_size,
        "devices": devices,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "images_per_gpu": images_per_gpu,
        "accumulate": accumulate,
        "images_per_step": images_per_gpu * world_size * accumulate,
        "seed": seed,
        **(extra or {}),
    }


def write_environment(env: dict[str, Any], folder: Path) -> Path:
    path = Path(folder) / ENV_FILE
    path.write_text(json.dumps(env, indent=2) + "\n", encoding="utf-8")
    return path


def environment_summary(env: dict[str, Any]) -> str:
    """The record in two lines for ``log.txt``."""
    code = env["code"]
    commit = code.get("git_commit")
    where = (
        f"git {commit[:12]}{' (dirty)' if code.get('git_dirty') else ''}" if commit else "no git"
    )
    pkgs = ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v)
    devices = sorted(set(env["devices"]))
    return (
        f"maskx {code.get('maskx')} ({where}); {pkgs}\n"
        f"{env['world_size']} process(es) on {', '.join(devices)}; {env['images_per_gpu']} "
        f"images per GPU × {env['world_size']} × accumulate {env['accumulate']} = "
        f"{env['images_per_step']} images per step; seed {env['seed']}"
    )
