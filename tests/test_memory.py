"""Tests for :class:`TokenMemory` (offline token counting, caching, trimming) and
:class:`InMemorySessionStore`."""

from __future__ import annotations

import os
import pickle

import pytest
import tiktoken
import tiktoken.load
import tiktoken.registry

from gecko_actors import (
    InMemorySessionStore,
    Message,
    SessionStore,
    TokenMemory,
    ToolCall,
    UserError,
)
from gecko_actors.core import memory as memory_module
from gecko_actors.core.memory import IMAGE_TOKENS, MESSAGE_OVERHEAD, TRUNCATION_MARK
from gecko_actors.core.sessions import to_records

# --- offline counting -----------------------------------------------------------------------


@pytest.fixture
def offline_tiktoken(monkeypatch):
    """No TIKTOKEN_CACHE_DIR, no loaded encodings, and no downloads allowed."""
    # setenv first so that monkeypatch restores the variable to its current state afterwards.
    for name in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        monkeypatch.setenv(name, "placeholder")
        monkeypatch.delenv(name)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    real_read_file = tiktoken.load.read_file

    def no_download(blobpath: str) -> bytes:
        if "://" in blobpath:
            raise AssertionError(f"tiktoken tried to download {blobpath}")
        return real_read_file(blobpath)

    monkeypatch.setattr(tiktoken.load, "read_file", no_download)
    memory_module._encoding.cache_clear()
    yield
    memory_module._encoding.cache_clear()


@pytest.mark.parametrize(
    ("model_name", "encoding"), [("gpt-4o-mini", "o200k_base"), ("gpt-4", "cl100k_base")]
)
def test_counts_work_offline_with_bundled_files(offline_tiktoken, model_name, encoding):
    memory = TokenMemory(model_name=model_name)
    assert memory.count_text("hello world") == 2
    assert memory_module._encoding(model_name).name == encoding
    assert os.environ.get("TIKTOKEN_CACHE_DIR")  # set by prepare_offline_environment()
    assert memory.count(Message.user("hello world")) == 8


def test_unknown_model_falls_back_to_cl100k():
    memory = TokenMemory(model_name="my-private-model-v7")
    assert memory_module._encoding("my-private-model-v7").name == "cl100k_base"
    text = "The quick brown fox jumps over the lazy dog, twice! 🦊🦊"
    expected = len(tiktoken.get_encoding("cl100k_base").encode(text))
    assert memory.count_text(text) == expected


def test_provider_prefix_is_ignored_when_picking_the_encoding():
    assert memory_module._encoding("openai/gpt-4o").name == "o200k_base"
    assert memory_module._encoding("azure/deployments/gpt-4").name == "cl100k_base"


def test_per_message_overhead_is_four():
    memory = TokenMemory()
    assert MESSAGE_OVERHEAD == 4
    message = Message.user("hello world")
    # role and text are counted, separated by a newline, plus the overhead
    assert memory.count(message) == memory.count_text("user\nhello world") + 4
    assert memory.count(Message.system("")) == memory.count_text("system\n") + 4


def test_image_adds_placeholder_tokens():
    memory = TokenMemory()
    plain = memory.count(Message.user("hi"))
    one = memory.count(Message.user("hi", images=["https://example.com/a.png"]))
    two = memory.count(
        Message.user("hi", images=["https://example.com/a.png", "https://example.com/b.png"])
    )
    assert IMAGE_TOKENS == 85
    assert one == plain + IMAGE_TOKENS
    assert two == plain + 2 * IMAGE_TOKENS


def test_tool_calls_are_counted():
    memory = TokenMemory()
    empty = memory.count(Message.assistant(None))
    short = memory.count(
        Message.assistant(None, [ToolCall(id="1", name="get_weather", arguments="{}")])
    )
    long = memory.count(
        Message.assistant(
            None,
            [ToolCall(id="1", name="get_weather", arguments='{"city": "Paris", "days": 10}')],
        )
    )
    two = memory.count(
        Message.assistant(
            None,
            [
                ToolCall(id="1", name="get_weather", arguments="{}"),
                ToolCall(id="2", name="get_weather", arguments="{}"),
            ],
        )
    )
    assert empty < short < long
    assert two > short
    assert short == memory.count_text("assistant\n\nget_weather\n{}") + MESSAGE_OVERHEAD


