"""What every vector store shares: the API, its validation, metadata filters and score fusion.

A backend (LanceDB, pgvector, Qdrant, Chroma, Milvus) subclasses :class:`VectorStoreBase` and
implements a few blocking hooks; the base runs each in a worker thread, so the event loop never
waits on a database, and turns its failures into :class:`StorageError`. Every backend thereby
takes the same arguments, refuses the same bad input with the same messages, and filters
metadata with the same JSON equality, which is what lets ``ingest()`` and ``retrieval_tool()``
work unchanged on each and one conformance suite test them all.

Rows travel to the hooks as ``{id: (text, metadata_json, vector)}``; metadata is stored as a
JSON string (keys sorted) in every backend, because their native metadata types differ (Chroma
refuses nested values, Milvus wants a schema) and ``where`` must mean the same everywhere.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

from gecko_actors.core.embedders import Embedder, HashEmbedder, check_texts
from gecko_actors.exceptions import GeckoError, StorageError, UserError

__all__ = ["Candidate", "Rows", "SearchMode", "VectorHit", "VectorStoreBase", "content_id"]

_T = TypeVar("_T")
SearchMode = Literal["vector", "fts", "hybrid"]
Rows = dict[str, tuple[str, str, list[float]]]
"""Rows to write: ``{id: (text, metadata as JSON, vector)}``."""

_FILTER_MIN_CANDIDATES = 100
_FILTER_FACTOR = 10
_RRF_K = 60  # reciprocal-rank fusion's constant, as in the paper and in LanceDB


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


@dataclass(frozen=True)
class Candidate:
    """A row a backend's search found: metadata still as stored (JSON), score higher-better."""

    id: str
    text: str
    metadata: str
    score: float


def content_id(text: str) -> str:
    """The default id of a text: a hash of its content (the same text always gets the same id)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class VectorStoreBase:
    """The vector store API on top of a backend's blocking hooks.

    Subclasses set :attr:`modes` (the search modes they support natively; ``"hybrid"`` comes
    for free, fused here, when both others are supported), :attr:`location` (where the data
    is, for messages, never with a password) and implement the ``_*_sync`` hooks.
    """

    modes: ClassVar[frozenset[str]] = frozenset({"vector"})
    location: str = ""
    table: str
    embedder: Embedder

    def _init_base(self, table: str, embedder: Embedder | None) -> None:
        self.table = check_table_name(table)
        if embedder is not None and not callable(getattr(embedder, "embed", None)):
            raise UserError(
                f"embedder {embedder!r} has no embed() method",
                hint="pass an Embedder such as HashEmbedder() or LiteLLMEmbedder(...)",
            )
        self.embedder = embedder if embedder is not None else HashEmbedder()

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
        rows: Rows = {}
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
            mode: ``"vector"`` (cosine similarity of the embeddings), ``"fts"`` (the backend's
                full-text search) or ``"hybrid"`` (both, merged by reciprocal-rank fusion);
                :attr:`modes` says which a store supports.

        Returns:
            Up to ``k`` hits, ``[]`` when the table is empty or does not exist yet. ``score``
            is the cosine similarity in ``[-1, 1]`` for ``"vector"``, the backend's text score
            for ``"fts"`` and the fused relevance (small positive numbers) for ``"hybrid"``;
            higher is better in every mode.

        ``where`` is applied to the best candidates (at least 100, or ``10 * k``), widening
        the candidate set until ``k`` hits match or every candidate was seen.
        """
        if not isinstance(query, str):
            raise UserError(f"search() query must be a str, got {type(query).__name__}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise UserError(
                f"search() k must be an integer >= 1, got {k!r}",
                hint="ask for at least one hit",
                table=self.table,
            )
        self._check_mode(mode)
        expected = check_where(where)
        if not query.strip():
            return []
        vector = None if mode == "fts" else (await self._embed([query]))[0]
        return await self._run("search", self._filtered, mode, query, vector, k, expected)

    async def optimize(self) -> None:
        """Compact the table and fold new rows into its indexes (after big writes); a no-op
        where the backend maintains them as it goes."""

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

    # --- the backend's hooks (blocking; run in worker threads) ----------------------------

    def _write_sync(self, rows: Rows, dimensions: int) -> None:
        """Upsert ``rows`` in one write, creating the table for ``dimensions`` if missing."""
        raise NotImplementedError

    def _search_sync(
        self, mode: str, query: str, vector: list[float] | None, limit: int
    ) -> list[Candidate]:
        """The best ``limit`` rows for ``mode`` (``"vector"`` or ``"fts"``), best first;
        ``[]`` when the table does not exist."""
        raise NotImplementedError

    def _scan_sync(self) -> list[tuple[str, dict[str, Any]]]:
        """Every row's id and metadata."""
        raise NotImplementedError

    def _delete_sync(self, ids: list[str]) -> int:
        """Delete ``ids``; how many existed."""
        raise NotImplementedError

    def _count_sync(self) -> int:
        raise NotImplementedError

    # --- search -----------------------------------------------------------------------------

    def _check_mode(self, mode: object) -> None:
        supported = self.search_modes()
        if mode not in supported:
            known = mode in ("vector", "fts", "hybrid")
            raise UserError(
                f"{type(self).__name__} does not support the search mode {mode!r}"
                if known
                else f"unknown search mode {mode!r}",
                hint="use " + " or ".join(repr(m) for m in supported),
                table=self.table,
            )

    @classmethod
    def search_modes(cls) -> tuple[str, ...]:
        """The search modes this store supports, ``"vector"`` first."""
        modes = set(cls.modes)
        if {"vector", "fts"} <= modes:
            modes.add("hybrid")
        return tuple(m for m in ("vector", "fts", "hybrid") if m in modes)

    def _filtered(
        self,
        mode: str,
        query: str,
        vector: list[float] | None,
        k: int,
        where: dict[str, Any] | None,
    ) -> list[VectorHit]:
        if vector is not None:
            self._check_query_dimensions(len(vector))
        limit = k if where is None else max(k * _FILTER_FACTOR, _FILTER_MIN_CANDIDATES)
        while True:
            rows = self._candidates(mode, query, vector, limit)
            hits = []
            for row in rows:
                metadata = json.loads(row.metadata)
                if where is not None and not matches(metadata, where):
                    continue
                hits.append(VectorHit(row.id, row.text, metadata, row.score))
                if len(hits) == k:
                    return hits
            if len(rows) < limit:  # every candidate was seen
                return hits
            limit *= 4

    def _candidates(
        self, mode: str, query: str, vector: list[float] | None, limit: int
    ) -> list[Candidate]:
        if mode != "hybrid" or "hybrid" in self.modes:
            return self._search_sync(mode, query, vector, limit)
        return fuse(
            self._search_sync("vector", query, vector, limit),
            self._search_sync("fts", query, None, limit),
        )[:limit]

    def _check_query_dimensions(self, dimensions: int) -> None:
        """Refuse a query vector of another dimension than the table's (backends override)."""

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
                encoded.append(dumps(meta))
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
        vectors = [[float(x) for x in v] for v in vectors]
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
            if not comparable(vector):
                raise UserError(
                    f"{origin} gave a zero or non-finite vector for text #{index} "
                    f"({texts[index][:40]!r})",
                    hint="cosine similarity needs a non-zero vector; check the embedder",
                    table=self.table,
                )
        return vectors

    def _dimension_error(self, stored: int, dimensions: int) -> UserError:
        return UserError(
            f"table {self.table!r} at {self.location!r} holds {stored}-dimensional vectors but "
            f"the embedder {self.embedder!r} makes {dimensions}-dimensional ones",
            hint=(
                "use another table name for this embedder, or open the table with the "
                f"embedder that filled it ({stored} dimensions)"
            ),
            uri=self.location,
            table=self.table,
            table_dimensions=stored,
            embedder_dimensions=dimensions,
        )

    async def _run(self, op: str, fn: Callable[..., _T], *args: Any) -> _T:
        try:
            return await asyncio.to_thread(fn, *args)
        except GeckoError:
            raise
        except Exception as exc:
            raise StorageError(
                f"vector store {op} failed on table {self.table!r} at {self.location!r}: "
                f"{type(exc).__name__}: {exc}",
                hint="check that the store is reachable and writable",
                uri=self.location,
                table=self.table,
                operation=op,
            ) from exc


