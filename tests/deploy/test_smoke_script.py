"""deploy/smoke.sh: shellcheck-clean, and its usage and pre-flight errors work without Docker."""

from __future__ import annotations

import os
import subprocess

from tests.deploy.conftest import DEPLOY, ROOT, require_tool, run_tool

SMOKE = DEPLOY / "smoke.sh"


def test_shellcheck() -> None:
    run_tool([require_tool("shellcheck"), "--severity=style", str(SMOKE)])


def test_is_executable_with_a_bash_shebang() -> None:
    assert os.access(SMOKE, os.X_OK)
    assert SMOKE.read_text().startswith("#!/usr/bin/env bash\n")


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SMOKE), *args],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_help_and_bad_arguments() -> None:
    ok = _run("--help")
    assert ok.returncode == 0 and "--cpu" in ok.stdout and "--down" in ok.stdout
    bad = _run("--bogus")
    assert bad.returncode == 2 and "unknown argument '--bogus'" in bad.stderr


def test_missing_model_fails_before_starting_anything(tmp_path) -> None:
    result = _run(env={"MASKX_MODEL_DIR": str(tmp_path)})
    assert result.returncode != 0
    combined = result.stdout + result.stderr
    # With docker absent the tool check fails first; otherwise the model check does.
    assert "is required but not installed" in combined or f"no model at {tmp_path}" in combined
    assert "smoke test: FAIL" in result.stdout
    assert "== docker compose" not in result.stdout, "the stack must not start without a model"
