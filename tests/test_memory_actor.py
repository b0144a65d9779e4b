"""Memory actors: conversations that outlive agent processes, and vector recall."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import ray

from gecko_actors import Agent, Memory, ScriptedModel, UserError

pytestmark = pytest.mark.usefixtures("ray_session")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def count_users(messages, tools):
    return f"seen {sum(m.role == 'user' for m in messages)} user messages"


def no_memory_actor(*args: object, **kwargs: object) -> Memory:
    raise AssertionError("an agent over a SQLite store made a memory actor")


@pytest.fixture
def memory(tmp_path: Path):
    mem = Memory.spawn(
        unique("mem"), sessions=f"sqlite:///{tmp_path}/s.db", vectors=tmp_path / "vectors"
    )
    yield mem
    mem.kill()


def test_conversation_survives_an_agent_crash(memory: Memory) -> None:
    name = unique("forgetful")
    agent = Agent.spawn(name, model=ScriptedModel(count_users), memory=memory)
    try:
        assert agent.run("one", session_id="s").content == "seen 1 user messages"
        pid = agent.info()["pid"]
        agent.kill(no_restart=False)  # like a crash: Ray restarts it
        assert agent.run("two", session_id="s", timeout=60).content == "seen 2 user messages"
        assert agent.info()["pid"] != pid
        texts = [m.text for m in memory.history(name, "s")]
        assert texts == ["one", "seen 1 user messages", "two", "seen 2 user messages"]
        assert memory.sessions(name) == ["s"]
    finally:
        agent.kill()


def test_sessions_are_kept_per_agent(memory: Memory) -> None:
    first, second = unique("a"), unique("b")
    agents = [
        Agent.spawn(n, model=ScriptedModel(count_users), memory=memory) for n in (first, second)
    ]
    try:
        agents[0].run("x", session_id="shared-id")
        out = agents[1].run("y", session_id="shared-id")
        assert out.content == "seen 1 user messages"  # b never sees a's conversation
        assert next(m.text for m in memory.history(first, "shared-id")) == "x"
    finally:
        for agent in agents:
            agent.kill()


def test_agents_reach_a_sqlite_memory_without_its_actor(memory: Memory, tmp_path: Path) -> None:
    """A SQLite (or Redis) store is opened by URL in the agent's own process: the memory
    actor gone for good, agents still keep and read their conversations, hosted and
    dedicated alike, and a new memory over the same file reads them."""
    hosted = Agent.spawn(unique("steady"), model=ScriptedModel(count_users), memory=memory)
    dedicated = Agent.spawn(
        unique("steady-d"), model=ScriptedModel(count_users), memory=memory, dedicated=True
    )
    try:
        for agent in (hosted, dedicated):
            agent.run("before", session_id="s")
        memory.kill()  # no restart: every call through it would fail from now on
        for agent in (hosted, dedicated):
            assert agent.run("after", session_id="s").content == "seen 2 user messages"
        again = Memory.spawn(unique("again"), sessions=f"sqlite:///{tmp_path}/s.db")
        try:
            texts = [m.text for m in again.history(hosted.name, "s")]
            assert texts == ["before", "seen 1 user messages", "after", "seen 2 user messages"]
            assert again.sessions(dedicated.name) == ["s"]
        finally:
            again.kill()
    finally:
        hosted.kill()
        dedicated.kill()


def test_agents_default_to_the_store_setting_without_a_memory_actor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path}/default.db"
    monkeypatch.setenv("GECKO_STORAGE_URL", url)
    name = unique("direct")
    with monkeypatch.context() as patched:
        patched.setattr(Memory, "spawn", no_memory_actor)
        agent = Agent.spawn(name, model=ScriptedModel(count_users))
    try:
        assert agent.run("hello", session_id="s").content == "seen 1 user messages"
        reader = Memory.spawn(unique("reader"), sessions=url)
        try:
            assert next(m.text for m in reader.history(name, "s")) == "hello"
        finally:
            reader.kill()
    finally:
        agent.kill()


def test_vector_recall(memory: Memory) -> None:
    ids = memory.add(
        ["Paris is the capital of France.", "The cat sat on the mat.", "Revenue grew 5%."],
        [{"topic": "geo"}, {"topic": "pets"}, {"topic": "finance"}],
    )
    assert len(ids) == 3
    # Same text, same id: an upsert, not a duplicate.
    assert memory.add(["Paris is the capital of France."], [{"topic": "geo"}]) == ids[:1]
    hits = memory.search("What is the capital of France?", k=2)
    assert hits[0].text == "Paris is the capital of France."
    assert hits[0].metadata == {"topic": "geo"}
    assert hits[0].score >= hits[1].score
    assert [h.text for h in memory.search("cat", k=3, where={"topic": "pets"})] == [
        "The cat sat on the mat."
    ]


def test_a_memory_keeps_vectors_in_any_store_by_url(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("chromadb")
    monkeypatch.chdir(tmp_path)  # the relative folder is resolved here, not in the actor
    memory = Memory.spawn(unique("chroma"), sessions="memory://", vectors="chroma:///vectors")
    try:
        memory.add(["Paris is the capital of France.", "The cat sat on the mat."])
        [hit] = memory.search("the capital of France", k=1)
        assert hit.text == "Paris is the capital of France."
        assert (tmp_path / "vectors").is_dir()
    finally:
        memory.kill()
    with pytest.raises(UserError, match="password or token"):
        Memory.spawn(unique("secret"), vectors="pgvector://u:hunter2-pw@db/x")
    with pytest.raises(UserError, match="unknown scheme"):
        Memory.spawn(unique("unknown"), vectors="weaviate://host")


def test_bad_input(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no memory named"):
        Memory.get(unique("nope"))
    with pytest.raises(UserError, match="session store URL"):
        Memory.spawn(unique("bad"), sessions="mongodb://localhost")
    plain = Memory.spawn(unique("plain"), sessions="memory://")
    try:
        with pytest.raises(UserError, match="no vector store"):
            plain.search("anything")
    finally:
        plain.kill()


def test_agents_default_to_the_shared_memory() -> None:
    name = unique("defaulted")
    agent = Agent.spawn(name, model=ScriptedModel(count_users))
    try:
        agent.run("hello", session_id="s")
        assert next(m.text for m in Memory.get("default").history(name, "s")) == "hello"
    finally:
        agent.kill()


def test_litellm_embeddings_go_through_an_embedding_gateway(tmp_path: Path) -> None:
    from gecko_actors.stores import LiteLLMEmbedder
    from gecko_actors.testing import FakeLLMServer

    with FakeLLMServer() as server:
        # PATH: any variable the Ray workers inherited works as a key for the fake server.
        embedder = LiteLLMEmbedder(
            "openai/text-embedding-3-small", api_base=server.url, api_key_env="PATH"
        )
        mem = Memory.spawn(
            unique("embedded"), sessions="memory://", vectors=tmp_path / "v", embedder=embedder
        )
        try:
            mem.add(["alpha beta", "gamma delta"])
            hits = mem.search("alpha beta", k=1)
            assert hits[0].text == "alpha beta"
            assert len(server.embedding_requests) >= 2  # the add and the query
            gateways = [n for n in ray.util.list_named_actors() if n.startswith("embed/")]
            assert gateways, "no embedding gateway actor"
        finally:
            mem.kill()
            for name in gateways:
                ray.kill(ray.get_actor(name, namespace="gecko"))
