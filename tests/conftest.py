"""Shared test configuration: deterministic, single-threaded torch where torch is present."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
