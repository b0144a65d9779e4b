"""A retrieval tool for any agent: the top passages of a vector store, with source and score.

The tool holds the store (which pickles as its URI, table and embedder), so it works in a
``LocalAgent``, in an agent actor, or served by a toolbox actor.
"""

from __future__ import annotations

from typing import Any, Literal

from gecko_actors.core.tools import Tool
from gecko_actors.exceptions import UserError

Mode = Literal["vector", "fts", "hybrid"]


def retrieval_tool(
    store: Any,
    *,
    k: int = 4,
    mode: Mode | None = None,
    name: str = "search_knowledge",
    description: str | None = None,
) -> Tool:
    """A tool ``name(query)`` returning the ``k`` best passages of ``store``.

    Each passage comes with its source, chunk number and score. An empty query or an empty
    store answers with a sentence saying so (a model can act on it), not an exception.
    ``mode`` is the store's search mode: by default ``"hybrid"`` where the store supports it
    (LanceDB, pgvector), else ``"vector"``.

    Example:
        >>> search = retrieval_tool(LanceVectorStore("vectors"))  # doctest: +SKIP
        >>> agent = LocalAgent(model, [search])  # doctest: +SKIP
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UserError(f"k must be an integer >= 1, got {k!r}")
    supported = _modes(store)
    if mode is None:  # the best the store has: hybrid where it can, else vector
        mode = "hybrid" if "hybrid" in supported else "vector"
    if mode not in supported:
        raise UserError(
            f"the store {store!r} does not support the search mode {mode!r}"
            if mode in ("vector", "fts", "hybrid")
            else f"unknown search mode {mode!r}",
            hint="use " + " or ".join(repr(m) for m in supported),
        )

    async def search(query: str) -> str:
        """Search the knowledge base and return the most relevant passages with their sources.

        Args:
            query: what to look for, in a few words or a question.
        """
        if not query.strip():
            return "The query is empty: ask again with a few words describing what to find."
        hits = await store.search(query, k=k, mode=mode)
        if not hits:
            return f"No passages found for {query!r}: the knowledge base may be empty."
        return "\n\n".join(_passage(i, hit) for i, hit in enumerate(hits, 1))

    return Tool(
        search,
        name=name,
        description=description
        or "Search the knowledge base for passages about a query; "
        "returns the most relevant passages with their sources.",
    )


def _modes(store: Any) -> tuple[str, ...]:
    """The search modes ``store`` supports (every mode for a store that does not say)."""
    modes = getattr(store, "search_modes", None)
    return tuple(modes()) if callable(modes) else ("vector", "fts", "hybrid")


def _passage(rank: int, hit: Any) -> str:
    source = hit.metadata.get("source", hit.id)
    chunk = hit.metadata.get("chunk_index")
    where = source if chunk is None else f"{source}, chunk {chunk}"
    return f"[{rank}] ({where}; score {hit.score:.3f})\n{hit.text}"
