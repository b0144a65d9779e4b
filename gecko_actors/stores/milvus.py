"""MilvusVectorStore: texts, metadata and their embeddings in a Milvus collection.

Two places to keep them, chosen by the URL (``pip install "gecko-actors[milvus]"``):

- ``milvus:///<path>.db``: Milvus Lite, embedded. The path is everything after the three
  slashes (``milvus:///vectors.db`` is relative, ``milvus:////var/data/vectors.db`` absolute)
  and must end in ``.db``. Milvus Lite serves the file from inside this process and locks it:
  one process at a time (for several, such as Ray actors, use a server).
- ``milvus://host[:port][?secure=true&db=<name>]``: a Milvus 2.5+ server, port 19530 by
  default. The token (``user:password`` or an API key) is read from ``MILVUS_TOKEN`` in the
  process that connects: never from the URL, never pickled.

One collection per table, created on the first add::

    id        VARCHAR(4096)         primary key (upserted)
    text      VARCHAR(65535)        analysed; Milvus derives ``sparse`` from it (BM25)
    metadata  VARCHAR(65535)        JSON object, keys sorted
    vector    FLOAT_VECTOR(d)       FLAT index, COSINE metric: exact results
    sparse    SPARSE_FLOAT_VECTOR   BM25 full-text index

Lengths are UTF-8 bytes (a server counts bytes); longer values are refused with a UserError.
Every read asks for strong consistency: it sees the writes made before it, by any process.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from gecko_actors._redact import register_secret
from gecko_actors.core.embedders import Embedder
from gecko_actors.exceptions import StorageError, UserError
from gecko_actors.stores.registry import parse_store_url
from gecko_actors.stores.vector_base import Candidate, Rows, VectorStoreBase

__all__ = ["TOKEN_ENV", "MilvusVectorStore"]

TOKEN_ENV = "MILVUS_TOKEN"
"""Where a server's token is read from, in the process that connects."""

_DEFAULT_PORT = 19530
_TIMEOUT_S = 30.0
_ID_BYTES = 4096  # room for ids made of file paths ("<path>#<chunk>")
_TEXT_BYTES = 65535  # the longest VARCHAR a Milvus server accepts by default
_TOP_K = 16384  # the most hits one Milvus search returns
_BATCH = 1000
_FIELDS = ("id", "metadata", "sparse", "text", "vector")
_SETTINGS = ("path", "host", "port", "secure", "db", "timeout", "table", "embedder")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")  # Milvus collection and database names


@dataclass(eq=False)
class _Client:
    """One MilvusClient per database per process, shared by every store object on it."""

    client: Any
    lite: str | None  # the Milvus Lite file this process serves, released with the client
    # Milvus Lite's engine is not safe for concurrent writes (an upsert reads then writes),
    # nor for reads racing them, so every call on a Lite file is serialised; on a server only
    # this process's writes are, which keeps delete counts right.
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0


_CLIENTS: dict[tuple[Any, ...], _Client] = {}
# Re-entrant: a store's finalizer (releasing its client) may run in a garbage collection
# triggered while this thread holds the lock.
_CLIENTS_LOCK = threading.RLock()


def _no_lite_timestamp(record: logging.LogRecord) -> bool:
    """Drops the warning pymilvus logs on every scan of Milvus Lite, which has no MVCC
    timestamps to give (the client's clock, used instead, is right for Lite)."""
    return "failed to get mvccTs" not in record.getMessage()


