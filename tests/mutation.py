"""Mutation testing of the modules where a silent error costs users most (``make mutation``).

mutmut (3.x) rewrites every function of a module into a set of mutants (a changed operator,
constant, argument, return value) and runs, for each mutant, the tests that call that function;
a mutant that no test notices is a change of behaviour the suite would let through.

Each module has its own test selection (:data:`TARGETS`) and its own workspace under
``artifacts/mutation/<module>/`` (links to the checkout's packages and tests beside a
``pyproject.toml`` that holds the module's mutmut settings), so one module can be run, re-run and
read without touching another's results::

    python -m tests.mutation                                  # every module
    python -m tests.mutation --module service/postprocess.py  # one module
    python -m tests.mutation --module model/losses.py --sample 40
    python -m tests.mutation --source /tmp/other-checkout     # another checkout's code and tests

``--sample N`` runs N mutants spread evenly over the module's sorted mutant names (the same N
always picks the same mutants); without it each module runs its own default count
(``Target.sample``), and ``--sample all`` runs every mutant (hours). The summary line
of each module (killed / survived / timeout / no tests, and the score) is printed and written to
``artifacts/mutation/<module>/score.json``; ``--survivors`` prints the diff of each survivor.

Not part of ``make test``: the default run takes tens of minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# What a workspace links to: the importable packages (mutmut copies them into mutants/ and
# mutates only the target file) and what the tests read from the checkout.
PACKAGES = ("model", "training", "service", "maskx")
ALSO = ("tests", "configs", "docs", "deploy", "README.md", "Makefile", "Dockerfile")


@dataclass(frozen=True)
class Target:
    """One module under mutation and the tests that judge it.

    ``tests``: pytest paths (files or node ids) of the default suite that cover the module; mutmut
    records which of them call each function and runs only those for that function's mutants.
    ``functions``: fnmatch patterns of mangled function names (``x_name`` for a function,
    ``xǁClassǁmethod`` for a method) when only part of the file is in scope; empty for all.
    """

    tests: tuple[str, ...]
    functions: tuple[str, ...] = field(default_factory=tuple)
    # Mutants run by default (spread evenly): sized so that every module together stays well
    # under an hour on two cores; an export mutant costs a minute, a service one seconds.
    sample: int = 40


TARGETS: dict[str, Target] = {
    "service/postprocess.py": Target(
        tests=(
            "tests/service/test_postprocess.py",
            "tests/service/test_detectron_paste.py",
            "tests/service/test_detectron_rules.py",
            "tests/service/test_bounds.py::test_mask_area_over_the_cap_is_refused_before_any_paste",
            "tests/service/test_bounds.py::test_groups_and_bands_change_no_mask",
        ),
    ),
    "service/batcher.py": Target(tests=("tests/service/test_batcher.py",)),
    "training/export/adapter.py": Target(
        tests=(
            "tests/training/export/test_export.py",
            "tests/training/export/test_padded_batch.py",
            "tests/training/export/test_export_predictors.py",
        ),
        sample=10,
    ),
    "model/postprocess.py": Target(
        tests=(
            "tests/model/test_detectron_conventions.py",
            "tests/model/test_parity.py",
        ),
    ),
    "model/predictors.py": Target(
        tests=(
            "tests/model/test_init.py",
            "tests/model/test_mask_branch.py",
            "tests/model/test_mask_heads.py",
        ),
    ),
    "model/losses.py": Target(
        tests=(
            "tests/model/test_mask_branch.py",
            "tests/model/test_training_behaviour.py",
        ),
    ),
    # The checkpoint file format, loading and initialisation. The code may move into a typed
    # checkpoint object; keep this key pointing at the file that holds it.
    "training/checkpoint.py": Target(
        tests=(
            "tests/training/test_checkpoint_loading.py",
            "tests/training/test_resume_guard.py",
            "tests/training/test_fileio.py",
            "tests/training/test_stage_init.py",
        ),
    ),
    # Only the resume path of the trainer: saving, the same-run check, restoring, skipping the
    # batches already seen and the RNG states.
    "training/trainer.py": Target(
        tests=(
            "tests/training/test_trainer.py",
            "tests/training/test_resume_guard.py",
            "tests/training/test_resume_path.py",
        ),
        functions=(
            "xǁTrainerǁsave",
            "xǁTrainerǁ_check_same_run",
            "xǁTrainerǁ_resume_from",
            "xǁTrainerǁ_gather_rng",
            "xǁ_SkipBatchesǁ*",
            "x__epoch_batches",
        ),
        sample=15,
    ),
}

STATUSES = ("killed", "survived", "timeout", "no tests", "suspicious", "segfault", "skipped")


def slug(module: str) -> str:
    return module.removesuffix(".py").replace("/", ".")


def mutant_names(folder: Path, module: str, target: Target) -> list[str]:
    """Every mutant mutmut makes of ``module`` in workspace ``folder``, in scope, sorted."""
    import fnmatch

    from mutmut.mutation.file_mutation import mutate_file_contents

    code = (folder / module).read_text(encoding="utf-8")
    here = Path.cwd()
    os.chdir(folder)  # mutmut reads its settings from the workspace's pyproject.toml
    try:
        mangled = mutate_file_contents(module, code).mutant_names
    finally:
        os.chdir(here)
    names = []
    for name in mangled:
        function = name.partition("__mutmut_")[0]
        if target.functions and not any(fnmatch.fnmatch(function, p) for p in target.functions):
            continue
        names.append(f"{slug(module)}.{name}")
    return sorted(names, key=_natural)


def _natural(name: str) -> tuple[str, int]:
    stem, _, number = name.rpartition("__mutmut_")
    return stem, int(number)


def spread(names: list[str], n: int | None) -> list[str]:
    """``n`` names spread evenly over ``names`` (all of them when ``n`` is None or larger)."""
    if n is None or n >= len(names):
        return names
    return [names[(i * len(names)) // n] for i in range(n)]


def workspace(source: Path, module: str, target: Target, out: Path) -> tuple[Path, list[str]]:
    """Create ``out`` (links into ``source`` and a pyproject with the module's mutmut settings).

    Returns the folder and the test paths that exist in ``source`` (an older checkout may lack
    some; they are reported, not silently dropped).
    """
    tests = [t for t in target.tests if (source / t.split("::")[0]).exists()]
    missing = sorted(set(target.tests) - set(tests))
    if missing:
        print(f"  {module}: test files not in {source}: {', '.join(missing)}")
    if not tests:
        raise SystemExit(f"{module}: none of its tests exist in {source}")
    out.mkdir(parents=True, exist_ok=True)
    for name in (*PACKAGES, *ALSO):
        link = out / name
        if link.is_symlink() or link.exists():
            if link.is_symlink():
                link.unlink()
            else:
                shutil.rmtree(link)
        if (source / name).exists():
            link.symlink_to(source / name)
    settings = {
        "source_paths": list(PACKAGES),
        "only_mutate": [module],
        # mutmut copies tests/ into mutants/ itself; the rest is what the tests read beside it.
        "also_copy": [name for name in ALSO if name != "tests" and (source / name).exists()],
        "pytest_add_cli_args_test_selection": tests,
        "pytest_add_cli_args": ["-p", "no:cacheprovider"],
        # Torch is not fork-safe once its thread pools have run: fork each mutant's process from
        # a server that has only imported and collected the tests.
        "process_isolation": "forkserver",
        "use_git_change_detection": False,
    }
    pyproject = (source / "pyproject.toml").read_text(encoding="utf-8")
    pyproject = re.sub(r"(?ms)^\[tool\.mutmut\].*?(?=^\[|\Z)", "", pyproject)
    lines = ["", "[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    (out / "pyproject.toml").write_text(pyproject + "\n".join(lines) + "\n", encoding="utf-8")
    return out, tests


def results(folder: Path, names: list[str]) -> dict[str, str]:
    """Status of each of ``names`` as mutmut recorded it (``mutmut results --all``)."""
    listing = subprocess.run(
        [_mutmut(), "results", "--all", "true"], cwd=folder, capture_output=True, text=True,
        check=True,
    ).stdout  # fmt: skip
    status = {}
    for line in listing.splitlines():
        name, sep, state = line.strip().rpartition(": ")
        if sep:
            status[name] = state
    return {n: status.get(n, "not checked") for n in names}


def _mutmut() -> str:
    return str(Path(sys.executable).with_name("mutmut"))


def score(status: dict[str, str]) -> dict[str, object]:
    """Counts per status and the score: killed (timeouts included) over mutants run with tests."""
    counts = {s: sum(1 for v in status.values() if v == s) for s in STATUSES}
    judged = counts["killed"] + counts["timeout"] + counts["survived"] + counts["suspicious"]
    killed = counts["killed"] + counts["timeout"]
    return {
        "mutants": len(status),
        **counts,
        "score": round(killed / judged, 3) if judged else None,
        "survivors": sorted((n for n, v in status.items() if v == "survived"), key=_natural),
    }


def run_module(
    source: Path, module: str, sample: int | str | None, jobs: int, out_root: Path
) -> dict:
    """Run ``module``'s mutants (``sample``: a count, ``"all"``, or None for its default)."""
    target = TARGETS[module]
    sample = None if sample == "all" else target.sample if sample is None else int(sample)
    folder, tests = workspace(source, module, target, out_root / slug(module))
    everything = mutant_names(folder, module, target)
    chosen = spread(everything, sample)
    print(f"== {module}: {len(chosen)} of {len(everything)} mutants; tests: {' '.join(tests)}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASKX_MUTATION": "1"}
    # Names on the command line are always re-run, so results are never stale. mutmut's own
    # output (its progress, and why it stopped if it did) goes to mutmut.log.
    with (folder / "mutmut.log").open("w") as log:
        done = subprocess.run(
            [_mutmut(), "run", "--max-children", str(jobs), *chosen], cwd=folder, env=env,
            check=False, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    if done.returncode != 0:
        tail = (folder / "mutmut.log").read_text(errors="replace")[-3000:]
        print(f"{module}: mutmut exited {done.returncode}; end of {folder}/mutmut.log:\n{tail}")
    summary = {
        "module": module,
        "source": str(source),
        "mutmut_exit_code": done.returncode,
        "tests": tests,
        "sampled": sample is not None and sample < len(everything),
        "mutants_in_module": len(everything),
        **score(results(folder, chosen)),
    }
    (folder / "score.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(_line(summary))
    return summary


def _line(s: dict) -> str:
    pct = "n/a" if s["score"] is None else f"{100 * s['score']:.0f} %"
    return (
        f"{s['module']}: {pct} ({s['killed']} killed, {s['timeout']} timeout, "
        f"{s['survived']} survived, {s['no tests']} without tests, of {s['mutants']}"
        f"{' sampled from ' + str(s['mutants_in_module']) if s['sampled'] else ''})"
    )


def _sample(text: str) -> int | str:
    if text == "all":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive count or 'all', got {text!r}")
    return int(text)


def show_survivors(folder: Path, names: list[str]) -> None:
    for name in names:
        subprocess.run([_mutmut(), "show", name], cwd=folder, check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__)
    parser.add_argument("--module", choices=sorted(TARGETS), action="append",
                        help="a module to mutate (repeatable); all of them by default")  # fmt: skip
    parser.add_argument("--sample", type=_sample, default=None,
                        help="mutants per module, spread evenly (deterministic), or 'all'; "
                        "default: each module's own (TARGETS)")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=2, help="mutants run at once")
    parser.add_argument("--source", type=Path, default=REPO,
                        help="checkout whose code and tests are used (default: this one)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None,
                        help="workspace root (default: artifacts/mutation under this checkout)")  # fmt: skip
    parser.add_argument("--survivors", action="store_true", help="print each survivor's diff")
    args = parser.parse_args(argv)
    source = args.source.resolve()
    out_root = (args.out or REPO / "artifacts" / "mutation").resolve()
    if args.source.resolve() != REPO and args.out is None:
        out_root = out_root / "other"
    summaries = []
    for module in args.module or list(TARGETS):
        if not (source / module).exists():
            print(f"== {module}: not in {source}, skipped")
            continue
        summary = run_module(source, module, args.sample, args.jobs, out_root)
        summaries.append(summary)
        if args.survivors:
            show_survivors(out_root / slug(module), summary["survivors"])
    print()
    for s in summaries:
        print(_line(s))
    return 1 if any(s["mutmut_exit_code"] for s in summaries) else 0


if __name__ == "__main__":
    raise SystemExit(main())
