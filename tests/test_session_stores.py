"""Session stores: the protocol on every backend, then what only the SQLite store does."""

from __future__ import annotations

import asyncio
import multiprocessing
import pickle
import sqlite3

import msgpack
import pytest

from gecko_actors.core import sessions as core_sessions
from gecko_actors.core.messages import Message, ToolCall
from gecko_actors.core.sessions import SessionStore
from gecko_actors.exceptions import StorageError, UserError
from gecko_actors.stores import InMemorySessionStore, SQLiteSessionStore, session_store_from_url


def rec(text: str, role: str = "user") -> dict:
    return {"role": role, "content": text}


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path) -> SessionStore:
    if request.param == "memory":
        return InMemorySessionStore()
    return SQLiteSessionStore(tmp_path / "sessions.db")


# --- the protocol, on every store ---------------------------------------------------------


async def test_implements_protocol(store):
    assert isinstance(store, SessionStore)


async def test_load_unknown_session_is_empty(store):
    assert await store.load("nope") == []
    assert await store.list_sessions() == []


async def test_append_keeps_order_and_sessions_apart(store):
    assert await store.append("a", [rec("1"), rec("2")]) is True
    assert await store.append("b", [rec("x")]) is True
    assert await store.append("a", [rec("3")]) is True
    assert await store.load("a") == [rec("1"), rec("2"), rec("3")]
    assert await store.load("b") == [rec("x")]


async def test_keyed_append_is_idempotent(store):
    assert await store.append("s", [rec("q"), rec("a", "assistant")], key="run-1") is True
    assert await store.append("s", [rec("q"), rec("a", "assistant")], key="run-1") is False
    assert await store.load("s") == [rec("q"), rec("a", "assistant")]
    # The same key in another session, and another key in this one, are new appends.
    assert await store.append("other", [rec("o")], key="run-1") is True
    assert await store.append("s", [rec("q2")], key="run-2") is True
    assert await store.load("s") == [rec("q"), rec("a", "assistant"), rec("q2")]
    assert await store.load("other") == [rec("o")]


async def test_unkeyed_appends_always_add(store):
    assert await store.append("s", [rec("same")]) is True
    assert await store.append("s", [rec("same")]) is True
    assert await store.load("s") == [rec("same"), rec("same")]


async def test_replace_sets_the_records(store):
    await store.append("s", [rec("1"), rec("2"), rec("3")], key="run-1")
    await store.replace("s", [rec("summary", "system")])
    assert await store.load("s") == [rec("summary", "system")]
    await store.replace("new", [rec("n")])
    assert await store.load("new") == [rec("n")]
    # A replace does not forget which runs were appended.
    assert await store.append("s", [rec("1")], key="run-1") is False
    assert await store.load("s") == [rec("summary", "system")]


async def test_delete_forgets_session_and_its_keys(store):
    await store.append("s", [rec("1")], key="run-1")
    await store.append("keep", [rec("k")], key="run-1")
    await store.delete("s")
    await store.delete("never-existed")
    assert await store.load("s") == []
    assert await store.list_sessions() == ["keep"]
    assert await store.append("s", [rec("again")], key="run-1") is True
    assert await store.load("s") == [rec("again")]
    assert await store.append("keep", [rec("k")], key="run-1") is False


async def test_list_sessions(store):
    await store.append("a", [rec("1")])
    await store.append("b", [rec("2")], key="k")
    await store.append("a", [rec("3")])
    await store.replace("c", [])
    assert sorted(await store.list_sessions()) == ["a", "b", "c"]


async def test_stored_records_are_copies(store):
    record = {"role": "user", "content": "hi", "meta": {"tags": ["x"]}}
    await store.append("s", [record])
    record["content"] = "changed"
    record["meta"]["tags"].append("y")
    loaded = await store.load("s")
    assert loaded == [{"role": "user", "content": "hi", "meta": {"tags": ["x"]}}]
    loaded[0]["meta"]["tags"].append("z")
    assert await store.load("s") == [{"role": "user", "content": "hi", "meta": {"tags": ["x"]}}]

    replacement = [rec("r")]
    await store.replace("s", replacement)
    replacement[0]["content"] = "changed"
    assert await store.load("s") == [rec("r")]


# --- SQLite only ----------------------------------------------------------------------------


