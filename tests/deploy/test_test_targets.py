"""The Makefile's test targets and pyproject's pytest markers: every marker is used, and the
targets select different sets (default run, Docker tests, everything)."""

from __future__ import annotations

import re
import subprocess
import tomllib

from tests.deploy.docker_helpers import ROOT

OPTIONS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
MARKERS = {line.split(":")[0].strip() for line in OPTIONS["markers"]}


def test_every_registered_marker_marks_a_test() -> None:
    used: set[str] = set()
    for path in (ROOT / "tests").rglob("*.py"):
        used |= set(re.findall(r"pytest\.mark\.(\w+)", path.read_text(encoding="utf-8")))
    unused = MARKERS - used
    assert not unused, f"markers registered in pyproject.toml but never used: {sorted(unused)}"
    assert "--strict-markers" in OPTIONS["addopts"], "an unregistered marker must be an error"


def _pytest_line(target: str) -> str:
    dry = subprocess.run(
        ["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    lines = [line for line in dry.splitlines() if re.search(r"\bpytest\b", line)]
    assert len(lines) == 1, f"make {target} runs pytest {len(lines)} times: {lines}"
    return lines[0]


def test_targets_select_different_tests() -> None:
    default, docker, every = (_pytest_line(t) for t in ("test", "test-docker", "test-all"))
    assert re.search(r"pytest\s*$", default), "make test runs the default selection (addopts)"
    assert "-m 'not slow'" in OPTIONS["addopts"] or '-m "not slow"' in OPTIONS["addopts"]
    assert docker.rstrip().endswith("-m docker"), docker
    assert every.rstrip().endswith('-m ""'), every
    assert len({default, docker, every}) == 3


def test_make_test_starts_the_engine_first() -> None:
    dry = subprocess.run(
        ["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert dry.index("docker-engine.sh") < dry.index("pytest"), dry


def test_mutation_testing_is_its_own_target() -> None:
    """`make mutation` runs the mutation driver (one module when asked); `make test` never does."""
    for target in ("test", "test-docker", "test-all"):
        dry = subprocess.run(
            ["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
        ).stdout
        assert "mutmut" not in dry and "tests.mutation" not in dry, (target, dry)
    one = subprocess.run(
        ["make", "-n", "mutation", "MODULE=model/losses.py", "SAMPLE=5"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "-m tests.mutation --module model/losses.py --sample 5" in one, one


def test_every_mutation_target_names_existing_tests() -> None:
    from tests.mutation import TARGETS

    for module, target in TARGETS.items():
        assert (ROOT / module).is_file(), f"{module} has moved: update tests/mutation.py"
        for test in target.tests:
            assert (ROOT / test.split("::")[0]).is_file(), (module, test)


def test_every_mutation_function_pattern_matches_a_function_of_its_module() -> None:
    """A target scoped to some functions (the trainer's resume path) must name functions that
    exist: a renamed or moved one would silently drop out of the mutation run."""
    import ast
    import fnmatch

    from tests.mutation import TARGETS

    for module, target in TARGETS.items():
        tree = ast.parse((ROOT / module).read_text(encoding="utf-8"))
        names = {f"x_{n.name}" for n in tree.body if isinstance(n, ast.FunctionDef)}
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            names |= {f"xǁ{cls.name}ǁ{m.name}" for m in cls.body if isinstance(m, ast.FunctionDef)}
        for pattern in target.functions:
            assert fnmatch.filter(names, pattern), f"{module}: no function matches {pattern!r}"
