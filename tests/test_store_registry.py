"""The store registry: URLs to stores, clear errors, plugins, and concurrent writers through it."""

from __future__ import annotations

import asyncio
import multiprocessing
import pickle
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_redis_sessions import redis_server
from test_session_stores import rec

from gecko_actors.core.embedders import HashEmbedder
from gecko_actors.core.sessions import InMemorySessionStore, SessionStore
from gecko_actors.exceptions import ConfigurationError, UserError
from gecko_actors.stores import registry, sessions
from gecko_actors.stores.registry import (
    StoreURL,
    known_schemes,
    parse_store_url,
    redact_url,
    register_session_store,
    register_vector_store,
    session_store_from_url,
    vector_store_from_url,
)
from gecko_actors.stores.sessions import SQLiteSessionStore
from gecko_actors.stores.vectors import LanceVectorStore

SECRET = "hunter2-url-secret"


@pytest.fixture(autouse=True)
def restore_registries() -> Iterator[None]:
    saved = {reg: dict(reg.entries) for reg in (registry._SESSIONS, registry._VECTORS)}
    yield
    for reg, entries in saved.items():
        reg.entries.clear()
        reg.entries.update(entries)


# --- built-in schemes ------------------------------------------------------------------------


def test_known_schemes():
    assert {"memory", "sqlite", "redis", "rediss"} <= set(known_schemes())
    assert "lancedb" in known_schemes("vector")
    with pytest.raises(UserError):
        known_schemes("graph")  # type: ignore[arg-type]


def test_sessions_module_delegates_to_the_registry():
    assert sessions.session_store_from_url is session_store_from_url


def test_session_urls_build_their_stores(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert isinstance(session_store_from_url("memory://"), InMemorySessionStore)
    sqlite = session_store_from_url("sqlite:///data/s.db")
    assert isinstance(sqlite, SQLiteSessionStore)
    assert sqlite.path == tmp_path / "data" / "s.db"
    redis = session_store_from_url("redis://localhost:6380/1?ttl=3600")
    assert (type(redis).__name__, redis.port, redis.db, redis.ttl) == (
        "RedisSessionStore",
        6380,
        1,
        3600,
    )


async def test_lancedb_url_builds_a_working_vector_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    relative = vector_store_from_url("lancedb://vectors", table="docs")
    assert isinstance(relative, LanceVectorStore)
    assert (relative.uri, relative.table) == (str(tmp_path / "vectors"), "docs")

    store = vector_store_from_url(f"lancedb://{tmp_path}/abs", embedder=HashEmbedder(dimensions=64))
    assert store.uri == str(tmp_path / "abs")
    await store.add(["the cat sat on the mat", "stock prices fell"], [{"t": "pets"}, {"t": "news"}])
    hits = await store.search("the cat sat on the mat", k=1)
    assert (hits[0].text, hits[0].metadata) == ("the cat sat on the mat", {"t": "pets"})


# --- clear errors ----------------------------------------------------------------------------


def test_unknown_scheme_lists_the_known_ones():
    with pytest.raises(UserError) as info:
        session_store_from_url("mongodb://db.internal/sessions")
    message = info.value.message
    assert "'mongodb'" in message
    for scheme in ("memory://", "redis://", "sqlite://", "postgresql://"):
        assert scheme in message
    with pytest.raises(UserError, match="lancedb://"):
        vector_store_from_url("weaviate://localhost:8080")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("sessions.db", "does not start with a scheme"),
        ("://x", "does not start with a scheme"),
        ("redis://host:notaport/0", "the port 'notaport' is not a number"),
        ("redis://host:70000/0", "the port '70000'"),
        ("redis://host:0", "the port '0'"),
        ("redis://host:/0", "the port ''"),
        ("redis://host/abc", "the database number 'abc'"),
        ("redis://host/0/1", "the database number '0/1'"),
        ("redis://:6379/0", "the host is missing"),
        ("redis://", "the host is missing"),
        ("redis://[::1/0", "IPv6"),
        ("redis://host/0?ttl=abc", "the ttl 'abc' is not a whole number above 0"),
        ("redis://host/0?ttl=0", "the ttl '0'"),
        ("redis://host/0?ttl=-5", "the ttl '-5'"),
        ("redis://host/0?tls=yes", "unknown query parameter 'tls'"),
        ("redis://host/0?ttl=1&ttl=2", "'ttl' is given twice"),
        ("sqlite://relative/s.db", "a SQLite URL has no host"),
        ("sqlite://", "names no database file"),
        ("sqlite:///", "names no database file"),
        ("sqlite:///s.db?mode=ro", "query parameters are not supported"),
        ("memory://anything", "takes nothing after it"),
    ],
)
def test_malformed_session_urls_say_which_part_is_wrong(url, problem):
    with pytest.raises(UserError) as info:
        session_store_from_url(url)
    assert problem in info.value.message
    assert repr(url) in info.value.message
    assert "sqlite:///" in info.value.hint  # and how a good URL looks


