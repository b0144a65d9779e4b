"""QdrantVectorStore: texts, metadata and their embeddings in a Qdrant collection.

One collection per table, created on the first add with the vectors' size and cosine distance.
Qdrant wants UUIDs or integers as point ids, so each of our string ids becomes a UUID derived
from it (uuid5); the original id, the text and the metadata (JSON) travel in the payload.

``qdrant:///<path>`` is qdrant-client's embedded local mode (a folder, no server). Qdrant lets
one client at a time hold a folder, and that client is not thread safe: the stores of a process
on one folder share one client, used by one thread at a time. ``qdrant://host[:port]`` is a
server, whose API key is read from ``QDRANT_API_KEY`` where the store connects (never from the
URL, the store's arguments or its pickle).

Needs ``qdrant-client``: ``pip install "gecko-actors[qdrant]"``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from gecko_actors._redact import register_secret
from gecko_actors.core.embedders import Embedder
from gecko_actors.exceptions import GeckoError, UserError
from gecko_actors.stores.registry import parse_store_url
from gecko_actors.stores.vector_base import Candidate, Rows, VectorStoreBase

__all__ = ["API_KEY_ENV", "QdrantVectorStore"]

API_KEY_ENV = "QDRANT_API_KEY"
"""Where a Qdrant server's API key is read from, in the process that connects (the name
Qdrant's own tools use)."""

_T = TypeVar("_T")
_DEFAULT_PORT = 6333
_DEFAULT_TIMEOUT_S = 30
_BATCH = 256  # points per upsert request: keeps a big add under the server's request limit
_PAGE = 1024  # points per scroll page
# Any fixed namespace: what matters is that an id maps to the same UUID in every process.
_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "gecko-actors:qdrant")
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


