"""RAG ingestion on Ray: read, split, embed and write a folder of documents in parallel.

Files are read and split by Ray tasks (a few files each); chunks are embedded by a pool of
embedder actors (``ray.util.ActorPool``: a model or client is built once per actor, not once
per batch); the driver writes each embedded batch to the vector store (one writer keeps
LanceDB's table versions tidy). A file whose content hash is already in the store is skipped,
a changed file's old chunks are replaced, and a file that cannot be read is reported and
skipped while the rest are ingested.
"""

from __future__ import annotations

import asyncio
import glob
import os
import sys
import time
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import ray
from ray.util import ActorPool
from tqdm import tqdm

from gecko_actors.core.embedders import Embedder
from gecko_actors.exceptions import GeckoError, UserError
from gecko_actors.knowledge import (
    DEFAULT_MAX_FILE_BYTES,
    Document,
    RecursiveSplitter,
    expand_paths,
    read_document,
)
from gecko_actors.runtime import ensure_initialized

__all__ = ["IngestSummary", "ingest"]

_T = TypeVar("_T")
_FILES_PER_TASK = 4
PathArg = str | os.PathLike[str]


@dataclass
class IngestSummary:
    """What an :func:`ingest` run did."""

    files: int = 0  # files found
    ingested: int = 0  # files read, split, embedded and written
    unchanged: int = 0  # skipped: the same content is already in the store
    chunks: int = 0
    tokens: int = 0  # an estimate (four characters a token)
    seconds: float = 0.0
    failed: dict[str, str] = field(default_factory=dict)  # path → why it was skipped
    workers: set[str] = field(default_factory=set)  # the embedder actors that did the work

    def __str__(self) -> str:
        text = (
            f"{self.files} file(s): {self.ingested} ingested, {self.unchanged} unchanged, "
            f"{len(self.failed)} failed; {self.chunks} chunk(s), ~{self.tokens} tokens, "
            f"{self.seconds:.1f}s"
        )
        return text + "".join(f"\n  failed: {path}: {why}" for path, why in self.failed.items())


def _read_and_split(
    paths: list[str], roots: list[str], splitter: RecursiveSplitter, max_bytes: int
) -> list[dict[str, Any]]:
    """A Ray task: each file's document and chunks, or why it could not be read (a file
    over ``max_bytes`` among them: refused before it is loaded)."""
    out: list[dict[str, Any]] = []
    for path in paths:
        try:
            document = read_document(path, roots=roots, max_bytes=max_bytes)
            out.append({"path": path, "document": document, "chunks": splitter.split(document)})
        except (GeckoError, OSError, ValueError) as exc:
            out.append({"path": path, "error": f"{type(exc).__name__}: {exc}"})
    return out


_read_task = ray.remote(num_cpus=0.5)(_read_and_split)