class MilvusVectorStore(VectorStoreBase):
    """A vector store on Milvus (Lite or server): upserts, cosine and BM25 search, filters.

    Args:
        path: a Milvus Lite file ending in ``.db`` (its folder is created if missing).
        table: the collection: letters, digits and ``_``, not starting with a digit.
        embedder: what turns texts into vectors; :class:`HashEmbedder` by default.
        host, port, secure, db: a Milvus server instead of ``path``; its token is read from
            ``MILVUS_TOKEN`` when the store connects.
        timeout: seconds a connection or a call may take.

    Usually built with ``vector_store_from_url("milvus:///vectors.db")``. The store pickles as
    its settings (Ray ships it to actors) and connects lazily where it lands. Store objects on
    one database in a process share one client, closed (and Milvus Lite's server stopped, the
    file unlocked) when the last of them is garbage-collected. Search modes: ``"vector"``
    (exact cosine), ``"fts"`` (Milvus's BM25) and ``"hybrid"`` (both, fused).
    """

    modes: ClassVar[frozenset[str]] = frozenset({"vector", "fts"})

    def __init__(
        self,
        path: str | Path | None = None,
        table: str = "memory",
        embedder: Embedder | None = None,
        *,
        host: str | None = None,
        port: int = _DEFAULT_PORT,
        secure: bool = False,
        db: str | None = None,
        timeout: float = _TIMEOUT_S,
    ) -> None:
        if (path is None) == (host is None):
            raise UserError(
                "MilvusVectorStore takes either a Milvus Lite path or a server host",
                hint='pass path="vectors.db" (Milvus Lite) or host="localhost" (a server)',
            )
        if path is not None and not (Path(path).name.endswith(".db") and len(Path(path).name) > 3):
            raise UserError(
                f"a Milvus Lite database path must end in '.db', got {str(path)!r}",
                hint="name it e.g. 'vectors.db' (milvus:///vectors.db)",
            )
        for name, kind in ((db, "database"), (table, "collection")):
            if name is not None and not _NAME.fullmatch(str(name)):
                raise UserError(
                    f"invalid Milvus {kind} name {name!r}",
                    hint="use letters, digits and '_' only, not starting with a digit",
                )
        self.path = None if path is None else str(Path(path).expanduser().resolve())
        self.host, self.port, self.secure, self.db = host, port, secure, db
        self.timeout = timeout
        self._init_base(table, embedder)
        self._reset()

    @classmethod
    def from_url(
        cls, url: str, *, embedder: Embedder | None = None, table: str = "memory"
    ) -> MilvusVectorStore:
        """A store from ``milvus:///<path>.db`` (Milvus Lite) or
        ``milvus://host[:port][?secure=true&db=<name>]`` (a server); a malformed URL is a
        :class:`UserError` saying which part is wrong."""
        parts = parse_store_url(url, "vector")
        if parts.scheme != "milvus":
            raise parts.error("the scheme is not milvus://")
        if parts.rest.startswith("/"):  # milvus:///<path>: no host, a Milvus Lite file
            path, question, _ = parts.rest[1:].partition("?")
            if question:
                raise parts.error("a Milvus Lite URL takes no query parameters")
            if "@" in path:  # user information would become part of the file's name
                raise parts.error("a Milvus Lite URL names a local file, it takes no 'user@'")
            return cls(path, table=table, embedder=embedder)
        if parts.username is not None or parts.password is not None:
            raise parts.error(
                "it has credentials ('user:password@'), which do not belong in a URL",
                hint=f"set {TOKEN_ENV} (user:password or an API key) where the store connects",
            )
        if not parts.host or parts.host.endswith(".db"):
            raise parts.error(
                "it names no server host",
                hint="write milvus://localhost:19530 for a server, or milvus:///vectors.db "
                "(three slashes) for a Milvus Lite file",
            )
        if parts.path not in ("", "/"):
            raise parts.error("it has a path after the host", hint="write ?db=<name> instead")
        parts.check_query(("secure", "db"))
        secure = parts.query.get("secure", "false").lower()
        if secure not in ("true", "false"):
            raise parts.error(f"secure={secure!r:.20} is neither true nor false")
        return cls(
            table=table,
            embedder=embedder,
            host=parts.host,
            port=parts.port_number(_DEFAULT_PORT),
            secure=secure == "true",
            db=parts.query.get("db"),
        )

    @property
    def location(self) -> str:  # type: ignore[override]
        """The Milvus Lite file, or the server as a URL (never with a token)."""
        if self.path is not None:
            return self.path
        return f"milvus://{self._address()}" + (f"?db={self.db}" if self.db else "")

    def _address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in str(self.host) else f"{self.host}:{self.port}"

    def _reset(self) -> None:
        self._shared: _Client | None = None
        self._dims: int | None = None  # the collection's, once it is known to exist

    def __getstate__(self) -> dict[str, Any]:
        # Settings only: no client, and no token (read from the environment where it lands).
        return {name: getattr(self, name) for name in _SETTINGS}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def __repr__(self) -> str:
        where = f"path={self.path!r}" if self.path else f"location={self.location!r}"
        return f"MilvusVectorStore({where}, table={self.table!r}, embedder={self.embedder!r})"

    # --- connections --------------------------------------------------------------------

    def _connection(self) -> _Client:
        if self._shared is not None:
            return self._shared
        token = "" if self.path else os.environ.get(TOKEN_ENV, "")
        register_secret(token)
        key = ("lite", self.path) if self.path else (self._address(), self.secure, self.db, token)
        with _CLIENTS_LOCK:
            if self._shared is None:
                shared = _CLIENTS.get(key)
                if shared is None:
                    shared = _CLIENTS[key] = self._new_client(token)
                shared.users += 1
                weakref.finalize(self, _release, key)
                self._shared = shared
            return self._shared

    def _new_client(self, token: str) -> _Client:
        from pymilvus import MilvusClient

        if self.path is None:
            uri = f"{'https' if self.secure else 'http'}://{self._address()}"
            client = MilvusClient(uri, token=token, db_name=self.db or "", timeout=self.timeout)
            return _Client(client, None)
        logging.getLogger("pymilvus.client.iterator.query_iterator").addFilter(_no_lite_timestamp)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            return _Client(MilvusClient(self.path, timeout=self.timeout), self.path)
        except Exception as exc:
            raise StorageError(
                f"could not open the Milvus Lite database {self.path!r}: {exc}",
                hint="Milvus Lite serves a file to one process at a time: stop the other one "
                "using it, or share the data through a Milvus server (milvus://host:19530)",
                uri=self.path,
                table=self.table,
            ) from exc

    def _open(self, client: Any, create: int | None) -> int | None:
        """The collection's dimensions, after creating it for ``create`` dimensions if
        missing; ``None`` if it is missing."""
        if self._dims is not None:
            return self._dims
        name = self.table
        if not client.has_collection(name, timeout=self.timeout):
            if create is None:
                return None
            try:
                schema = _schema(client, create)
                client.create_collection(name, schema=schema, **self._strong())
            except Exception:
                if not client.has_collection(name):  # else another process made it first
                    raise
        dims = self._check_schema(client.describe_collection(name, timeout=self.timeout))
        # Indexed here rather than by create_collection(), for a collection whose creator
        # stopped before indexing it too. sync=False: pymilvus would poll each index twice a
        # second until built, and an empty collection's are built at once.
        if not client.list_indexes(name, timeout=self.timeout):
            client.create_index(name, _indexes(client), timeout=self.timeout, sync=False)
        # A collection is released when Milvus Lite re-opens its file or a server restarts;
        # searches and queries need it loaded (a no-op when it is).
        client.load_collection(name, timeout=self.timeout)
        self._dims = dims
        return dims

    def _check_schema(self, info: dict[str, Any]) -> int:
        fields = {f["name"]: f for f in info.get("fields", [])}
        dims = fields.get("vector", {}).get("params", {}).get("dim")
        if tuple(sorted(fields)) != _FIELDS or dims is None:
            raise UserError(
                f"collection {self.table!r} at {self.location!r} was not made by "
                f"MilvusVectorStore (fields {sorted(fields)})",
                hint="use another table name for the vector store",
                table=self.table,
            )
        expected = getattr(self.embedder, "dimensions", None)
        if isinstance(expected, int) and expected != int(dims):
            raise self._dimension_error(int(dims), expected)
        return int(dims)

    @contextmanager
    def _collection(self, *, write: bool = False, create: int | None = None) -> Iterator[Any]:
        """The client, under the lock when needed; ``None`` if the collection is missing."""
        shared = self._connection()
        with shared.lock if write or shared.lite else nullcontext():
            yield shared.client if self._open(shared.client, create) is not None else None

    def _strong(self) -> dict[str, Any]:
        """Read what was written before (by any process), within the timeout."""
        return {"consistency_level": "Strong", "timeout": self.timeout}

    # --- the hooks (blocking; in worker threads) ----------------------------------------

    def _write_sync(self, rows: Rows, dimensions: int) -> None:
        data = []
        for key, (text, metadata, vector) in rows.items():
            for what, value in (("id", key), ("text", text), ("metadata", metadata)):
                self._check_size(what, key, value, _ID_BYTES if what == "id" else _TEXT_BYTES)
            data.append({"id": key, "text": text, "metadata": metadata, "vector": vector})
        with self._collection(write=True, create=dimensions) as client:
            if self._dims != dimensions:
                raise self._dimension_error(self._dims or 0, dimensions)
            for start in range(0, len(data), _BATCH):  # keeps each request small
                client.upsert(self.table, data[start : start + _BATCH], timeout=self.timeout)

    def _check_size(self, what: str, key: str, value: str, limit: int) -> None:
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > limit:
            raise UserError(
                f"the {what} of the entry {key[:60]!r} is {size} bytes long (UTF-8), over the "
                f"{limit} bytes a Milvus table takes",
                hint="split long texts into chunks (ingest() does)" if what == "text" else None,
                table=self.table,
            )

    def _search_sync(
        self, mode: str, query: str, vector: list[float] | None, limit: int
    ) -> list[Candidate]:
        with self._collection() as client:
            if client is None:
                return []
            if vector is not None and len(vector) != self._dims:
                raise self._dimension_error(self._dims or 0, len(vector))
            field_name, metric = ("vector", "COSINE") if mode == "vector" else ("sparse", "BM25")
            [hits] = client.search(
                self.table,
                data=[vector if mode == "vector" else query],
                anns_field=field_name,
                limit=min(limit, _TOP_K),
                output_fields=["id", "text", "metadata"],
                search_params={"metric_type": metric},
                **self._strong(),
            )
        score = _cosine if mode == "vector" else _bm25
        return [Candidate(**h["entity"], score=score(h["distance"])) for h in hits]

    def _scan_sync(self) -> list[tuple[str, dict[str, Any]]]:
        rows: list[tuple[str, dict[str, Any]]] = []
        with self._collection() as client:
            if client is None:
                return []
            fields = ["id", "metadata"]
            found = client.query_iterator(
                self.table, _BATCH, output_fields=fields, **self._strong()
            )
            try:
                while batch := found.next():
                    rows.extend((row["id"], json.loads(row["metadata"])) for row in batch)
            finally:
                found.close()
        return rows

    def _delete_sync(self, ids: list[str]) -> int:
        deleted = 0
        with self._collection(write=True) as client:
            for start in range(0, len(ids) if client else 0, _BATCH):
                # Milvus reports every id it was given as deleted: count those that exist.
                expr = _ids_filter(ids[start : start + _BATCH])
                found = client.query(
                    self.table, filter=expr, output_fields=["id"], **self._strong()
                )
                if found:
                    expr = _ids_filter([row["id"] for row in found])
                    client.delete(self.table, filter=expr, timeout=self.timeout)
                    deleted += len(found)
        return deleted

    def _count_sync(self) -> int:
        with self._collection() as client:
            if client is None:
                return 0
            [row] = client.query(self.table, output_fields=["count(*)"], **self._strong())
        return int(row["count(*)"])


