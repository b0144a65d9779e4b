"""``Memory``: the typed handle to a memory actor (``memory/<name>``)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import ray

from gecko_actors._actors.common import check_name, create, known, lookup
from gecko_actors._actors.memory import MemoryActor, RemoteSessionStore
from gecko_actors._redact import mask_url, redact, url_holds_secret
from gecko_actors.core.embedders import Embedder, LiteLLMEmbedder
from gecko_actors.core.messages import Message
from gecko_actors.core.sessions import SessionStore
from gecko_actors.exceptions import UserError
from gecko_actors.gateway import embedding_gateway
from gecko_actors.runtime import namespace
from gecko_actors.settings import load_settings
from gecko_actors.stores.redis_sessions import PASSWORD_ENV
from gecko_actors.stores.registry import known_schemes, parse_store_url
from gecko_actors.stores.sessions import session_store_from_url
from gecko_actors.stores.shared import SharedSessionStore, shareable
from gecko_actors.stores.vectors import VectorHit


@functools.cache
def _remote_memory() -> Any:
    """The memory actor's class for Ray, made once per process (it costs a millisecond)."""
    return ray.remote(MemoryActor)


def sessions_url(given: str | None) -> str:
    """The session store URL agents and memory actors are given: ``given`` or the
    ``GECKO_STORAGE_URL`` setting, checked, with a relative ``sqlite:///`` path resolved
    here, on the driver (an actor's working directory may differ)."""
    url = given or load_settings().storage_url
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        url = prefix + str(Path(url[len(prefix) :]).resolve())
    _check(url, "sessions=" if given else "the GECKO_STORAGE_URL setting")
    return url


def vectors_location(given: str | Path | None) -> str | None:
    """A memory actor's vector store: a LanceDB directory or a vector store URL, checked
    (no credential in it: it becomes an actor argument) with a relative local path resolved
    here, on the driver (an actor's working directory may differ)."""
    if given is None or (isinstance(given, str) and "://" not in given):
        return None if given is None else str(Path(given).resolve())
    if not isinstance(given, str):
        return str(Path(given).resolve())
    parts = parse_store_url(given, "vector")
    if parts.scheme not in known_schemes("vector"):
        known = ", ".join(f"{s}://" for s in known_schemes("vector"))
        raise parts.error(f"unknown scheme {parts.scheme!r} (known schemes: {known})")
    if url_holds_secret(given):
        raise UserError(
            f"the vector store URL {redact(mask_url(given))!r} holds a password or token: on "
            "Ray it would be copied into the memory actor's arguments",
            hint="remove it from the URL and set the store's environment variable (e.g. "
            "GECKO_POSTGRES_PASSWORD, QDRANT_API_KEY) where the memory actor runs",
        )
    # A local path: 'lancedb://<path>', or '<scheme>:///<path>' (three slashes, as in sqlite).
    rest, question, query = parts.rest.partition("?")
    if parts.scheme == "lancedb":
        lead, path = "", rest
    elif rest.startswith("/") and not rest.startswith("//"):
        lead, path = "/", rest[1:]
    else:
        return given  # a server
    if not path or "://" in path or Path(path).is_absolute():
        return given
    return f"{parts.scheme}://{lead}{Path(path).resolve()}{question}{query}"


@functools.lru_cache(maxsize=64)
def _check(url: str, source: str) -> None:
    """Validate ``url`` (a clear error before any actor exists), and refuse one holding a
    credential: it is copied into the arguments of the actors that open it (a memory actor,
    an agent's spec), which Ray keeps in its actor table and key-value store. ``source`` says
    where the URL came from. Once per URL per process: agents are spawned by the thousand."""
    session_store_from_url(url)
    if not url_holds_secret(url):
        return
    shown = redact(mask_url(url))  # never the password, nor anything shaped like a key
    raise UserError(
        f"the session store URL {shown!r} ({source}) holds a password or token: on Ray it "
        "would be copied into the arguments of the actors that open it, which Ray keeps in "
        "its actor table",
        hint=f"remove it from the URL and set {PASSWORD_ENV} in the environment where the "
        "agents and memory actors run (every node's, on a cluster): a redis:// store reads "
        "its password there; a store of another scheme, from its own environment variable",
        url=shown,
    )