class _Shared:
    """One local-mode client, the lock that lets one thread at a time use it, its users."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.lock = threading.Lock()
        self.users = 0


# Local clients by resolved folder: Qdrant refuses a second client on a folder in use.
_LOCAL: dict[str, _Shared] = {}
_LOCAL_LOCK = threading.Lock()


@atexit.register
def _close_all() -> None:
    # Before the interpreter tears modules down: qdrant-client's own __del__ would then fail.
    with _LOCAL_LOCK:
        for shared in _LOCAL.values():
            with contextlib.suppress(Exception):
                shared.client.close()
        _LOCAL.clear()


class QdrantVectorStore(VectorStoreBase):
    """A vector store on Qdrant (an embedded local folder or a server), exact cosine search.

    Args:
        path: the folder of an embedded store (created if missing; made absolute).
        host: a server's host, instead of ``path``.
        port: the server's REST port.
        https: talk TLS to the server.
        grpc: prefer gRPC (port 6334) over REST.
        timeout: seconds a server request may take.
        table: the collection; one collection holds vectors of one dimension.
        embedder: what turns texts into vectors; :class:`HashEmbedder` by default.

    The store pickles as its settings (Ray ships it to actors) and connects lazily where it
    lands; a local folder can be open in one process at a time. Search mode: ``"vector"``
    only (Qdrant's text search needs sparse-vector models, which are downloaded). Failures
    raise :class:`StorageError`; bad input :class:`UserError`.
    """

    modes: ClassVar[frozenset[str]] = frozenset({"vector"})

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        host: str | None = None,
        port: int = _DEFAULT_PORT,
        https: bool = False,
        grpc: bool = False,
        timeout: int = _DEFAULT_TIMEOUT_S,
        table: str = "memory",
        embedder: Embedder | None = None,
    ) -> None:
        if (path is None) == (host is None) or not (path or host):
            raise UserError(
                "QdrantVectorStore needs either a folder (path=...) or a server (host=...)",
                hint="e.g. QdrantVectorStore('vectors') or QdrantVectorStore(host='localhost')",
            )
        self.path = str(Path(path).expanduser().resolve()) if path is not None else None
        self.host, self.port, self.https, self.grpc, self.timeout = host, port, https, grpc, timeout
        self._init_base(table, embedder)
        self._reset()

    @classmethod
    def from_url(
        cls, url: str, *, embedder: Embedder | None = None, table: str = "memory"
    ) -> QdrantVectorStore:
        """Build a store from ``qdrant:///<path>`` (``qdrant:///data/q`` is relative,
        ``qdrant:////var/data/q`` absolute) or
        ``qdrant://host[:port][?https=true&grpc=true&timeout=<seconds>]``; a malformed URL
        is a :class:`UserError` saying which part is wrong."""
        parts = parse_store_url(url, "vector")
        if parts.rest.startswith("/"):  # no host: a local folder, as in sqlite:/// URLs
            path, question, _ = parts.rest[1:].partition("?")
            if question:
                raise parts.error("a local qdrant:/// folder takes no query parameters")
            if not path:
                raise parts.error("it names no folder", hint="write e.g. qdrant:///vectors")
            return cls(path, table=table, embedder=embedder)
        if parts.password is not None:
            raise parts.error(
                "it has a password, but the API key is never taken from the URL",
                hint=f"remove it and set {API_KEY_ENV} in the environment where the store runs",
            )
        if parts.username is not None:
            raise parts.error("it has a user name ('...@'), which Qdrant does not use")
        if not parts.host:
            raise parts.error("the host is missing", hint="write e.g. qdrant://localhost:6333")
        if parts.path not in ("", "/"):
            raise parts.error(f"unexpected path {parts.path[:40]!r} after the host")
        parts.check_query(("https", "grpc", "timeout"))
        flags: dict[str, bool] = {}
        for name in ("https", "grpc"):
            value = parts.query.get(name, "false").lower()
            if value not in _BOOLEANS:
                raise parts.error(f"{name}={value[:20]!r} is not true or false")
            flags[name] = _BOOLEANS[value]
        return cls(
            host=parts.host,
            port=parts.port_number(_DEFAULT_PORT),
            timeout=parts.positive_int("timeout") or _DEFAULT_TIMEOUT_S,
            table=table,
            embedder=embedder,
            **flags,
        )

    @property
    def location(self) -> str:  # type: ignore[override]
        """Where the collection is, as a URL (never with a secret)."""
        if self.path is not None:
            return f"qdrant:///{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"qdrant://{host}:{self.port}"

    def _reset(self) -> None:
        self._client: Any = None  # a server's client; local ones are in _LOCAL
        self._shared: _Shared | None = None
        self._dims: int | None = None  # the collection's vector size, once seen

    def __getstate__(self) -> dict[str, Any]:
        # Settings only: no client (it cannot travel) and no API key (never held, only read).
        names = ("path", "host", "port", "https", "grpc", "timeout", "table", "embedder")
        return {name: getattr(self, name) for name in names}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def __repr__(self) -> str:
        return (
            f"QdrantVectorStore(location={self.location!r}, table={self.table!r}, "
            f"embedder={self.embedder!r})"
        )

    def close(self) -> None:
        """Release the connection; a local folder is closed (and can be opened by another
        process) once no store of this process uses it. A store used again reconnects."""
        shared, client = self._shared, self._client
        self._reset()
        if client is not None:
            client.close()
        if shared is None:
            return
        with _LOCAL_LOCK:
            shared.users -= 1
            if shared.users == 0 and _LOCAL.get(str(self.path)) is shared:
                del _LOCAL[str(self.path)]
                with shared.lock:
                    shared.client.close()

    # --- connection -----------------------------------------------------------------------

    def _connect(self) -> tuple[Any, contextlib.AbstractContextManager[Any]]:
        """The client and what to hold while using it (the folder's lock in local mode)."""
        with _LOCAL_LOCK:
            if self._shared is not None:
                return self._shared.client, self._shared.lock
            if self.path is None:
                if self._client is None:
                    self._client = self._remote_client()
                return self._client, contextlib.nullcontext()  # a server serialises itself
            shared = _LOCAL.get(self.path)
            if shared is None:
                from qdrant_client import QdrantClient

                # Our lock serialises every call, so SQLite's same-thread check is not needed
                # (hooks run in whichever worker thread asyncio picks). A folder open in another
                # process raises "already accessed by another instance", saying what to do.
                client = QdrantClient(path=self.path, force_disable_check_same_thread=True)
                shared = _LOCAL[self.path] = _Shared(client)
            shared.users += 1
            self._shared = shared
            return shared.client, shared.lock

    def _remote_client(self) -> Any:
        from qdrant_client import QdrantClient

        api_key = os.environ.get(API_KEY_ENV) or None
        if api_key:
            register_secret(api_key)  # masked, should a library's error ever echo it
        return QdrantClient(
            host=self.host,
            port=self.port,
            prefer_grpc=self.grpc,
            https=self.https,
            api_key=api_key,
            timeout=self.timeout,
            check_compatibility=False,  # a version probe per connection, and its warnings
        )

    def _dimensions(self, client: Any) -> int | None:
        """The collection's vector size; ``None`` if it does not exist."""
        if self._dims is None:
            try:
                info = client.get_collection(self.table)
            except Exception as exc:
                if _missing(exc):
                    return None
                raise
            vectors = info.config.params.vectors
            size, distance = getattr(vectors, "size", None), getattr(vectors, "distance", None)
            if not isinstance(size, int) or str(getattr(distance, "value", distance)) != "Cosine":
                raise UserError(
                    f"collection {self.table!r} at {self.location!r} was not made by "
                    "QdrantVectorStore (it needs one unnamed vector with cosine distance)",
                    hint="use another table name for the vector store",
                    uri=self.location,
                    table=self.table,
                )
            self._dims = size
        return self._dims

    def _existing(self, empty: _T, fn: Callable[[Any], _T]) -> _T:
        """``fn(client)`` on the collection, or ``empty`` when it does not exist."""
        client, lock = self._connect()
        with lock:
            try:
                return empty if self._dimensions(client) is None else fn(client)
            except Exception as exc:
                if isinstance(exc, GeckoError) or not _missing(exc):
                    raise
                self._dims = None  # deleted behind our back: re-read when re-created
                return empty

    def _check_query_dimensions(self, dimensions: int) -> None:
        stored = self._existing(None, self._dimensions)
        if stored is not None and stored != dimensions:
            raise self._dimension_error(stored, dimensions)

    # --- the hooks (blocking; in worker threads) --------------------------------------------

    def _write_sync(self, rows: Rows, dimensions: int) -> None:
        from qdrant_client import models

        points = [
            models.PointStruct(
                id=_point_id(key),
                vector=vector,
                payload={"id": key, "text": text, "metadata": meta},
            )
            for key, (text, meta, vector) in rows.items()
        ]
        client, lock = self._connect()
        with lock:
            if self._dimensions(client) is None:
                config = models.VectorParams(size=dimensions, distance=models.Distance.COSINE)
                try:
                    client.create_collection(self.table, vectors_config=config)
                except Exception:
                    # Another process created it meanwhile (on a server): use it if it is there.
                    if self._dimensions(client) is None:
                        raise
            stored = self._dimensions(client)
            if stored != dimensions:
                raise self._dimension_error(stored or 0, dimensions)
            for start in range(0, len(points), _BATCH):
                client.upsert(self.table, points[start : start + _BATCH], wait=True)

    def _search_sync(
        self, mode: str, query: str, vector: list[float] | None, limit: int
    ) -> list[Candidate]:
        from qdrant_client import models

        # Exact, not HNSW's approximation (local mode is always exact, and warns if asked).
        exact = None if self.path else models.SearchParams(exact=True)

        def search(client: Any) -> list[Candidate]:
            found = client.query_points(
                self.table, query=vector, limit=limit, with_payload=True, search_params=exact
            )
            return [
                Candidate(
                    p.payload["id"], p.payload["text"], p.payload["metadata"], _clamp(p.score)
                )
                for p in found.points
            ]

        return self._existing([], search)

    def _scan_sync(self) -> list[tuple[str, dict[str, Any]]]:
        def scan(client: Any) -> list[tuple[str, dict[str, Any]]]:
            rows: list[tuple[str, dict[str, Any]]] = []
            offset = None
            while True:
                page, offset = client.scroll(
                    self.table, limit=_PAGE, offset=offset, with_payload=["id", "metadata"]
                )
                rows += [(p.payload["id"], json.loads(p.payload["metadata"])) for p in page]
                if offset is None:
                    return rows

        return self._existing([], scan)

    def _delete_sync(self, ids: list[str]) -> int:
        from qdrant_client import models

        def delete(client: Any) -> int:
            # Qdrant's delete does not say how many points it removed: find them first.
            found = client.retrieve(self.table, [_point_id(key) for key in ids], with_payload=False)
            if found:
                selector = models.PointIdsList(points=[p.id for p in found])
                client.delete(self.table, points_selector=selector, wait=True)
            return len(found)

        return self._existing(0, delete)

    def _count_sync(self) -> int:
        return self._existing(0, lambda client: int(client.count(self.table, exact=True).count))


def _point_id(key: str) -> str:
    """The Qdrant point id of one of our ids."""
    return str(uuid.uuid5(_ID_NAMESPACE, key))


def _missing(exc: BaseException) -> bool:
    """Whether ``exc`` says the collection does not exist (local, REST or gRPC client)."""
    if getattr(exc, "status_code", None) == 404:
        return True
    text = str(exc).lower()
    return "not found" in text or "doesn't exist" in text


def _clamp(score: float) -> float:
    """Qdrant's cosine score is the similarity; float32 rounding can step just outside."""
    return min(1.0, max(-1.0, float(score)))