def _messages() -> list[dict]:
    messages = [
        Message.system("Tu es un assistant. 你好 — ünïcödé ✓ 🦎"),
        Message.user('What\'s 2+2? Also: "quotes", \\backslashes\\ and\nnewlines'),
        Message.assistant(
            None,
            [
                ToolCall(id="call_1", name="calculator", arguments='{"expression": "2+2"}'),
                ToolCall(id="call_2", name="search", arguments='{"q": "ñ", "n": [1, 2.5]}'),
            ],
        ),
        Message.tool_result("call_1", {"value": 4, "nested": {"a": [1, None, True, "é"]}}),
        Message.tool_result("call_2", [], tool_name="search"),
        Message.assistant("4 🎉"),
    ]
    return [m.model_dump(mode="json", exclude_none=True) for m in messages]


async def test_records_round_trip_exactly(tmp_path):
    records = _messages()
    records.append({"role": "user", "content": "x", "extra": {"big": 2**62, "f": 0.1, "e": {}}})
    store = SQLiteSessionStore(tmp_path / "s.db")
    await store.append("s", records, key="run")
    loaded = await store.load("s")
    assert loaded == records
    assert [Message.model_validate(r) for r in loaded[:-1]] == [
        Message.model_validate(r) for r in records[:-1]
    ]


async def test_data_survives_a_restart(tmp_path):
    path = tmp_path / "s.db"
    first = SQLiteSessionStore(path)
    await first.append("s", _messages(), key="run-1")
    await first.append("t", [rec("t")])
    del first

    second = SQLiteSessionStore(path)
    assert await second.load("s") == _messages()
    assert sorted(await second.list_sessions()) == ["s", "t"]
    assert await second.append("s", [rec("dup")], key="run-1") is False


async def test_records_are_msgpack_never_pickle(tmp_path):
    path = tmp_path / "s.db"
    await SQLiteSessionStore(path).append("s", [rec("hello")])
    with sqlite3.connect(path) as conn:
        (data,) = conn.execute("SELECT data FROM records").fetchone()
    assert msgpack.unpackb(data, raw=False) == rec("hello")


async def test_corrupted_row_is_skipped(tmp_path):
    path = tmp_path / "s.db"
    store = SQLiteSessionStore(path)
    await store.append("s", [rec("before")])
    conn = sqlite3.connect(path)
    with conn:
        for junk in (b"\xc1", b"\x92\x01", b"\xa2\xff\xfe", msgpack.packb(42), "text, not bytes"):
            conn.execute(
                "INSERT INTO records (session_id, run_key, data) VALUES ('s', NULL, ?)", (junk,)
            )
    conn.close()
    await store.append("s", [rec("after")])
    assert await store.load("s") == [rec("before"), rec("after")]


async def test_creates_parent_directories_and_resolves_relative_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = SQLiteSessionStore("deep/er/sessions.db")
    assert store.path == tmp_path / "deep" / "er" / "sessions.db"
    await store.append("s", [rec("1")])
    assert (tmp_path / "deep" / "er" / "sessions.db").is_file()
    # The path was fixed when the store was made, not at each call.
    monkeypatch.chdir(tmp_path / "deep")
    assert await store.load("s") == [rec("1")]


async def test_pickles_as_its_path(tmp_path):
    store = SQLiteSessionStore(tmp_path / "s.db")
    await store.append("s", [rec("1")], key="k")
    copy = pickle.loads(pickle.dumps(store))
    assert copy.path == store.path
    assert await copy.load("s") == [rec("1")]
    assert await copy.append("s", [rec("1")], key="k") is False
    await copy.append("s", [rec("2")])
    assert await store.load("s") == [rec("1"), rec("2")]


async def test_directory_path_is_a_storage_error(tmp_path):
    store = SQLiteSessionStore(tmp_path)
    with pytest.raises(StorageError) as info:
        await store.load("s")
    assert str(tmp_path) in str(info.value)
    assert "directory" in str(info.value)
    assert info.value.path == str(tmp_path)


async def test_non_database_file_is_a_storage_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("these are my notes, not a database\n" * 50)
    store = SQLiteSessionStore(path)
    for call in (store.load("s"), store.append("s", [rec("1")]), store.list_sessions()):
        with pytest.raises(StorageError) as info:
            await call
        assert str(path) in str(info.value)
        assert "not a" in str(info.value)
    assert path.read_text().startswith("these are my notes")


async def test_parent_that_is_a_file_is_a_storage_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    store = SQLiteSessionStore(blocker / "s.db")
    with pytest.raises(StorageError) as info:
        await store.append("s", [rec("1")])
    assert str(blocker / "s.db") in str(info.value)


async def test_unpackable_record_is_a_user_error(tmp_path):
    store = SQLiteSessionStore(tmp_path / "s.db")
    with pytest.raises(UserError, match="not plain data"):
        await store.append("s", [rec("ok"), {"role": "user", "content": object()}])
    assert await store.load("s") == []


