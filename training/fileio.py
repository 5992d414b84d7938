"""Atomic file writing, shared by checkpoints, metrics and ONNX export (no torch here)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def current_umask() -> int:
    """The process's umask, read without changing it where the kernel reports it (Linux ≥ 4.7).

    ``os.umask`` can only be read by setting it, which races with other threads creating files;
    that swap is the fallback only.
    """
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_directory(path: str | os.PathLike[str]) -> None:
    """fsync a directory so that a rename or a new entry in it survives a crash (POSIX; a no-op
    where directories cannot be opened, as on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except (PermissionError, IsADirectoryError):
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, make_parents: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, fsync it, give it the mode
    a newly created file gets (0o666 less the umask: 0644 under the usual 022), rename it over
    ``path`` and fsync the folder, else delete it.

    A crash at any point leaves the old file or the new one, never half a file, and no stray
    temporary file after an error. The mode matters because the temporary file is made private
    (0600) and a rename keeps the mode: without it, a model exported on the host could not be read
    by a container's user.
    """
    target = Path(path)
    if make_parents:
        target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_directory(target.parent)
