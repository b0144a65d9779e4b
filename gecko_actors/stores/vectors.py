"""LanceVectorStore: texts, metadata and their embeddings in a LanceDB table.

The store is embedded (a local directory, or any URI lancedb accepts), needs no server and keeps
one table with a fixed schema::

    id        string                                  primary key (upserted)
    text      string
    metadata  string                                  JSON object, keys sorted
    vector    fixed_size_list<float32>[dimensions]    from the store's embedder

Every lancedb call blocks, so each one runs in a worker thread (:func:`asyncio.to_thread`);
the event loop never waits on disk. Each :meth:`LanceVectorStore.add` is one write (one new
table version), so add texts in batches rather than one at a time.

Reads are strongly consistent: the connection re-checks the table's latest version on every
read, so two stores (two actors) on the same URI see each other's writes.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

from gecko_actors.core.embedders import Embedder
from gecko_actors.exceptions import UserError
from gecko_actors.stores.vector_base import (
    Candidate,
    Rows,
    VectorHit,
    VectorStoreBase,
    content_id,
    cosine_score,
)

__all__ = ["LanceVectorStore", "VectorHit", "content_id"]

_COLUMNS = ("id", "text", "metadata", "vector")
_ATTEMPTS = 5
_OPEN_LOCK = threading.Lock()
_PRIMARY_KEY = {"lance-schema:unenforced-primary-key": "true"}


class LanceVectorStore(VectorStoreBase):
    """A vector store on LanceDB, with upserts, cosine search and metadata filters.

    Args:
        uri: a local directory (created if missing; relative paths are made absolute) or a URI
            lancedb understands (``s3://bucket/path``, ``memory://``).
        table: the table name (letters, digits, ``_``, ``-`` and ``.``). One table holds
            vectors of one dimension: use one table per embedder.
        embedder: what turns texts into vectors; :class:`HashEmbedder` (offline) by default.

    The table is created on the first :meth:`add`. The store pickles as ``uri``, ``table`` and
    ``embedder`` only (Ray ships it to actors); the connection is re-opened lazily where it
    lands. Storage failures raise :class:`StorageError`; bad arguments :class:`UserError`.

    Search modes: ``"vector"`` (exact, brute force), ``"fts"`` (LanceDB's native full-text
    search, BM25; offline, no extra package) and ``"hybrid"``. The full-text index is built
    on the first text search; rows written later are searched too (unindexed rows are
    scanned) until :meth:`optimize` folds them into the index.

    Example:
        >>> store = LanceVectorStore(tmp_dir)  # doctest: +SKIP
        >>> await store.add(["the cat sat on the mat"], [{"topic": "pets"}])  # doctest: +SKIP
        >>> (await store.search("a cat", k=1))[0].text  # doctest: +SKIP
        'the cat sat on the mat'
    """

    modes: ClassVar[frozenset[str]] = frozenset({"vector", "fts", "hybrid"})

    def __init__(
        self, uri: str | Path, table: str = "memory", embedder: Embedder | None = None
    ) -> None:
        self.uri = _normalise_uri(uri)
        self._init_base(table, embedder)
        self._reset()

    @property
    def location(self) -> str:  # type: ignore[override]
        """Where the table is: the URI."""
        return self.uri

    def _reset(self) -> None:
        self._db: Any = None
        self._tbl: Any = None
        self._fts = False

    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.uri, "table": self.table, "embedder": self.embedder}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.uri = state["uri"]
        self.table = state["table"]
        self.embedder = state["embedder"]
        self._reset()

    def __repr__(self) -> str:
        return (
            f"LanceVectorStore(uri={self.uri!r}, table={self.table!r}, embedder={self.embedder!r})"
        )

    async def optimize(self) -> None:
        """Compact the table and fold new rows into the full-text index (after big writes)."""
        tbl = await self._run("open", self._open_sync, None)
        if tbl is not None:
            await self._run("optimize", tbl.optimize)

    # --- blocking work (in worker threads) ------------------------------------------------

    def _connect(self) -> Any:
        if self._db is None:
            # Lance's Rust side logs a deprecation warning on every hybrid search, which its
            # Python API gives no way to avoid: only errors are logged unless LANCEDB_LOG says so.
            os.environ.setdefault("LANCEDB_LOG", "error")
            import lancedb

            # timedelta(0): re-check the latest table version on every read, so writes by
            # another store object or process on the same URI are seen at once.
            self._db = lancedb.connect(self.uri, read_consistency_interval=timedelta(0))
        return self._db

    def _open_sync(self, create_dimensions: int | None) -> Any:
        """The table, opened or (given ``create_dimensions``) created; ``None`` if missing."""
        # One lock for the whole process: two store objects creating the same table at once
        # would otherwise race (lancedb turns the loser's create into an Overwrite commit that
        # fails the other's writes). Across processes the race is retried instead.
        with _OPEN_LOCK:
            if self._tbl is not None:
                return self._tbl
            for attempt in range(_ATTEMPTS):
                try:
                    tbl = self._open_or_create(create_dimensions)
                    break
                except Exception as exc:
                    # Another process is creating the table: its directory is listed before its
                    # first version is committed, or its create commits over ours.
                    if attempt + 1 >= _ATTEMPTS or not _is_transient(exc):
                        raise
                    _backoff(attempt)
            if tbl is None:
                return None
            self._check_schema(tbl)
            self._tbl = tbl
            return tbl

    def _open_or_create(self, create_dimensions: int | None) -> Any:
        db = self._connect()
        if self.table in db:
            return db.open_table(self.table)
        if create_dimensions is None:
            return None
        # exist_ok: a table created meanwhile with the same schema is opened; with another
        # schema it raises ("does not match"), and the retry opens it and reports the mismatch.
        return db.create_table(self.table, schema=_schema(create_dimensions), exist_ok=True)

    def _table_dimensions(self, tbl: Any) -> int:
        return tbl.schema.field("vector").type.list_size

    def _check_schema(self, tbl: Any) -> None:
        import pyarrow as pa

        schema = tbl.schema
        names = schema.names
        vector_type = schema.field("vector").type if "vector" in names else None
        if sorted(names) != sorted(_COLUMNS) or not pa.types.is_fixed_size_list(vector_type):
            raise UserError(
                f"table {self.table!r} at {self.uri!r} was not made by LanceVectorStore "
                f"(columns {names})",
                hint="use another table name for the vector store",
                uri=self.uri,
                table=self.table,
            )
        expected = getattr(self.embedder, "dimensions", None)
        if isinstance(expected, int):
            self._check_dimensions(tbl, expected)

    def _check_dimensions(self, tbl: Any, dimensions: int) -> None:
        stored = self._table_dimensions(tbl)
        if stored != dimensions:
            raise self._dimension_error(stored, dimensions)

    def _write_sync(self, rows: Rows, dimensions: int) -> None:
        import numpy as np
        import pyarrow as pa

        tbl = self._open_sync(dimensions)
        self._check_dimensions(tbl, dimensions)
        flat = np.asarray([row[2] for row in rows.values()], dtype=np.float32).reshape(-1)
        data = pa.table(
            {
                "id": list(rows),
                "text": [row[0] for row in rows.values()],
                "metadata": [row[1] for row in rows.values()],
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(flat), dimensions),
            },
            schema=_schema(dimensions),
        )
        for attempt in range(_ATTEMPTS):
            try:
                # One transaction: update the ids that exist, insert the others. Lance retries
                # ordinary conflicts itself; a conflict with a concurrent table creation
                # elsewhere is retried here, on a freshly opened table (an upsert is idempotent).
                (
                    tbl.merge_insert("id")
                    .when_matched_update_all()
                    .when_not_matched_insert_all()
                    .execute(data)
                )
                return
            except Exception as exc:
                if attempt + 1 >= _ATTEMPTS or not _is_transient(exc):
                    raise
                _backoff(attempt)
                with _OPEN_LOCK:
                    self._tbl = None
                tbl = self._open_sync(dimensions)

    def _search_sync(
        self, mode: str, query: str, vector: list[float] | None, limit: int
    ) -> list[Candidate]:
        tbl = self._open_sync(None)
        if tbl is None:
            return []
        if vector is not None:
            self._check_dimensions(tbl, len(vector))
        if mode != "vector":
            self._ensure_fts(tbl)
        rows = self._query(tbl, mode, query, vector).limit(limit).to_list()
        return [Candidate(r["id"], r["text"], r["metadata"], _score(mode, r)) for r in rows]

    @staticmethod
    def _query(tbl: Any, mode: str, query: str, vector: list[float] | None) -> Any:
        columns = ["id", "text", "metadata"]
        if mode == "vector":
            return (
                tbl.search(vector, vector_column_name="vector")
                .distance_type("cosine")
                .select([*columns, "_distance"])
            )
        if mode == "fts":
            return tbl.search(query, query_type="fts").select([*columns, "_score"])
        from lancedb.rerankers import RRFReranker

        return (
            tbl.search(query_type="hybrid", vector_column_name="vector")
            .vector(vector)
            .text(query)
            .distance_type("cosine")
            .select(columns)
            .rerank(RRFReranker())
        )

    def _ensure_fts(self, tbl: Any) -> None:
        """The native full-text index on ``text``, built once (by whichever store is first)."""
        if self._fts:
            return
        if not any(i.columns == ["text"] for i in tbl.list_indices()):
            from lancedb.index import FTS

            try:
                tbl.create_index("text", config=FTS())
            except Exception as exc:  # another store built it meanwhile
                if "already exists" not in str(exc).lower():
                    raise
        self._fts = True

    def _scan_sync(self) -> list[tuple[str, dict[str, Any]]]:
        tbl = self._open_sync(None)
        if tbl is None:
            return []
        rows = tbl.search().select(["id", "metadata"]).limit(tbl.count_rows() or 1).to_list()
        return [(row["id"], json.loads(row["metadata"])) for row in rows]

    def _delete_sync(self, ids: list[str]) -> int:
        from lancedb.expr import col

        tbl = self._open_sync(None)
        if tbl is None:
            return 0
        result = tbl.delete(col("id").isin(ids))
        return int(getattr(result, "num_deleted_rows", 0) or 0)

    def _count_sync(self) -> int:
        tbl = self._open_sync(None)
        return 0 if tbl is None else int(tbl.count_rows())


# --- helpers --------------------------------------------------------------------------------


def _schema(dimensions: int) -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            # Declaring the (unenforced) primary key lets Lance detect two concurrent
            # merge_inserts of the same new id (two stores, two actors) and turn the second
            # into an update; without it both rows would be inserted.
            pa.field("id", pa.string(), nullable=False, metadata=_PRIMARY_KEY),
            pa.field("text", pa.string(), nullable=False),
            pa.field("metadata", pa.string(), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), dimensions), nullable=False),
        ]
    )


def _normalise_uri(uri: str | Path) -> str:
    if isinstance(uri, Path):
        return str(uri.expanduser().resolve())
    if not isinstance(uri, str) or not uri:
        raise UserError(
            f"LanceVectorStore needs a directory or URI, got {uri!r}",
            hint='pass a path such as "./memory" or a URI such as "s3://bucket/memory"',
        )
    if "://" in uri:
        return uri
    return str(Path(uri).expanduser().resolve())


_TRANSIENT = (
    "commit conflict",
    "incompatible transaction",
    "preempted by concurrent",
    "was not found",
    "does not match existing table schema",
)


def _is_transient(exc: Exception) -> bool:
    """Whether a lancedb error comes from a concurrent writer and is worth retrying."""
    text = str(exc).lower()
    return any(marker in text for marker in _TRANSIENT)


def _backoff(attempt: int) -> None:
    time.sleep(0.02 * (2**attempt) * (0.5 + random.random()))


def _score(mode: str, row: dict[str, Any]) -> float:
    if mode == "vector":
        return cosine_score(row["_distance"])
    return float(row["_score"] if mode == "fts" else row["_relevance_score"])
