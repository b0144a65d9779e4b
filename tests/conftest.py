"""Shared test configuration: offline by construction."""

from __future__ import annotations

import os
import uuid
from types import SimpleNamespace

import pytest
from s3util import AWS_ENV, MotoS3, free_port

# Never reach for the network: litellm's price map and tiktoken's files are local.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
# moto's dummy credentials, before Ray starts so that its workers inherit them (see s3util).
os.environ.update(AWS_ENV)
for _name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
    os.environ.pop(_name, None)
# Agent actors' default memory keeps conversations in memory during tests, not in ./gecko_runs.
os.environ.setdefault("GECKO_STORAGE_URL", "memory://")
# examples/batch_eval.py's fake-server key, read by gateway actors of the shared Ray.
os.environ.setdefault("GECKO_EXAMPLE_KEY", "offline-example")

pytest_plugins = ["gecko_actors.testing.pytest_plugin"]


@pytest.fixture(scope="session")
def s3():
    """One moto S3 server for the session; each test takes its own prefix (``s3.uri()``)."""
    server = MotoS3().start()
    yield server
    server.stop()


@pytest.fixture(params=["file", "s3"])
def checkpoint_uri(request, tmp_path) -> str:
    """Each checkpoint test runs against a local folder and against S3 (moto)."""
    if request.param == "file":
        return f"file://{tmp_path}/checkpoints"
    return request.getfixturevalue("s3").uri()


@pytest.fixture(params=["file", "s3", "memory"])
def store_uri(request, tmp_path) -> str:
    """A fresh, empty checkpoint store on each backend (``memory://`` too: it needs no Ray)."""
    if request.param == "file":
        return f"file://{tmp_path}/checkpoints"
    if request.param == "s3":
        return request.getfixturevalue("s3").uri()
    return f"memory://test-{uuid.uuid4().hex}"


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every actor test: 2 CPUs, the dashboard (``ray.util.state`` needs it)
    and the metrics endpoint on free ports, metrics reported every second."""
    import ray

    import gecko_actors

    if ray.is_initialized():
        raise RuntimeError("Ray was started outside the ray_session fixture")
    metrics_port = free_port()
    # Workers import functions defined in test modules by name, as they would a user's own
    # modules: put this folder on their path. Through the environment the local Ray inherits,
    # not a runtime_env: like a user's job without one, workers then come from Ray's pool of
    # pre-started processes.
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (tests_dir, previous) if p)
    gecko_actors.init(
        num_cpus=2,
        include_dashboard=True,
        dashboard_port=free_port(),
        _metrics_export_port=metrics_port,
        _system_config={"metrics_report_interval_ms": 1000},
    )
    yield SimpleNamespace(metrics_port=metrics_port)
    gecko_actors.shutdown()
    if previous is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = previous
