"""Fixtures of the model tests (builders are in helpers.py)."""

from __future__ import annotations

import pytest

from .helpers import synthetic_batch


@pytest.fixture
def batch():
    return synthetic_batch()
