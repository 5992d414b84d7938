"""deploy/smoke.sh: shellcheck-clean, and its usage and pre-flight checks work without an engine.

The script runs against the real stack in test_compose_stack.py; here stub `docker`, `curl` and
`python3` commands on PATH let it reach each pre-flight check and record whether it would have
started anything.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.deploy.helpers import DEPLOY, ROOT, require_tool, run_tool

SMOKE = DEPLOY / "smoke.sh"


def test_shellcheck() -> None:
    run_tool([require_tool("shellcheck"), "--severity=style", str(SMOKE)])


def test_is_executable_with_a_bash_shebang() -> None:
    assert os.access(SMOKE, os.X_OK)
    assert SMOKE.read_text().startswith("#!/usr/bin/env bash\n")


def _run(
    *args: str, env: dict[str, str] | None = None, path: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SMOKE), *args],
        cwd=ROOT,
        env={"PATH": path or os.environ["PATH"], **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _stub_tools(tmp_path: Path) -> tuple[str, Path]:
    """A PATH whose docker, curl and python3 only record their arguments (and succeed)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    for tool in ("docker", "curl", "python3"):
        stub = bin_dir / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\n')
        stub.chmod(0o755)
    return f"{bin_dir}:/usr/bin:/bin", calls


def test_help_and_bad_arguments() -> None:
    ok = _run("--help")
    assert ok.returncode == 0
    assert all(flag in ok.stdout for flag in ("--gpu", "--local", "--down")), ok.stdout
    bad = _run("--bogus")
    assert bad.returncode == 2 and "unknown argument '--bogus'" in bad.stderr


def test_missing_tool_is_named(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "bash").symlink_to("/bin/bash")
    result = _run(path=str(bin_dir))
    assert result.returncode == 1
    assert "'docker' is required but not installed" in result.stderr
    assert "smoke test: FAIL" in result.stdout


def test_missing_model_fails_before_starting_anything(tmp_path: Path) -> None:
    path, calls = _stub_tools(tmp_path)
    empty = tmp_path / "models"
    empty.mkdir()
    result = _run(env={"MASKX_MODEL_DIR": str(empty)}, path=path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"no model at {empty}/model.onnx" in result.stderr
    assert "smoke test: FAIL" in result.stdout
    # It asked which Compose is installed, and nothing else: no build, no `up`.
    recorded = calls.read_text().splitlines()
    assert recorded == ["docker compose version"], recorded
    assert "== docker compose" not in result.stdout


def test_with_a_model_or_without_a_folder_it_starts_the_stack(tmp_path: Path) -> None:
    """The counterpart: where the pre-flight passes, the next command is `up` on the files asked
    for (the stub engine then reports no healthy container, and the run fails later)."""
    path, calls = _stub_tools(tmp_path)
    models = tmp_path / "models"
    models.mkdir()
    (models / "model.onnx").write_bytes(b"x")
    env = {"MASKX_MODEL_DIR": str(models), "MASKX_SMOKE_WAIT_S": "0"}
    result = _run("--local", env=env, path=path)
    assert result.returncode != 0
    ups = [c for c in calls.read_text().splitlines() if " up " in c]
    assert ups == [
        "docker compose -f docker-compose.yml -f deploy/docker-compose.local.yml up -d --build"
    ], ups
    calls.unlink()
    _run("--gpu", env={"MASKX_SMOKE_WAIT_S": "0"}, path=path)
    assert any(
        "-f docker-compose.gpu.yml up -d --build" in c for c in calls.read_text().splitlines()
    )
