"""Typed settings: env names, defaults and start-up validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings


def test_defaults_match_the_contract(clean_env: None) -> None:
    s = Settings()
    assert s.model_path == Path("artifacts/demo/model.onnx")
    assert (s.providers, s.max_batch_size, s.max_batch_delay_ms, s.queue_size) == ("auto", 4, 5, 64)
    assert (s.request_timeout_s, s.max_body_bytes, s.max_pixels) == (30, 20_000_000, 40_000_000)
    assert (s.score_threshold, s.mask_threshold, s.max_detections) == (0.5, 0.5, 100)
    assert (s.host, s.port, s.api_key, s.worker_threads, s.warmup) == (
        "127.0.0.1",
        8000,
        None,
        2,
        True,
    )
    assert s.log_level == "info"
    assert (s.intra_op_threads, s.ort_spinning) == (0, True)


def test_environment_with_prefix(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASKX_PROVIDERS", "CUDA, cpu")
    monkeypatch.setenv("MASKX_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("MASKX_API_KEY", "s3cret")
    monkeypatch.setenv("MASKX_WARMUP", "false")
    monkeypatch.setenv("MASKX_INTRA_OP_THREADS", "3")
    monkeypatch.setenv("MASKX_ORT_SPINNING", "0")
    s = Settings()
    assert (s.intra_op_threads, s.ort_spinning) == (3, False)
    assert s.provider_list == ["cuda", "cpu"]
    assert s.max_batch_size == 8 and s.warmup is False
    assert s.api_key is not None and s.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)


def test_empty_api_key_means_unset(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASKX_API_KEY", "")
    assert Settings().api_key is None


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"providers": "cuda,gpu"}, "MASKX_PROVIDERS"),
        ({"queue_size": 2, "max_batch_size": 4}, "MASKX_QUEUE_SIZE=2"),
        ({"score_threshold": 1.5}, "score_threshold"),
        ({"max_detections": 0}, "max_detections"),
        ({"log_level": "loud"}, "log_level"),
    ],
)
def test_misconfiguration_fails_at_start(clean_env: None, kwargs: dict, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        Settings(**kwargs)


def test_contracts_doc_lists_every_setting_error_code_and_metric() -> None:
    from pathlib import Path

    from service.errors import ERROR_CODES
    from service.metrics import ServiceMetrics

    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "contracts.md").read_text()
    readme = (root / "README.md").read_text()
    missing = [
        f"MASKX_{n.upper()}" for n in Settings.model_fields if f"MASKX_{n.upper()}" not in doc
    ]
    missing += [f"`{code}`" for code in ERROR_CODES if f"`{code}`" not in doc]
    names = {
        m.name + ("_total" if m.type == "counter" else "")
        for m in ServiceMetrics().registry.collect()
    }
    missing += [n for n in sorted(names) if n not in doc or n not in readme]
    assert not missing, f"docs/contracts.md or README.md lacks {missing}"
