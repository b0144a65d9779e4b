"""Shared test configuration: offline by construction."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

# Never reach for the network: litellm's price map and tiktoken's files are local.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
# Agent actors' default memory keeps conversations in memory during tests, not in ./gecko_runs.
os.environ.setdefault("GECKO_STORAGE_URL", "memory://")

pytest_plugins = ["gecko_actors.testing.pytest_plugin"]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    # modules: put this folder on their path.
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    python_path = os.pathsep.join(p for p in (tests_dir, os.environ.get("PYTHONPATH")) if p)
    gecko_actors.init(
        runtime_env={"env_vars": {"PYTHONPATH": python_path}},
        num_cpus=2,
        include_dashboard=True,
        dashboard_port=free_port(),
        _metrics_export_port=metrics_port,
        _system_config={"metrics_report_interval_ms": 1000},
    )
    yield SimpleNamespace(metrics_port=metrics_port)
    gecko_actors.shutdown()
