"""One agent's sessions in a session store shared by URL: opened in whichever process runs the
agent (an agent host, a dedicated agent's actor), with no memory actor in between.

Every agent of a process that uses one URL shares one opened store (a SQLite file's path, a
Redis client's connection pool). Keys are ``<agent>/<session id>``, as a memory actor over
the same URL keys them, so ``Memory.spawn(sessions=url).history(agent, session)`` reads what
the agents wrote. A ``memory://`` store lives in one process: it cannot be shared by URL,
and agents given one reach it through a memory actor instead (:func:`shareable`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from gecko_actors.core.sessions import Record, SessionStore
from gecko_actors.stores.registry import parse_store_url, session_store_from_url

__all__ = ["SharedSessionStore", "agent_sessions", "opened", "session_key", "shareable"]

_OPENED: dict[str, SessionStore] = {}
_LOCK = threading.Lock()


def shareable(url: str) -> bool:
    """Whether processes that open ``url`` reach the same sessions (not ``memory://``)."""
    return parse_store_url(url, "session").scheme != "memory"


def opened(url: str) -> SessionStore:
    """The store at ``url``, opened once in this process."""
    found = _OPENED.get(url)
    if found is None:
        with _LOCK:
            found = _OPENED.get(url)
            if found is None:
                found = _OPENED[url] = session_store_from_url(url)
    return found


def session_key(agent: str, session_id: str) -> str:
    """Where agent ``agent`` keeps session ``session_id`` in a store shared by agents."""
    return f"{agent}/{session_id}"


def agent_sessions(every: list[str], agent: str) -> list[str]:
    """The session ids of ``agent`` among the keys of a shared store."""
    prefix = session_key(agent, "")
    return [key[len(prefix) :] for key in every if key.startswith(prefix)]


class SharedSessionStore:
    """The :class:`~gecko_actors.core.sessions.SessionStore` of one agent in the store at
    ``url`` (absolute, without a password: it travels inside the agent's spec). Pickles as
    the URL and the agent's name."""

    def __init__(self, url: str, agent: str) -> None:
        self.url, self.agent = url, agent

    def __repr__(self) -> str:
        return f"SharedSessionStore(agent={self.agent!r})"  # never the URL: logs show reprs

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (SharedSessionStore, (self.url, self.agent))

    async def load(self, session_id: str) -> list[Record]:
        return await opened(self.url).load(session_key(self.agent, session_id))

    async def append(
        self, session_id: str, records: Sequence[Record], *, key: str | None = None
    ) -> bool:
        """Keyed by the run id: a retried run stores its exchange once, across processes."""
        return await opened(self.url).append(session_key(self.agent, session_id), records, key=key)

    async def replace(self, session_id: str, records: Sequence[Record]) -> None:
        await opened(self.url).replace(session_key(self.agent, session_id), records)

    async def delete(self, session_id: str) -> None:
        await opened(self.url).delete(session_key(self.agent, session_id))

    async def list_sessions(self) -> list[str]:
        return agent_sessions(await opened(self.url).list_sessions(), self.agent)
