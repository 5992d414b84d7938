"""Fixtures of the service tests.

``model_path`` is a real ONNX file honouring the graph contract, built with ``onnx.helper``
(service.testing). Set ``MASKX_TEST_MODEL=/path/model.onnx`` to run the model-agnostic
tests (integration, bad input, metrics) against a real exported model instead; tests that pin the
synthetic graph's exact outputs are skipped then.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.settings import Settings
from service.testing import build_test_model

EXTERNAL_MODEL = os.environ.get("MASKX_TEST_MODEL")


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if EXTERNAL_MODEL:
        return Path(EXTERNAL_MODEL)
    return build_test_model(tmp_path_factory.mktemp("model") / "test.onnx")


@pytest.fixture
def synthetic_model() -> None:
    """Marks a test that checks the synthetic graph's exact outputs."""
    if EXTERNAL_MODEL:
        pytest.skip("pins the synthetic test graph's outputs; MASKX_TEST_MODEL is set")


@pytest.fixture
def settings(model_path: Path) -> Settings:
    return Settings(model_path=model_path, providers="cpu", warmup=False, max_batch_delay_ms=2)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in list(os.environ):
        if key.startswith("MASKX_"):
            monkeypatch.delenv(key)
    yield
