"""Session stores: where conversations live between runs.

A store keeps, per session id, a list of message records (the JSON-mode dump of
:class:`~gecko_actors.core.messages.Message`). Records are plain data so that any backend can
hold them; the reader validates them and drops what is invalid (see
:meth:`TokenMemory.get_history`). Writes append: a run adds its new messages, it never
rewrites the whole conversation.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from gecko_actors.core.messages import Message

Record = dict[str, Any]

RUN_KEY = "run_id"
"""The key under which an agent's engine marks each record with the run that stored it (a
message ignores it when read back): a run retried under its id leaves its own out."""


@runtime_checkable
class SessionStore(Protocol):
    """Async storage of conversations by session id."""

    async def load(self, session_id: str) -> list[Record]:
        """All records of a session, oldest first (empty if unknown)."""
        ...

    async def append(
        self, session_id: str, records: Sequence[Record], *, key: str | None = None
    ) -> bool:
        """Add records at the end of a session. With ``key`` (a run id) the append is
        idempotent: a second append with the same key is ignored, so a retried run never
        duplicates its exchange. Returns whether the records were added."""
        ...

    async def replace(self, session_id: str, records: Sequence[Record]) -> None:
        """Set a session's records (used to compact or edit history)."""
        ...

    async def delete(self, session_id: str) -> None:
        """Forget a session (no error if unknown)."""
        ...

    async def list_sessions(self) -> list[str]:
        """The ids of every stored session."""
        ...


def to_records(messages: Sequence[Message]) -> list[Record]:
    return [m.model_dump(mode="json", exclude_none=True) for m in messages]


class InMemorySessionStore:
    """A process-local store for tests and single-process use. Thread-safe; stores copies, so
    later changes to a caller's data never alter what was saved."""

    def __init__(self) -> None:
        self._sessions: dict[str, list[Record]] = {}
        self._keys: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"InMemorySessionStore(sessions={len(self._sessions)})"

    def __getstate__(self) -> dict[str, Any]:
        return {"_sessions": self._sessions, "_keys": self._keys}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._sessions = state["_sessions"]
        self._keys = state.get("_keys", set())
        self._lock = threading.Lock()

    async def load(self, session_id: str) -> list[Record]:
        with self._lock:
            return copy.deepcopy(self._sessions.get(session_id, []))

    async def append(
        self, session_id: str, records: Sequence[Record], *, key: str | None = None
    ) -> bool:
        with self._lock:
            if key is not None:
                if (session_id, key) in self._keys:
                    return False
                self._keys.add((session_id, key))
            self._sessions.setdefault(session_id, []).extend(copy.deepcopy(list(records)))
            return True

    async def replace(self, session_id: str, records: Sequence[Record]) -> None:
        with self._lock:
            self._sessions[session_id] = copy.deepcopy(list(records))

    async def delete(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)
            self._keys = {k for k in self._keys if k[0] != session_id}

    async def list_sessions(self) -> list[str]:
        with self._lock:
            return list(self._sessions)