async def test_event_loop_runs_while_a_write_waits_for_the_lock(tmp_path):
    path = tmp_path / "s.db"
    store = SQLiteSessionStore(path)
    await store.load("s")  # creates the schema
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        task = asyncio.create_task(store.append("s", [rec("1")], key="k"))
        # If the store blocked the loop, the append would run here, in this thread, and
        # could not finish (the lock is ours): we would not get back before it failed.
        await asyncio.sleep(0.05)
        assert not task.done()
    finally:
        holder.execute("COMMIT")
        holder.close()
    assert await task is True
    assert await store.load("s") == [rec("1")]


def _append_many(path: str, worker: int, count: int, barrier, results) -> None:
    async def main() -> list[bool]:
        store = SQLiteSessionStore(path)
        shared = []
        for i in range(count):
            await store.append(
                "s", [rec(f"{worker}-{i}"), rec(f"{worker}-{i}!")], key=f"{worker}-{i}"
            )
            if i == count // 2:
                shared.append(await store.append("s", [rec(f"shared-{worker}")], key="shared"))
        return shared

    barrier.wait()
    try:
        results.put((worker, asyncio.run(main())))
    except BaseException as exc:  # report it, or the parent would wait for nothing
        results.put((worker, f"{type(exc).__name__}: {exc}"))


def test_two_processes_append_concurrently(tmp_path):
    path = str(tmp_path / "shared.db")  # neither process finds the schema made
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    count = 50
    workers = [
        ctx.Process(target=_append_many, args=(path, w, count, barrier, results)) for w in (0, 1)
    ]
    for p in workers:
        p.start()
    outcomes = dict(results.get(timeout=60) for _ in workers)
    for p in workers:
        p.join(timeout=60)
    assert all(isinstance(o, list) for o in outcomes.values()), outcomes
    assert [p.exitcode for p in workers] == [0, 0]

    records = asyncio.run(SQLiteSessionStore(path).load("s"))
    texts = [r["content"] for r in records]
    assert len(texts) == 2 * count * 2 + 1
    for w in (0, 1):
        mine = [t for t in texts if t.startswith(f"{w}-")]
        # Every record once, each process's appends in its order, each pair kept together.
        expected = [t for i in range(count) for t in (f"{w}-{i}", f"{w}-{i}!")]
        assert mine == expected
    for i, text in enumerate(texts):
        if not text.endswith("!") and not text.startswith("shared"):
            assert texts[i + 1] == text + "!"
    assert len([t for t in texts if t.startswith("shared-")]) == 1
    assert sorted(outcomes[0] + outcomes[1]) == [False, True]


# --- URLs -----------------------------------------------------------------------------------


def test_memory_url():
    assert isinstance(session_store_from_url("memory://"), InMemorySessionStore)
    assert isinstance(session_store_from_url("MEMORY://"), InMemorySessionStore)


@pytest.mark.parametrize(
    ("url", "relative"),
    [
        ("sqlite:///sessions.db", "sessions.db"),
        ("sqlite:///data/sessions.db", "data/sessions.db"),
        ("sqlite:///./here.db", "here.db"),
    ],
)
def test_sqlite_url_relative(url, relative, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = session_store_from_url(url)
    assert isinstance(store, SQLiteSessionStore)
    assert store.path == tmp_path / relative


async def test_sqlite_url_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "abs" / "sessions.db"
    url = "sqlite:///" + str(target)  # str(target) starts with "/": four slashes
    assert url.startswith("sqlite:////")
    store = session_store_from_url(url)
    assert isinstance(store, SQLiteSessionStore)
    assert store.path == target
    await store.append("s", [rec("1")])
    assert target.is_file()


@pytest.mark.parametrize(
    "url",
    [
        "mongodb://localhost/db",
        "sessions.db",
        "",
        "sqlite://",
        "sqlite:///",
        "sqlite://host/sessions.db",
        "sqlite:///x.db?mode=ro",
        "memory://somewhere",
        "redis://localhost:notaport",
    ],
)
def test_unsupported_urls(url):
    with pytest.raises(UserError) as info:
        session_store_from_url(url)
    text = str(info.value)
    assert repr(url) in text
    assert "memory://" in info.value.hint
    assert "sqlite:///" in info.value.hint


def test_store_constructor_rejects_non_paths():
    with pytest.raises(UserError):
        SQLiteSessionStore("")
    with pytest.raises(UserError):
        SQLiteSessionStore(None)  # type: ignore[arg-type]


def test_exports():
    import gecko_actors.stores as stores

    for name in ("InMemorySessionStore", "SQLiteSessionStore", "session_store_from_url"):
        assert name in stores.__all__
        assert getattr(stores, name) is not None
    assert stores.InMemorySessionStore is core_sessions.InMemorySessionStore
