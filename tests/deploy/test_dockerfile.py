"""The Dockerfile, checked statically: hadolint, and what each target installs and runs.

The serving images must install exactly the locks of the ``serve`` / ``gpu`` extras of
pyproject.toml (no torch), on a CUDA base that matches the onnxruntime-gpu build they get, as a
non-root user, with the dependency layer before the source layer. The images are built and run
for real in test_image_*.py and test_compose_stack.py.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from maskx.cli import COMMANDS
from service.settings import Settings
from tests.deploy.docker_helpers import load_locks
from tests.deploy.helpers import DEPLOY, ROOT, require_tool, run_tool

LOCKS, extra_requirements = load_locks().LOCKS, load_locks().extra_requirements

DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT_FILE = tomllib.loads((ROOT / "pyproject.toml").read_text())
PYPROJECT = PYPROJECT_FILE["project"]
TORCH = {"torch", "torchvision"}


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, args)

    def all(self, kind: str) -> list[str]:
        return [args for ins, args in self.instructions if ins == kind]

    def index(self, kind: str, contains: str) -> int:
        for i, (ins, args) in enumerate(self.instructions):
            if ins == kind and contains in args:
                return i
        raise AssertionError(f"stage {self.name}: no {kind} containing {contains!r}")


def parse_dockerfile(text: str) -> tuple[dict[str, str], dict[str, Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for line in lines:
        ins, _, rest = line.partition(" ")
        ins = ins.upper()
        if ins == "FROM":
            m = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest, flags=re.IGNORECASE)
            assert m, f"Dockerfile: every stage needs a name: FROM {rest}"
            stage = stages[m.group(2)] = Stage(m.group(2), m.group(1))
        elif stage is None:
            assert ins == "ARG", f"Dockerfile: {ins} before the first FROM"
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            stage.instructions.append((ins, rest))
    return args, stages


ARGS, STAGES = parse_dockerfile(DOCKERFILE.read_text())


def expand(value: str) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: ARGS.get(m.group(1), m.group(0)), value)


def test_hadolint_is_clean() -> None:
    """No finding at any level (error, warning, info, style)."""
    hadolint = require_tool("hadolint")
    run_tool([hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)])


def test_parser_reads_the_stages_in_an_order_the_legacy_builder_can_target() -> None:
    assert {"serve-gpu", "serve-cpu", "trainer", "serve-gpu-build", "serve-cpu-build"} <= set(
        STAGES
    )
    order = list(STAGES)
    assert order[-1] == "serve-gpu", "`docker build .` must give the GPU worker"
    # Without BuildKit every stage before the target is built: the CPU targets come first.
    for cpu_target in ("serve-cpu", "trainer"):
        assert order.index(cpu_target) < order.index("gpu-base"), order


# stage that installs -> its lock (deploy/requirements/NAME)
INSTALLS = {
    "serve-cpu-build": "serve.txt",
    "trainer": "train.txt",
    "serve-gpu-build": "${GPU_LOCK}",
}


@pytest.mark.parametrize(("stage_name", "lock"), sorted(INSTALLS.items()))
def test_each_target_installs_its_lock_only(stage_name: str, lock: str) -> None:
    stage = STAGES[stage_name]
    runs = " && ".join(stage.all("RUN"))
    locked = re.findall(r'pip-install-locked -r "?([^\s"&]+)"?', runs)
    assert locked == ["build.txt", lock], f"stage {stage_name} installs {locked}"
    # The project itself, with no resolution of its own: the lock is the whole environment.
    assert re.search(r"pip install --no-deps --no-build-isolation \.(\s|$)", runs), runs
    assert "pip check" in runs
    plain = [r for r in re.findall(r"pip install [^&]*", runs) if "--no-deps" not in r]
    assert not plain, f"stage {stage_name} installs without the lock: {plain}"


def test_every_lock_is_copied_and_the_installer_requires_hashes() -> None:
    copied = " ".join(a for st in STAGES.values() for a in st.all("COPY"))
    for lock in LOCKS:
        assert f"deploy/requirements/{lock.name}.txt" in copied, f"no image uses {lock.name}"
    script = (DEPLOY / "pip-install-locked.sh").read_text()
    assert "--no-deps --require-hashes" in script


def test_dependency_layer_comes_before_the_source() -> None:
    for name in ("serve-gpu-build", "serve-cpu-build", "trainer"):
        stage = STAGES[name]
        deps = stage.index("RUN", "pip-install-locked")
        source = stage.index("COPY", "maskx")
        assert deps < source, f"stage {name}: source copied before the dependencies are installed"
        copied_before = " ".join(a for i, a in stage.instructions[:deps] if i == "COPY")
        assert "deploy/requirements/" in copied_before
        assert "maskx" not in copied_before.replace("maskx/", ""), copied_before


def requirement_names(reqs: list[str], extra: str = "") -> set[str]:
    return {
        canonicalize_name(r.name)
        for r in map(Requirement, reqs)
        if r.marker is None or r.marker.evaluate({"extra": extra})
    }


def test_gpu_extra_is_the_serve_extra_with_onnxruntime_gpu() -> None:
    """Both extras build on `serve-base` (listed once) and add one ONNX Runtime build each: the
    two install the same `onnxruntime` module, so the GPU environment must not get the CPU one."""
    extras = PYPROJECT["optional-dependencies"]
    assert "maskx[serve-base]" in extras["serve"] and "maskx[serve-base]" in extras["gpu"]
    serve = set(extra_requirements(PYPROJECT_FILE, ("serve",)))
    gpu = set(extra_requirements(PYPROJECT_FILE, ("gpu",)))
    assert serve - gpu == {"onnxruntime>=1.18"} and gpu - serve == {"onnxruntime-gpu>=1.18"}
    for name in ("serve", "gpu"):
        found = requirement_names(sorted(set(extra_requirements(PYPROJECT_FILE, (name,))))) & TORCH
        assert not found, f"pyproject.toml: extra {name!r} lists {sorted(found)}"


@pytest.mark.parametrize("lock", ["gpu-cuda13", "gpu-cuda12"])
def test_gpu_locks_hold_onnxruntime_gpu_and_not_the_cpu_build(lock: str) -> None:
    text = (DEPLOY / "requirements" / f"{lock}.txt").read_text()
    assert re.search(r"^onnxruntime-gpu==", text, flags=re.M), lock
    assert not re.search(r"^onnxruntime==", text, flags=re.M), f"{lock} also installs onnxruntime"
    serve = (DEPLOY / "requirements" / "serve.txt").read_text()
    assert re.search(r"^onnxruntime==", serve, flags=re.M)
    assert not re.search(r"^onnxruntime-gpu==", serve, flags=re.M)
    for t in TORCH:
        assert not re.search(rf"^{t}==", text + serve, flags=re.M), f"a serving lock has {t}"


def _closure(roots: set[str]) -> tuple[set[str], set[str]]:
    """Installed distributions reachable from ``roots`` through their requirements (with the
    extras they ask for), and names that are not installed here."""
    seen: set[str] = set()
    missing: set[str] = set()
    todo = [(name, frozenset()) for name in roots]
    visited: set[tuple[str, frozenset]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in visited:
            continue
        visited.add((name, extras))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.add(name)
            continue
        seen.add(name)
        for raw in dist.requires or []:
            req = Requirement(raw)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is not None and not any(req.marker.evaluate(env) for env in envs):
                continue
            todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return seen, missing


def test_serving_dependencies_never_pull_torch() -> None:
    """Walk the installed dependency tree of the serve extra (onnxruntime stands in for
    onnxruntime-gpu, whose requirements are the same less the CUDA wheels): no torch."""
    roots = set()
    for raw in extra_requirements(PYPROJECT_FILE, ("serve",)):
        req = Requirement(raw)
        roots.add(canonicalize_name(req.name))
    reached, missing = _closure(roots)
    assert {"onnxruntime", "fastapi", "uvicorn"} <= reached, "the serve extra is not installed"
    assert not reached & TORCH, f"the serve extra pulls {sorted(reached & TORCH)}"
    assert not missing & TORCH


def _cuda_major_of_onnxruntime_gpu(version: str) -> int:
    # PyPI's onnxruntime-gpu: CUDA 12 + cuDNN 9 for 1.19..1.26, CUDA 13 + cuDNN 9 from 1.27
    # (read from each wheel's `cuda` extra: nvidia-cuda-runtime-cu12 vs -cu13).
    v = Version(version)
    if v < Version("1.19"):
        return 11
    return 12 if v < Version("1.27") else 13


@pytest.mark.parametrize("constraints", sorted(DEPLOY.glob("constraints-cuda*.txt")))
def test_constraints_pin_onnxruntime_gpu_to_one_cuda_major(constraints: Path) -> None:
    major = int(re.search(r"cuda(\d+)", constraints.name).group(1))
    reqs = [
        Requirement(line)
        for line in constraints.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    ort = [r for r in reqs if r.name == "onnxruntime-gpu"]
    assert len(ort) == 1, f"{constraints.name}: needs one onnxruntime-gpu line"
    probe = [f"1.{minor}.{patch}" for minor in range(15, 40) for patch in (0, 1, 2)]
    allowed = [v for v in probe if ort[0].specifier.contains(v)]
    assert allowed, f"{constraints.name}: {ort[0]} allows no release"
    wrong = [v for v in allowed if _cuda_major_of_onnxruntime_gpu(v) != major]
    assert not wrong, f"{constraints.name}: {ort[0]} allows CUDA-{major}-incompatible {wrong}"


def test_gpu_base_matches_the_onnxruntime_gpu_build() -> None:
    image = ARGS["CUDA_IMAGE"]
    m = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-cudnn-runtime-ubuntu(\d+\.\d+)", image)
    assert m, f"CUDA_IMAGE={image}: want an nvidia/cuda X.Y.Z-cudnn-runtime-ubuntuNN.NN image"
    gpu_lock = ARGS["GPU_LOCK"]
    assert gpu_lock == f"gpu-cuda{m.group(1)}.txt", (
        f"CUDA_IMAGE is CUDA {m.group(1)} but GPU_LOCK={gpu_lock}"
    )
    # Each GPU lock is compiled under the constraints of its CUDA major.
    for lock in LOCKS:
        if lock.name.startswith("gpu-cuda"):
            assert lock.constraints == f"deploy/constraints-{lock.name.removeprefix('gpu-')}.txt"
    assert STAGES["gpu-base"].base == "${CUDA_IMAGE}"
    # The documented CUDA 12 alternative names a CUDA 12 image with the CUDA 12 lock.
    text = DOCKERFILE.read_text()
    alt = re.search(r"CUDA_IMAGE=nvidia/cuda:(\d+)\.\S+ GPU_LOCK=gpu-cuda(\d+)", text)
    assert alt and alt.group(1) == alt.group(2) == "12", "Dockerfile: CUDA 12 build hint"


@pytest.mark.parametrize("name", ["serve-gpu", "serve-cpu", "trainer"])
def test_runs_as_a_numeric_non_root_user(name: str) -> None:
    users = STAGES[name].all("USER")
    assert users, f"stage {name} runs as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"stage {name}: USER {users[-1]}"


@pytest.mark.parametrize(
    ("name", "build"), [("serve-gpu", "serve-gpu-build"), ("serve-cpu", "serve-cpu-build")]
)
def test_serving_target(name: str, build: str) -> None:
    stage = STAGES[name]
    assert f"--from={build} /opt/venv /opt/venv" in stage.all("COPY"), stage.all("COPY")
    assert "pip install" not in " ".join(stage.all("RUN")), "serving stage installs packages"
    settings = Settings()
    assert stage.all("EXPOSE") == [str(settings.port)]
    health = stage.all("HEALTHCHECK")
    assert len(health) == 1 and "/readyz" in health[0] and "MASKX_PORT" in health[0]
    # JSON-form ENTRYPOINT: signals reach the worker, which drains on SIGTERM.
    entry = json.loads(stage.all("ENTRYPOINT")[-1])
    assert entry == ["maskx", "serve"] and "serve" in COMMANDS
    assert stage.all("VOLUME") == ['["/models"]']
    env = dict(
        kv.split("=", 1) for line in stage.all("ENV") for kv in shlex.split(line) if "=" in kv
    )
    maskx_env = {
        k.removeprefix("MASKX_").lower(): v for k, v in env.items() if k.startswith("MASKX_")
    }
    unknown = set(maskx_env) - set(Settings.model_fields)
    assert not unknown, f"stage {name}: ENV sets unknown settings {sorted(unknown)}"
    parsed = Settings(**maskx_env)
    assert str(parsed.model_path).startswith("/models/")
    assert parsed.port == settings.port
    # The model is baked from MODEL_DIR (a placeholder folder by default) into /models.
    assert "${MODEL_DIR}/ /models/" in stage.all("COPY")
    assert (ROOT / expand("${MODEL_DIR}")).is_dir()


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; '!' re-includes; a pattern matching a
    parent folder matches what is inside it."""
    from fnmatch import fnmatch

    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        if any(fnmatch(c, pat) or fnmatch(c, pat.replace("**/", "")) for c in candidates):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_build_copies() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = set()
    for stage in STAGES.values():
        for args in stage.all("COPY"):
            if args.startswith("--from"):
                continue
            copied.update(
                expand(a).rstrip("/") for a in args.split()[:-1] if not a.startswith("--")
            )
    assert {"pyproject.toml", "maskx", "deploy/requirements/serve.txt"} <= copied
    # A missing source fails `docker build` at that COPY.
    absent = sorted(p for p in copied if not (ROOT / p).exists())
    assert not absent, f"the Dockerfile copies files that are not in the repository: {absent}"
    kept_out = sorted(p for p in copied if _dockerignored(p, patterns))
    assert not kept_out, f".dockerignore excludes files the Dockerfile copies: {kept_out}"
    for heavy in (".venv", ".git", "tests", "runs", "artifacts/demo/checkpoint.pt"):
        assert _dockerignored(heavy, patterns), f".dockerignore lets {heavy} into the context"
    assert not _dockerignored("artifacts/demo/model.onnx", patterns), "models must stay bakeable"
