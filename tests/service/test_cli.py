"""``maskx serve``: flags over settings, start-up errors, no torch in the service."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from service import cli


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_flags_override_environment(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASKX_PORT", "9000")
    monkeypatch.setenv("MASKX_MAX_BATCH_SIZE", "2")
    s = cli.settings_from_args(parse(["--model", "m.onnx", "--port", "8123", "--no-warmup"]))
    assert (s.model_path, s.port, s.max_batch_size, s.warmup) == (Path("m.onnx"), 8123, 2, False)


def test_missing_model_fails_with_its_path(clean_env: None, tmp_path: Path, capsys) -> None:
    assert cli.main(parse(["--model", str(tmp_path / "absent.onnx")])) == 2
    assert "absent.onnx" in capsys.readouterr().err


def test_invalid_setting_fails_before_loading(clean_env: None, capsys) -> None:
    assert cli.main(parse(["--providers", "gpu"])) == 2
    assert "MASKX_PROVIDERS" in capsys.readouterr().err


def test_service_never_imports_torch() -> None:
    code = (
        "import sys, service.app, service.cli, service.pipeline;"
        "sys.exit(1 if 'torch' in sys.modules or 'torchvision' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
