"""``maskx fetch-model``: copy the model from a URL into a local file, checked by its sha256.

Scale-out needs a model that every replica can read. On Kubernetes a ReadWriteOnce volume is
readable from one node only, so the Deployment runs this command as an init container (the
serving image itself) that fills a pod-local ``emptyDir``; each replica gets its own copy, on
whatever node it lands. The copy is refused unless its sha256 is the one given: a URL that
serves another file (a newer upload, an error page, a truncated body) never reaches the worker.

Settings (environment, ``MASKX_`` prefix; flags override them):

* ``MASKX_MODEL_URL``: ``http://`` or ``https://`` URL of the ``.onnx`` file (an object store's
  pre-signed HTTPS URL works; proxies from ``HTTPS_PROXY``/``HTTP_PROXY``).
* ``MASKX_MODEL_SHA256``: the file's sha256, 64 hex digits (``sha256sum model.onnx``).
* ``MASKX_MODEL_PATH``: where to write it, the worker's own setting (default as the worker's).
* ``MASKX_MODEL_FETCH_TIMEOUT_S``: socket timeout of the download (default 60 s).

The file is written beside its destination under a temporary name, checked, made read-only for
everyone (mode 0444: the worker may run as another user than the init container) and renamed
into place, so a worker never sees a partial file. A destination that already holds the right
bytes is kept (an init container that restarts does not download again).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.settings import Settings

log = logging.getLogger("maskx.fetch")

CHUNK_BYTES = 1 << 20
MODEL_FILE_MODE = 0o444
SCHEMES = ("http", "https")


class ModelFetchError(RuntimeError):
    """The model could not be fetched, or its bytes are not the ones asked for."""


class FetchSettings(BaseSettings):
    """What ``maskx fetch-model`` reads; ``model_path`` is the worker's ``MASKX_MODEL_PATH``."""

    model_config = SettingsConfigDict(
        env_prefix="MASKX_", extra="ignore", validate_default=True, protected_namespaces=()
    )

    model_url: str = Field(description="http(s) URL of the .onnx file.")
    model_sha256: str = Field(description="sha256 of the file, 64 hex digits.")
    model_path: Path = Field(
        Settings.model_fields["model_path"].default,
        description="Where to write the file (the worker's MASKX_MODEL_PATH).",
    )
    model_fetch_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="Socket timeout of the download, in seconds."
    )

    @field_validator("model_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in SCHEMES or not parts.netloc:
            raise ValueError(
                f"MASKX_MODEL_URL={value!r}: expected an http:// or https:// URL of the .onnx "
                "file (for an object store, a pre-signed HTTPS URL)"
            )
        return value.strip()

    @field_validator("model_sha256")
    @classmethod
    def _check_sha256(cls, value: str) -> str:
        digest = value.strip().lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(
                f"MASKX_MODEL_SHA256={value!r}: expected 64 hex digits (sha256sum model.onnx)"
            )
        return digest


def file_sha256(path: Path) -> str:
    """Hex sha256 of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_model(url: str, dest: Path, sha256: str, *, timeout_s: float = 60.0) -> bool:
    """Download ``url`` to ``dest`` and check its ``sha256`` (lowercase hex).

    Returns True when it downloaded, False when ``dest`` already held those bytes. Raises
    :class:`ModelFetchError` naming the URL and the reason (HTTP status, network error, a
    digest that differs); nothing is left at ``dest`` or beside it then.
    """
    dest = Path(dest)
    if dest.is_file() and file_sha256(dest) == sha256:
        log.info("%s already holds the model (sha256 %s); nothing to fetch", dest, sha256)
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own: two fetches into one shared folder must not write into one file.
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial")
    os.close(fd)
    partial = Path(name)
    digest = hashlib.sha256()
    size = 0
    t0 = time.monotonic()
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "maskx-fetch-model"})
        with (
            urllib.request.urlopen(request, timeout=timeout_s) as response,
            partial.open("wb") as out,
        ):
            while chunk := response.read(CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if got != sha256:
            raise ModelFetchError(
                f"{url}: sha256 of the {size} bytes received is {got}, expected {sha256} "
                "(MASKX_MODEL_SHA256); refusing the file"
            )
        partial.chmod(MODEL_FILE_MODE)
        partial.replace(dest)
    except urllib.error.HTTPError as exc:
        raise ModelFetchError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ModelFetchError(f"{url}: cannot download to {dest}: {reason}") from exc
    finally:
        partial.unlink(missing_ok=True)
    log.info(
        "fetched %s to %s: %d bytes in %.1f s, sha256 %s",
        url,
        dest,
        size,
        time.monotonic() - t0,
        sha256,
    )
    return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", dest="model_url", help="URL of the .onnx file (MASKX_MODEL_URL)")
    parser.add_argument(
        "--sha256", dest="model_sha256", help="its sha256, 64 hex digits (MASKX_MODEL_SHA256)"
    )
    parser.add_argument(
        "--out", dest="model_path", type=Path, help="file to write (MASKX_MODEL_PATH)"
    )


def main(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from service.logs import configure_logging

    configure_logging("info", "text")
    given = {k: v for k, v in vars(args).items() if v is not None and k.startswith("model_")}
    try:
        settings = FetchSettings(**given)
    except ValidationError as exc:
        print(f"maskx fetch-model: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    try:
        fetch_model(
            settings.model_url,
            settings.model_path,
            settings.model_sha256,
            timeout_s=settings.model_fetch_timeout_s,
        )
    except ModelFetchError as exc:
        print(f"maskx fetch-model: {exc}", file=sys.stderr)
        return 1
    return 0
