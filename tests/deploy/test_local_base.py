"""deploy/local-base.sh takes its Debian mirror from the machine's apt sources, and the
repository names no package registry's host (the machine knows which one it may reach)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.helpers import DEPLOY, ROOT, require_tool, run_tool

SCRIPT = DEPLOY / "local-base.sh"
MIRROR = "http://mirror.internal.test/debian"
SECURITY = "http://mirror.internal.test/debian-security"
# Hosts of public package registries (Debian's and PyPI's): no file of the repository may name
# one; where they are reachable from is each machine's configuration.
REGISTRY_HOSTS = re.compile(
    r"deb\.debian\.org|security\.debian\.org|ftp\.[a-z]{2}\.debian\.org|archive\.ubuntu\.com"
    r"|pypi\.org|pythonhosted\.org"
)


def print_mirror(apt_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "DEBIAN_MIRROR"}
    return subprocess.run(
        ["bash", str(SCRIPT), "--print-mirror"],
        env={**clean, "APT_DIR": str(apt_dir), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_reads_a_deb822_source_skipping_disabled_and_other_suites(tmp_path: Path) -> None:
    write(
        tmp_path / "sources.list.d" / "debian.sources",
        f"Types: deb\nURIs: http://disabled.test/debian\nSuites: bookworm\nComponents: main\n"
        f"Enabled: no\n\n"
        f"Types: deb\nURIs: {SECURITY}\nSuites: bookworm-security\nComponents: main\n\n"
        f"Types: deb deb-src\n# a comment inside the stanza\nURIs: {MIRROR}\n"
        f"Suites: bookworm bookworm-updates\nComponents: main\n",
    )
    out = print_mirror(tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == MIRROR


def test_reads_a_one_line_source_with_options(tmp_path: Path) -> None:
    write(
        tmp_path / "sources.list",
        "# deb http://commented.test/debian bookworm main\n"
        f"deb {SECURITY} bookworm-security main\n"
        f"deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] {MIRROR} bookworm main contrib\n",
    )
    out = print_mirror(tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == MIRROR


def test_no_source_for_the_suite_asks_for_debian_mirror(tmp_path: Path) -> None:
    write(tmp_path / "sources.list", f"deb {SECURITY} bookworm-security main\n")
    out = print_mirror(tmp_path)
    assert out.returncode == 1 and "set DEBIAN_MIRROR" in out.stderr
    # The setting wins over the sources.
    out = print_mirror(tmp_path, DEBIAN_MIRROR=MIRROR)
    assert out.returncode == 0 and out.stdout.strip() == MIRROR


def test_shellcheck() -> None:
    run_tool([require_tool("shellcheck"), "--severity=style", str(SCRIPT)])


def test_the_repository_names_no_package_registry_host() -> None:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout, or no git: the tracked files are unknown")
    files = run_tool([git, "-C", str(ROOT), "ls-files"]).split()
    offenders = []
    for name in files:
        path = ROOT / name
        if not path.is_file() or path.suffix in {".png", ".jpg", ".onnx", ".gz"}:
            continue
        text = path.read_text(errors="ignore")
        # This file names them in order to look for them.
        if path.resolve() == Path(__file__).resolve():
            continue
        offenders += [f"{name}: {m.group(0)}" for m in REGISTRY_HOSTS.finditer(text)]
    assert not offenders, "registry hosts named in the repository:\n" + "\n".join(offenders)
