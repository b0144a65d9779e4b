"""RAG ingestion on Ray and the retrieval tool, against LanceDB in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from gecko_actors import LanceVectorStore, LocalAgent, ScriptedModel, UserError
from gecko_actors.ingestion import ingest
from gecko_actors.knowledge import RecursiveSplitter
from gecko_actors.retrieval import retrieval_tool

pytestmark = pytest.mark.usefixtures("ray_session")

FACT = "The capital of Geckoland is Lizardton, on the river Scale."


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    for i in range(200):
        folder = root / f"part{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        body = f"# Note {i}\n\nThis is note number {i} about topic {i % 7}. " * 3
        (folder / f"note{i:03}.md").write_text(body + (f"\n\n{FACT}\n" if i == 123 else ""))
    (root / "broken.txt").write_bytes(b"\xff\xfe not utf-8 \xff")
    return root


def test_ingest_spreads_out_reports_failures_and_is_idempotent(docs: Path, tmp_path: Path):
    store = LanceVectorStore(tmp_path / "vectors")
    splitter = RecursiveSplitter(chunk_size=120, overlap=20)
    first = ingest(docs, store=store, splitter=splitter, embed_actors=2, batch_size=16)
    assert first.files == 201 and first.ingested == 200 and first.unchanged == 0
    assert list(first.failed) == [str((docs / "broken.txt").resolve())]
    assert "UnicodeDecodeError" in first.failed[str((docs / "broken.txt").resolve())] or (
        "UTF-8" in next(iter(first.failed.values()))
    )
    assert first.chunks >= 400 and first.tokens > 0
    assert len(first.workers) == 2  # both embedder actors (two processes) did batches
    count = _count(store)
    assert count == first.chunks

    again = ingest(docs, store=store, splitter=splitter)
    assert again.ingested == 0 and again.unchanged == 200 and again.chunks == 0
    assert _count(store) == count  # no duplicates

    changed = docs / "part3" / "note123.md"
    changed.write_text("A short replacement.")
    third = ingest(docs, store=store, splitter=splitter)
    assert third.ingested == 1 and third.unchanged == 199 and third.chunks == 1
    old_chunks = first.chunks - again.chunks  # every chunk of the run
    assert _count(store) < old_chunks  # the old, longer version's chunks are gone
    assert "Summary" not in str(third) and "1 ingested" in str(third)


def test_paths_outside_the_roots_are_refused(docs: Path, tmp_path: Path):
    store = LanceVectorStore(tmp_path / "vectors")
    with pytest.raises(UserError, match="outside"):
        ingest([docs / ".." / ".." / "etc" / "passwd"], store=store, roots=[docs])


def test_an_agent_answers_from_a_document_with_the_retrieval_tool(docs: Path, tmp_path: Path):
    store = LanceVectorStore(tmp_path / "vectors")
    ingest(docs, store=store, splitter=RecursiveSplitter(chunk_size=200, overlap=20))
    search = retrieval_tool(store, k=3)

    def model(messages, tools):
        if messages[-1].role != "tool":
            return [ScriptedModel.call("search_knowledge", query="capital of Geckoland")]
        first = messages[-1].text.split("\n\n")[0]
        return f"Lizardton (from {first.split('(')[1].split(',')[0]})"

    answer = LocalAgent(ScriptedModel(model), [search]).run("What is the capital?").content
    assert answer == "Lizardton (from part3/note123.md)"


async def test_the_retrieval_tool_answers_empty_queries_and_stores(tmp_path: Path):
    search = retrieval_tool(LanceVectorStore(tmp_path / "empty"))
    assert "empty" in (await search.execute({"query": "  "})).content
    assert "No passages found" in (await search.execute({"query": "anything"})).content
    with pytest.raises(UserError, match="k must be"):
        retrieval_tool(LanceVectorStore(tmp_path / "x"), k=0)


def _count(store: LanceVectorStore) -> int:
    import asyncio

    return asyncio.run(store.count())


def test_the_package_exports_the_functions_not_their_modules() -> None:
    import gecko_actors
    import gecko_actors.ingestion
    import gecko_actors.retrieval

    assert gecko_actors.ingest is gecko_actors.ingestion.ingest
    assert gecko_actors.retrieval_tool is gecko_actors.retrieval.retrieval_tool