@pytest.mark.parametrize(
    ("url", "problem"),
    [("lancedb://", "names no directory"), ("lancedb://v?table=t", "pass table=")],
)
def test_malformed_vector_urls(url, problem):
    with pytest.raises(UserError) as info:
        vector_store_from_url(url)
    assert problem in str(info.value)


def test_not_a_string():
    with pytest.raises(UserError, match="must be a string, got PosixPath"):
        session_store_from_url(Path("s.db"))  # type: ignore[arg-type]


def test_a_missing_extra_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "redis", None)  # what Python does for "not importable"
    with pytest.raises(ConfigurationError) as info:
        session_store_from_url("redis://localhost:6379/0")
    assert 'pip install "gecko-actors[redis]"' in str(info.value)


def test_a_registered_extra_turns_a_missing_module_into_the_pip_command():
    def factory(url: str) -> SessionStore:
        import gecko_not_installed_module  # noqa: F401

        raise AssertionError("unreachable")

    register_session_store("thing", factory, extra="thing")
    with pytest.raises(ConfigurationError) as info:
        session_store_from_url("thing://x")
    assert 'pip install "gecko-actors[thing]"' in str(info.value)
    assert "gecko_not_installed_module" in str(info.value)


# --- passwords ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{SECRET}@host:notaport/0",
        f"redis://user:{SECRET}@host/abc",
        f"redis://user:{SECRET}@host/0?color=blue",
        f"rediss://{SECRET}@:6379/0",
        f"mongodb://user:{SECRET}@db/sessions",
        f"redis://:pa/{SECRET}@host:x/0",  # an unescaped "/" in the password
        f"redis://:pa?{SECRET}@host:x/0",  # an unescaped "?"
    ],
)
def test_a_password_in_a_url_is_never_echoed(url):
    with pytest.raises(UserError) as info:
        session_store_from_url(url)
    err = info.value
    # The raw message and context, before the exception's own redaction step.
    for text in (
        err.message,
        str(err.context),
        str(err),
        repr(err),
        str(pickle.loads(pickle.dumps(err))),
    ):
        assert SECRET not in text
    assert "***@" in err.message


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:pw@host:6379/0", "redis://user:***@host:6379/0"),
        ("redis://:pw@host", "redis://:***@host"),
        ("redis://token@host", "redis://***@host"),
        ("redis://host:6379/0?ttl=5", "redis://host:6379/0?ttl=5"),
        ("sqlite:///data/me@home.db", "sqlite:///data/me@home.db"),
        ("no scheme", "no scheme"),
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_parsed_url_hides_its_password():
    parts = parse_store_url(f"redis://me:{SECRET}@[::1]:7000/2?ttl=9")
    assert isinstance(parts, StoreURL)
    assert (parts.username, parts.password, parts.host, parts.port) == ("me", SECRET, "::1", "7000")
    assert (parts.path, parts.query) == ("/2", {"ttl": "9"})
    assert SECRET not in repr(parts) and SECRET not in str(parts)


# --- registering stores ------------------------------------------------------------------------


def test_register_a_session_store():
    made: list[str] = []

    def factory(url: str) -> SessionStore:
        made.append(url)
        return InMemorySessionStore()

    register_session_store("mine", factory)
    assert "mine" in known_schemes()
    assert isinstance(session_store_from_url("MINE://a/b"), InMemorySessionStore)
    assert made == ["MINE://a/b"]
    with pytest.raises(UserError, match="already registered"):
        register_session_store("mine", factory)
    register_session_store("mine", lambda url: InMemorySessionStore(), replace=True)


def test_register_a_vector_store():
    register_vector_store("fake", lambda url, embedder, table: (url, embedder, table))
    assert vector_store_from_url("fake://x", table="t") == ("fake://x", None, "t")


@pytest.mark.parametrize("scheme", ["", "Redis", "re dis", "redis://", "1abc", None])
def test_invalid_scheme_names(scheme):
    with pytest.raises(UserError, match="invalid session store scheme"):
        register_session_store(scheme, lambda url: InMemorySessionStore())  # type: ignore[arg-type]


def test_a_factory_must_return_a_session_store():
    register_session_store("bad", lambda url: object())  # type: ignore[arg-type,return-value]
    with pytest.raises(ConfigurationError, match="not a SessionStore"):
        session_store_from_url("bad://x")


def test_a_factory_value_error_is_a_configuration_error():
    def factory(url: str) -> SessionStore:
        raise ValueError(f"cannot use {url}")

    register_session_store("picky", factory)
    with pytest.raises(ConfigurationError) as info:
        session_store_from_url(f"picky://u:{SECRET}@h")
    assert "ValueError" in str(info.value)
    assert SECRET not in str(info.value)  # registered when the URL was parsed


PLUGIN = """
from gecko_actors.core.sessions import InMemorySessionStore


class PluginStore(InMemorySessionStore):
    def __init__(self, url):
        super().__init__()
        self.url = url
"""


