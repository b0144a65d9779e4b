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

import functools
import hashlib
import json
import time
import zlib
from typing import Any

import msgpack
import ray
from ray.experimental import internal_kv

from gecko_actors.settings import load_settings

_POOL_TTL = 10.0  # seconds a pool size is trusted before the nodes are counted again


def host_name(env: str, index: int | str) -> str:
    """The actor name of host ``index`` of the pool for code environment ``env`` (with
    ``""``, the prefix every host of that pool has)."""
    return f"workflows/host/{env}/{index}"


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


def candidates(run_id: str, env: str) -> list[str]:
    """The hosts a new run may go to, the preferred one first (a stable hash of the run id
    over the pool as big as the cluster is now: a grown pool takes only new runs)."""
    size = pool_size()
    first = zlib.crc32(run_id.encode()) % size
    return [host_name(env, (first + i) % size) for i in range(size)]


def pool_size() -> int:
    """Hosts per pool: ``GECKO_HOSTS_PER_NODE`` for each alive node."""
    return _pool_size(int(time.monotonic() // _POOL_TTL))


@functools.lru_cache(maxsize=1)
def _pool_size(_period: int) -> int:
    alive = sum(1 for node in ray.nodes() if node.get("Alive"))
    return max(1, alive) * load_settings().hosts_per_node


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
