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

import asyncio
import hashlib
import json
import math
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

from gecko_actors.core.embedders import Embedder, HashEmbedder, check_texts
from gecko_actors.exceptions import GeckoError, StorageError, UserError

__all__ = ["LanceVectorStore", "VectorHit"]

_T = TypeVar("_T")
SearchMode = Literal["vector", "fts", "hybrid"]
_COLUMNS = ("id", "text", "metadata", "vector")
_FILTER_MIN_CANDIDATES = 100
_FILTER_FACTOR = 10
_ATTEMPTS = 5
_OPEN_LOCK = threading.Lock()
_PRIMARY_KEY = {"lance-schema:unenforced-primary-key": "true"}


@dataclass(frozen=True)
class VectorHit:
    """One search result.

    Attributes:
        id: the entry's id.
        text: the stored text.
        metadata: the stored metadata (a fresh dict per hit).
        score: cosine similarity between the query and the text's vector, in ``[-1, 1]``;
            higher is more similar (1 is the same direction).
    """

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    score: float = 0.0


def content_id(text: str) -> str:
    """The default id of a text: a hash of its content (the same text always gets the same id)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class LanceVectorStore:
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

    Example:
        >>> store = LanceVectorStore(tmp_dir)  # doctest: +SKIP
        >>> await store.add(["the cat sat on the mat"], [{"topic": "pets"}])  # doctest: +SKIP
        >>> (await store.search("a cat", k=1))[0].text  # doctest: +SKIP
        'the cat sat on the mat'
    """

    def __init__(
        self, uri: str | Path, table: str = "memory", embedder: Embedder | None = None
    ) -> None:
        self.uri = _normalise_uri(uri)
        self.table = _check_table_name(table)
        if embedder is not None and not callable(getattr(embedder, "embed", None)):
            raise UserError(
                f"embedder {embedder!r} has no embed() method",
                hint="pass an Embedder such as HashEmbedder() or LiteLLMEmbedder(...)",
            )
        self.embedder: Embedder = embedder if embedder is not None else HashEmbedder()
        self._reset()

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

    # --- the API --------------------------------------------------------------------------

    async def add(
        self,
        texts: Sequence[str],
        metadata: Sequence[dict[str, Any]] | None = None,
        ids: Sequence[str] | None = None,
        *,
        vectors: Sequence[Sequence[float]] | None = None,
    ) -> list[str]:
        """Embed and store texts in one write; return their ids, in order.

        Args:
            texts: the texts. An empty sequence returns ``[]`` without touching the table.
            metadata: one JSON-serialisable dict (or ``None``) per text.
            ids: one id per text; by default a hash of the text, so adding the same text again
                does not duplicate it.
            vectors: the texts' vectors, when they were embedded elsewhere (an ingestion
                pipeline's embedder actors); one per text, of the table's dimension.

        An id already in the table is replaced (upsert): re-adding a text updates its metadata.
        When one call repeats an id, the last occurrence wins.
        """
        items = check_texts(texts, "add")
        if not items:
            return []
        metas = self._check_metadata(metadata, len(items))
        keys = self._check_ids(ids, items)
        if vectors is None:
            embedded = await self._embed(items)
        else:
            embedded = self._check_vectors(vectors, items, "the vectors given to add()")
        rows: dict[str, tuple[str, str, list[float]]] = {}
        for key, text, meta, vector in zip(keys, items, metas, embedded, strict=True):
            rows.pop(key, None)  # last occurrence wins, at its own position
            rows[key] = (text, meta, vector)
        await self._run("add", self._write_sync, rows, len(embedded[0]))
        return keys

    async def search(
        self,
        query: str,
        k: int = 5,
        where: dict[str, Any] | None = None,
        *,
        mode: SearchMode = "vector",
    ) -> list[VectorHit]:
        """The ``k`` stored texts that best match ``query``, best first.

        Args:
            query: the text to search for; a blank query finds nothing.
            k: how many hits at most (>= 1).
            where: keep only entries whose metadata has exactly these key/value pairs (JSON
                equality: ``(1, 2)`` matches a stored ``[1, 2]``, ``1`` matches ``1.0`` but not
                ``True``; a missing key never matches, not even ``None``).
            mode: ``"vector"`` (cosine similarity of the embeddings), ``"fts"`` (LanceDB's
                native full-text search, BM25; offline, no extra package) or ``"hybrid"``
                (both, merged by reciprocal-rank fusion).

        Returns:
            Up to ``k`` hits, ``[]`` when the table is empty or does not exist yet. ``score``
            is the cosine similarity in ``[-1, 1]`` for ``"vector"``, the BM25 score for
            ``"fts"`` and the fused relevance (small positive numbers) for ``"hybrid"``;
            higher is better in every mode.

        Vector search is exact (brute force, no index). The full-text index is built on the
        first text search; rows written later are searched too (unindexed rows are scanned)
        until :meth:`optimize` folds them into the index. ``where`` is applied in Python to
        the best candidates (at least 100, or ``10 * k``), widening the candidate set until
        ``k`` hits match or every candidate was seen.
        """
        if not isinstance(query, str):
            raise UserError(f"search() query must be a str, got {type(query).__name__}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise UserError(
                f"search() k must be an integer >= 1, got {k!r}",
                hint="ask for at least one hit",
                table=self.table,
            )
        if mode not in ("vector", "fts", "hybrid"):
            raise UserError(f"unknown search mode {mode!r}", hint="use 'vector', 'fts' or 'hybrid'")
        expected = _check_where(where)
        if not query.strip():
            return []
        tbl = await self._run("open", self._open_sync, None)
        if tbl is None:
            return []
        vector = None if mode == "fts" else (await self._embed([query]))[0]
        return await self._run("search", self._search_sync, tbl, mode, query, vector, k, expected)

    async def optimize(self) -> None:
        """Compact the table and fold new rows into the full-text index (after big writes)."""
        tbl = await self._run("open", self._open_sync, None)
        if tbl is not None:
            await self._run("optimize", tbl.optimize)

    async def source_hashes(self) -> dict[str, str]:
        """``{source: content_hash}`` of the stored chunks that carry both in their metadata
        (what ingestion compares a file against, to skip it when unchanged)."""
        rows = await self._run("scan", self._scan_sync)
        return {
            meta["source"]: meta["content_hash"]
            for _, meta in rows
            if isinstance(meta.get("source"), str) and isinstance(meta.get("content_hash"), str)
        }

    async def delete(self, ids: Sequence[str] | None = None, *, source: str | None = None) -> int:
        """Delete entries by id, or every entry whose metadata ``source`` is ``source`` (a
        file's chunks); return how many were deleted (unknown ids are ignored)."""
        if source is not None:
            if ids is not None or not isinstance(source, str):
                raise UserError("delete() takes ids or a source (a str), not both")
            rows = await self._run("scan", self._scan_sync)
            ids = [key for key, meta in rows if meta.get("source") == source]
        if ids is None or isinstance(ids, str):
            raise UserError(
                "delete() takes a sequence of ids (or source=...), not a single string",
                hint="wrap the id in a list: delete([id])",
                table=self.table,
            )
        keys = list(dict.fromkeys(ids))
        for key in keys:
            if not isinstance(key, str):
                raise UserError(f"ids must be strings, got {key!r}", table=self.table)
        if not keys:
            return 0
        return await self._run("delete", self._delete_sync, keys)

    async def count(self) -> int:
        """How many entries the table holds (0 when it does not exist yet)."""
        return await self._run("count", self._count_sync)

    # --- validation -----------------------------------------------------------------------

    def _check_metadata(self, metadata: Sequence[Any] | None, n: int) -> list[str]:
        if metadata is None:
            return ["{}"] * n
        if isinstance(metadata, dict | str):
            raise UserError(
                "metadata must be a sequence of dicts, one per text",
                hint="pass metadata=[{...}, ...] with as many dicts as texts",
                table=self.table,
            )
        metas = list(metadata)
        if len(metas) != n:
            raise UserError(
                f"got {len(metas)} metadata dicts for {n} texts",
                hint="pass one metadata dict (or None) per text",
                table=self.table,
            )
        encoded = []
        for index, meta in enumerate(metas):
            if meta is None:
                meta = {}
            if not isinstance(meta, dict):
                raise UserError(
                    f"metadata #{index} is a {type(meta).__name__}, not a dict",
                    table=self.table,
                )
            try:
                encoded.append(_dumps(meta))
            except (TypeError, ValueError) as exc:
                raise UserError(
                    f"metadata #{index} is not JSON-serialisable: {exc}",
                    hint="use str, int, float, bool, None, lists and dicts with str keys",
                    table=self.table,
                ) from None
        return encoded

    def _check_ids(self, ids: Sequence[str] | None, texts: list[str]) -> list[str]:
        if ids is None:
            return [content_id(text) for text in texts]
        if isinstance(ids, str):
            raise UserError("ids must be a sequence of strings, one per text", table=self.table)
        keys = list(ids)
        if len(keys) != len(texts):
            raise UserError(
                f"got {len(keys)} ids for {len(texts)} texts",
                hint="pass one id per text, or no ids to use content hashes",
                table=self.table,
            )
        for key in keys:
            if not isinstance(key, str) or not key:
                raise UserError(f"ids must be non-empty strings, got {key!r}", table=self.table)
        return keys

    async def _embed(self, texts: list[str]) -> list[list[float]]:
        vectors = await self.embedder.embed(texts)
        return self._check_vectors(vectors, texts, f"embedder {self.embedder!r}")

    def _check_vectors(self, vectors: Any, texts: list[str], origin: str) -> list[list[float]]:
        if isinstance(vectors, str) or not isinstance(vectors, Sequence):
            raise UserError(f"{origin} gave a {type(vectors).__name__}, not a list of vectors")
        vectors = [list(v) for v in vectors]
        if len(vectors) != len(texts):
            raise UserError(
                f"{origin} gave {len(vectors)} vectors for {len(texts)} texts",
                hint="give one vector per text",
                table=self.table,
            )
        size = len(vectors[0])
        for index, vector in enumerate(vectors):
            if len(vector) != size:
                raise UserError(
                    f"{origin} gave vectors of different lengths ({size} and {len(vector)})",
                    table=self.table,
                )
            if not _comparable(vector):
                raise UserError(
                    f"{origin} gave a zero or non-finite vector for text #{index} "
                    f"({texts[index][:40]!r})",
                    hint="cosine similarity needs a non-zero vector; check the embedder",
                    table=self.table,
                )
        return vectors

    # --- blocking work (in worker threads) ------------------------------------------------

    async def _run(self, op: str, fn: Callable[..., _T], *args: Any) -> _T:
        try:
            return await asyncio.to_thread(fn, *args)
        except GeckoError:
            raise
        except Exception as exc:
            raise StorageError(
                f"vector store {op} failed on table {self.table!r} at {self.uri!r}: "
                f"{type(exc).__name__}: {exc}",
                hint="check that the URI is reachable and writable",
                uri=self.uri,
                table=self.table,
                operation=op,
            ) from exc

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
            raise UserError(
                f"table {self.table!r} at {self.uri!r} holds {stored}-dimensional vectors but "
                f"the embedder {self.embedder!r} makes {dimensions}-dimensional ones",
                hint=(
                    "use another table name for this embedder, or open the table with the "
                    f"embedder that filled it ({stored} dimensions)"
                ),
                uri=self.uri,
                table=self.table,
                table_dimensions=stored,
                embedder_dimensions=dimensions,
            )

    def _write_sync(self, rows: dict[str, tuple[str, str, list[float]]], dimensions: int) -> None:
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
        self,
        tbl: Any,
        mode: SearchMode,
        query: str,
        vector: list[float] | None,
        k: int,
        where: dict[str, Any] | None,
    ) -> list[VectorHit]:
        if vector is not None:
            self._check_dimensions(tbl, len(vector))
        if mode != "vector":
            self._ensure_fts(tbl)
        limit = k if where is None else max(k * _FILTER_FACTOR, _FILTER_MIN_CANDIDATES)
        while True:
            rows = self._query(tbl, mode, query, vector).limit(limit).to_list()
            hits = []
            for row in rows:
                metadata = json.loads(row["metadata"])
                if where is not None and not _matches(metadata, where):
                    continue
                hits.append(VectorHit(row["id"], row["text"], metadata, _score(mode, row)))
                if len(hits) == k:
                    return hits
            if len(rows) < limit:  # every candidate was seen
                return hits
            limit *= 4

    @staticmethod
    def _query(tbl: Any, mode: SearchMode, query: str, vector: list[float] | None) -> Any:
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


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, allow_nan=False)


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