class Memory:
    """Conversations (a session store) and vector recall (LanceDB) in one actor, shared by
    agents and surviving their restarts.

    Agents given a memory over SQLite or Redis open its store by URL in their own process
    (no call through this actor); over ``memory://`` (one process's) they reach it here.
    Either way :meth:`history` and :meth:`sessions` read what they stored.

    Args of :meth:`spawn`:
        sessions: ``"sqlite:///path.db"``, ``"redis://host:6379/0"`` or ``"memory://"``
            (default ``GECKO_STORAGE_URL``). The URL is the memory actor's and its agents'
            argument, so one holding a password is refused (a ``UserError``): a Redis
            password goes in ``GECKO_REDIS_PASSWORD`` where the actors run.
        vectors: where :meth:`add` / :meth:`search` keep vectors (optional): a LanceDB
            directory, or a vector store URL (``pgvector://``, ``qdrant://``, ``chroma://``,
            ``milvus://``, ``lancedb://`` or a registered scheme; a relative local path in it
            is resolved here, on the driver). The collection is named after the memory.
        embedder: how texts become vectors (default: the offline ``HashEmbedder``; a
            ``LiteLLMEmbedder`` for real models, keyed by ``api_key_env``).

    Example:
        >>> memory = Memory.spawn("team", vectors="gecko_runs/vectors")
        >>> memory.add(["Paris is the capital of France."])
        >>> agent = Agent.spawn("guide", model=model, memory=memory)
    """

    def __init__(self, name: str, handle: Any, url: str | None = None) -> None:
        self.name = name
        self._handle = handle
        self._url = url  # its session store's, asked of the actor when first needed

    def __repr__(self) -> str:
        return f"Memory({self.name!r})"

    def __reduce__(self):
        return (Memory, (self.name, self._handle, self._url))

    @classmethod
    def spawn(
        cls,
        name: str = "default",
        *,
        sessions: str | None = None,
        vectors: str | Path | None = None,
        embedder: Embedder | None = None,
        get_if_exists: bool = True,
        **actor_options: Any,
    ) -> Memory:
        actor_name = check_name("memory", name)
        url = sessions_url(sessions)
        vectors_uri = vectors_location(vectors)
        if isinstance(embedder, LiteLLMEmbedder):
            embedder = embedding_gateway(embedder)  # litellm stays out of the memory actor
        handle = create(
            _remote_memory(),
            actor_name,
            (name, url, vectors_uri, embedder),
            get_if_exists=get_if_exists,
            max_concurrency=1000,
            **actor_options,
        )
        return cls(name, handle)

    @classmethod
    def get(cls, name: str) -> Memory:
        handle = lookup(check_name("memory", name))
        if handle is None:
            raise UserError(
                f"no memory named {name!r}; known: {known('memory')}",
                hint="spawn it with Memory.spawn(name)",
            )
        return cls(name, handle)

    def session_store(self, agent: str) -> SessionStore:
        """The session store an agent named ``agent`` uses: the memory's store opened by URL
        in the agent's own process (SQLite, Redis: no call through this actor), or this
        actor's (``memory://``, which lives in the actor's process)."""
        if self._url is None:
            self._url = ray.get(self._handle.url.remote())
        if shareable(self._url):
            return SharedSessionStore(self._url, agent)
        return RemoteSessionStore(f"memory/{self.name}", namespace(), agent)

    def history(self, agent: str, session_id: str) -> list[Message]:
        """A session's stored messages, oldest first."""
        records = ray.get(self._handle.load.remote(agent, session_id))
        return [Message.model_validate(r) for r in records]

    def sessions(self, agent: str) -> list[str]:
        return ray.get(self._handle.list_sessions.remote(agent))

    def add(
        self,
        texts: list[str],
        metadata: list[dict[str, Any]] | None = None,
        ids: list[str] | None = None,
    ) -> list[str]:
        """Store texts for recall (same text, same id: no duplicates); returns their ids."""
        return ray.get(self._handle.add.remote(list(texts), metadata, ids))

    async def aadd(
        self,
        texts: list[str],
        metadata: list[dict[str, Any]] | None = None,
        ids: list[str] | None = None,
    ) -> list[str]:
        return await self._handle.add.remote(list(texts), metadata, ids)

    def search(
        self, query: str, k: int = 5, where: dict[str, Any] | None = None
    ) -> list[VectorHit]:
        """The ``k`` stored texts most similar to ``query`` (cosine score, higher is closer)."""
        return ray.get(self._handle.search.remote(query, k, where))

    async def asearch(
        self, query: str, k: int = 5, where: dict[str, Any] | None = None
    ) -> list[VectorHit]:
        return await self._handle.search.remote(query, k, where)

    def kill(self) -> None:
        ray.kill(self._handle, no_restart=True)
