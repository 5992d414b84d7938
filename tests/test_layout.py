"""Guards for the generic top-level package names (docs/layout.md).

``model``, ``training`` and ``service`` are safe names only while (1) each belongs to the
``maskx`` distribution and to no other, (2) the code under test is the installed package and not
a same-named folder that happens to be first on ``sys.path``, (3) no plain ``import model`` binds
a name that a local variable could shadow, and (4) the wheel carries the package data that the
parts read at run time. Each test below fails when its guard is broken.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("maskx", "model", "training", "service")

# Run in a fresh interpreter so that the check sees the import system as a user's would:
# prints {package: problem} for every package that is not the installed one.
ORIGIN_CHECK = r"""
import importlib.metadata, importlib.util, json, site, sys
from pathlib import Path
from urllib.parse import unquote, urlparse

# The installed distribution's metadata, from site-packages only: a stale maskx.egg-info in the
# working folder must not vouch for the folder's own packages.
(dist,) = importlib.metadata.distributions(name="maskx", path=site.getsitepackages())
direct = json.loads(dist.read_text("direct_url.json") or "{}")
if direct.get("dir_info", {}).get("editable"):
    # An editable install serves the files of the checkout it was made from.
    allowed = {Path(unquote(urlparse(direct["url"]).path)).resolve()}
    def installed(origin):
        return any(origin.is_relative_to(root) for root in allowed)
else:
    files = {Path(dist.locate_file(f)).resolve() for f in dist.files or ()}
    def installed(origin):
        return origin in files
problems = {}
for name in sys.argv[1:]:
    spec = importlib.util.find_spec(name)
    origin = Path(spec.origin).resolve() if spec and spec.origin else None
    if origin is None or not installed(origin):
        problems[name] = str(origin)
print(json.dumps(problems))
"""


def _site_dirs() -> list[Path]:
    import site

    return [Path(p).resolve() for p in site.getsitepackages()]


def _origin_problems(*, cwd: Path, pythonpath: str | None = None) -> dict[str, str]:
    env = {"PATH": "/usr/bin:/bin"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    run = subprocess.run(
        [sys.executable, "-c", ORIGIN_CHECK, *PACKAGES],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return json.loads(run.stdout)


def test_every_top_level_name_belongs_to_the_maskx_distribution_alone() -> None:
    owners = importlib.metadata.packages_distributions()
    for name in PACKAGES:
        # A name maps to every distribution whose files provide it (an editable install may
        # list maskx twice); any other distribution here would shadow or be shadowed.
        assert set(owners.get(name, ())) == {"maskx"}, (
            f"import name {name!r} is provided by {owners.get(name)}: another installed "
            "distribution claims the same top-level name, or maskx does not ship it"
        )
    dist = importlib.metadata.distribution("maskx")
    top_level = set((dist.read_text("top_level.txt") or "").split())
    assert top_level == set(PACKAGES), f"maskx installs {sorted(top_level)}"
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = {p.split(".")[0] for p in find["packages"]["find"]["include"]}
    assert roots == set(PACKAGES), f"pyproject packages.find includes {sorted(roots)}"


def test_the_packages_under_test_are_the_installed_ones(tmp_path: Path) -> None:
    # From the repository root (where pytest runs) and from an unrelated folder alike.
    assert _origin_problems(cwd=REPO) == {}
    assert _origin_problems(cwd=tmp_path) == {}
    # And in this very process: the modules the tests import come from the same place.
    for name in PACKAGES:
        origin = Path(importlib.import_module(name).__file__).resolve()
        assert origin.parent.name == name and origin.parent.parent in (REPO, *_site_dirs())


def test_a_same_named_folder_first_on_the_path_is_caught(tmp_path: Path) -> None:
    # The guard above must see a stray folder that shadows an installed package.
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "__init__.py").write_text("SHADOW = True\n")
    assert set(_origin_problems(cwd=tmp_path, pythonpath=str(tmp_path))) == {"model"}


def _plain_imports_of_packages(path: Path) -> list[str]:
    """``import model`` / ``import model.config`` (unaliased) bind the package's name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES[1:] and alias.asname is None:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: import {alias.name}")
    return found


def test_no_module_binds_a_package_name_that_a_local_could_shadow() -> None:
    files = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(files) > 50
    offenders = [hit for f in files for hit in _plain_imports_of_packages(REPO / f)]
    assert offenders == [], "use `from model import …`:\n" + "\n".join(offenders)


def test_ruff_refuses_a_plain_import_of_a_package(tmp_path: Path) -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    if ruff is None:
        pytest.skip("ruff is not installed in this environment")

    def check(source: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [ruff, "check", "--config", str(REPO / "pyproject.toml"), "--stdin-filename",
             "training/example.py", "-"],
            input=source, capture_output=True, text=True, cwd=REPO, timeout=60,
        )  # fmt: skip

    bad = check("import model\n\nmodel = model.build_model\n")
    assert bad.returncode == 1 and "ICN001" in bad.stdout, bad.stdout + bad.stderr
    good = check("from model import build_model\n\nmodel = build_model\n")
    assert good.returncode == 0, good.stdout + good.stderr


def test_the_wheel_carries_the_package_data(tmp_path: Path) -> None:
    # Build from a copy so that the checkout gets no build/ or egg-info folders.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in PACKAGES:
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    run = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if run.returncode != 0 and "No module named" in run.stderr:
        pytest.skip(f"cannot build a wheel here: {run.stderr.strip()[-200:]}")
    assert run.returncode == 0, run.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("maskx-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    # Every tracked file of the three parts is in the wheel, modules and data alike; of
    # maskx/ the modules (its benchmark results and GPU script are used from a checkout).
    tracked = subprocess.run(
        ["git", "ls-files", "model", "training", "service", "maskx/*.py"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    missing = sorted(f for f in tracked if f not in names)
    assert missing == [], f"the wheel lacks {missing}"
    for data in ("service/static/index.html", "training/class_tables/coco_vg_synsets.json"):
        assert data in names
