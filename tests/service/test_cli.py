"""``maskx serve``: flags over settings, start-up errors, no torch in the service."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from service import cli, predict
from service.flags import NOT_FLAGS, SERVE_FLAGS, flag_name, settings_from_args, settings_to_argv
from service.settings import LOG_FORMATS, Settings


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_flags_override_environment(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASKX_PORT", "9000")
    monkeypatch.setenv("MASKX_MAX_BATCH_SIZE", "2")
    s = settings_from_args(parse(["--model", "m.onnx", "--port", "8123", "--no-warmup"]))
    assert (s.model_path, s.port, s.max_batch_size, s.warmup) == (Path("m.onnx"), 8123, 2, False)


def test_missing_model_fails_with_its_path(clean_env: None, tmp_path: Path, capsys) -> None:
    assert cli.main(parse(["--model", str(tmp_path / "absent.onnx")])) == 2
    assert "absent.onnx" in capsys.readouterr().err


def test_invalid_setting_fails_before_loading(clean_env: None, capsys) -> None:
    assert cli.main(parse(["--providers", "gpu"])) == 2
    assert "MASKX_PROVIDERS" in capsys.readouterr().err


def test_service_never_imports_torch() -> None:
    code = (
        "import sys, service.app, service.cli, service.pipeline, service.contract;"
        "sys.exit(1 if 'torch' in sys.modules or 'torchvision' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_every_setting_but_the_secret_is_a_serve_flag() -> None:
    assert set(SERVE_FLAGS) == set(Settings.model_fields) - NOT_FLAGS
    help_text = argparse.ArgumentParser()
    cli.add_arguments(help_text)
    for name in SERVE_FLAGS:
        assert flag_name(name) in help_text.format_help(), name


def test_serve_predict_and_bench_share_one_flag_definition() -> None:
    from maskx.bench import service as bench

    parsers = {}
    for name, module in {"serve": cli, "predict": predict, "bench": bench}.items():
        parsers[name] = argparse.ArgumentParser()
        module.add_arguments(parsers[name])
    # The same flag reaches the same setting, validated by the same Settings field.
    for name, parser in parsers.items():
        extra = {"predict": ["x.png", "--out", "o", "--model", "m.onnx"]}.get(name, [])
        args = parser.parse_args([*extra, "--providers", "cuda,cpu"])
        assert settings_from_args(args, ["providers"]).provider_list == ["cuda", "cpu"], name
    # Allowed values come from the settings' Literal types: argparse lists them.
    with pytest.raises(SystemExit):
        parsers["serve"].parse_args(["--log-format", "yaml"])
    assert set(LOG_FORMATS) == {"text", "json"}


def test_settings_round_trip_through_flags() -> None:
    values = {"providers": "cpu", "max_batch_size": 3, "ort_spinning": False}
    args = parse(settings_to_argv(values))
    s = settings_from_args(args)
    assert (s.providers, s.max_batch_size, s.ort_spinning) == ("cpu", 3, False)