class EmbedderActor:
    """A member of the embedding pool; its name records which worker did a batch."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.name = f"{ray.get_runtime_context().get_node_id()[:8]}/{os.getpid()}"

    async def embed(self, chunks: list[Document]) -> tuple[list[Document], list[list[float]], str]:
        vectors = await self.embedder.embed([c.text for c in chunks])
        return chunks, vectors, self.name


def ingest(
    paths: PathArg | Iterable[PathArg],
    *,
    store: Any,
    roots: Sequence[PathArg] | None = None,
    embedder: Embedder | None = None,
    splitter: RecursiveSplitter | None = None,
    embed_actors: int = 2,
    batch_size: int = 64,
    progress: bool | None = None,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> IngestSummary:
    """Read, split, embed and store the files under ``paths`` (files, folders, globs).

    Args:
        store: a :class:`~gecko_actors.LanceVectorStore`, or a URL (``lancedb://dir``).
        roots: the folders files may be read from (default: each folder named in ``paths``,
            and the folder of each file or glob); anything resolving outside is refused.
        embedder: what makes the vectors (default: the store's); shipped to ``embed_actors``
            actors, e.g. a gateway embedder for LiteLLM embeddings. One holding a secret
            value is refused before anything starts (pass secrets by variable name:
            ``api_key_env=``, ``headers_env=``, ``extra_env=``).
        splitter: how documents are chunked (default: 1,000 characters, 200 overlap).
        batch_size: chunks per embedding call.
        progress: a progress bar over files (default: when stderr is a terminal).
        max_file_bytes: the largest file read, in bytes (default 50 MiB); a larger file is
            not loaded, and is reported in ``failed``.

    Returns:
        An :class:`IngestSummary` (files, chunks, tokens, seconds, and the files that failed).
    """
    started = time.perf_counter()
    if embed_actors < 1 or batch_size < 1:
        raise UserError(
            f"embed_actors and batch_size must be >= 1, got {embed_actors}, {batch_size}"
        )
    if type(max_file_bytes) is not int or max_file_bytes < 1:
        raise UserError(
            f"max_file_bytes must be a positive int (a size in bytes), got {max_file_bytes!r}",
            hint=f"e.g. max_file_bytes=200 * 1024 * 1024; the default is {DEFAULT_MAX_FILE_BYTES}",
        )
    store = _as_store(store, embedder)
    shipped = embedder or store.embedder
    _check_shippable(shipped)  # before any task or actor: Ray keeps an actor's arguments
    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    allowed = [str(r) for r in roots] if roots is not None else _default_roots(items)
    files = [str(f) for f in expand_paths(items, roots=allowed)]
    summary = IngestSummary(files=len(files))
    ensure_initialized()
    known = _run(store.source_hashes())
    splitter = splitter or RecursiveSplitter()
    groups = [files[i : i + _FILES_PER_TASK] for i in range(0, len(files), _FILES_PER_TASK)]
    pending = [_read_task.remote(group, allowed, splitter, max_file_bytes) for group in groups]
    actors = [
        ray.remote(EmbedderActor).options(num_cpus=0.5).remote(shipped) for _ in range(embed_actors)
    ]
    pool, buffer = ActorPool(actors), []
    show = sys.stderr.isatty() if progress is None else progress
    try:
        with tqdm(total=len(files), unit="file", desc="ingest", disable=not show) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for result in ray.get(done[0]):
                    buffer += _take(result, known, store, summary)
                    bar.update()
                while len(buffer) >= batch_size:
                    pool.submit(_embed, buffer[:batch_size])
                    buffer = buffer[batch_size:]
                _write_ready(pool, store, summary, wait=False)
            if buffer:
                pool.submit(_embed, buffer)
            _write_ready(pool, store, summary, wait=True)
    finally:
        for actor in actors:
            ray.kill(actor)
    summary.seconds = time.perf_counter() - started
    return summary


def _check_shippable(embedder: Any) -> None:
    """Refuse an embedder holding a secret value (a ``LiteLLMEmbedder`` with a key in
    ``extra_headers``, say): it is every embedder actor's argument, which Ray keeps in its
    actor table. The error names the argument and how to pass it by variable name."""
    check = getattr(embedder, "check_shippable", None)
    if callable(check):
        check()


def _embed(actor: Any, chunks: list[Document]) -> Any:
    return actor.embed.remote(chunks)


def _take(
    result: dict[str, Any], known: dict[str, str], store: Any, summary: IngestSummary
) -> list[Document]:
    """The chunks of a file to embed: none if it failed or is unchanged."""
    if "error" in result:
        summary.failed[result["path"]] = result["error"]
        return []
    document: Document = result["document"]
    source, digest = document.metadata["source"], document.metadata["content_hash"]
    if known.get(source) == digest:
        summary.unchanged += 1
        return []
    if source in known:  # changed: its old chunks go, whatever their number
        _run(store.delete(source=source))
    summary.ingested += 1
    return list(result["chunks"])


def _write_ready(pool: ActorPool, store: Any, summary: IngestSummary, *, wait: bool) -> None:
    """Write the embedded batches that are ready (all of them with ``wait``)."""
    while pool.has_next():
        try:
            chunks, vectors, worker = pool.get_next_unordered(timeout=None if wait else 0)
        except TimeoutError:
            return
        _run(
            store.add(
                [c.text for c in chunks],
                [dict(c.metadata) for c in chunks],
                [c.id for c in chunks],
                vectors=vectors,
            )
        )
        summary.chunks += len(chunks)
        summary.tokens += sum((len(c.text) + 3) // 4 for c in chunks)
        summary.workers.add(worker)


def _as_store(store: Any, embedder: Embedder | None) -> Any:
    if isinstance(store, str):
        from gecko_actors.stores.registry import vector_store_from_url

        return vector_store_from_url(store, embedder=embedder)
    if not callable(getattr(store, "add", None)):
        raise UserError(
            f"store {store!r} is not a vector store",
            hint="pass a LanceVectorStore or a URL such as 'lancedb://vectors'",
        )
    return store


def _default_roots(items: list[PathArg]) -> list[str]:
    """Each folder named, and the folder holding each file or a glob's fixed part."""
    roots = []
    for item in items:
        parts = Path(os.path.expanduser(os.fspath(item))).parts
        cut = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
        path = Path(*parts[:cut]) if cut else Path(".")
        roots.append(str(path if path.is_dir() else path.parent))
    return roots


def _run(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run one of the store's coroutines from this synchronous pipeline."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    coroutine.close()
    raise UserError(
        "ingest() blocks: call it outside the event loop",
        hint="in async code: await asyncio.to_thread(ingest, ...)",
    )