@pytest.fixture
def plugin_dist(tmp_path, monkeypatch) -> Path:
    """A real installed distribution (a .dist-info on sys.path) declaring store entry points."""
    (tmp_path / "gecko_test_plugin.py").write_text(PLUGIN)
    info = tmp_path / "gecko_test_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gecko-test-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent(
            """
            [gecko_actors.session_stores]
            plugged = gecko_test_plugin:PluginStore
            broken = gecko_test_plugin_gone:PluginStore

            [gecko_actors.vector_stores]
            plugvec = gecko_test_plugin:PluginStore
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "gecko_test_plugin", raising=False)
    return tmp_path


def test_entry_points_are_known_and_loaded_on_first_use(plugin_dist):
    assert {"plugged", "broken"} <= set(known_schemes())
    assert "plugvec" in known_schemes("vector")
    assert "plugged" not in registry._SESSIONS.entries  # not loaded by listing
    store = session_store_from_url("plugged://somewhere")
    assert type(store).__name__ == "PluginStore"
    assert store.url == "plugged://somewhere"
    assert "plugged" in registry._SESSIONS.entries  # loaded once, then registered


def test_a_broken_entry_point_names_its_distribution(plugin_dist):
    with pytest.raises(ConfigurationError) as info:
        session_store_from_url("broken://x")
    assert "gecko-test-plugin" in info.value.hint
    assert "gecko_test_plugin_gone" in str(info.value)


# --- concurrent writers, through the registry, on each engine ---------------------------------

WORKERS, COUNT = 4, 25


def _pair(worker: int, i: int) -> list[dict]:
    return [rec(f"{worker}-{i}"), rec(f"{worker}-{i}!")]


def _write(url: str, worker: int, barrier, results) -> None:
    async def main() -> list[bool]:
        store = session_store_from_url(url)
        outcomes = []
        for i in range(COUNT):
            await asyncio.gather(
                store.append(f"own-{worker}", _pair(worker, i), key=str(i)),
                store.append("shared", _pair(worker, i), key=f"{worker}-{i}"),
                store.append("unkeyed", [rec(f"{worker}-{i}")]),
            )
            if i == COUNT // 2:
                outcomes.append(await store.append("shared", [rec(f"once-{worker}")], key="once"))
                outcomes.append(await store.append(f"own-{worker}", [rec("dup")], key="0"))
        if hasattr(store, "aclose"):
            await store.aclose()
        return outcomes

    barrier.wait()
    try:
        results.put((worker, asyncio.run(main())))
    except BaseException as exc:  # report it, or the parent would wait for nothing
        results.put((worker, f"{type(exc).__name__}: {exc}"))


@pytest.fixture(params=["sqlite", "redis"])
def shared_url(request, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/shared.db"  # no process finds the schema made
    else:
        with redis_server(tmp_path) as port:
            yield f"redis://127.0.0.1:{port}/0?namespace=c{uuid.uuid4().hex[:6]}"


def test_concurrent_writers_lose_nothing(shared_url):
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(WORKERS), ctx.Queue()
    procs = [
        ctx.Process(target=_write, args=(shared_url, w, barrier, results)) for w in range(WORKERS)
    ]
    for p in procs:
        p.start()
    outcomes = dict(results.get(timeout=90) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert all(isinstance(o, list) for o in outcomes.values()), outcomes
    assert [p.exitcode for p in procs] == [0] * WORKERS

    loaded = asyncio.run(_load_all(shared_url))
    for w in range(WORKERS):
        assert loaded[f"own-{w}"] == [r for i in range(COUNT) for r in _pair(w, i)]
    shared = [r["content"] for r in loaded["shared"]]
    assert len(shared) == WORKERS * COUNT * 2 + 1
    for w in range(WORKERS):  # every pair once, in its writer's order, kept together
        mine = [t for t in shared if t.startswith(f"{w}-")]
        assert mine == [r["content"] for i in range(COUNT) for r in _pair(w, i)]
        for i in (i for i, t in enumerate(shared) if t.startswith(f"{w}-") and not t.endswith("!")):
            assert shared[i + 1] == shared[i] + "!"
    assert len([t for t in shared if t.startswith("once-")]) == 1
    unkeyed = sorted(r["content"] for r in loaded["unkeyed"])
    assert unkeyed == sorted(f"{w}-{i}" for w in range(WORKERS) for i in range(COUNT))
    firsts = [o[0] for o in outcomes.values()]
    assert sorted(firsts) == [False] * (WORKERS - 1) + [True]  # "once" was stored once
    assert all(o[1] is False for o in outcomes.values())  # a repeated key adds nothing


async def _load_all(url: str) -> dict[str, list[dict]]:
    store = session_store_from_url(url)
    names = await store.list_sessions()
    loaded = {name: await store.load(name) for name in names}
    if hasattr(store, "aclose"):
        await store.aclose()
    assert sorted(names) == sorted([*(f"own-{w}" for w in range(WORKERS)), "shared", "unkeyed"])
    return loaded
