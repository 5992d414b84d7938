"""The error raised for malformed dataset files."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset file is malformed; the message names the file and the entry (image/annotation id)."""
