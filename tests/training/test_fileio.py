"""training.fileio.atomic_path: written files get the usual mode, and the rename is made durable."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from training import fileio
from training.fileio import atomic_path, current_umask

NOBODY = 65534


def _with_umask(mask: int):
    class _Umask:
        def __enter__(self) -> None:
            self.old = os.umask(mask)

        def __exit__(self, *exc: object) -> None:
            os.umask(self.old)

    return _Umask()


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_file_mode_follows_the_umask(tmp_path: Path, mask: int, mode: int) -> None:
    with _with_umask(mask):
        assert current_umask() == mask
        with atomic_path(tmp_path / "out.bin") as tmp:
            tmp.write_bytes(b"x")
    assert stat.S_IMODE((tmp_path / "out.bin").stat().st_mode) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"], "no temporary file left behind"


def test_folder_is_fsynced_after_the_rename(tmp_path: Path, monkeypatch) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "fsync", fsync)
    monkeypatch.setattr(fileio.os, "replace", replace)
    target = tmp_path / "metrics.json"
    with atomic_path(target) as tmp:
        tmp.write_text("{}")
    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync", "replace", "fsync"], events
    assert events[0][1].endswith(".tmp"), "the data is synced before the rename"
    assert events[2][1] == str(tmp_path), "the folder is synced after the rename"


def test_failed_block_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "keep.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.skipif(os.geteuid() != 0, reason="reading as another user needs root to switch to it")
def test_exported_model_is_readable_by_another_user(tmp_path_factory) -> None:
    """The documented path `make demo-model` + `docker compose up` reads a host-exported model as
    the container's UID 10001: under the default umask the ONNX file must be 0644."""
    import onnx

    from training.checkpoint import load_model_from_checkpoint
    from training.export.onnx_export import build_metadata, export_model

    checkpoint = Path(__file__).resolve().parents[1] / "fixtures/previous_layout/checkpoint.pt"
    model, vocab, ckpt = load_model_from_checkpoint(checkpoint)
    metadata = build_metadata(
        model, vocab, model_config=ckpt.model_config, train_config=None,
        checkpoint_sha256=None, name="mode-check", version="test",
    )  # fmt: skip

    # pytest's own temporary root is private to its user; another user needs a way in.
    folder = tmp_path_factory.mktemp("shared")
    for p in [folder, *folder.parents]:
        if p == Path(p.anchor):
            break
        p.chmod(p.stat().st_mode | 0o011)
    with _with_umask(0o022):
        out = export_model(model.eval(), folder / "model.onnx", metadata, sample_size=(96, 96))
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    onnx.load(out)  # a whole model, not a stub
    # `cat` as user nobody (this interpreter may live where nobody cannot run it).
    reader = subprocess.run(
        ["cat", str(out)],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert reader.returncode == 0, reader.stderr.decode()
    assert reader.stdout == out.read_bytes()
