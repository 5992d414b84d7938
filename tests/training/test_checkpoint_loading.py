"""Checkpoints load without running code from the file, and every checkpoint maskx writes loads."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from training.checkpoint import CheckpointError, load_checkpoint, load_model_from_checkpoint

PREVIOUS_LAYOUT = Path(__file__).resolve().parents[1] / "fixtures" / "previous_layout"


class _WritesMarker:
    """Unpickling this object calls ``os.system`` (a checkpoint from someone else could)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def _malicious_checkpoint(tmp_path: Path, marker: Path) -> Path:
    path = tmp_path / "evil.pt"
    torch.save(
        {"format": "maskx-checkpoint", "model": {}, "model_config": {}, "vocab": {},
         "payload": _WritesMarker(marker)},
        path,
    )  # fmt: skip
    # The pickle really would run the command: check with plain pickle on a copy of it.
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
        assert b"system" in archive.read(name)
    return path


def test_checkpoint_whose_pickle_runs_code_is_refused_and_the_code_does_not_run(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "marker"
    path = _malicious_checkpoint(tmp_path, marker)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert str(path) in message and "system" in message  # names the file and the type
    assert not marker.exists()
    # Control: the same file *does* run the command when unpickled without the guard.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_plain_pickle_with_a_foreign_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "odd.pt"
    torch.save({"format": "maskx-checkpoint", "when": __import__("datetime").date(2024, 1, 1)},
               path)  # fmt: skip
    with pytest.raises(CheckpointError, match=r"datetime\.date"):
        load_checkpoint(path)


def test_every_checkpoint_the_trainer_writes_loads(trained_checkpoint: Path) -> None:
    folder = trained_checkpoint.parent
    written = sorted(folder.glob("*.pt"))
    assert {p.name for p in written} >= {"last.pt", "model_final.pt"}
    for path in written:
        ckpt = load_checkpoint(path)
        # The RNG states of every kind come back as they were saved (numpy's needs the
        # allow-list; torch's and Python's are tensors and tuples).
        rng = ckpt["rng"][0] if isinstance(ckpt["rng"], list) else ckpt["rng"]
        assert rng["numpy"][0] == "MT19937" and rng["numpy"][1].shape == (624,)
        assert isinstance(rng["torch"], torch.Tensor) and isinstance(rng["python"], tuple)
        assert ckpt["optimizer"]["state"] and ckpt["step"] == 40
    model, vocab, _ = load_model_from_checkpoint(trained_checkpoint)
    assert len(vocab) == model.num_classes


def test_checkpoint_written_by_the_previous_layout_loads() -> None:
    ckpt = load_checkpoint(PREVIOUS_LAYOUT / "checkpoint.pt")
    assert ckpt["format"] == "maskx-checkpoint"
    model, vocab, _ = load_model_from_checkpoint(PREVIOUS_LAYOUT / "checkpoint.pt")
    assert len(vocab) == model.num_classes


def test_the_refusal_names_every_foreign_type_and_none_of_the_allowed_ones(tmp_path: Path) -> None:
    import datetime
    import decimal

    import numpy as np

    path = tmp_path / "two_foreign.pt"
    # numpy's RNG state pickles to allowed globals (ndarray, dtype, _reconstruct) beside them.
    torch.save({"format": "maskx-checkpoint", "rng": np.random.get_state(),
                "when": datetime.date(2024, 1, 1), "amount": decimal.Decimal("1.5")},
               path)  # fmt: skip
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    named = str(err.value).split(" holds ", 1)[1].split(", which ", 1)[0]
    assert sorted(named.split(", ")) == ["datetime.date", "decimal.Decimal"]


def test_truncated_checkpoint_is_named(tmp_path: Path, trained_checkpoint: Path) -> None:
    data = trained_checkpoint.read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_checkpoint(path)


def test_unpickling_error_type_is_what_torch_raises(tmp_path: Path) -> None:
    # The refusal path relies on torch raising UnpicklingError for a disallowed global.
    path = _malicious_checkpoint(tmp_path, tmp_path / "m2")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    assert not (tmp_path / "m2").exists()


class _RawPickler:
    """A ``pickle_module.Pickler`` for ``torch.save`` that writes the given opcodes as the file's
    pickle, whatever object it is asked to save."""

    opcodes = b""

    def __init__(self, file, protocol: int = 2) -> None:
        self.file = file

    def dump(self, obj: object) -> None:
        self.file.write(self.opcodes)


def test_a_refused_pickle_without_a_foreign_global_is_named_by_torchs_reason(
    tmp_path: Path,
) -> None:
    # A pickle that calls an int: no global at all, so the refusal cannot name a foreign type
    # and gives torch's reason instead (not the pointer to torch's documentation that ends
    # torch's message).
    class Pickler(_RawPickler):
        opcodes = b"\x80\x02K\x05)R."  # PROTO 2, BININT1 5, EMPTY_TUPLE, REDUCE, STOP

    path = tmp_path / "calls_an_int.pt"
    torch.save({}, path, pickle_module=type("RawPickle", (), {"Pickler": Pickler}))
    with pytest.raises(pickle.UnpicklingError, match="unrecognized function 5"):
        torch.load(path, weights_only=True)  # torch refuses it, naming no global
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value) == (
        f"checkpoint {str(path)!r} holds a type outside the allow-list (Trying to call reduce "
        "for unrecognized function 5), which maskx checkpoints never hold; refusing to load it "
        "(unpickling it could run code). Load only checkpoints written by 'maskx train'."
    )


def test_a_refusal_without_any_reason_from_torch_says_so(tmp_path: Path) -> None:
    from training.checkpoint import _refused_types

    path = tmp_path / "empty_reason.pt"
    torch.save({}, path)  # no global: the reason can only come from the exception
    assert _refused_types(path, pickle.UnpicklingError("")) == (
        "a type outside the allow-list (torch gave no reason)"
    )
    # A message without torch's marker is taken whole (its first line).
    assert _refused_types(path, pickle.UnpicklingError("odd\nsecond")) == (
        "a type outside the allow-list (odd)"
    )


def test_a_legacy_format_file_whose_globals_torch_cannot_list_is_refused_cleanly(
    tmp_path: Path,
) -> None:
    """torch's opcode scanner reads only the zip format; for a file in the legacy format it
    raises, and the refusal must still be a CheckpointError with torch's reason, not a crash."""
    import fractions

    path = tmp_path / "legacy.pt"
    torch.save({"model": {}, "x": fractions.Fraction(1, 3)}, path,
               _use_new_zipfile_serialization=False)  # fmt: skip
    with pytest.raises(ValueError):
        torch.serialization.get_unsafe_globals_in_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"outside the allow-list \(.*fractions\.Fraction"):
        load_checkpoint(path)
