"""Hosted agents' specs kept in the session store (``GECKO_STORAGE_URL``) beside their
conversations, so that an agent outlives the whole cluster when both its spec and its store
do: ``Agent.get(name)`` on a new cluster finds the spec there, records the agent again in
the cluster's directory, and the agent answers with its conversations.

Only a spec that is all data (``spec.py``) is archived: a spec holding live code (a lambda
model, a local function tool) is kept pickled in the cluster only, and is gone with it. A
``memory://`` setting keeps nothing (it lives in one process).

Entries are msgpack records under a key no agent's sessions can have (agent names start with
a letter or a digit), per Ray namespace, as the directory's entries are.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import ray

from gecko_actors._sync import run_blocking
from gecko_actors.core.sessions import SessionStore
from gecko_actors.memory import sessions_url
from gecko_actors.stores.registry import session_store_from_url
from gecko_actors.stores.shared import shareable

__all__ = ["forget", "keep", "kept"]

_T = TypeVar("_T")


def _key(name: str) -> str:
    return f"_gecko/agents/{ray.get_runtime_context().namespace}/{name}"


def keep(name: str, data: dict[str, Any]) -> None:
    """Archive agent ``name``'s spec ``data`` (replacing an older one of that name)."""
    record = {"spec": data, "created_at": time.time()}
    _with_store(lambda store: store.replace(_key(name), [record]))


def kept(name: str) -> dict[str, Any] | None:
    """The archived spec data of agent ``name``, or None."""
    records = _with_store(lambda store: store.load(_key(name)))
    return records[-1]["spec"] if records else None


def forget(name: str) -> None:
    """Drop agent ``name``'s archived spec (it was killed)."""
    _with_store(lambda store: store.delete(_key(name)))


def _with_store(use: Callable[[SessionStore], Awaitable[_T]]) -> _T | None:
    """``use`` of the store at ``GECKO_STORAGE_URL`` (None for ``memory://``), from sync
    code in or out of an event loop. Opened per call: an asyncio client (Redis) belongs to
    the loop it was made in."""
    url = sessions_url(None)
    if not shareable(url):
        return None

    async def run() -> _T:
        store = session_store_from_url(url)
        try:
            return await use(store)
        finally:
            close = getattr(store, "aclose", None)
            if close is not None:
                await close()

    return run_blocking(run)
