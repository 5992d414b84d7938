"""Locked requirement files of the images, generated from pyproject.toml's extras.

Every image installs one of these files with ``pip install --require-hashes`` (exact versions,
every file hash-checked), so a build today and a build next year get the same packages. Each file
records a digest of its inputs (the requirement lists of its extras, resolved through
self-references such as ``maskx[serve-base]``, and its constraints file); ``check`` recomputes it,
so editing pyproject.toml without regenerating the locks fails the deployment tests.

    python deploy/locks.py compile          # regenerate every lock (needs uv and PyPI)
    python deploy/locks.py compile serve    # one of them
    python deploy/locks.py check            # what the tests run: exit 1 when one is out of step

``compile`` runs ``uv pip compile --universal --generate-hashes`` for Python 3.11 (Debian
bookworm) and later (3.12 on the CUDA images' Ubuntu 24.04). Standard library only, apart from
``packaging`` for ``check``'s version checks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK_DIR = ROOT / "deploy" / "requirements"
PYTHON_VERSION = "3.11"
DIGEST_PREFIX = "# inputs-sha256: "


@dataclass(frozen=True)
class Lock:
    """One locked file: the extras it resolves and an optional constraints file."""

    name: str
    extras: tuple[str, ...]
    constraints: str | None = None  # path relative to the repository root
    build_system: bool = False  # the build backend (pyproject's [build-system] requires)

    @property
    def path(self) -> Path:
        return LOCK_DIR / f"{self.name}.txt"


LOCKS = (
    Lock("serve", ("serve",)),
    Lock("gpu-cuda13", ("gpu",), "deploy/constraints-cuda13.txt"),
    Lock("gpu-cuda12", ("gpu",), "deploy/constraints-cuda12.txt"),
    Lock("train", ("train",)),
    Lock("build", (), build_system=True),
)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def extra_requirements(pyproject: dict, extras: tuple[str, ...]) -> list[str]:
    """Base dependencies plus each extra's, following ``<project>[extra]`` self-references, in
    file order without duplicates. Raises ``KeyError`` naming an unknown extra."""
    project = pyproject["project"]
    me = _canonical(project["name"])
    optional = {_canonical(k): v for k, v in project.get("optional-dependencies", {}).items()}
    out: list[str] = list(project.get("dependencies", []))
    seen: set[str] = set()

    def add(extra: str) -> None:
        key = _canonical(extra)
        if key in seen:
            return
        if key not in optional:
            raise KeyError(f"pyproject.toml has no extra {extra!r} (known: {sorted(optional)})")
        seen.add(key)
        for req in optional[key]:
            m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*\[([^\]]+)\]\s*", req)
            if m and _canonical(m.group(1)) == me:
                for inner in m.group(2).split(","):
                    add(inner.strip())
            else:
                out.append(req)

    for extra in extras:
        add(extra)
    return list(dict.fromkeys(out))


def lock_inputs(lock: Lock, root: Path = ROOT) -> list[str]:
    """The requirement lines a lock is compiled from (constraints prefixed with ``-c ``)."""
    pyproject = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    if lock.build_system:
        reqs = list(pyproject["build-system"]["requires"])
    else:
        reqs = extra_requirements(pyproject, lock.extras)
    if lock.constraints:
        for line in (root / lock.constraints).read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                reqs.append(f"-c {line}")
    return reqs


def inputs_digest(lock: Lock, root: Path = ROOT) -> str:
    blob = json.dumps(
        {"python": PYTHON_VERSION, "requirements": lock_inputs(lock, root)}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def compile_lock(lock: Lock, uv: str) -> None:
    """Regenerate ``lock.path`` with uv (network access to the package index needed)."""
    reqs = [r for r in lock_inputs(lock) if not r.startswith("-c ")]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "requirements.in"
        src.write_text("\n".join(reqs) + "\n", encoding="utf-8")
        cmd = [uv, "pip", "compile", "--quiet", "--universal", "--generate-hashes"]
        cmd += ["--python-version", PYTHON_VERSION, "--no-header", "--no-annotate"]
        if lock.constraints:
            cmd += ["--constraint", str(ROOT / lock.constraints)]
        cmd += ["--output-file", str(Path(tmp) / "out.txt"), str(src)]
        # uv reads no pip.conf: the index comes from UV_INDEX_URL / UV_DEFAULT_INDEX (PyPI by
        # default) and a TLS-intercepting proxy's certificate from SSL_CERT_FILE.
        env = {**os.environ, "UV_NATIVE_TLS": os.environ.get("UV_NATIVE_TLS", "1")}
        subprocess.run(cmd, check=True, env=env)
        body = (Path(tmp) / "out.txt").read_text(encoding="utf-8")
    what = "build-system requires" if lock.build_system else "extras " + ", ".join(lock.extras)
    header = [
        f"# Locked requirements of pyproject.toml's {what}"
        + (f", constrained by {lock.constraints}" if lock.constraints else "")
        + ".",
        "# Generated by `python deploy/locks.py compile`; do not edit by hand.",
        f"{DIGEST_PREFIX}{inputs_digest(lock)}",
    ]
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    lock.path.write_text("\n".join(header) + "\n" + body, encoding="utf-8")


def pinned(text: str) -> dict[str, list[tuple[str, str, bool]]]:
    """``name -> [(version, marker, has_hash)]`` for each ``name==version`` entry of a lock."""
    entries: dict[str, list[tuple[str, str, bool]]] = {}
    joined = re.sub(r"\\\n\s*", " ", text)
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(
            r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^\s;]+)\s*(?:;\s*([^-]+?))?\s*(--hash.*)?$", line
        )
        if not m:
            raise ValueError(f"not a pinned requirement: {line[:120]}")
        entries.setdefault(_canonical(m.group(1)), []).append(
            (m.group(2), (m.group(3) or "").strip(), bool(m.group(4)))
        )
    return entries


def check_lock(lock: Lock, root: Path = ROOT) -> list[str]:
    """Problems that make ``lock`` out of step with pyproject.toml (empty when in step)."""
    from packaging.requirements import Requirement

    path = root / "deploy" / "requirements" / f"{lock.name}.txt"
    if not path.is_file():
        return [f"{path.relative_to(root)} is missing; run: python deploy/locks.py compile"]
    text = path.read_text(encoding="utf-8")
    problems = []
    recorded = next(
        (
            line[len(DIGEST_PREFIX) :].strip()
            for line in text.splitlines()
            if line.startswith(DIGEST_PREFIX)
        ),
        None,
    )
    if recorded != inputs_digest(lock, root):
        problems.append(
            f"{path.relative_to(root)} was generated from other requirements than pyproject.toml "
            f"lists now; run: python deploy/locks.py compile {lock.name}"
        )
    entries = pinned(text)
    for name, versions in entries.items():
        for version, _marker, has_hash in versions:
            if not has_hash:
                problems.append(f"{path.relative_to(root)}: {name}=={version} has no --hash")
    for raw in lock_inputs(lock, root):
        if raw.startswith("-c "):
            raw = raw[3:]
        req = Requirement(raw)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        got = entries.get(_canonical(req.name))
        if not got:
            problems.append(f"{path.relative_to(root)}: {req.name} is not locked")
            continue
        bad = [v for v, _, _ in got if not req.specifier.contains(v, prereleases=True)]
        if bad:
            problems.append(f"{path.relative_to(root)}: {req.name}=={bad[0]} violates {req}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["compile", "check"])
    parser.add_argument("names", nargs="*", help="locks to act on (default: all)")
    args = parser.parse_args(argv)
    known = {lock.name: lock for lock in LOCKS}
    unknown = [n for n in args.names if n not in known]
    if unknown:
        print(f"error: unknown lock(s) {unknown}; known: {sorted(known)}", file=sys.stderr)
        return 2
    chosen = [known[n] for n in args.names] or list(LOCKS)
    if args.command == "compile":
        uv = shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))
        if uv is None:
            print(
                f"error: uv is not installed: {sys.executable} -m pip install uv", file=sys.stderr
            )
            return 2
        for lock in chosen:
            compile_lock(lock, uv)
            print(f"wrote {lock.path.relative_to(ROOT)}")
        return 0
    problems = [p for lock in chosen for p in check_lock(lock)]
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
