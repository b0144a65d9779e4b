"""Where hosted runs live: the pool of workflow hosts of a job's code, and the directory a
restarted host resumes its runs from.

Ray is the directory. Hosts are named, detached actors (``workflows/host/<env>/<i>``); a run's
host is chosen once, when the run is created, and recorded in its manifest. Which runs a host
drives, and the pickled graphs it needs for them, are kept in the cluster's key-value store
(Ray's GCS): that outlives the host, its node and (with GCS fault tolerance) a GCS restart,
so Ray's restart of a host is a resume. It does not outlive the whole cluster: then a driver
resumes runs (``wf.resume``, ``gecko-actors resume``) and supplies the graph.

A pool is keyed by the job's code environment (its ``runtime_env`` and the code paths Ray
gives its workers), so a host that imported one job's modules never runs another job's code.
"""

from __future__ import annotations

from typing import Any

import msgpack
import ray
from ray.experimental import internal_kv

from gecko_actors._actors.pools import candidates, code_env, host_name, pool_size

__all__ = [
    "candidates",
    "code_env",
    "find_host",
    "forget_run",
    "host_name",
    "host_runs",
    "load_graph",
    "pool_size",
    "record_run",
    "store_graph",
]

# --- the directory: what each host drives (in the cluster's key-value store) -----------------


def _space() -> str:
    # Per Ray namespace, as the hosts' names are: two apps never share run entries.
    # (no colon: Ray joins namespace and key with one, and splits listed keys at the first)
    return f"gecko_workflows-{ray.get_runtime_context().namespace}"


def _run_key(host: str, run_id: str) -> str:
    return f"hosts/{host}/runs/{run_id}"


def record_run(host: str, run_id: str, entry: dict[str, Any]) -> None:
    """Record that ``host`` drives ``run_id`` (``entry``: its store URI, graph key and
    target), so that the host resumes it after a restart."""
    internal_kv._internal_kv_put(
        _run_key(host, run_id), msgpack.packb(entry), overwrite=True, namespace=_space()
    )


def forget_run(host: str, run_id: str) -> None:
    """``host`` no longer drives ``run_id`` (it ended, or another host took it)."""
    internal_kv._internal_kv_del(_run_key(host, run_id), namespace=_space())


def host_runs(host: str) -> dict[str, dict[str, Any]]:
    """The runs recorded for ``host``: run id -> entry."""
    prefix = _run_key(host, "")
    keys = internal_kv._internal_kv_list(prefix, namespace=_space())
    runs = {}
    for key in keys:
        raw = internal_kv._internal_kv_get(key, namespace=_space())
        if raw is not None:
            runs[key.decode()[len(prefix) :]] = msgpack.unpackb(raw)
    return runs


def find_host(run_id: str) -> str | None:
    """The host that drives ``run_id`` now, if any host does."""
    suffix = f"/runs/{run_id}".encode()
    for key in internal_kv._internal_kv_list("hosts/", namespace=_space()):
        if key.endswith(suffix):
            return key.decode()[len("hosts/") : -len(suffix)]
    return None


def store_graph(key: str, blob: bytes) -> None:
    """Keep a pickled graph in the cluster, for a host that restarts without it."""
    internal_kv._internal_kv_put(f"graphs/{key}", blob, overwrite=False, namespace=_space())


def load_graph(key: str) -> bytes | None:
    """The pickled graph stored under ``key`` (None once the cluster that held it is gone)."""
    return internal_kv._internal_kv_get(f"graphs/{key}", namespace=_space())