def _check_table_name(table: str) -> str:
    valid = (
        isinstance(table, str)
        and table != ""
        and all(ch.isascii() and (ch.isalnum() or ch in "_-.") for ch in table)
    )
    if not valid:
        raise UserError(
            f"invalid vector table name {table!r}",
            hint="use letters, digits, '_', '-' and '.' only",
            table=table,
        )
    return table


def _check_where(where: dict[str, Any] | None) -> dict[str, Any] | None:
    if not where and isinstance(where, dict | None):
        return None  # no condition: every entry matches
    if not isinstance(where, dict):
        raise UserError(
            f"where must be a dict of metadata values, got {type(where).__name__}",
            hint='pass e.g. where={"topic": "pets"}',
        )
    try:
        return json.loads(_dumps(where))  # compare as stored: tuples become lists, ...
    except (TypeError, ValueError) as exc:
        raise UserError(f"where is not JSON-serialisable: {exc}") from None


_MISSING = object()


def _matches(metadata: Any, where: dict[str, Any]) -> bool:
    if not isinstance(metadata, dict):
        return False
    return all(_equal(metadata.get(key, _MISSING), value) for key, value in where.items())


def _equal(stored: Any, wanted: Any) -> bool:
    """JSON equality: ``1 == 1.0``, but ``True != 1`` (Python alone says they are equal)."""
    if isinstance(stored, bool) or isinstance(wanted, bool):
        return isinstance(stored, bool) and isinstance(wanted, bool) and stored == wanted
    if isinstance(stored, list) and isinstance(wanted, list):
        return len(stored) == len(wanted) and all(map(_equal, stored, wanted))
    if isinstance(stored, dict) and isinstance(wanted, dict):
        return stored.keys() == wanted.keys() and all(_equal(stored[k], wanted[k]) for k in stored)
    return stored == wanted


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


def _comparable(vector: Sequence[float]) -> bool:
    """Whether cosine similarity is defined for the vector (finite and not all zeros)."""
    total = 0.0
    for value in vector:
        if not math.isfinite(value):
            return False
        total += value * value
    return total > 0.0


def _score(mode: SearchMode, row: dict[str, Any]) -> float:
    if mode == "vector":
        return min(1.0, max(-1.0, 1.0 - float(row["_distance"])))
    return float(row["_score"] if mode == "fts" else row["_relevance_score"])
