"""Where agents live: one entry per agent in the cluster's key-value store (Ray's GCS). A
hosted agent's entry holds its host's name and its spec: as data where every part of it is
data (``spec.py``), and pickled where a part is live code or names code outside this package
(a host that cannot import it uses that copy). A dedicated agent's entry only reserves its
name (its actor is ``agent/<name>``), so both kinds share one namespace.

An entry is created only if absent, so of two spawns of one name exactly one makes the agent.
A host activates an agent from its entry on the first call it gets for it, and again after
Ray restarted the host, so the entry outlives the host and its node; it does not outlive the
whole cluster (unless Ray's GCS is made fault tolerant, with an external Redis), but a spec of
data is also archived in the session store (``archive.py``), from which ``Agent.get`` records
the agent again on a new cluster.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import msgpack
import ray
from ray.experimental import internal_kv

__all__ = ["Entry", "create", "find", "find_many", "names", "remove"]

_PREFIX = "agents/"


@dataclass(frozen=True)
class Entry:
    """An agent: its host's actor name, its spec as data and pickled (None, None and b""
    for a dedicated agent; either may be missing), and when it was spawned."""

    host: str | None
    data: dict[str, Any] | None
    code: bytes
    created_at: float


def _space() -> str:
    # Per Ray namespace, as actor names are (no colon: Ray joins namespace and key with one).
    return f"gecko_agents-{ray.get_runtime_context().namespace}"


def create(
    name: str, host: str | None, data: dict[str, Any] | None = None, code: bytes = b""
) -> bool:
    """Record agent ``name`` on ``host`` (None: dedicated) with its spec's ``data`` and
    pickled ``code``, unless an agent of that name exists; True if this call created it."""
    entry = msgpack.packb({"host": host, "data": data, "code": code, "created_at": time.time()})
    existed = internal_kv._internal_kv_put(
        _PREFIX + name, entry, overwrite=False, namespace=_space()
    )
    return not existed


def find(name: str) -> Entry | None:
    """The entry of agent ``name``, or None."""
    raw = internal_kv._internal_kv_get(_PREFIX + name, namespace=_space())
    return None if raw is None else _entry(raw)


def find_many(names: list[str]) -> dict[str, Entry]:
    """The entries of the agents ``names`` that exist, in one request (a host activating
    thousands of agents at once asks once, not once per agent)."""
    space = _space().encode()
    keys = [(_PREFIX + name).encode() for name in names]
    found = internal_kv.global_gcs_client.internal_kv_multi_get(keys, space)
    return {key.decode()[len(_PREFIX) :]: _entry(raw) for key, raw in found.items()}


def _entry(raw: bytes) -> Entry:
    data: dict[str, Any] = msgpack.unpackb(raw)
    return Entry(data["host"], data["data"], data["code"], data["created_at"])


def names() -> list[str]:
    """The names of every agent."""
    keys = internal_kv._internal_kv_list(_PREFIX, namespace=_space())
    return sorted(key.decode()[len(_PREFIX) :] for key in keys)


def remove(name: str) -> None:
    """Forget agent ``name`` (it was killed): its name is free again."""
    internal_kv._internal_kv_del(_PREFIX + name, namespace=_space())
