"""The memory actor: agents' conversations and vector recall, outside the agents' processes.

An agent killed and restarted finds its conversations here; appends are keyed by run id, so a
retried run never stores its exchange twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ray

from gecko_actors.core.embedders import Embedder, HashEmbedder
from gecko_actors.core.sessions import Record
from gecko_actors.exceptions import UserError
from gecko_actors.stores.registry import vector_store_from_url
from gecko_actors.stores.sessions import session_store_from_url
from gecko_actors.stores.shared import agent_sessions, session_key
from gecko_actors.stores.vector_base import VectorStoreBase
from gecko_actors.stores.vectors import LanceVectorStore, VectorHit


def _vector_store(uri: str | None, table: str, embedder: Embedder | None) -> Any:
    """A LanceDB directory's store, or the store a vector store URL names."""
    if uri is None:
        return None
    embedder = embedder or HashEmbedder()
    if "://" in uri:
        return vector_store_from_url(uri, table=table, embedder=embedder)
    return LanceVectorStore(uri, table=table, embedder=embedder)


class MemoryActor:
    def __init__(
        self, name: str, sessions_url: str, vectors_uri: str | None, embedder: Embedder | None
    ) -> None:
        self.sessions_url = sessions_url
        self.sessions = session_store_from_url(sessions_url)
        self.vectors = _vector_store(vectors_uri, name.replace("/", "_"), embedder)

    async def load(self, agent: str, session_id: str) -> list[Record]:
        return await self.sessions.load(session_key(agent, session_id))

    async def append(
        self, agent: str, session_id: str, records: list[Record], key: str | None
    ) -> bool:
        return await self.sessions.append(session_key(agent, session_id), records, key=key)

    async def replace(self, agent: str, session_id: str, records: list[Record]) -> None:
        await self.sessions.replace(session_key(agent, session_id), records)

    async def delete(self, agent: str, session_id: str) -> None:
        await self.sessions.delete(session_key(agent, session_id))

    async def list_sessions(self, agent: str) -> list[str]:
        return agent_sessions(await self.sessions.list_sessions(), agent)

    def url(self) -> str:
        """The session store's URL (without a password: such a URL is never shipped)."""
        return self.sessions_url

    async def add(
        self, texts: list[str], metadata: list[dict[str, Any]] | None, ids: list[str] | None
    ) -> list[str]:
        return await self._vectors().add(texts, metadata, ids)

    async def search(self, query: str, k: int, where: dict[str, Any] | None) -> list[VectorHit]:
        return await self._vectors().search(query, k, where)

    async def count(self) -> int:
        return await self._vectors().count()

    def _vectors(self) -> VectorStoreBase:
        if self.vectors is None:
            raise UserError(
                "this memory has no vector store",
                hint="spawn it with Memory.spawn(name, vectors='path/to/lancedb')",
            )
        return self.vectors


class RemoteSessionStore:
    """The :class:`~gecko_actors.core.sessions.SessionStore` an agent holds: one agent's
    sessions in a memory actor. Picklable (it carries names, not handles)."""

    def __init__(self, actor_name: str, namespace: str, agent: str) -> None:
        self.actor_name = actor_name
        self.namespace = namespace
        self.agent = agent
        self._handle: Any = None

    def __repr__(self) -> str:
        return f"RemoteSessionStore({self.actor_name!r}, agent={self.agent!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handle": None}

    def _actor(self) -> Any:
        if self._handle is None:
            self._handle = ray.get_actor(self.actor_name, namespace=self.namespace)
        return self._handle

    async def load(self, session_id: str) -> list[Record]:
        return await self._actor().load.remote(self.agent, session_id)

    async def append(
        self, session_id: str, records: Sequence[Record], *, key: str | None = None
    ) -> bool:
        return await self._actor().append.remote(self.agent, session_id, list(records), key)

    async def replace(self, session_id: str, records: Sequence[Record]) -> None:
        await self._actor().replace.remote(self.agent, session_id, list(records))

    async def delete(self, session_id: str) -> None:
        await self._actor().delete.remote(self.agent, session_id)

    async def list_sessions(self) -> list[str]:
        return await self._actor().list_sessions.remote(self.agent)