# --- helpers --------------------------------------------------------------------------------


def _schema(client: Any, dimensions: int) -> Any:
    from pymilvus import DataType, Function, FunctionType

    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, max_length=_ID_BYTES, is_primary=True)
    schema.add_field("text", DataType.VARCHAR, max_length=_TEXT_BYTES, enable_analyzer=True)
    schema.add_field("metadata", DataType.VARCHAR, max_length=_TEXT_BYTES)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dimensions)
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    bm25 = Function("text_bm25", FunctionType.BM25, ["text"], ["sparse"])
    schema.add_function(bm25)
    return schema


def _indexes(client: Any) -> Any:
    indexes = client.prepare_index_params()
    indexes.add_index("vector", index_type="FLAT", metric_type="COSINE")
    indexes.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    return indexes


def _ids_filter(ids: list[str]) -> str:
    """``id in [...]``, each id a double-quoted literal (pymilvus's own does not escape)."""
    escapes = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r"})
    return "id in [" + ", ".join(f'"{key.translate(escapes)}"' for key in ids) + "]"


def _cosine(distance: float) -> float:
    """For COSINE, Milvus returns the similarity itself (not a distance)."""
    return min(1.0, max(-1.0, float(distance)))


def _bm25(distance: float) -> float:
    """A BM25 score is never negative: a server returns it, Milvus Lite returns it negated
    (its "smaller is closer" distance); both rank the best first."""
    return abs(float(distance))


def _release(key: tuple[Any, ...]) -> None:
    """Drop a store's share of a client; the last one closes it and stops Milvus Lite's
    server, which unlocks the file for other processes."""
    with _CLIENTS_LOCK:
        shared = _CLIENTS.get(key)
        if shared is None:
            return
        shared.users -= 1
        if shared.users > 0:
            return
        del _CLIENTS[key]
        try:
            shared.client.close()
        finally:
            if shared.lite:
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(shared.lite)
