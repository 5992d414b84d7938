"""Schemathesis explores /openapi.json against the live server: no 5xx anywhere."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.app import create_app
from service.settings import Settings
from tests.service.helpers import LiveServer

SCHEMATHESIS = shutil.which("schemathesis") or str(Path(sys.executable).with_name("schemathesis"))


def test_schemathesis_finds_no_server_error(settings: Settings) -> None:
    if not Path(SCHEMATHESIS).exists():
        pytest.skip("schemathesis is not installed (dev extra)")
    with LiveServer(create_app(settings)) as live:
        live.wait_ready()
        run = subprocess.run(
            [SCHEMATHESIS, "run", f"{live.url}/openapi.json", "--checks", "not_a_server_error",
             "--max-examples", "25", "--seed", "1", "--no-color", "--request-timeout", "20",
             "--workers", "1"],
            capture_output=True, text=True, timeout=150,
        )  # fmt: skip
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    assert "Tested: 5" in report, report  # every operation, /segment included
