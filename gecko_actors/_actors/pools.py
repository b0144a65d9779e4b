"""Pools of host actors (many runs or agents per process): their names, their size, which
host a run or an agent goes to, and the handles this process keeps of them.

A pool is keyed by the job's code environment (its ``runtime_env`` and the code paths Ray
gives its workers), so a host that imported one job's modules never runs another job's code.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
import zlib
from typing import Any

import ray

from gecko_actors._actors.common import create
from gecko_actors.runtime import ensure_initialized
from gecko_actors.settings import load_settings

__all__ = ["alive_nodes", "candidates", "code_env", "forget", "handle", "host_name", "pool_size"]

_HANDLES: dict[tuple[str, str], Any] = {}  # (cluster, host name) -> handle, in this process
_POOL_TTL = 10.0  # seconds a pool size is trusted before the nodes are counted again


def host_name(env: str, index: int | str, kind: str = "workflows") -> str:
    """The actor name of host ``index`` of the pool of ``kind`` (``workflows`` or
    ``agents``) for code environment ``env`` (with ``""``, the prefix every host of that pool
    has)."""
    return f"{kind}/host/{env}/{index}"


def code_env() -> str:
    """A short hash of the calling job's code environment: its ``runtime_env`` and the code
    paths Ray puts on its workers' ``sys.path``. Jobs share hosts only when it is equal."""
    paths: list[str] = []
    try:  # the job config: where Ray found the driver's script (not public API; optional)
        config = ray._private.worker.global_worker.core_worker.get_job_config()
        paths = list(config.py_driver_sys_path)
    except Exception:  # pragma: no cover - the key is still the runtime_env's
        pass
    runtime_env = dict(ray.get_runtime_context().runtime_env or {})
    text = json.dumps({"env": runtime_env, "paths": paths}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def candidates(key: str, env: str, kind: str = "workflows") -> list[str]:
    """The hosts a new run (or agent) named ``key`` may go to, the preferred one first (a
    stable hash of the key over the pool as big as the cluster is now: a grown pool takes
    only new runs and agents)."""
    size = pool_size(kind)
    first = zlib.crc32(key.encode()) % size
    return [host_name(env, (first + i) % size, kind) for i in range(size)]


def pool_size(kind: str = "workflows") -> int:
    """Hosts per pool: ``GECKO_HOSTS_PER_NODE`` (workflows) or ``GECKO_AGENT_HOSTS_PER_NODE``
    (agents) for each alive node."""
    settings = load_settings()
    per_node = settings.agent_hosts_per_node if kind == "agents" else settings.hosts_per_node
    return alive_nodes() * per_node


def alive_nodes() -> int:
    """The cluster's alive nodes (at least 1), counted again every few seconds."""
    return _alive_nodes(int(time.monotonic() // _POOL_TTL))


@functools.lru_cache(maxsize=1)
def _alive_nodes(_period: int) -> int:
    ensure_initialized()
    return max(1, sum(1 for node in ray.nodes() if node.get("Alive")))


def handle(name: str, host_class: type) -> Any:
    """The handle of host ``name`` (an actor of ``host_class``), made if it does not exist
    (with ``get_if_exists`` and the same options by every driver: Ray keeps the first
    creator's)."""
    ensure_initialized()
    key = (ray.get_runtime_context().gcs_address, name)  # a new Ray in this process: new hosts
    found = _HANDLES.get(key)
    if found is None:
        found = create(
            ray.remote(host_class),
            name,
            (name,),
            get_if_exists=True,
            max_concurrency=10_000,  # every waiting call (a result, a run) holds a slot
            scheduling_strategy="SPREAD",
        )
        _HANDLES[key] = found
    return found


def forget(name: str) -> None:
    """Drop this process's handle of host ``name`` (it died for good)."""
    _HANDLES.pop((ray.get_runtime_context().gcs_address, name), None)
