"""``maskx fetch-model``, the init container of every replica: a real HTTP server on 127.0.0.1
serves the model; each "pod" (its own folder, as its own emptyDir) gets its own readable copy,
and a file whose sha256 differs is refused."""

from __future__ import annotations

import hashlib
import http.server
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.model_source import FetchSettings, ModelFetchError, fetch_model
from service.runtime import load_runtime


class Server:
    """A threaded HTTP server over ``root`` on loopback, counting GET requests."""

    def __init__(self, root: Path) -> None:
        self.gets = 0
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                server.gets += 1
                super().do_GET()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), partial(Handler, directory=str(root))
        )
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(model_path: Path, tmp_path: Path) -> Iterator[tuple[Server, str]]:
    """The test model on a loopback HTTP server, and its sha256."""
    root = tmp_path / "store"
    root.mkdir()
    (root / "model.onnx").write_bytes(model_path.read_bytes())
    server = Server(root)
    try:
        yield server, hashlib.sha256(model_path.read_bytes()).hexdigest()
    finally:
        server.close()


def fetch_cli(url: str, sha256: str, out: Path) -> subprocess.CompletedProcess[str]:
    """``maskx fetch-model`` as the init container runs it: settings from the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MASKX_")}
    env |= {"MASKX_MODEL_URL": url, "MASKX_MODEL_SHA256": sha256, "MASKX_MODEL_PATH": str(out)}
    code = "import sys; from maskx.cli import main; sys.exit(main(['fetch-model']))"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )


def test_each_replica_gets_its_own_readable_copy(
    served: tuple[Server, str], tmp_path: Path
) -> None:
    server, sha = served
    pods = [tmp_path / f"pod-{i}" / "models" / "model.onnx" for i in range(3)]
    with ThreadPoolExecutor(3) as pool:  # replicas start together
        runs = list(pool.map(lambda out: fetch_cli(server.url + "/model.onnx", sha, out), pods))
    for out, run in zip(pods, runs, strict=True):
        assert run.returncode == 0, run.stderr
        assert hashlib.sha256(out.read_bytes()).hexdigest() == sha
        # Readable by every user (the worker need not be the init container's user), by no one
        # writable: the worker mounts it read-only anyway.
        assert stat.S_IMODE(out.stat().st_mode) == 0o444
        assert [p.name for p in out.parent.iterdir()] == ["model.onnx"], "no partial left"
        assert load_runtime(out, ["cpu"]).info.name == "maskx-test"  # the worker can open it
    assert len({p.stat().st_ino for p in pods}) == 3, "each replica has its own copy"
    assert server.gets == 3


def test_a_file_with_another_sha256_is_refused(served: tuple[Server, str], tmp_path: Path) -> None:
    server, sha = served
    wrong = hashlib.sha256(b"another model").hexdigest()
    out = tmp_path / "models" / "model.onnx"
    run = fetch_cli(server.url + "/model.onnx", wrong, out)
    assert run.returncode == 1
    assert f"expected {wrong}" in run.stderr and sha in run.stderr and "refusing" in run.stderr
    assert not out.exists() and list(out.parent.iterdir()) == [], "nothing left for the worker"


def test_a_copy_already_there_is_kept(served: tuple[Server, str], tmp_path: Path) -> None:
    server, sha = served
    out = tmp_path / "model.onnx"
    assert fetch_model(server.url + "/model.onnx", out, sha) is True
    assert fetch_model(server.url + "/model.onnx", out, sha) is False  # a restarted init
    assert server.gets == 1
    # A wrong file at the destination is replaced, not trusted.
    out.chmod(0o644)
    out.write_bytes(b"stale")
    assert fetch_model(server.url + "/model.onnx", out, sha) is True
    assert hashlib.sha256(out.read_bytes()).hexdigest() == sha


def test_http_errors_name_the_url_and_status(served: tuple[Server, str], tmp_path: Path) -> None:
    server, sha = served
    with pytest.raises(ModelFetchError, match=r"/absent\.onnx: HTTP 404"):
        fetch_model(server.url + "/absent.onnx", tmp_path / "pod" / "m.onnx", sha)
    assert list((tmp_path / "pod").iterdir()) == []


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"model_url": "s3://bucket/model.onnx"}, "MASKX_MODEL_URL"),
        ({"model_url": "/models/model.onnx"}, "http:// or https://"),
        ({"model_sha256": "abc"}, "MASKX_MODEL_SHA256"),
    ],
)
def test_settings_name_the_variable_at_fault(env: dict[str, str], needle: str) -> None:
    good = {"model_url": "https://models.example.com/m.onnx", "model_sha256": "a" * 64}
    with pytest.raises(ValidationError, match=needle):
        FetchSettings(**(good | env))
    assert FetchSettings(**(good | {"model_sha256": "A" * 64})).model_sha256 == "a" * 64