def test_name_is_counted():
    memory = TokenMemory()
    assert memory.count(Message.user("hi", name="alice_in_wonderland")) > memory.count(
        Message.user("hi")
    )


# --- LRU cache ------------------------------------------------------------------------------


def test_cache_hits_and_misses():
    memory = TokenMemory()
    stats = memory.cache_stats
    assert (stats.hits, stats.misses, stats.size, stats.hit_rate) == (0, 0, 0, 0.0)
    first = memory.count(Message.user("same content"))
    second = memory.count(Message.user("same content"))  # a different, equal object
    assert first == second
    stats = memory.cache_stats
    assert stats.hits == 1
    assert stats.misses == 1
    assert stats.size == 1
    assert stats.hit_rate == pytest.approx(0.5)
    memory.count(Message.user("other content"))
    assert memory.cache_stats.misses == 2
    assert memory.cache_stats.hit_rate == pytest.approx(1 / 3)


def test_cache_distinguishes_roles():
    memory = TokenMemory()
    memory.count(Message.user("x"))
    memory.count(Message.system("x"))
    assert memory.cache_stats.misses == 2
    assert memory.cache_stats.hits == 0


def test_cache_evicts_least_recently_used():
    memory = TokenMemory(cache_size=2)
    m1, m2, m3 = (Message.user(f"message {i}") for i in range(1, 4))
    memory.count(m1)
    memory.count(m2)
    memory.count(m1)  # hit: m1 is now the most recently used
    assert memory.cache_stats.hits == 1
    memory.count(m3)  # miss: evicts m2
    assert memory.cache_stats.size == 2
    memory.count(m1)
    assert memory.cache_stats.hits == 2  # m1 survived
    memory.count(m2)
    assert memory.cache_stats.hits == 2  # m2 was evicted
    assert memory.cache_stats.misses == 4
    assert memory.cache_stats.size == 2


def test_cache_never_exceeds_its_size():
    memory = TokenMemory(cache_size=3)
    memory.count_many([Message.user(f"m{i}") for i in range(10)])
    assert memory.cache_stats.size == 3


def test_count_many_equals_individual_counts():
    messages = [
        Message.system("You are helpful."),
        Message.user("What is the weather in Paris?"),
        Message.assistant(None, [ToolCall(id="c1", name="weather", arguments='{"c": "Paris"}')]),
        Message.tool_result("c1", {"temp": 21}),
        Message.assistant("It is 21 degrees."),
        Message.user("What is the weather in Paris?"),  # a duplicate
    ]
    batch = TokenMemory().count_many(messages)
    single = TokenMemory()
    assert batch == [single.count(m) for m in messages]
    assert batch[1] == batch[5]
    assert TokenMemory().total(messages) == sum(batch)
    assert TokenMemory().count_many([]) == []


# --- trimming -------------------------------------------------------------------------------


def conversation(n: int) -> list[Message]:
    messages = [Message.system("You are a careful assistant.")]
    for i in range(n):
        messages.append(Message.user(f"question number {i}"))
        messages.append(Message.assistant(f"answer number {i}"))
    return messages


def test_trim_keeps_system_and_newest_messages_that_fit():
    memory = TokenMemory()
    messages = conversation(5)
    counts = memory.count_many(messages)
    budget = counts[0] + sum(counts[-3:])
    trimmed = memory.trim(messages, max_tokens=budget)
    assert trimmed == [messages[0], *messages[-3:]]
    assert memory.total(trimmed) <= budget
    # one token less and the oldest of those three no longer fits
    assert memory.trim(messages, max_tokens=budget - 1) == [messages[0], *messages[-2:]]


def test_trim_uses_the_instance_budget_by_default():
    memory = TokenMemory()
    messages = conversation(5)
    counts = memory.count_many(messages)
    small = TokenMemory(max_tokens=counts[0] + counts[-1])
    assert small.trim(messages) == [messages[0], messages[-1]]
    assert memory.trim(messages) == messages  # everything fits in 4000 tokens


def test_trim_stops_at_the_first_message_that_does_not_fit():
    memory = TokenMemory()
    messages = [
        Message.system("sys"),
        Message.user("short"),
        Message.user("a much longer message " * 20),
        Message.user("tail"),
    ]
    counts = memory.count_many(messages)
    budget = counts[0] + counts[1] + counts[3]  # room for "short", but it is older than the gap
    assert memory.trim(messages, max_tokens=budget) == [messages[0], messages[3]]


