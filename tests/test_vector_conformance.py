"""One conformance suite for every vector store: LanceDB, pgvector, Qdrant, Chroma and Milvus.

Each test takes ``make_store(table=..., embedder=...)``, which builds a store through
``vector_store_from_url`` on the backend's URL, so the URL registry is tested with it. A
backend-specific file can run the whole suite on another location (a server instead of a
local file) by importing these tests and overriding ``make_store``.

A backend whose package or server is missing is skipped here, and fails under
``GECKO_REQUIRE_STORES`` (CI sets it, so nothing is silently skipped there).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import pickle
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gecko_actors import LocalAgent, ScriptedModel, UserError
from gecko_actors.core.embedders import HashEmbedder
from gecko_actors.ingestion import ingest
from gecko_actors.retrieval import retrieval_tool
from gecko_actors.stores.registry import vector_store_from_url

MakeStore = Callable[..., Any]

# backend -> (the module it needs, the URL of a store under a temporary folder)
LOCAL: dict[str, tuple[str, Callable[[Path], str]]] = {
    "lancedb": ("lancedb", lambda tmp: f"lancedb://{tmp}/lance"),
    "qdrant": ("qdrant_client", lambda tmp: f"qdrant:///{tmp}/qdrant"),
    "chroma": ("chromadb", lambda tmp: f"chroma:///{tmp}/chroma"),
    "milvus": ("pymilvus", lambda tmp: f"milvus:///{tmp}/milvus.db"),
}
BACKENDS = [*LOCAL, "pgvector"]


def require(ok: bool, why: str) -> None:
    """Skip (or fail under GECKO_REQUIRE_STORES) when a backend cannot run here."""
    if not ok:
        (pytest.fail if os.environ.get("GECKO_REQUIRE_STORES") else pytest.skip)(why)


def unique_table() -> str:
    return f"conf_{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def pgvector_url(tmp_path_factory) -> Iterator[str]:
    require(importlib.util.find_spec("psycopg") is not None, "pip install gecko-actors[pgvector]")
    import pgutil

    bin_dir = pgutil.pgserver_bin_dir()
    require(bin_dir is not None, "pip install pgserver (PostgreSQL with pgvector)")
    with pgutil.postgres_server(tmp_path_factory.mktemp("pgvector"), bin_dir=bin_dir) as server:
        yield server.url.replace("postgresql://", "pgvector://", 1)


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def make_store(request, backend: str, tmp_path: Path) -> Iterator[MakeStore]:
    if backend == "pgvector":
        url = request.getfixturevalue("pgvector_url")
    else:
        module, local = LOCAL[backend]
        installed = importlib.util.find_spec(module) is not None
        require(installed, f"pip install gecko-actors[{backend}]")
        url = local(tmp_path)
    yield store_factory(url)


def store_factory(url: str) -> MakeStore:
    """``make_store`` for the stores at ``url``: a fresh table per test unless one is named."""
    default = unique_table()

    def make(table: str | None = None, embedder: Any = None) -> Any:
        embedder = embedder if embedder is not None else HashEmbedder(dimensions=64)
        return vector_store_from_url(url, table=table or default, embedder=embedder)

    return make


# --- writes and reads ---------------------------------------------------------------------------


async def test_add_then_search_finds_the_closest_text_first(make_store):
    store = make_store()
    assert await store.count() == 0
    assert await store.search("anything") == []  # no table yet
    texts = ["the cat sat on the mat", "stock markets fell sharply", "a kitten on a rug"]
    ids = await store.add(texts, [{"topic": "pets"}, {"topic": "money"}, {"topic": "pets"}])
    assert len(ids) == 3 and len(set(ids)) == 3
    assert await store.count() == 3
    hits = await store.search("the cat sat on the mat", k=3)
    assert hits[0].text == "the cat sat on the mat"
    assert hits[0].metadata == {"topic": "pets"}
    assert hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert all(-1.0 <= hit.score <= 1.0 for hit in hits)
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
    assert len(await store.search("cat", k=1)) == 1
    assert await store.search("   ") == []


async def test_ids_upsert_and_the_last_repeat_wins(make_store):
    store = make_store()
    first = await store.add(["alpha", "beta"])
    again = await store.add(["alpha"], [{"v": 2}])  # the same text: the same id, updated
    assert again == first[:1]
    assert await store.count() == 2
    [hit] = await store.search("alpha", k=1)
    assert hit.metadata == {"v": 2}
    ids = await store.add(["one", "two"], [{"n": 1}, {"n": 2}], ids=["x", "x"])
    assert ids == ["x", "x"]
    [hit] = await store.search("two", k=1, where={"n": 2})
    assert (hit.id, hit.text) == ("x", "two")
    assert await store.count() == 3


async def test_where_uses_json_equality(make_store):
    store = make_store()
    metas = [{"n": 1, "tags": ["a", "b"]}, {"n": 1.0}, {"n": True}, {"other": None}, {}]
    await store.add([f"text {i}" for i in range(5)], metas, ids=[f"id{i}" for i in range(5)])
    found = {hit.id for hit in await store.search("text", k=10, where={"n": 1})}
    assert found == {"id0", "id1"}  # 1 == 1.0, but not True
    assert {hit.id for hit in await store.search("text", k=10, where={"n": True})} == {"id2"}
    assert {h.id for h in await store.search("text", k=10, where={"tags": ("a", "b")})} == {"id0"}
    assert {h.id for h in await store.search("text", k=10, where={"other": None})} == {"id3"}
    assert await store.search("text", k=10, where={"missing": None}) == []
    assert len(await store.search("text", k=10, where={})) == 5


async def test_where_widens_the_candidates_until_k_match(make_store):
    store = make_store()
    texts = [f"common words number {i}" for i in range(150)]
    metas = [{"rare": i == 149} for i in range(150)]
    await store.add(texts, metas)
    hits = await store.search("common words", k=1, where={"rare": True})
    assert [hit.text for hit in hits] == ["common words number 149"]


async def test_delete_by_ids_and_by_source_and_source_hashes(make_store):
    store = make_store()
    metas = [
        {"source": "a.md", "content_hash": "h1"},
        {"source": "a.md", "content_hash": "h1"},
        {"source": "b.md", "content_hash": "h2"},
        {"source": "c.md"},
    ]
    ids = await store.add(["a one", "a two", "b one", "c one"], metas)
    assert await store.source_hashes() == {"a.md": "h1", "b.md": "h2"}
    assert await store.delete(source="a.md") == 2
    assert await store.source_hashes() == {"b.md": "h2"}
    assert await store.delete([ids[2], "no-such-id", ids[2]]) == 1
    assert await store.delete([]) == 0
    assert await store.count() == 1
    assert [hit.text for hit in await store.search("one", k=5)] == ["c one"]


async def test_text_modes_where_supported(make_store):
    store = make_store()
    await store.add(
        ["the quick brown fox", "lorem ipsum dolor", "foxes are quick animals"],
        ids=["fox", "lorem", "foxes"],
    )
    modes = store.search_modes()
    assert modes[0] == "vector"
    for mode in ("fts", "hybrid"):
        if mode in modes:
            hits = await store.search("lorem ipsum", k=2, mode=mode)
            assert hits and hits[0].id == "lorem"
            assert all(hit.score > 0 for hit in hits)
        else:
            with pytest.raises(UserError, match="does not support the search mode") as info:
                await store.search("lorem", mode=mode)
            assert "'vector'" in (info.value.hint or "")
    with pytest.raises(UserError, match="unknown search mode"):
        await store.search("x", mode="semantic")


async def test_concurrent_writers_on_one_table(make_store):
    """Eight writers at once, four through each of two store objects on the same table."""
    table = unique_table()
    stores = [make_store(table=table), make_store(table=table)]

    async def write(writer: int) -> list[str]:
        texts = [f"writer {writer} text {i}" for i in range(10)]
        return await stores[writer % 2].add(texts, [{"writer": writer}] * 10)

    written = await asyncio.gather(*(write(w) for w in range(8)))
    assert sum(len(ids) for ids in written) == 80
    assert await stores[0].count() == 80
    assert await stores[1].count() == 80
    hits = await stores[1].search("writer 5 text 3", k=1, where={"writer": 5})
    assert hits[0].text == "writer 5 text 3"


async def test_bad_input_is_refused_and_nothing_is_lost(make_store):
    store = make_store()
    await store.add(["kept"])
    with pytest.raises(UserError, match="metadata"):
        await store.add(["a", "b"], [{}])
    with pytest.raises(UserError, match="JSON"):
        await store.add(["a"], [{"x": object()}])
    with pytest.raises(UserError, match="ids"):
        await store.add(["a"], ids=[""])
    with pytest.raises(UserError, match="k must be"):
        await store.search("x", k=0)
    with pytest.raises(UserError, match="where"):
        await store.search("x", where=["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(UserError, match="single string"):
        await store.delete("kept")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="dimensional"):
        await make_store(table=store.table, embedder=HashEmbedder(dimensions=32)).add(["x"])
    assert await store.count() == 1


async def test_precomputed_vectors_and_pickling(make_store):
    store = make_store(embedder=HashEmbedder(dimensions=64))
    vectors = await HashEmbedder(dimensions=64).embed(["given one", "given two"])
    await store.add(["given one", "given two"], vectors=vectors)
    copy = pickle.loads(pickle.dumps(store))  # what Ray does to ship it to an actor
    assert await copy.count() == 2
    [hit] = await copy.search("given two", k=1)
    assert hit.text == "given two"
    with pytest.raises(UserError, match="vectors"):
        await store.add(["a"], vectors=[[0.0] * 64])


# --- what the package builds on the stores -------------------------------------------------------


@pytest.mark.usefixtures("ray_session")
def test_ingest_and_the_retrieval_tool_work_unchanged(make_store, tmp_path: Path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(6):
        (docs / f"note{i}.md").write_text(f"# Note {i}\n\nNote {i} is about topic {i}.\n")
    (docs / "fact.md").write_text("The capital of Geckoland is Lizardton.\n")
    store = make_store()
    first = ingest(docs, store=store, embed_actors=1)
    assert first.ingested == 7 and first.chunks == 7
    (docs / "note0.md").unlink()
    (docs / "fact.md").write_text("The capital of Geckoland is Lizardton, on the river Scale.\n")
    again = ingest(docs, store=store, embed_actors=1)
    assert again.ingested == 1 and again.unchanged == 5  # the rest is not stored twice
    search = retrieval_tool(store, k=1)
    seen: list[str] = []

    def model(messages, tools):
        if messages[-1].role != "tool":
            return [ScriptedModel.call("search_knowledge", query="capital of Geckoland")]
        seen.append(messages[-1].text)
        return "done"

    assert LocalAgent(ScriptedModel(model), [search]).run("Where?").content == "done"
    assert "Lizardton, on the river Scale" in seen[0] and "fact.md" in seen[0]
