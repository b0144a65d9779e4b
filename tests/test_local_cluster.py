"""``cluster/local.sh``: a real two-node Ray cluster on this machine, with token auth on.

Real processes, started and stopped by the script; the cluster is its own Ray (not the
session-scoped one other tests share), and nothing here changes this process's environment.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "cluster" / "local.sh"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(sys.platform == "win32", reason="local.sh is a bash script"),
]


@dataclass
class LocalCluster:
    state_dir: Path
    env: dict[str, str]

    def run(self, command: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(SCRIPT), command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self) -> subprocess.CompletedProcess[str]:
        """``local.sh start``, tried twice: on a loaded 2-core machine Ray's own start-up
        wait (for its raylet) can run out once; what is tested here is the cluster after."""
        started = self.run("start")
        if started.returncode != 0:
            self.run("stop")
            started = self.run("start")
        return started

    def state(self) -> dict[str, str]:
        lines = (self.state_dir / "cluster.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.state()['DASHBOARD_PORT']}"

    @property
    def token(self) -> str:
        return (self.state_dir / "auth_token").read_text().strip()


@pytest.fixture
def local_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    env = {**os.environ, "GECKO_CLUSTER_DIR": str(tmp_path / "cluster")}
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)
    # The `ray` next to this interpreter: the same Ray the test suite imports.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    cluster = LocalCluster(tmp_path / "cluster", env)
    try:
        yield cluster
    finally:
        temp_dir = cluster.state().get("TEMP_DIR") if cluster.state_dir.exists() else None
        stopped = cluster.run("stop")
        if temp_dir and not temp_dir.startswith(str(tmp_path)):
            shutil.rmtree(temp_dir, ignore_errors=True)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def http_status(url: str, *, method: str = "GET", token: str | None = None) -> int:
    body = json.dumps({"entrypoint": "echo should-not-run"}).encode() if method == "POST" else None
    request = urllib.request.Request(url, data=body, method=method)
    request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def command_lines() -> list[str]:
    if not Path("/proc/self/cmdline").exists():
        listing = subprocess.run(
            ["ps", "-ax", "-o", "pid=", "-o", "command="], capture_output=True, text=True
        )
        return listing.stdout.splitlines()
    lines = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        lines.append(f"{cmdline.parent.name} {args}")
    return lines


def processes_mentioning(needles: list[str]) -> list[str]:
    return [line for line in command_lines() if any(n in line for n in needles)]


def processes_with_marker(cluster_id: str) -> list[int]:
    marker = f"GECKO_CLUSTER_ID={cluster_id}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def test_local_cluster_runs_an_authenticated_job_on_two_nodes(local_cluster: LocalCluster):
    from ray.job_submission import JobStatus, JobSubmissionClient

    started = local_cluster.start()
    assert started.returncode == 0, started.stdout + started.stderr
    dashboard = local_cluster.dashboard
    assert f"export RAY_ADDRESS={dashboard}" in started.stdout
    assert "export RAY_AUTH_MODE=token" in started.stdout
    token = local_cluster.token
    assert token and token not in started.stdout  # the token file is named, never printed

    again = local_cluster.run("start")
    assert again.returncode == 0 and "already running" in again.stdout

    status = local_cluster.run("status")
    assert status.returncode == 0 and "running" in status.stdout and dashboard in status.stdout

    # The dashboard answers, with token authentication on.
    with urllib.request.urlopen(f"{dashboard}/api/authentication_mode", timeout=30) as answer:
        assert json.load(answer)["authentication_mode"] == "token"
    assert http_status(f"{dashboard}/api/version", token=token) == 200
    # Job submission without a token is refused, and with a wrong one.
    assert http_status(f"{dashboard}/api/jobs/", method="POST") in (401, 403)
    assert http_status(f"{dashboard}/api/jobs/", method="POST", token="0" * 64) == 403

    client = JobSubmissionClient(dashboard, headers={"Authorization": f"Bearer {token}"})
    job_id = client.submit_job(
        entrypoint='python -c "import ray; ray.init(); print(ray.cluster_resources())"'
    )
    deadline = time.monotonic() + 180
    while not (job_status := client.get_job_status(job_id)).is_terminal():
        assert time.monotonic() < deadline, f"job {job_id} still {job_status}"
        time.sleep(0.5)
    logs = client.get_job_logs(job_id)
    assert job_status == JobStatus.SUCCEEDED, logs
    cpus = re.search(r"'CPU': ([0-9.]+)", logs)
    assert cpus and float(cpus.group(1)) == 2.0, logs  # 1 CPU on the head + 1 on the worker

    cluster_id, temp_dir = local_cluster.state()["CLUSTER_ID"], local_cluster.state()["TEMP_DIR"]
    stopped = local_cluster.run("stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    state_dir = local_cluster.state_dir
    assert processes_mentioning([str(state_dir), str(state_dir.resolve()), temp_dir]) == []
    if Path("/proc/self/environ").exists():
        assert processes_with_marker(cluster_id) == []
    status = local_cluster.run("status")
    assert status.returncode == 3 and "stopped" in status.stdout
    assert local_cluster.run("stop").returncode == 0  # stopping twice is fine


def test_submit_a_workflow_as_a_job_with_s3_checkpoints(local_cluster: LocalCluster, s3) -> None:
    """The README's path end to end: start the cluster, submit an example as a Ray Job with
    checkpoints on S3 (moto), watch its coordinator through the state API, read its status
    from the checkpoint, stop the cluster."""
    import uuid

    started = local_cluster.start()
    assert started.returncode == 0, started.stdout + started.stderr
    dashboard, token = local_cluster.dashboard, local_cluster.token
    assert http_status(f"{dashboard}/api/jobs/", method="POST") in (401, 403)
    run_id, checkpoint = f"e2e-{uuid.uuid4().hex[:8]}", s3.uri()
    client_env = {
        **local_cluster.env,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(local_cluster.state_dir / "auth_token"),
    }
    cli = [sys.executable, "-m", "gecko_actors.cli"]
    submit = subprocess.Popen(
        [*cli, "submit", "durable_pipeline.py:workflow", "--input", "One. Two. Three.",
         "--run-id", run_id, "--checkpoint", checkpoint, "--address", dashboard],
        cwd=SCRIPT.parents[1] / "examples",
        env=client_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        seen = False
        while submit.poll() is None and not seen:
            seen = any(n.startswith("workflows/host/") for n in actor_names(dashboard, token))
            time.sleep(0.2)
        output, _ = submit.communicate(timeout=240)
    finally:
        submit.kill()
    assert submit.returncode == 0, output
    assert f"run: {run_id}" in output and "SUCCEEDED" in output
    assert "result:\n3 sentences" in output
    assert seen, "the workflow host never showed in the state API"

    status = subprocess.run(
        [*cli, "status", run_id, "--checkpoint", checkpoint, "--json"],
        env=client_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["status"] == "succeeded"
    assert {n: s["state"] for n, s in report["nodes"].items()} == dict.fromkeys(
        ("fetch", "clean", "words", "sentences", "report"), "done"
    )

    cluster_id = local_cluster.state()["CLUSTER_ID"]
    assert local_cluster.run("stop").returncode == 0
    if Path("/proc/self/environ").exists():
        assert processes_with_marker(cluster_id) == []  # no Ray process left behind


def actor_names(dashboard: str, token: str) -> set[str]:
    """Named actors through the state API (the dashboard's REST endpoint, authenticated)."""
    request = urllib.request.Request(f"{dashboard}/api/v0/actors?limit=1000")
    request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            rows = json.load(answer)["data"]["result"]["result"]
    except (urllib.error.URLError, KeyError, TimeoutError):
        return set()
    return {row.get("name") or "" for row in rows}