def test_trim_without_system_message():
    memory = TokenMemory()
    messages = conversation(3)[1:]
    counts = memory.count_many(messages)
    trimmed = memory.trim(messages, max_tokens=sum(counts[-2:]))
    assert trimmed == messages[-2:]
    assert trimmed[0].role == "user"


def test_trim_keeps_system_even_when_it_alone_exceeds_the_budget():
    memory = TokenMemory()
    messages = [Message.system("long system prompt " * 50), Message.user("hi")]
    assert memory.trim(messages, max_tokens=10) == [messages[0]]


def test_trim_never_starts_with_an_orphan_tool_message():
    memory = TokenMemory()
    calls = [
        ToolCall(id="a", name="lookup", arguments='{"q": 1}'),
        ToolCall(id="b", name="lookup", arguments='{"q": 2}'),
    ]
    messages = [
        Message.system("sys"),
        Message.user("look things up"),
        Message.assistant(None, calls),
        Message.tool_result("a", "first result", "lookup"),
        Message.tool_result("b", "second result", "lookup"),
        Message.assistant("done"),
        Message.user("thanks"),
    ]
    counts = memory.count_many(messages)
    # The newest window that fits begins with the tool results of an assistant message that
    # does not fit.
    budget = counts[0] + sum(counts[3:])
    trimmed = memory.trim(messages, max_tokens=budget)
    assert trimmed == [messages[0], messages[5], messages[6]]
    assert all(m.role != "tool" for m in trimmed)
    # With room for the assistant message the whole exchange is kept.
    budget = counts[0] + sum(counts[2:])
    assert memory.trim(messages, max_tokens=budget) == [messages[0], *messages[2:]]


# --- get_history ----------------------------------------------------------------------------


def test_get_history_drops_invalid_records():
    memory = TokenMemory()
    raw = [
        {"role": "system", "content": "sys"},
        {"role": "wizard", "content": "bad role"},
        "not a dict",
        None,
        42,
        ["role", "user"],
        {"role": "tool", "content": "no tool_call_id"},
        {"content": "no role"},
        {"role": "user", "content": "valid question"},
        Message.assistant("valid answer"),
    ]
    history = memory.get_history(raw)
    assert [(m.role, m.text) for m in history] == [
        ("system", "sys"),
        ("user", "valid question"),
        ("assistant", "valid answer"),
    ]


def test_get_history_reads_records_written_by_to_records():
    messages = [
        Message.system("sys"),
        Message.user("hi", images=["https://example.com/cat.png"]),
        Message.assistant(None, [ToolCall(id="t", name="f", arguments="{}")]),
        Message.tool_result("t", "ok", "f"),
    ]
    assert TokenMemory().get_history(to_records(messages)) == messages


def test_get_history_truncates_a_huge_message():
    memory = TokenMemory(max_tokens=1000, max_message_tokens=50)
    raw = [
        {"role": "user", "content": "first"},
        {"role": "tool", "tool_call_id": "x", "content": "data " * 5000},
    ]
    raw.insert(1, Message.assistant(None, [ToolCall(id="x", name="dump")]).model_dump())
    history = memory.get_history(raw)
    assert len(history) == 3
    huge = history[2]
    assert huge.content.endswith(TRUNCATION_MARK)
    assert huge.content.startswith("data data")
    assert huge.tool_call_id == "x"
    assert 40 <= memory.count(huge) <= 55
    assert history[0].content == "first"


def test_truncate_leaves_short_and_multimodal_messages_alone():
    memory = TokenMemory(max_tokens=100)
    assert memory.max_message_tokens == 50
    short = Message.user("short")
    assert memory.truncate(short) is short
    multimodal = Message.user("word " * 500, images=["https://example.com/a.png"])
    assert memory.truncate(multimodal) is multimodal
    cut = memory.truncate(Message.user("word " * 500), max_tokens=20)
    assert cut.content.endswith(TRUNCATION_MARK)
    assert memory.count(cut) <= 25


def test_get_history_respects_the_budget():
    memory = TokenMemory(max_tokens=120)
    raw = to_records(conversation(30))
    history = memory.get_history(raw)
    assert memory.total(history) <= 120
    assert history[0].role == "system"
    assert history[-1].text == "answer number 29"
    assert 2 < len(history) < len(raw)
    smaller = memory.get_history(raw, max_tokens=60)
    assert memory.total(smaller) <= 60
    assert len(smaller) < len(history)


