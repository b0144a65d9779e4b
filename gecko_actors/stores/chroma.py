"""ChromaVectorStore: texts, metadata and their embeddings in a Chroma collection.

One cosine collection per table. A row keeps our id as Chroma's id, the text as its document
and our metadata as one JSON string (``{"json": "..."}``): Chroma refuses nested metadata.

- ``chroma:///<path>``: an embedded database in a directory; as for SQLite, ``chroma:///data``
  is relative, ``chroma:////var/data`` absolute. One process at a time: share a collection
  between processes (Ray actors, nodes) through a server.
- ``chroma://host[:port][?ssl=true&tenant=...&database=...]``: a Chroma server (port 8000).
  A token comes from ``CHROMA_CLIENT_AUTH_CREDENTIALS`` where the store connects (sent as
  ``Authorization: Bearer``, or as Chroma's ``CHROMA_AUTH_TOKEN_TRANSPORT_HEADER`` says).

Chroma never embeds (every write and query brings its vectors, so its default ONNX model is
never loaded) and its telemetry is off. Search mode ``"vector"`` only: local Chroma has no
ranked full-text search (``$contains`` only filters; the ``Search`` API is Cloud-only).
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlencode

from gecko_actors.core.embedders import Embedder
from gecko_actors.exceptions import StorageError, UserError
from gecko_actors.stores.registry import parse_store_url
from gecko_actors.stores.vector_base import Candidate, Rows, VectorStoreBase, cosine_score

__all__ = ["TOKEN_ENV", "ChromaVectorStore"]

TOKEN_ENV = "CHROMA_CLIENT_AUTH_CREDENTIALS"
"""The environment variable a server's token is read from (Chroma's own name for it)."""

_T = TypeVar("_T")
_DEFAULT_PORT = 8000
_CONNECT_TIMEOUT_S = 5.0
# HNSW is approximate; a query explores max(ef_search, n_results) candidates, so collections
# up to this size are in practice searched exhaustively (the best match first), and the base's
# widening of filtered searches (100, 400, ... candidates) widens the exploration with it.
_CONFIGURATION = {"hnsw": {"space": "cosine", "ef_search": 256}}
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}
_TOKEN_PROVIDER = "chromadb.auth.token_authn.TokenAuthClientProvider"
# What a store pickles as (Ray ships it to actors): settings only, never a client or a token.
_SETTINGS = ("path", "host", "port", "ssl", "tenant", "database", "table", "embedder")
# Chroma's rule for collection names (besides: no "..", not an IPv4 address, which the
# regular expression below approximates on the safe side).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]")
_IPV4 = re.compile(r"\d{1,3}(\.\d{1,3}){3}")
_NAME_RULE = (
    "3 to 512 letters, digits, '_', '-' or '.', starting and ending with a letter or digit, "
    "without '..', not an IPv4 address"
)

# One client per directory in this process. Chroma shares one "System" per path string, but
# creates it without a lock (two threads can start two on one SQLite file) and refuses a second
# client whose settings differ; one client per resolved path, made under a lock, avoids both.
_LOCAL_CLIENTS: dict[str, Any] = {}
_LOCAL_LOCK = threading.Lock()


class ChromaVectorStore(VectorStoreBase):
    """A vector store on Chroma, embedded in a directory or on a server.

    Args:
        path: the directory of an embedded database (created if missing; relative paths are
            made absolute). Give ``path`` or ``host``, not both.
        table: the collection: 3 to 512 letters, digits, ``_``, ``-`` or ``.``, starting and
            ending with a letter or digit (Chroma's rule). One dimension per collection.
        embedder: what turns texts into vectors; :class:`HashEmbedder` (offline) by default.
        host, port, ssl: the Chroma server.
        tenant, database: the server's tenant and database (Chroma's defaults if ``None``).

    The store pickles as these settings (Ray ships it to actors), never with a token; it
    connects lazily where it lands. Failures raise :class:`StorageError`.
    """

    modes: ClassVar[frozenset[str]] = frozenset({"vector"})

    def __init__(
        self,
        path: str | Path | None = None,
        table: str = "memory",
        embedder: Embedder | None = None,
        *,
        host: str | None = None,
        port: int = _DEFAULT_PORT,
        ssl: bool = False,
        tenant: str | None = None,
        database: str | None = None,
    ) -> None:
        if (path is None) == (host is None) or path == "":
            raise UserError(
                "ChromaVectorStore needs a directory (path=...) or a server (host=...)",
                hint='e.g. ChromaVectorStore("./vectors") or ChromaVectorStore(host="localhost")',
            )
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise UserError(f"ChromaVectorStore port {port!r} is not a number from 1 to 65535")
        self.path = None if path is None else str(Path(path).expanduser().resolve())
        self.host, self.port, self.ssl = host, port, bool(ssl)
        self.tenant, self.database = tenant, database
        self._init_base(table, embedder)
        # Refused rather than mapped to a valid name: a mapped name would not be the collection
        # users see in Chroma's own tools, and two tables could map to one collection.
        if not _NAME.fullmatch(self.table) or ".." in self.table or _IPV4.fullmatch(self.table):
            raise UserError(
                f"Chroma refuses the table (collection) name {self.table!r}: it wants {_NAME_RULE}",
                hint="choose a table name that follows Chroma's rule, e.g. 'memory'",
                table=self.table,
            )
        self._reset()

    @classmethod
    def from_url(
        cls, url: str, *, embedder: Embedder | None = None, table: str = "memory"
    ) -> ChromaVectorStore:
        """A store from ``chroma:///<path>`` or ``chroma://host[:port][?ssl=&tenant=&database=]``;
        a malformed URL is a :class:`UserError` saying which part is wrong."""
        parts = parse_store_url(url, "vector")
        if parts.scheme != "chroma":
            raise parts.error("the scheme is not chroma://")
        if parts.username is not None or parts.password is not None or "@" in parts.rest:
            raise parts.error(
                "it has a user or password ('...@'); a chroma:// URL carries no credentials",
                hint=f"remove them and set {TOKEN_ENV} to the server's token in the environment "
                "where the store connects (every node's, on a cluster)",
            )
        if parts.rest.startswith("/"):  # chroma:///<path>: everything after the three slashes
            path, question, _ = parts.rest[1:].partition("?")
            if question or not path:
                problem = "takes no query parameters" if question else "names no directory"
                raise parts.error(f"a chroma:///<directory> URL {problem}")
            return cls(path, table=table, embedder=embedder)
        if not parts.host or parts.path not in ("", "/"):
            raise parts.error(
                "it names no host" if not parts.host else "a server URL has no path",
                hint="write chroma://host:port for a server, chroma:///<path> for a directory",
            )
        parts.check_query(("ssl", "tenant", "database"))
        ssl = _BOOLEANS.get(parts.query.get("ssl", "false").lower())
        if ssl is None:
            raise parts.error("ssl must be true or false", hint="write ?ssl=true")
        if "" in (parts.query.get("tenant"), parts.query.get("database")):
            raise parts.error("the tenant or database is empty", hint="leave it out or name it")
        return cls(
            table=table,
            embedder=embedder,
            host=parts.host,
            port=parts.port_number(_DEFAULT_PORT),
            ssl=ssl,
            tenant=parts.query.get("tenant"),
            database=parts.query.get("database"),
        )

    @property
    def location(self) -> str:  # type: ignore[override]
        """Where the collection is, as a URL (never with a token)."""
        if self.path is not None:
            return f"chroma:///{self.path}"
        host = f"[{self.host}]" if ":" in str(self.host) else self.host
        params = {"ssl": "true" if self.ssl else None, "tenant": self.tenant}
        query = urlencode({k: v for k, v in {**params, "database": self.database}.items() if v})
        return f"chroma://{host}:{self.port}" + (f"?{query}" if query else "")

    def _reset(self) -> None:
        self._client: Any = None
        self._collection: Any = None
        self._dimensions: int | None = None
        self._batch: int | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _SETTINGS}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def __repr__(self) -> str:
        return (
            f"ChromaVectorStore(location={self.location!r}, table={self.table!r}, "
            f"embedder={self.embedder!r})"
        )

    # --- blocking work (in worker threads) ------------------------------------------------

    def _connect(self) -> Any:
        if self._client is not None:
            return self._client
        import chromadb
        from chromadb.config import DEFAULT_DATABASE, DEFAULT_TENANT, Settings

        if self.path is not None:
            with _LOCAL_LOCK:
                if self.path not in _LOCAL_CLIENTS:
                    settings = Settings(anonymized_telemetry=False)
                    _LOCAL_CLIENTS[self.path] = chromadb.PersistentClient(self.path, settings)
                self._client = _LOCAL_CLIENTS[self.path]
                return self._client
        with self._lock:
            if self._client is None:
                self._check_reachable()
                settings = Settings(anonymized_telemetry=False)
                if token := os.environ.get(TOKEN_ENV):  # read where the store connects
                    settings.chroma_client_auth_credentials = token
                    provider = settings.chroma_client_auth_provider or _TOKEN_PROVIDER
                    settings.chroma_client_auth_provider = provider
                self._client = chromadb.HttpClient(
                    self.host,
                    self.port,
                    self.ssl,
                    settings=settings,
                    tenant=self.tenant or DEFAULT_TENANT,
                    database=self.database or DEFAULT_DATABASE,
                )
            return self._client

    def _check_reachable(self) -> None:
        # chromadb's HTTP client has no timeout: an unreachable server would hang this thread.
        try:
            socket.create_connection((self.host, self.port), _CONNECT_TIMEOUT_S).close()
        except OSError as exc:
            raise StorageError(
                f"cannot reach the Chroma server at {self.host}:{self.port} "
                f"({self.location!r}): {type(exc).__name__}: {exc}",
                hint=f"start it (chroma run --host {self.host} --port {self.port}) or fix the "
                "URL's host and port",
                uri=self.location,
                table=self.table,
            ) from exc

    def _open(self, create: bool) -> Any:
        """The collection, opened or (``create``) created; ``None`` if missing."""
        if self._collection is not None:
            return self._collection
        from chromadb.errors import NotFoundError

        client = self._connect()
        try:
            if create:
                collection = client.get_or_create_collection(
                    self.table, configuration=_CONFIGURATION, embedding_function=None
                )
            else:
                collection = client.get_collection(self.table, embedding_function=None)
        except NotFoundError:
            return None
        index = (collection.configuration_json or {}).get("hnsw") or {}
        if index.get("space", "cosine") != "cosine":  # scores would not be cosine similarity
            raise UserError(
                f"collection {self.table!r} at {self.location!r} was not made by "
                f"ChromaVectorStore (its distance is {index.get('space')!r}, not cosine)",
                hint="use another table name for the vector store",
                uri=self.location,
                table=self.table,
            )
        self._collection = collection
        return collection

    def _stored_dimensions(self, collection: Any, fresh: bool = False) -> int | None:
        """The collection's dimension (``None`` before its first write); Chroma fixes it on
        the first write, so a handle opened before that is re-read."""
        if self._dimensions is None or fresh:
            model = collection.get_model()
            if model.dimension is None or fresh:
                reread = self._connect().get_collection(self.table, embedding_function=None)
                model = reread.get_model()
            self._dimensions = model.dimension
        return self._dimensions

    def _batch_size(self) -> int:
        """How many rows Chroma accepts in one call."""
        if self._batch is None:
            self._batch = int(self._connect().get_max_batch_size())
        return self._batch

    def _chunks(self, items: list[_T]) -> list[list[_T]]:
        """``items`` in slices of :meth:`_batch_size`."""
        size = self._batch_size()
        return [items[start : start + size] for start in range(0, len(items), size)]

    def _write_sync(self, rows: Rows, dimensions: int) -> None:
        from chromadb.errors import InvalidArgumentError

        collection = self._open(create=True)
        stored = self._stored_dimensions(collection)
        if stored is not None and stored != dimensions:
            raise self._dimension_error(stored, dimensions)
        # A write bigger than Chroma's cap is several upserts, each one atomic.
        for chunk in self._chunks(list(rows.items())):
            try:
                collection.upsert(
                    ids=[key for key, _ in chunk],
                    embeddings=[row[2] for _, row in chunk],
                    documents=[row[0] for _, row in chunk],
                    metadatas=[{"json": row[1]} for _, row in chunk],
                )
                self._dimensions = dimensions  # fixed by Chroma on the first write
            except InvalidArgumentError:
                # Another store's first write fixed another dimension meanwhile.
                stored = self._stored_dimensions(collection, fresh=True)
                if stored is not None and stored != dimensions:
                    raise self._dimension_error(stored, dimensions) from None
                raise

    def _search_sync(
        self, mode: str, query: str, vector: list[float] | None, limit: int
    ) -> list[Candidate]:
        collection = self._open(create=False)
        stored = None if collection is None else self._stored_dimensions(collection)
        if stored is None or vector is None:  # no collection, or never written to
            return []
        if stored != len(vector):
            raise self._dimension_error(stored, len(vector))
        found = collection.query(
            query_embeddings=[vector],
            n_results=limit,
            include=["documents", "metadatas", "distances"],
        )
        columns = (found[name][0] for name in ("ids", "documents", "metadatas", "distances"))
        return [
            Candidate(key, text or "", _metadata(meta), cosine_score(distance))
            for key, text, meta, distance in zip(*columns, strict=True)
        ]

    def _scan_sync(self) -> list[tuple[str, dict[str, Any]]]:
        collection = self._open(create=False)
        rows: list[tuple[str, dict[str, Any]]] = []
        while collection is not None:
            size = self._batch_size()
            page = collection.get(include=["metadatas"], limit=size, offset=len(rows))
            pairs = zip(page["ids"], page["metadatas"], strict=True)
            rows += [(key, json.loads(_metadata(meta))) for key, meta in pairs]
            if len(page["ids"]) < size:
                break
        return rows

    def _delete_sync(self, ids: list[str]) -> int:
        collection = self._open(create=False)
        if collection is None:
            return 0
        # Chroma's delete does not say how many rows existed: look them up first.
        found = [
            key for part in self._chunks(ids) for key in collection.get(part, include=[])["ids"]
        ]
        for part in self._chunks(found):
            collection.delete(ids=part)
        return len(found)

    def _count_sync(self) -> int:
        collection = self._open(create=False)
        return 0 if collection is None else int(collection.count())


def _metadata(meta: dict[str, Any] | None) -> str:
    """Our metadata JSON from a row's Chroma metadata (``{}`` for a row we did not write)."""
    value = (meta or {}).get("json")
    return value if isinstance(value, str) else "{}"
