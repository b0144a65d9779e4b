"""`gecko-actors submit` leaves secret files out of the working directory it uploads (issue 11).

Ray's job client zips the working directory with our runtime_env's ``excludes`` and uploads
it to the cluster's package store, where every job can read it. These tests run the real
client code (``JobSubmissionClient.submit_job``: the package is built by Ray's own
``create_package``) against a fake dashboard on 127.0.0.1 that keeps what it is sent: no
cluster is started.
"""

from __future__ import annotations

import io
import json
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import ray
from click.testing import CliRunner

from gecko_actors.cli import DEFAULT_EXCLUDES, main

CANARY = "sk-" + "canary-5c1f0e9b2d7a4e88"  # built, so no key-shaped text is committed

FLOW = """
from gecko_actors.workflow import Workflow

workflow = Workflow("uploaded").add_node("a", str)
"""

# Where people keep secrets: each holds the canary and must stay on this machine.
SECRET_FILES = [
    ".env",
    ".env.production",
    "deploy/.env",  # at any depth
    "prod.env",
    ".envrc",
    "server.key",
    "tls/cert.pem",
    "id_rsa",
    "id_ed25519.pub",
    ".ssh/config",
    ".aws/credentials",
    ".netrc",
    ".git-credentials",
    ".npmrc",
    ".pypirc",
    "credentials.json",
    "gcp-credentials.json",
    "client_secret_1234.json",
    ".docker/config.json",
    ".streamlit/secrets.toml",
    "infra/terraform.tfstate",
]
# Ordinary files, some with names close to the secret ones: all uploaded.
ORDINARY_FILES = [
    "flow.py",
    "README.md",
    "data/input.json",
    "pkg/__init__.py",
    "pkg/keys.py",
    "notes.env.md",
    "environment.yml",
    "docs/credentials-howto.md",
]


class _Dashboard(BaseHTTPRequestHandler):
    """The few endpoints of Ray's dashboard that job submission calls."""

    def _reply(self, status: int, body: dict[str, Any] | None = None) -> None:
        data = json.dumps(body or {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def do_GET(self) -> None:
        self.server.requests.append(("GET", self.path))
        if self.path == "/api/version":
            self._reply(200, {"version": "4", "ray_version": ray.__version__, "ray_commit": "x"})
        else:  # /api/packages/...: no package exists yet
            self._reply(404)

    def do_PUT(self) -> None:
        self.server.requests.append(("PUT", self.path))
        self.server.packages[self.path] = self._body()
        self._reply(200)

    def do_POST(self) -> None:
        self.server.requests.append(("POST", self.path))
        self.server.jobs.append(self._body())
        self._reply(200, {"job_id": "raysubmit_fake", "submission_id": "raysubmit_fake"})

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def dashboard() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Dashboard)
    server.requests, server.packages, server.jobs = [], {}, []
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "project"
    for name in SECRET_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"OPENAI_API_KEY={CANARY}\n")
    for name in ORDINARY_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(FLOW if name == "flow.py" else "ordinary\n")
    monkeypatch.chdir(root)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return root


def submit(server: ThreadingHTTPServer, *args: str) -> tuple[int, str]:
    address = f"http://127.0.0.1:{server.server_address[1]}"
    result = CliRunner().invoke(
        main, ["submit", "flow.py:workflow", "--address", address, "--no-wait", *args]
    )
    return result.exit_code, result.output


def uploaded(server: ThreadingHTTPServer) -> dict[str, bytes]:
    """The files of the one package the job client uploaded."""
    (package,) = server.packages.values()
    with zipfile.ZipFile(io.BytesIO(package)) as archive:
        return {
            info.filename: archive.read(info) for info in archive.infolist() if not info.is_dir()
        }


def test_secret_files_are_not_uploaded_and_ordinary_ones_are(dashboard, project) -> None:
    code, out = submit(dashboard, "--checkpoint", str(project / "runs"))
    assert code == 0, out
    files = uploaded(dashboard)
    assert sorted(files) == sorted(ORDINARY_FILES)
    assert not [name for name, data in files.items() if CANARY.encode() in data]
    # Nor does the canary travel in the job's request (entrypoint, runtime_env, metadata).
    (job,) = dashboard.jobs
    assert CANARY not in job.decode()
    assert ".env" in json.loads(job)["runtime_env"]["excludes"]


def test_excludes_can_be_added_and_a_default_reopened(dashboard, project) -> None:
    (project / "scratch").mkdir()
    (project / "scratch" / "big.csv").write_text("1,2,3\n")
    (project / "public.pem").write_text("a public certificate\n")
    code, out = submit(dashboard, "--exclude", "scratch/", "--exclude", "!public.pem")
    assert code == 0, out
    files = uploaded(dashboard)
    assert "public.pem" in files and "tls/cert.pem" not in files
    assert not any(name.startswith("scratch/") for name in files)
    assert "flow.py" in files


@pytest.mark.parametrize("pattern", ["!", "", "data\\", "a\x00b"])
def test_an_unusable_exclude_is_refused_before_anything_is_sent(dashboard, project, pattern):
    code, out = submit(dashboard, "--exclude", pattern)
    assert code == 1 and out.startswith("error: --exclude") and out.count("\n") == 1, out
    assert dashboard.requests == []


def test_a_bad_input_file_is_refused_before_anything_is_sent(dashboard, project) -> None:
    (project / "input.json").write_text('{"score": NaN}')
    code, out = submit(dashboard, "--input", "@input.json")
    assert code == 1 and "'NaN', which is not finite" in out, out
    assert dashboard.requests == []


def test_help_says_what_is_never_uploaded() -> None:
    result = CliRunner().invoke(main, ["submit", "--help"], terminal_width=200)
    text = " ".join(result.output.split())
    assert result.exit_code == 0 and "--exclude PATTERN" in text
    for pattern in (".env", ".env.*", "*.pem", "*.key", "id_rsa*", ".ssh/", ".aws/", ".netrc"):
        assert f" {pattern} " in text, pattern
    assert set(DEFAULT_EXCLUDES) >= {".git-credentials", ".npmrc", ".pypirc", "credentials*.json"}
