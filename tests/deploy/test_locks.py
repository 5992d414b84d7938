"""deploy/requirements/*.txt: in step with pyproject.toml, pinned, hashed, used by the images."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.docker_helpers import DEPLOY, ROOT, load_locks

locks = load_locks()


def test_every_lock_is_in_step_with_pyproject() -> None:
    proc = subprocess.run(
        [sys.executable, str(DEPLOY / "locks.py"), "check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def _copy_tree(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "deploy").mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    for name in ("constraints-cuda12.txt", "constraints-cuda13.txt"):
        shutil.copy(DEPLOY / name, root / "deploy" / name)
    shutil.copytree(DEPLOY / "requirements", root / "deploy" / "requirements")
    return root


@pytest.mark.parametrize("lock", locks.LOCKS, ids=lambda lock: lock.name)
def test_an_edited_pyproject_puts_the_lock_out_of_step(lock, tmp_path: Path) -> None:
    root = _copy_tree(tmp_path)
    assert locks.check_lock(lock, root) == []
    pyproject = root / "pyproject.toml"
    text = pyproject.read_text()
    if lock.build_system:
        edited = text.replace('requires = ["setuptools>=69"', 'requires = ["setuptools>=70"')
    else:
        # A new dependency of the extra the lock resolves (or of everything, for the base).
        edited = text.replace('    "tqdm>=4.66",\n', '    "tqdm>=4.66",\n    "rich>=13",\n')
    assert edited != text
    pyproject.write_text(edited)
    problems = locks.check_lock(lock, root)
    assert any("locks.py compile" in p for p in problems), problems


def test_a_lock_without_hashes_or_with_a_version_outside_the_range_fails(tmp_path: Path) -> None:
    root = _copy_tree(tmp_path)
    serve = next(lock for lock in locks.LOCKS if lock.name == "serve")
    path = root / "deploy" / "requirements" / "serve.txt"
    text = path.read_text()
    start = text.index("\nfastapi==")
    line_end = text.index("\n", start + 1)
    version = text[start + len("\nfastapi==") : line_end].split()[0]
    # Drop fastapi's hashes: the entry is no longer verifiable.
    block_end = text.index("\n", line_end + 1)
    while text[block_end + 1 : block_end + 5] == "    ":
        block_end = text.index("\n", block_end + 1)
    path.write_text(text[:start] + f"\nfastapi=={version}" + text[block_end:])
    assert any("fastapi" in p and "--hash" in p for p in locks.check_lock(serve, root))
    # A pin outside pyproject's range.
    path.write_text(text.replace(f"\nfastapi=={version}", "\nfastapi==0.100.0"))
    assert any("violates" in p for p in locks.check_lock(serve, root))


def test_requirements_resolve_self_references() -> None:
    pyproject = {
        "project": {
            "name": "maskx",
            "dependencies": ["numpy"],
            "optional-dependencies": {
                "base": ["a>=1", "numpy"],
                "one": ["maskx[base]", "b"],
                "two": ["maskx[one,base]", "c"],
            },
        }
    }
    assert locks.extra_requirements(pyproject, ("two",)) == ["numpy", "a>=1", "b", "c"]
    with pytest.raises(KeyError, match="no extra 'nope'"):
        locks.extra_requirements(pyproject, ("nope",))
