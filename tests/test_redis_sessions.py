"""RedisSessionStore against a real redis-server started here on 127.0.0.1 (never a mock).

The SessionStore protocol tests of test_session_stores run here too, on Redis (through this
module's ``store`` fixture); then what only the Redis store does.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import pickle
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from s3util import free_port
from test_session_stores import (  # noqa: F401  (collected here, on Redis)
    _messages,
    rec,
    test_append_keeps_order_and_sessions_apart,
    test_delete_forgets_session_and_its_keys,
    test_implements_protocol,
    test_keyed_append_is_idempotent,
    test_list_sessions,
    test_load_unknown_session_is_empty,
    test_replace_sets_the_records,
    test_stored_records_are_copies,
    test_unkeyed_appends_always_add,
)

from gecko_actors.exceptions import StorageError, UserError
from gecko_actors.stores.redis_sessions import PASSWORD_ENV, RedisSessionStore
from gecko_actors.stores.registry import session_store_from_url

SERVER_HINT = "install redis-server (Debian: apt-get install redis-server)"
CLIENT_HINT = 'install the redis client: pip install "gecko-actors[redis]"'
PASSWORD = "gecko-redis-pw-7f3a"


def redis_py() -> Any:
    try:
        import redis
    except ImportError:
        pytest.fail(CLIENT_HINT)
    return redis


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


@contextlib.contextmanager
def redis_server(directory: Path, *args: str) -> Iterator[int]:
    """A throw-away redis-server on a free 127.0.0.1 port, without persistence; yields it."""
    executable = shutil.which("redis-server")
    if executable is None:
        # CI sets GECKO_REQUIRE_REDIS, so these tests can never be skipped there.
        (pytest.fail if os.environ.get("GECKO_REQUIRE_REDIS") else pytest.skip)(SERVER_HINT)
    port = free_port()
    log = directory / f"redis-{port}.log"
    command = [executable, "--save", "", "--appendonly", "no", "--port", str(port)]
    command += ["--bind", "127.0.0.1", "--dir", str(directory), "--logfile", str(log), *args]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not _answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                output = log.read_text() if log.exists() else ""
                pytest.fail(f"redis-server did not start on port {port}:\n{output}")
            time.sleep(0.02)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory) -> Iterator[int]:
    with redis_server(tmp_path_factory.mktemp("redis")) as port:
        yield port


@pytest.fixture
def raw(redis_port) -> Iterator[Any]:
    """A plain client on the server, emptied before each test."""
    client = redis_py().Redis(host="127.0.0.1", port=redis_port)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
async def store(raw, redis_port) -> Any:
    store = RedisSessionStore("127.0.0.1", redis_port)
    yield store
    await store.aclose()


# --- what only the Redis store does ----------------------------------------------------------


async def test_records_round_trip_exactly(store):
    records = _messages()
    records.append({"role": "user", "content": "x", "extra": {"big": 2**62, "f": 0.1, "e": {}}})
    await store.append("s", records, key="run")
    assert await store.load("s") == records


async def test_keys_are_namespaced_and_records_are_msgpack(store, raw):
    await store.append("agent/s1", [rec("hello")], key="run-1")
    assert sorted(raw.keys("*")) == [b"gecko:applied:agent/s1", b"gecko:session:agent/s1"]
    header, item = raw.lrange("gecko:session:agent/s1", 0, -1)
    assert header == b"gecko-session/1"
    assert msgpack.unpackb(item, raw=False) == rec("hello")
    assert raw.smembers("gecko:applied:agent/s1") == {b"run-1"}


async def test_namespaces_and_databases_keep_stores_apart(raw, redis_port):
    base = f"redis://127.0.0.1:{redis_port}"
    one = session_store_from_url(f"{base}/0?namespace=app*one")
    two = session_store_from_url(f"{base}/0?namespace=app")
    three = session_store_from_url(f"{base}/3")
    for name, store in (("one", one), ("two", two), ("three", three)):
        await store.append(f"s[{name}]?*", [rec(name)])
    for name, store in (("one", one), ("two", two), ("three", three)):
        assert await store.list_sessions() == [f"s[{name}]?*"]
        assert await store.load(f"s[{name}]?*") == [rec(name)]
        await store.aclose()
    assert raw.execute_command("SELECT", 3) and raw.dbsize() == 1


async def test_many_records_in_one_append(store):
    records = [rec(str(i)) for i in range(2500)]  # more than one RPUSH batch in the script
    assert await store.append("s", records, key="big") is True
    assert await store.load("s") == records


async def test_ttl_is_set_and_refreshed_on_write(raw, redis_port):
    # A TTL of a day: the windows below hold however slow the machine is.
    store = session_store_from_url(f"redis://127.0.0.1:{redis_port}/0?ttl=100000")
    await store.append("s", [rec("1")], key="k")
    assert 99_000 < raw.ttl("gecko:session:s") <= 100_000
    assert 99_000 < raw.ttl("gecko:applied:s") <= 100_000
    for key in ("gecko:session:s", "gecko:applied:s"):
        raw.expire(key, 5)
    await store.append("s", [rec("2")])
    assert raw.ttl("gecko:session:s") > 99_000 and raw.ttl("gecko:applied:s") > 99_000
    raw.expire("gecko:session:s", 5)
    await store.replace("s", [rec("r")])
    assert raw.ttl("gecko:session:s") > 99_000
    await store.aclose()


async def test_sessions_expire_after_their_ttl(raw, redis_port):
    store = session_store_from_url(f"redis://127.0.0.1:{redis_port}/0?ttl=1")
    await store.append("s", [rec("1")], key="k")
    await asyncio.sleep(1.3)
    assert await store.load("s") == []
    assert await store.list_sessions() == []
    assert await store.append("s", [rec("again")], key="k") is True  # the key expired too
    await store.aclose()


async def test_without_ttl_sessions_do_not_expire(store, raw):
    await store.append("s", [rec("1")], key="k")
    assert raw.ttl("gecko:session:s") == -1


async def test_undecodable_items_are_skipped(store, raw):
    await store.append("s", [rec("before")])
    raw.rpush("gecko:session:s", b"\xc1", msgpack.packb(42), b"\x92\x01")
    await store.append("s", [rec("after")])
    assert await store.load("s") == [rec("before"), rec("after")]


async def test_a_key_of_another_type_is_a_storage_error_and_changes_nothing(store, raw):
    raw.set("gecko:session:s", "not ours")
    with pytest.raises(StorageError) as info:
        await store.append("s", [rec("1")], key="k")
    assert "WRONGTYPE" in str(info.value)
    assert "namespace" in info.value.hint
    assert not raw.exists("gecko:applied:s")  # the script checked before writing
    with pytest.raises(StorageError):
        await store.load("s")


async def test_pickles_without_its_connection(store):
    await store.append("s", [rec("1")], key="k")
    copy = pickle.loads(pickle.dumps(store))
    assert copy._client is None
    assert repr(copy) == repr(store)
    assert await copy.load("s") == [rec("1")]
    assert await copy.append("s", [rec("1")], key="k") is False
    await copy.aclose()


@pytest.mark.filterwarnings("ignore::ResourceWarning")  # the first loop's connection
def test_works_from_several_event_loops(raw, redis_port):
    store = RedisSessionStore("127.0.0.1", redis_port)

    async def load_and_close() -> list:
        try:
            return await store.load("s")
        finally:
            await store.aclose()

    # The first loop ends with its client still open: the second loop gets a new one.
    assert asyncio.run(store.append("s", [rec("1")])) is True
    assert asyncio.run(load_and_close()) == [rec("1")]
    gc.collect()


def test_url_settings(raw, redis_port):
    store = session_store_from_url(
        f"rediss://reader:{PASSWORD}@127.0.0.1:{redis_port}/2?ttl=60&namespace=ns"
    )
    assert isinstance(store, RedisSessionStore)
    assert (store.host, store.port, store.db) == ("127.0.0.1", redis_port, 2)
    assert (store.username, store.ssl, store.ttl, store.namespace) == ("reader", True, 60, "ns")
    defaults = session_store_from_url("redis://cache.internal")
    assert (defaults.host, defaults.port, defaults.db, defaults.ttl) == (
        "cache.internal",
        6379,
        0,
        None,
    )
    assert session_store_from_url("redis://[::1]:7000/1").host == "::1"


@pytest.mark.parametrize(
    "kwargs",
    [{"port": 0}, {"port": "6379"}, {"db": -1}, {"ttl": 0}, {"ttl": 1.5}, {"namespace": ""}],
)
def test_constructor_checks_its_settings(kwargs):
    with pytest.raises(UserError, match="invalid RedisSessionStore setting"):
        RedisSessionStore(**kwargs)


# --- credentials and failures ----------------------------------------------------------------


@pytest.fixture(scope="module")
def password_port(tmp_path_factory) -> Iterator[int]:
    with redis_server(tmp_path_factory.mktemp("redis-auth"), "--requirepass", PASSWORD) as port:
        yield port


async def test_password_from_the_url_is_never_shown(password_port):
    store = session_store_from_url(f"redis://:{PASSWORD}@127.0.0.1:{password_port}/0")
    assert await store.append("s", [rec("1")]) is True
    assert await store.load("s") == [rec("1")]
    assert PASSWORD not in repr(store)
    await store.aclose()


async def test_password_from_the_environment(password_port, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    store = session_store_from_url(f"redis://127.0.0.1:{password_port}/0")
    copy = pickle.loads(pickle.dumps(store))
    assert PASSWORD.encode() not in pickle.dumps(store)  # read where it connects
    assert await copy.append("env", [rec("1")]) is True
    await copy.aclose()


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:{port}/0", "redis://:wrong-pw@127.0.0.1:{port}"]
)
async def test_refused_credentials_are_a_storage_error(password_port, url):
    store = session_store_from_url(url.format(port=password_port))
    with pytest.raises(StorageError) as info:
        await store.load("s")
    assert "credentials" in info.value.hint
    assert PASSWORD_ENV in info.value.hint
    assert "wrong-pw" not in info.value.message
    await store.aclose()


async def test_no_server_is_a_storage_error():
    port = free_port()
    store = RedisSessionStore("127.0.0.1", port)
    for call in (store.load("s"), store.append("s", [rec("1")]), store.list_sessions()):
        with pytest.raises(StorageError) as info:
            await call
        assert f"127.0.0.1:{port}" in str(info.value)
        assert "redis-server is running" in info.value.hint
    await store.aclose()


# --- behind MemoryActor ------------------------------------------------------------------------


def count_users(messages, tools):
    return f"seen {sum(m.role == 'user' for m in messages)} user messages"


def test_memory_actor_keeps_conversations_in_redis(ray_session, raw, redis_port):
    from gecko_actors import Agent, Memory, ScriptedModel

    url = f"redis://127.0.0.1:{redis_port}/0?ttl=600"
    name = f"redis-{uuid.uuid4().hex[:8]}"
    memory = Memory.spawn(name, sessions=url)
    agent = Agent.spawn(f"{name}-agent", model=ScriptedModel(count_users), memory=memory)
    try:
        assert agent.run("one", session_id="s").content == "seen 1 user messages"
        memory.kill()  # the conversation is in Redis, not in the actor
        memory = Memory.spawn(name, sessions=url)
        assert [m.text for m in memory.history(f"{name}-agent", "s")] == [
            "one",
            "seen 1 user messages",
        ]
        assert raw.ttl(f"gecko:session:{name}-agent/s") > 0
    finally:
        agent.kill()
        memory.kill()