# --- helpers --------------------------------------------------------------------------------


def dumps(value: Any) -> str:
    """JSON as every backend stores metadata: keys sorted, no NaN."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, allow_nan=False)


def check_table_name(table: str) -> str:
    """``table`` if it is a valid table (collection) name, else a :class:`UserError`."""
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


def check_where(where: dict[str, Any] | None) -> dict[str, Any] | None:
    """``where`` as stored values compare (tuples become lists, ...); ``None`` for no filter."""
    if not where and isinstance(where, dict | None):
        return None  # no condition: every entry matches
    if not isinstance(where, dict):
        raise UserError(
            f"where must be a dict of metadata values, got {type(where).__name__}",
            hint='pass e.g. where={"topic": "pets"}',
        )
    try:
        return json.loads(dumps(where))
    except (TypeError, ValueError) as exc:
        raise UserError(f"where is not JSON-serialisable: {exc}") from None


_MISSING = object()


def matches(metadata: Any, where: dict[str, Any]) -> bool:
    """Whether ``metadata`` has every key/value pair of ``where`` (JSON equality)."""
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


def comparable(vector: Sequence[float]) -> bool:
    """Whether cosine similarity is defined for the vector (finite and not all zeros)."""
    total = 0.0
    for value in vector:
        if not math.isfinite(value):
            return False
        total += value * value
    return total > 0.0


def cosine_score(distance: float) -> float:
    """A cosine distance (``1 - similarity``) as the similarity, clamped to ``[-1, 1]``."""
    return min(1.0, max(-1.0, 1.0 - float(distance)))


def fuse(*rankings: list[Candidate]) -> list[Candidate]:
    """Reciprocal-rank fusion of ranked lists: each row scores ``sum(1 / (60 + rank))``."""
    scores: dict[str, float] = {}
    rows: dict[str, Candidate] = {}
    for ranking in rankings:
        for rank, row in enumerate(ranking, start=1):
            scores[row.id] = scores.get(row.id, 0.0) + 1.0 / (_RRF_K + rank)
            rows.setdefault(row.id, row)
    ranked = sorted(scores, key=lambda key: -scores[key])
    return [Candidate(key, rows[key].text, rows[key].metadata, scores[key]) for key in ranked]
