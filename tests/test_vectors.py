"""Embedders and the LanceDB vector store: offline, on tmp_path, against the fake server."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import asyncio
import contextlib
import math
import pickle

import numpy as np
import pytest

from gecko_actors.core.embedders import Embedder, HashEmbedder, LiteLLMEmbedder
from gecko_actors.exceptions import ConfigurationError, ModelError, StorageError, UserError
from gecko_actors.stores import vectors
from gecko_actors.stores.vectors import LanceVectorStore, VectorHit
from gecko_actors.testing.fake_server import DEFAULT_EMBEDDING_DIMENSIONS, FakeLLMServer

PETS = [
    "the cat sat on the mat",
    "dogs love long walks in the park",
    "quarterly revenue grew by ten percent",
    "the parrot repeats every word it hears",
]


def _cos(a: list[float], b: list[float]) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# --- HashEmbedder ---------------------------------------------------------------------------


async def test_hash_embedder_is_deterministic_normalised_and_sized():
    texts = ["the cat sat on the mat", "Ünïcode wörds ✓", ""]
    first = await HashEmbedder(64).embed(texts)
    second = await HashEmbedder(64).embed(texts)
    assert first == second  # no per-process hash seed involved
    assert [len(v) for v in first] == [64, 64, 64]
    for vector in first:
        assert math.isclose(float(np.linalg.norm(vector)), 1.0, rel_tol=1e-5)
    assert len((await HashEmbedder().embed(["x"]))[0]) == 256
    assert await HashEmbedder().embed([]) == []


async def test_hash_embedder_puts_shared_words_closer():
    cat, cat2, money = await HashEmbedder().embed(
        ["the cat sat on the mat", "a cat on a mat", "quarterly revenue grew"]
    )
    assert _cos(cat, cat2) > 0.3
    assert _cos(cat, cat2) > _cos(cat, money) + 0.3
    # Case and punctuation do not matter; word order does not either.
    a, b = await HashEmbedder().embed(["The CAT, sat!", "sat the cat"])
    assert _cos(a, b) > 0.99


def test_hash_embedder_validates_and_satisfies_the_protocol():
    assert isinstance(HashEmbedder(), Embedder)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(UserError):
            HashEmbedder(bad)
    with pytest.raises(UserError, match="not a single string"):
        asyncio.run(HashEmbedder().embed("oops"))


# --- LanceVectorStore -----------------------------------------------------------------------


async def test_add_then_search_returns_the_relevant_text_first(tmp_path):
    store = LanceVectorStore(tmp_path / "db")
    ids = await store.add(PETS, [{"topic": "pets", "n": i} for i in range(len(PETS))])
    assert len(ids) == len(PETS) == len(set(ids))
    assert await store.count() == len(PETS)

    hits = await store.search("where did the cat sit?", k=3)
    assert isinstance(hits[0], VectorHit)
    assert hits[0].text == "the cat sat on the mat"
    assert hits[0].id == ids[0]
    assert hits[0].metadata == {"topic": "pets", "n": 0}
    assert len(hits) == 3

    scores = [hit.score for hit in await store.search("cat", k=10)]
    assert len(scores) == len(PETS)  # k larger than the table: everything, once
    assert scores == sorted(scores, reverse=True)
    assert all(-1.0 <= s <= 1.0 for s in scores)
    exact = await store.search("quarterly revenue grew by ten percent", k=1)
    assert exact[0].score == pytest.approx(1.0, abs=1e-5)


async def test_readding_the_same_text_upserts_instead_of_duplicating(tmp_path):
    store = LanceVectorStore(tmp_path / "db")
    first = await store.add(PETS[:2], [{"v": 1}, {"v": 1}])
    again = await store.add(PETS[:2], [{"v": 2}, {"v": 2}])
    assert first == again
    assert await store.count() == 2
    hit = (await store.search(PETS[0], k=1))[0]
    assert hit.metadata == {"v": 2}  # the second add updated it
    # A repeated text inside one call is stored once; the last metadata wins.
    ids = await store.add(["x y z", "x y z"], [{"v": "a"}, {"v": "b"}])
    assert ids[0] == ids[1]
    assert await store.count() == 3
    assert (await store.search("x y z", k=1))[0].metadata == {"v": "b"}


async def test_explicit_ids_and_delete(tmp_path):
    store = LanceVectorStore(tmp_path / "db")
    assert await store.add(PETS[:3], ids=["a", "b", "it's"]) == ["a", "b", "it's"]
    assert await store.count() == 3
    # Same id, new text: replaced, not added.
    await store.add(["a completely different note"], ids=["a"])
    assert await store.count() == 3
    assert (await store.search("completely different", k=1))[0].id == "a"

    assert await store.delete(["it's", "missing"]) == 1  # a quote in an id is fine
    assert await store.count() == 2
    assert "it's" not in {hit.id for hit in await store.search(PETS[2], k=5)}
    assert await store.delete([]) == 0
    with pytest.raises(UserError, match="single string"):
        await store.delete("a")


async def test_where_filters_on_exact_metadata_beyond_the_nearest_candidates(tmp_path):
    store = LanceVectorStore(tmp_path / "db")
    # 150 near-duplicates of the query in topic "cats", one unrelated text in topic "money":
    # the filter must look past the first candidates to find it.
    texts = [f"the cat sat on the mat number {i}" for i in range(150)] + [PETS[2]]
    metadata = [{"topic": "cats", "i": i, "tags": ["x"]} for i in range(150)]
    metadata.append({"topic": "money", "i": 150, "tags": ["y", "z"]})
    await store.add(texts, metadata)

    hits = await store.search("the cat sat on the mat", k=2, where={"topic": "money"})
    assert [hit.text for hit in hits] == [PETS[2]]
    assert hits[0].metadata["topic"] == "money"
    hits = await store.search("cat", k=3, where={"topic": "cats"})
    assert len(hits) == 3 and all(hit.metadata["topic"] == "cats" for hit in hits)
    assert [h.text for h in await store.search("cat", where={"tags": ("y", "z")})] == [PETS[2]]
    assert await store.search("cat", where={"i": 7.0, "topic": "cats"}) != []
    assert await store.search("cat", where={"topic": "dogs"}) == []
    assert await store.search("cat", where={"missing": None}) == []


async def test_store_persists_across_a_restart_and_sees_other_writers(tmp_path):
    uri = str(tmp_path / "db")
    writer = LanceVectorStore(uri, table="notes")
    await writer.add(PETS, [{"n": i} for i in range(len(PETS))])
    reader = LanceVectorStore(uri, table="notes")  # a "restarted" process
    assert await reader.count() == len(PETS)
    hit = (await reader.search("parrot repeats words", k=1))[0]
    assert (hit.text, hit.metadata) == (PETS[3], {"n": 3})
    # Writes through one object are visible to an object that already read the table.
    await writer.add(["a brand new memory"])
    assert await reader.count() == len(PETS) + 1
    assert (await reader.search("brand new memory", k=1))[0].text == "a brand new memory"
    # Another table in the same directory is independent.
    assert await LanceVectorStore(uri, table="other").count() == 0


async def test_dimension_mismatch_is_a_user_error_naming_both_sizes(tmp_path):
    uri = tmp_path / "db"
    await LanceVectorStore(uri, table="mem", embedder=HashEmbedder(64)).add(PETS)
    other = LanceVectorStore(uri, table="mem", embedder=HashEmbedder(32))
    for call in (other.add(["x"]), other.search("x"), other.count()):
        with pytest.raises(UserError) as info:
            await call
        message = str(info.value)
        assert "64" in message and "32" in message and "'mem'" in message
        assert "another table" in message
    # The table is untouched and still works with the embedder that filled it.
    assert await LanceVectorStore(uri, table="mem", embedder=HashEmbedder(64)).count() == 4


async def test_pickled_store_reconnects_and_keeps_working(tmp_path):
    store = LanceVectorStore(tmp_path / "db", embedder=HashEmbedder(128))
    fresh = pickle.loads(pickle.dumps(store))
    await store.add(PETS[:2])  # now holds an open connection and table
    clone = pickle.loads(pickle.dumps(store))
    assert (clone.uri, clone.table, clone.embedder) == (store.uri, store.table, store.embedder)
    assert await clone.count() == 2
    await clone.add(PETS[2:])
    assert await store.count() == await fresh.count() == len(PETS)
    assert (await fresh.search("parrot", k=1))[0].text == PETS[3]


async def test_empty_inputs_and_invalid_arguments(tmp_path):
    root = tmp_path / "db"
    store = LanceVectorStore(root)
    assert await store.add([]) == []
    assert await store.search("anything") == []  # the table does not exist
    assert await store.count() == 0
    assert await store.delete(["x"]) == 0
    assert not (root / "memory.lance").exists()  # nothing was created

    await store.add(PETS[:1])
    for k in (0, -1, 1.5):
        with pytest.raises(UserError, match="k must be"):
            await store.search("cat", k=k)
    with pytest.raises(UserError, match="2 metadata dicts for 1 texts"):
        await store.add(["a"], [{}, {}])
    with pytest.raises(UserError, match="not JSON-serialisable"):
        await store.add(["a"], [{"when": object()}])
    with pytest.raises(UserError, match="ids"):
        await store.add(["a", "b"], ids=["only-one"])
    with pytest.raises(UserError, match="single string"):
        await store.add("not a list")
    with pytest.raises(UserError, match="table name"):
        LanceVectorStore(root, table="bad name/..")
    assert await store.count() == 1


async def test_full_text_and_hybrid_search(tmp_path):
    store = LanceVectorStore(tmp_path / "v", embedder=HashEmbedder(32))
    await store.add(PETS, [{"n": i} for i in range(len(PETS))])
    fts = await store.search("parrot", k=2, mode="fts")
    assert [h.text for h in fts] == [PETS[3]] and fts[0].score > 0  # only it has the word
    await store.add(["a parrot named Polly"])  # written after the index was built...
    assert {h.text for h in await store.search("parrot", k=5, mode="fts")} == {
        PETS[3],
        "a parrot named Polly",
    }  # ...and found all the same
    hybrid = await store.search("parrot words", k=3, mode="hybrid")
    assert hybrid[0].text in (PETS[3], "a parrot named Polly") and len(hybrid) == 3
    assert [h.score for h in hybrid] == sorted((h.score for h in hybrid), reverse=True)
    assert await store.search("parrot", k=2, mode="fts", where={"n": 0}) == []
    assert await store.search("   ", mode="hybrid") == []
    with pytest.raises(UserError, match="unknown search mode"):
        await store.search("x", mode="bm25")


async def test_precomputed_vectors_sources_and_delete_by_source(tmp_path):
    store = LanceVectorStore(tmp_path / "v", embedder=HashEmbedder(16))
    vectors = await HashEmbedder(16).embed(PETS)
    meta = [{"source": "a.md" if i < 2 else "b.md", "content_hash": f"h{i < 2}"} for i in range(4)]
    await store.add(PETS, meta, [f"c{i}" for i in range(4)], vectors=vectors)
    assert (await store.search(PETS[2], k=1))[0].id == "c2"
    assert await store.source_hashes() == {"a.md": "hTrue", "b.md": "hFalse"}
    assert await store.delete(source="a.md") == 2
    assert await store.count() == 2 and set(await store.source_hashes()) == {"b.md"}
    with pytest.raises(UserError, match="2 vectors for 1 texts"):
        await store.add(["x"], vectors=vectors[:2])
    with pytest.raises(UserError, match="16-dimensional"):
        await store.add(["x"], vectors=[[1.0] * 8])
    with pytest.raises(UserError, match="ids or a source"):
        await store.delete(["c2"], source="b.md")


async def test_concurrent_first_writes_create_the_table_once(tmp_path):
    uri = tmp_path / "db"
    one, two = LanceVectorStore(uri), LanceVectorStore(uri)
    await asyncio.gather(*(s.add([f"note {i}"]) for i in range(4) for s in (one, two)))
    assert await one.count() == 4  # same texts from both stores: upserted, not duplicated


async def test_racing_table_creation_across_processes_is_retried(tmp_path, monkeypatch):
    # Without the in-process lock, stores race like separate processes would: lancedb may
    # turn a losing create into an Overwrite commit that conflicts with the others' writes.
    monkeypatch.setattr(vectors, "_OPEN_LOCK", contextlib.nullcontext())
    embedder = HashEmbedder(16)
    for trial in range(4):
        stores = [LanceVectorStore(tmp_path / f"db{trial}", embedder=embedder) for _ in range(4)]
        await asyncio.gather(
            *(s.add([f"shared {i % 2}", f"own {i}"]) for i, s in enumerate(stores))
        )
        assert await stores[0].count() == 6


async def test_transient_conflicts_are_retried_and_other_errors_are_not(tmp_path, monkeypatch):
    store = LanceVectorStore(tmp_path / "db")
    real = store._open_or_create
    failures = [RuntimeError("lance error: Retryable commit conflict for version 2")]

    def flaky(dimensions):
        if failures:
            raise failures.pop()
        return real(dimensions)

    monkeypatch.setattr(store, "_open_or_create", flaky)
    await store.add(["first"])
    assert failures == [] and await store.count() == 1

    other = LanceVectorStore(tmp_path / "db2")
    calls = []

    def broken(dimensions):
        calls.append(dimensions)
        raise RuntimeError("permission denied")

    monkeypatch.setattr(other, "_open_or_create", broken)
    with pytest.raises(StorageError, match="permission denied"):
        await other.add(["x"])
    assert len(calls) == 1


async def test_storage_failures_are_storage_errors(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    store = LanceVectorStore(blocker / "db")
    with pytest.raises(StorageError) as info:
        await store.add(["x"])
    assert info.value.table == "memory" and "add" in str(info.value)


# --- LiteLLMEmbedder against the fake server ------------------------------------------------


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("GECKO_TEST_EMBED_KEY", "sk-test-embeddings")
    return "GECKO_TEST_EMBED_KEY"


def _embedder(server: FakeLLMServer, key_env: str, **kwargs) -> LiteLLMEmbedder:
    return LiteLLMEmbedder(
        "openai/text-embedding-3-small", api_base=server.url, api_key_env=key_env, **kwargs
    )


async def test_litellm_embedder_batches_and_learns_the_dimension(fake_llm_server, key_env):
    embedder = _embedder(fake_llm_server, key_env, batch_size=2)
    assert embedder.dimensions is None
    texts = [f"text {i}" for i in range(5)] + ["text 0"]
    vectors = await embedder.embed(texts)
    assert len(vectors) == 6
    assert {len(v) for v in vectors} == {DEFAULT_EMBEDDING_DIMENSIONS}
    assert embedder.dimensions == DEFAULT_EMBEDDING_DIMENSIONS
    assert vectors[0] == vectors[5] and vectors[0] != vectors[1]  # order is kept
    requests = fake_llm_server.embedding_requests
    assert len(requests) == math.ceil(len(texts) / 2)
    assert [r["input"] for r in requests] == [texts[0:2], texts[2:4], texts[4:6]]
    assert requests[0]["model"] == "text-embedding-3-small"
    assert await embedder.embed([]) == []
    assert len(fake_llm_server.embedding_requests) == 3  # no request for nothing


async def test_litellm_embedder_errors_name_the_model(fake_llm_server, key_env, monkeypatch):
    with pytest.raises(
        ModelError, match=f"vectors of {DEFAULT_EMBEDDING_DIMENSIONS} dimensions, expected 16"
    ):
        await _embedder(fake_llm_server, key_env, dimensions=16).embed(["x"])

    monkeypatch.delenv(key_env)
    with pytest.raises(ConfigurationError, match=key_env):
        await _embedder(fake_llm_server, key_env).embed(["x"])

    monkeypatch.setenv(key_env, "sk-test-embeddings")
    wrong_path = _embedder(fake_llm_server, key_env, num_retries=2)
    wrong_path.api_base = f"{fake_llm_server.url}/nope"  # answered 404, not retried
    with pytest.raises(ModelError, match="text-embedding-3-small") as info:
        await wrong_path.embed(["x"])
    assert info.value.model == "openai/text-embedding-3-small"
    assert (info.value.status_code, info.value.attempts) == (404, 1)
    with pytest.raises(UserError, match="extra arguments"):
        LiteLLMEmbedder("openai/x", input=["no"])


async def test_store_with_litellm_embedder_end_to_end(tmp_path, fake_llm_server, key_env):
    store = LanceVectorStore(tmp_path / "db", embedder=_embedder(fake_llm_server, key_env))
    store = pickle.loads(pickle.dumps(store))  # as Ray would ship it
    ids = await store.add(PETS, [{"n": i} for i in range(len(PETS))])
    assert await store.count() == len(PETS)
    hits = await store.search(PETS[1], k=2)
    assert hits[0].id == ids[1] and hits[0].metadata == {"n": 1}
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].score >= hits[1].score
    # One request for the batch of texts, one for the query.
    assert len(fake_llm_server.embedding_requests) == 2