@pytest.mark.parametrize(
    "kwargs", [{"max_tokens": 0}, {"max_tokens": -5}, {"cache_size": 0}, {"cache_size": -1}]
)
def test_invalid_constructor_arguments(kwargs):
    with pytest.raises(UserError):
        TokenMemory(**kwargs)


def test_token_memory_pickles():
    memory = TokenMemory(max_tokens=321, model_name="gpt-4", cache_size=7, max_message_tokens=9)
    message = Message.user("cached before pickling")
    count = memory.count(message)
    restored = pickle.loads(pickle.dumps(memory))
    assert restored.max_tokens == 321
    assert restored.model_name == "gpt-4"
    assert restored.cache_size == 7
    assert restored.max_message_tokens == 9
    assert restored.count(message) == count
    assert restored.cache_stats.hits == 1  # the cache came along
    restored.count(Message.user("new"))  # the lock works
    assert restored.cache_stats.size == 2


# --- InMemorySessionStore -------------------------------------------------------------------


def test_store_satisfies_the_protocol():
    assert isinstance(InMemorySessionStore(), SessionStore)
    assert not isinstance(object(), SessionStore)


async def test_store_load_unknown_is_empty():
    store = InMemorySessionStore()
    assert await store.load("nobody") == []
    assert await store.list_sessions() == []


async def test_store_append_load_replace_delete():
    store = InMemorySessionStore()
    await store.append("s1", [{"role": "user", "content": "1"}])
    await store.append(
        "s1", [{"role": "assistant", "content": "2"}, {"role": "user", "content": "3"}]
    )
    await store.append("s2", [{"role": "user", "content": "other"}])
    assert [r["content"] for r in await store.load("s1")] == ["1", "2", "3"]
    assert sorted(await store.list_sessions()) == ["s1", "s2"]

    await store.replace("s1", [{"role": "user", "content": "compacted"}])
    assert await store.load("s1") == [{"role": "user", "content": "compacted"}]
    await store.replace("s3", [])
    assert await store.load("s3") == []
    assert "s3" in await store.list_sessions()

    await store.delete("s1")
    await store.delete("never-existed")  # no error
    assert await store.load("s1") == []
    assert sorted(await store.list_sessions()) == ["s2", "s3"]
    assert [r["content"] for r in await store.load("s2")] == ["other"]


async def test_store_copies_on_write():
    store = InMemorySessionStore()
    record = {"role": "user", "content": "original", "meta": {"tags": ["a"]}}
    records = [record]
    await store.append("s", records)
    record["content"] = "changed"
    record["meta"]["tags"].append("b")
    records.append({"role": "user", "content": "sneaked in"})
    assert await store.load("s") == [
        {"role": "user", "content": "original", "meta": {"tags": ["a"]}}
    ]

    replacement = [{"role": "user", "content": "r", "meta": {"n": 1}}]
    await store.replace("s", replacement)
    replacement[0]["meta"]["n"] = 2
    assert (await store.load("s"))[0]["meta"] == {"n": 1}


async def test_store_copies_on_read():
    store = InMemorySessionStore()
    await store.append("s", [{"role": "user", "content": "x", "meta": {"tags": ["a"]}}])
    loaded = await store.load("s")
    loaded[0]["content"] = "mutated"
    loaded[0]["meta"]["tags"].append("b")
    loaded.append({"role": "user", "content": "extra"})
    assert await store.load("s") == [{"role": "user", "content": "x", "meta": {"tags": ["a"]}}]
    sessions = await store.list_sessions()
    sessions.append("fake")
    assert await store.list_sessions() == ["s"]


async def test_store_pickles():
    store = InMemorySessionStore()
    records = to_records([Message.user("hello"), Message.assistant("hi")])
    await store.append("s", records)
    restored = pickle.loads(pickle.dumps(store))
    assert await restored.load("s") == records
    await restored.append("s", [{"role": "user", "content": "more"}])
    assert len(await restored.load("s")) == 3
    assert len(await store.load("s")) == 2  # independent of the original
    history = TokenMemory().get_history(await restored.load("s"))
    assert [m.text for m in history] == ["hello", "hi", "more"]
