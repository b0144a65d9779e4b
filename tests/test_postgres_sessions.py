"""PostgresSessionStore against a real PostgreSQL started here on 127.0.0.1 (never a mock).

The SessionStore protocol tests of test_session_stores run here too, on PostgreSQL (through
this module's ``store`` fixture, on a fresh table each); then what only this store does. The
server is one per module (see pgutil: this machine's PostgreSQL, else pgserver's), with a
password, so that every test also goes through authentication.
"""

from __future__ import annotations

import asyncio
import copy
import multiprocessing
import pickle
import uuid
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from pgutil import PostgresServer, postgres_server
from test_session_stores import (  # noqa: F401  (collected here, on PostgreSQL)
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
from gecko_actors.stores.postgres_sessions import PASSWORD_ENV, PostgresSessionStore
from gecko_actors.stores.registry import session_store_from_url

PASSWORD = "gecko-pg-pw-4b9e"


@pytest.fixture(scope="module")
def pg(tmp_path_factory) -> Iterator[PostgresServer]:
    with postgres_server(tmp_path_factory.mktemp("postgres"), password=PASSWORD) as server:
        yield server


@pytest.fixture
def table() -> str:
    """A fresh table name: every test starts from no tables at all."""
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def raw(pg) -> Iterator[Any]:
    """A plain psycopg connection to the server, outside the store (autocommit)."""
    import psycopg

    with psycopg.connect(**pg.connect_kwargs(), autocommit=True) as conn:
        yield conn


def url(
    pg: PostgresServer,
    table: str,
    *,
    password: str | None = PASSWORD,
    user: str | None = None,
    **query: Any,
) -> str:
    secret = f":{password}" if password else ""
    params = "&".join(f"{k}={v}" for k, v in {"table": table, **query}.items())
    return f"postgresql://{user or pg.user}{secret}@{pg.host}:{pg.port}/{pg.dbname}?{params}"


@pytest.fixture
async def store(pg, table) -> Any:
    store = PostgresSessionStore(
        pg.host, pg.port, pg.dbname, user=pg.user, password=PASSWORD, table=table
    )
    yield store
    await store.aclose()


def rows(raw: Any, sql: str, *args: Any) -> list[tuple]:
    return raw.execute(sql, args).fetchall()


# --- what only the PostgreSQL store does -----------------------------------------------------


async def test_records_round_trip_exactly(store):
    records = _messages()
    records.append({"role": "user", "content": "x", "extra": {"big": 2**62, "f": 0.1, "e": {}}})
    # msgpack, not JSONB: a NUL and bytes survive too.
    records.append({"role": "tool", "content": "a\x00b ✓ 🦎", "raw": b"\x00\xff", "n": [None]})
    assert await store.append("s/ünï 🦎", records, key="run") is True
    assert await store.load("s/ünï 🦎") == records
    assert await store.list_sessions() == ["s/ünï 🦎"]


async def test_missing_tables_are_created_and_hold_msgpack(store, raw, table):
    def exists() -> list[bool]:
        names = [table, f"{table}_records", f"{table}_applied"]
        return [rows(raw, "SELECT to_regclass(%s) IS NOT NULL", n)[0][0] for n in names]

    assert exists() == [False, False, False]
    await store.append("s", [rec("hello"), rec("again")], key="run-1")
    assert exists() == [True, True, True]
    data = rows(raw, f'SELECT seq, data FROM "{table}_records" ORDER BY seq')
    assert [(seq, msgpack.unpackb(d, raw=False)) for seq, d in data] == [
        (0, rec("hello")),
        (1, rec("again")),
    ]
    assert rows(raw, f'SELECT * FROM "{table}_applied"') == [("s", "run-1")]
    assert rows(raw, f'SELECT session_id, next_seq FROM "{table}"') == [("s", 2)]


async def test_tables_dropped_meanwhile_are_created_again(store, raw, table):
    await store.append("s", [rec("1")], key="k")
    for suffix in ("", "_records", "_applied"):
        raw.execute(f'DROP TABLE "{table}{suffix}"')
    assert await store.load("s") == []
    assert await store.append("s", [rec("2")], key="k") is True
    assert await store.load("s") == [rec("2")]


async def test_a_role_granted_only_the_tables_can_use_but_not_create_them(pg, raw, table, store):
    await store.append("s", [rec("1")], key="k")  # the tables, made by their owner
    role = f"app_{uuid.uuid4().hex[:8]}"
    raw.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
    tables = ", ".join(f'"{table}{suffix}"' for suffix in ("", "_records", "_applied"))
    raw.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {tables} TO {role}")
    raw.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")  # PostgreSQL 15's default
    app = session_store_from_url(url(pg, table, user=role))
    assert await app.load("s") == [rec("1")]
    assert await app.append("s", [rec("2")], key="k2") is True
    assert await app.append("s", [rec("2")], key="k") is False
    assert await store.load("s") == [rec("1"), rec("2")]
    elsewhere = session_store_from_url(url(pg, f"{table}_new", user=role))
    with pytest.raises(StorageError) as info:
        await elsewhere.list_sessions()
    assert "permission denied" in info.value.message and "grant" in info.value.hint
    for s in (app, elsewhere):
        await s.aclose()


async def test_many_records_in_one_append(store, raw, table):
    records = [rec(str(i)) for i in range(2500)]
    assert await store.append("s", records, key="big") is True
    assert await store.append("s", [rec("last")]) is True
    assert await store.load("s") == [*records, rec("last")]
    assert rows(raw, f'SELECT min(seq), max(seq), count(*) FROM "{table}_records"') == [
        (0, 2500, 2501)
    ]


async def test_undecodable_rows_are_skipped(store, raw, table):
    await store.append("s", [rec("before")])
    await store.append("s", [rec("after")])
    for seq, junk in ((10, b"\xc1"), (11, msgpack.packb(42)), (12, b"\x92\x01")):
        raw.execute(
            f'INSERT INTO "{table}_records" VALUES (%s, %s, %s)', ("s", seq, junk)
        )  # after the two good records
    assert await store.load("s") == [rec("before"), rec("after")]


async def test_a_duplicate_keyed_append_changes_nothing(store, raw, table):
    await store.append("s", [rec("1")], key="k")
    before = rows(raw, f'SELECT next_seq, updated_at FROM "{table}"')
    assert await store.append("s", [rec("dup")], key="k") is False
    assert rows(raw, f'SELECT next_seq, updated_at FROM "{table}"') == before


async def test_the_same_key_from_many_connections_adds_once(pg, table):
    # Four stores (four pools) and 40 tasks racing with one key, on a fresh table: the
    # tables are created under the race too.
    stores = [session_store_from_url(url(pg, table)) for _ in range(4)]
    results = await asyncio.gather(
        *(s.append("s", [rec(f"q{i}"), rec(f"a{i}")], key="run") for i in range(10) for s in stores)
    )
    assert sorted(results) == [False] * 39 + [True]
    loaded = await stores[0].load("s")
    assert len(loaded) == 2 and loaded[0]["content"][1:] == loaded[1]["content"][1:]
    for s in stores:
        await s.aclose()


async def test_concurrent_tasks_keep_each_writers_order(store):
    # More tasks than the store's 8 connections: they queue for them.
    async def writer(w: int) -> None:
        for i in range(8):
            await store.append("s", [rec(f"{w}-{i}"), rec(f"{w}-{i}!")])

    await asyncio.gather(*(writer(w) for w in range(12)))
    texts = [r["content"] for r in await store.load("s")]
    assert len(texts) == 12 * 8 * 2
    _assert_writers_in_order(texts, range(12), 8)


async def test_concurrent_writes_of_all_kinds_keep_the_numbering_whole(pg, table, raw):
    # Appends, keyed appends, replaces and deletes of one session from several connections:
    # no deadlock, no error, and whatever is left is numbered 0..n-1 as its row says.
    stores = [session_store_from_url(url(pg, table)) for _ in range(3)]

    async def churn(n: int, store: Any) -> None:
        for i in range(6):
            await store.append("s", [rec(f"{n}-{i}")])
            await store.append("s", [rec(f"{n}-{i}k")], key=f"{n}-{i}")
            if i % 3 == 1:
                await store.replace("s", [rec("r1"), rec("r2")])
            if i == 4 and n == 0:
                await store.delete("s")

    await asyncio.gather(*(churn(n, s) for n, s in enumerate(stores)))
    seqs = [seq for (seq,) in rows(raw, f'SELECT seq FROM "{table}_records" ORDER BY seq')]
    assert seqs == list(range(len(seqs))) and seqs
    assert rows(raw, f'SELECT next_seq FROM "{table}"') == [(len(seqs),)]
    for s in stores:
        await s.aclose()


def _assert_writers_in_order(texts: list[str], writers: Any, count: int) -> None:
    for w in writers:
        mine = [t for t in texts if t.startswith(f"{w}-")]
        # Every record once, each writer's appends in its order.
        assert mine == [t for i in range(count) for t in (f"{w}-{i}", f"{w}-{i}!")]
    for i, text in enumerate(texts):  # and the two records of an append side by side
        if not text.endswith("!") and not text.startswith("shared"):
            assert texts[i + 1] == text + "!"


def _append_in_a_process(store_url: str, worker: int, count: int, barrier, results) -> None:
    async def main() -> list[bool]:
        store = session_store_from_url(store_url)
        shared = []
        for i in range(count):
            await store.append("s", [rec(f"{worker}-{i}"), rec(f"{worker}-{i}!")])
            if i == count // 2:
                shared.append(await store.append("s", [rec(f"shared-{worker}")], key="shared"))
        await store.aclose()
        return shared

    barrier.wait()
    try:
        results.put((worker, asyncio.run(main())))
    except BaseException as exc:  # report it, or the parent would wait for nothing
        results.put((worker, f"{type(exc).__name__}: {exc}"))


def test_processes_append_concurrently(pg, table, monkeypatch):
    # The password from the environment, as on Ray: the URL the processes get has none.
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    ctx = multiprocessing.get_context("spawn")
    barrier, results, count = ctx.Barrier(2), ctx.Queue(), 20
    store_url = url(pg, table, password=None)  # no process finds the tables made
    workers = [
        ctx.Process(target=_append_in_a_process, args=(store_url, w, count, barrier, results))
        for w in range(2)
    ]
    for p in workers:
        p.start()
    outcomes = dict(results.get(timeout=90) for _ in workers)
    for p in workers:
        p.join(timeout=60)
    assert all(isinstance(o, list) for o in outcomes.values()), outcomes
    assert [p.exitcode for p in workers] == [0, 0]

    texts = [r["content"] for r in asyncio.run(_load(store_url))]
    assert len(texts) == 2 * count * 2 + 1
    _assert_writers_in_order(texts, range(2), count)
    assert len([t for t in texts if t.startswith("shared-")]) == 1
    assert sorted(x for o in outcomes.values() for x in o) == [False, True]


async def _load(store_url: str) -> list[dict]:
    store = session_store_from_url(store_url)
    try:
        return await store.load("s")
    finally:
        await store.aclose()


async def test_lost_connections_are_replaced(store, raw):
    await store.append("s", [rec("1")])
    # The server ends the store's idle connections (a restart, a proxy's timeout): the next
    # calls fail on them before anything is committed, and run again on new ones.
    killed = rows(
        raw,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'gecko_actors' AND pid <> pg_backend_pid()",
    )
    assert killed and all(ok for (ok,) in killed)
    assert await store.append("s", [rec("2")]) is True  # unkeyed, yet safely retried
    assert await store.load("s") == [rec("1"), rec("2")]


async def test_ttl_hides_and_restarts_expired_sessions(pg, raw, table):
    store = session_store_from_url(url(pg, table, ttl=86400))
    await store.append("old", [rec("1")], key="k")
    await store.append("new", [rec("2")], key="k")
    # Age one session past its TTL in the table rather than by waiting.
    raw.execute(
        f"UPDATE \"{table}\" SET updated_at = now() - interval '2 days' WHERE session_id = 'old'"
    )
    assert await store.load("old") == []
    assert await store.list_sessions() == ["new"]
    assert await store.append("old", [rec("again")], key="k") is True  # its key expired too
    assert await store.load("old") == [rec("again")]
    assert await store.load("new") == [rec("2")]
    # A store connecting afresh deletes what expired meanwhile, rows and keys.
    raw.execute(
        f"UPDATE \"{table}\" SET updated_at = now() - interval '2 days' WHERE session_id = 'new'"
    )
    await store.aclose()
    fresh = session_store_from_url(url(pg, table, ttl=86400))
    assert await fresh.list_sessions() == ["old"]
    assert rows(raw, f'SELECT * FROM "{table}_applied"') == [("old", "k")]
    assert rows(raw, f'SELECT count(*) FROM "{table}_records" WHERE session_id = %s', "new") == [
        (0,)
    ]
    await fresh.aclose()


async def test_without_ttl_nothing_expires(store, raw, table):
    await store.append("s", [rec("1")], key="k")
    raw.execute(f"UPDATE \"{table}\" SET updated_at = now() - interval '20 years'")
    assert await store.load("s") == [rec("1")]
    assert await store.append("s", [rec("1")], key="k") is False


@pytest.mark.parametrize(
    ("session_id", "key", "problem"),
    [
        ("a\x00b", None, "NUL"),
        ("s", "k\x00", "NUL"),
        ("\udcff", None, "surrogate"),
        (7, None, "int"),
    ],
)
async def test_ids_postgresql_cannot_hold_are_user_errors(store, session_id, key, problem):
    with pytest.raises(UserError, match=problem):
        await store.append(session_id, [rec("1")], key=key)
    assert await store.list_sessions() == []


async def test_unpackable_record_is_a_user_error(store):
    with pytest.raises(UserError, match="not plain data"):
        await store.append("s", [rec("ok"), {"role": "user", "content": object()}])
    assert await store.load("s") == []


async def test_pickles_without_its_connections(pg, table, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    store = session_store_from_url(url(pg, table, password=None))
    await store.append("s", [rec("1")], key="k")
    copied = pickle.loads(pickle.dumps(store))
    assert copied._pools == {} and repr(copied) == repr(store)
    assert await copied.load("s") == [rec("1")]
    assert await copied.append("s", [rec("1")], key="k") is False
    await copied.aclose()
    await store.aclose()


def test_works_from_several_event_loops(pg, table):
    store = session_store_from_url(url(pg, table))
    assert asyncio.run(store.append("s", [rec("1")])) is True
    (first,) = store._pools.values()
    idle = list(first.idle)
    assert idle and not any(conn.closed for conn in idle)
    # That loop is gone: the next one closes its connections and opens its own.
    assert asyncio.run(_load_and_close(store)) == [rec("1")]
    assert all(conn.closed for conn in idle)
    assert store._pools == {}


async def _load_and_close(store: Any) -> list:
    try:
        return await store.load("s")
    finally:
        await store.aclose()


# --- URLs and settings -----------------------------------------------------------------------


async def test_session_store_from_url(pg, table):
    for scheme in ("postgresql", "postgres"):
        store = session_store_from_url(url(pg, table).replace("postgresql", scheme, 1))
        assert isinstance(store, PostgresSessionStore)
        await store.append(scheme, [rec(scheme)])
        assert await store.load(scheme) == [rec(scheme)]
        await store.aclose()


def test_url_settings():
    store = session_store_from_url(
        f"postgres://reader:{PASSWORD}@db.internal:6543/app%20db?table=Chat_1&ttl=60"
        "&sslmode=verify-full"
    )
    assert (store.host, store.port, store.dbname, store.user) == (
        "db.internal",
        6543,
        "app db",
        "reader",
    )
    assert (store.table, store.ttl, store.sslmode) == ("Chat_1", 60, "verify-full")
    defaults = session_store_from_url("postgresql://db.internal")
    assert (defaults.port, defaults.dbname, defaults.user, defaults.table, defaults.ttl) == (
        5432,
        None,
        None,
        "gecko_sessions",
        None,
    )
    assert session_store_from_url("postgresql://[::1]:7000/x").host == "::1"


@pytest.mark.parametrize(
    ("bad", "part"),
    [
        ("postgresql://:{pw}@/gecko", "host is missing"),
        ("postgresql://u:{pw}@db:port/gecko", "port 'port'"),
        ("postgresql://u:{pw}@db:70000/gecko", "port '70000'"),
        ("postgresql://u:{pw}@db/gecko/more", "database name 'gecko/more'"),
        ("postgresql://u:{pw}@db/a%00b", "control character"),
        ("postgresql://u%0A:{pw}@db/gecko", "user name"),
        ("postgresql://u:{pw}@db/gecko?table=bad-name", "table 'bad-name'"),
        ("postgresql://u:{pw}@db/gecko?table=1st", "table '1st'"),
        ("postgresql://u:{pw}@db/gecko?table=" + "x" * 51, "plain SQL name"),
        ("postgresql://u:{pw}@db/gecko?ttl=0", "ttl '0'"),
        ("postgresql://u:{pw}@db/gecko?ttl=999999999999", "ttl 999999999999"),
        ("postgresql://u:{pw}@db/gecko?sslmode=maybe", "sslmode 'maybe'"),
        ("postgresql://u:{pw}@db/gecko?namespace=x", "unknown query parameter 'namespace'"),
        ("postgresql://u:{pw}@db/gecko?table=a&table=b", "given twice"),
    ],
)
def test_bad_urls_say_which_part_is_wrong(bad, part):
    with pytest.raises(UserError) as info:
        session_store_from_url(bad.format(pw=PASSWORD))
    err = info.value
    assert part in err.message
    for text in (err.message, err.hint or "", str(err.context), repr(err)):
        assert PASSWORD not in text


@pytest.mark.parametrize(
    "kwargs",
    [
        {"host": ""},
        {"port": 0},
        {"port": "5432"},
        {"dbname": ""},
        {"user": "a\nb"},
        {"table": "x;drop"},
        {"ttl": 0},
        {"ttl": 1.5},
        {"sslmode": "on"},
    ],
)
def test_constructor_checks_its_settings(kwargs):
    with pytest.raises(UserError, match="invalid PostgresSessionStore setting"):
        PostgresSessionStore(**kwargs)


def test_a_password_is_never_shown_nor_pickled():
    store = session_store_from_url(f"postgresql://u:{PASSWORD}@db.internal/gecko")
    assert PASSWORD not in repr(store) and PASSWORD not in str(store)
    with pytest.raises(UserError) as info:
        pickle.dumps(store)
    assert PASSWORD_ENV in info.value.hint
    assert PASSWORD not in str(info.value) and PASSWORD not in info.value.message
    # A copy stays in this process: it keeps the password.
    assert copy.copy(store)._password == PASSWORD
    assert copy.deepcopy(store)._password == PASSWORD
    # Without one, the pickle holds none, even with the variable set here.
    bare = session_store_from_url("postgresql://u@db.internal/gecko")
    assert PASSWORD.encode() not in pickle.dumps(bare)
    assert pickle.loads(pickle.dumps(bare))._password is None


# --- credentials and failures ----------------------------------------------------------------


async def test_password_from_the_environment(pg, table, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    store = pickle.loads(pickle.dumps(session_store_from_url(url(pg, table, password=None))))
    assert await store.append("env", [rec("1")]) is True
    assert await store.load("env") == [rec("1")]
    await store.aclose()


@pytest.mark.parametrize("password", [None, "wrong-pw-1234"])
async def test_refused_credentials_are_a_storage_error(pg, table, monkeypatch, password):
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", "/nonexistent")  # no ~/.pgpass either
    store = session_store_from_url(url(pg, table, password=password))
    with pytest.raises(StorageError) as info:
        await store.load("s")
    assert "refused" in info.value.hint and PASSWORD_ENV in info.value.hint
    assert "wrong-pw" not in info.value.message
    assert f"{pg.host}:{pg.port}" in info.value.message
    await store.aclose()


async def test_unknown_database_is_a_storage_error(pg, table):
    store = session_store_from_url(url(pg, table).replace(f"/{pg.dbname}?", "/no_such_db?"))
    with pytest.raises(StorageError) as info:
        await store.list_sessions()
    assert "createdb no_such_db" in info.value.hint
    await store.aclose()


async def test_no_server_is_a_storage_error():
    from s3util import free_port

    port = free_port()
    store = session_store_from_url(f"postgresql://u:{PASSWORD}@127.0.0.1:{port}/gecko")
    for call in (
        store.load("s"),
        store.append("s", [rec("1")]),
        store.append("s", [rec("1")], key="k"),
        store.replace("s", []),
        store.delete("s"),
        store.list_sessions(),
    ):
        with pytest.raises(StorageError) as info:
            await call
        assert f"127.0.0.1:{port}/gecko" in str(info.value)
        assert "is running" in info.value.hint
        assert PASSWORD not in str(info.value)
    await store.aclose()
