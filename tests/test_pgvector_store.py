"""PgVectorStore's own behaviour: its URL, its password, its tables and its errors.

What every vector store does is tested by test_vector_conformance.py; these tests run on one
throw-away PostgreSQL 16 with pgvector (from the pgserver wheel) that asks for a password, and
one test on this machine's PostgreSQL without pgvector.
"""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import os
import pickle
import uuid
from collections.abc import Iterator

import pytest

if importlib.util.find_spec("psycopg") is None and not os.environ.get("GECKO_REQUIRE_STORES"):
    pytest.skip("pip install gecko-actors[pgvector]", allow_module_level=True)

import pgutil
import psycopg
from s3util import free_port

from gecko_actors import UserError
from gecko_actors.core.embedders import HashEmbedder
from gecko_actors.exceptions import ConfigurationError, StorageError
from gecko_actors.stores.pgvector import PASSWORD_ENV, PgVectorStore
from gecko_actors.stores.registry import vector_store_from_url

SECRET = "Pgv-s3cret-Word"  # the test server's password


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[pgutil.PostgresServer]:
    directory = tmp_path_factory.mktemp("pgvector")
    bin_dir = pgutil.pgserver_bin_dir()
    with pgutil.postgres_server(directory, bin_dir=bin_dir, password=SECRET) as pg:
        yield pg


def url(server: pgutil.PostgresServer, *, password: bool = True, query: str = "") -> str:
    secret = f":{SECRET}" if password else ""
    return f"pgvector://{server.user}{secret}@{server.host}:{server.port}/{server.dbname}{query}"


def store(location: str, table: str | None = None, dimensions: int = 16) -> PgVectorStore:
    return vector_store_from_url(
        location, table=table or f"t_{uuid.uuid4().hex[:8]}", embedder=HashEmbedder(dimensions)
    )


def sql(server: pgutil.PostgresServer, statement: str) -> list[tuple]:
    with psycopg.connect(**server.connect_kwargs()) as conn:
        cursor = conn.execute(statement)
        return cursor.fetchall() if cursor.description else []


# --- the URL and the password --------------------------------------------------------------------


def test_a_url_gives_every_setting_and_location_hides_the_credentials():
    found = store("pgvector://alice:Zq-9xw-URL@db.example:6543/vecs?schema=ml&sslmode=require")
    assert isinstance(found, PgVectorStore)
    assert (found.host, found.port, found.dbname, found.user) == (
        "db.example",
        6543,
        "vecs",
        "alice",
    )
    assert (found.schema, found.sslmode) == ("ml", "require")
    assert found.location == "pgvector://db.example:6543/vecs?schema=ml"
    assert "Zq-9xw-URL" not in repr(found) and "alice" not in repr(found)
    plain = PgVectorStore.from_url("pgvector://[::1]", table="docs")
    assert (plain.host, plain.port, plain.dbname, plain.user, plain.schema) == (
        "::1",
        5432,
        None,
        None,
        None,
    )
    assert plain.location == "pgvector://[::1]:5432/"
    assert plain.search_modes() == ("vector", "fts", "hybrid")


@pytest.mark.parametrize(
    ("tail", "problem"),
    [
        ("@/gecko", "the host is missing"),
        ("@db:99999/gecko", "the port"),
        ("@db/gecko?table=docs", "unknown query parameter 'table'"),
        ("@db/gecko/more", "has a '/'"),
        ("@db/gecko?sslmode=maybe", "sslmode"),
        ("@db/gecko?schema=", "schema"),
        ("@db/gecko?schema=" + "s" * 64, "schema"),
    ],
)
def test_a_bad_url_says_what_is_wrong_without_the_password(tail: str, problem: str):
    with pytest.raises(UserError, match="invalid vector store URL") as info:
        vector_store_from_url(f"pgvector://bob:Hush-Pw-77{tail}")
    assert problem in str(info.value)
    assert "Hush-Pw-77" not in str(info.value) and "Hush-Pw-77" not in repr(info.value)


def test_a_table_name_postgres_would_truncate_is_refused():
    with pytest.raises(UserError, match="longer than 63"):
        vector_store_from_url("pgvector://db/gecko", table="t" * 64)


def test_a_store_holding_a_password_is_never_pickled():
    held = store("pgvector://bob:Hush-Pw-88@db/gecko")
    with pytest.raises(UserError, match="holds a password") as info:
        pickle.dumps(held)
    assert PASSWORD_ENV in (info.value.hint or "") and "Hush-Pw-88" not in str(info.value)
    assert copy.copy(held)._password == "Hush-Pw-88"  # a copy stays in this process
    shipped = pickle.loads(pickle.dumps(store("pgvector://bob@db/gecko?schema=s")))
    assert (shipped.user, shipped.schema, shipped._password) == ("bob", "s", None)


async def test_the_password_comes_from_the_url_or_the_environment(server, monkeypatch):
    table = f"t_{uuid.uuid4().hex[:8]}"
    await store(url(server), table).add(["with the password in the URL"])
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    from_env = store(url(server, password=False), table)
    assert await pickle.loads(pickle.dumps(from_env)).count() == 1
    monkeypatch.delenv(PASSWORD_ENV)
    with pytest.raises(StorageError, match="password") as info:
        await store(url(server, password=False), table).count()
    assert PASSWORD_ENV in (info.value.hint or "")


# --- tables ------------------------------------------------------------------------------------


async def test_concurrent_stores_create_one_table_and_schema(server):
    schema = f"s_{uuid.uuid4().hex[:8]}"
    location = url(server, query=f"?schema={schema}")
    tables = ["docs", "docs", "docs", "docs", "notes", "notes", "more.docs", "more.docs"]
    stores = [store(location, table) for table in tables]
    await asyncio.gather(
        *(s.add([f"store {i} text {n}" for n in range(5)]) for i, s in enumerate(stores))
    )
    assert [await s.count() for s in stores] == [20] * 4 + [10] * 2 + [10] * 2
    made = sql(server, f"SELECT tablename FROM pg_tables WHERE schemaname = '{schema}'")
    assert sorted(row[0] for row in made) == ["docs", "more.docs", "notes"]


async def test_a_missing_table_is_empty_and_not_created(server):
    missing = store(url(server))
    assert await missing.count() == 0
    for mode in ("vector", "fts", "hybrid"):
        assert await missing.search("anything", mode=mode) == []
    assert await missing.delete(["x"]) == 0
    assert await missing.source_hashes() == {}
    assert sql(server, f"SELECT to_regclass('{missing.table}')") == [(None,)]


async def test_a_table_dropped_behind_the_stores_back_is_made_again(server):
    dropped = store(url(server))
    await dropped.add(["first"])
    sql(server, f'DROP TABLE "{dropped.table}"')
    assert await dropped.count() == 0
    await dropped.add(["second"])
    assert [hit.text for hit in await dropped.search("second")] == ["second"]


async def test_a_table_the_store_did_not_make_is_refused(server):
    sql(server, "CREATE TABLE IF NOT EXISTS app_users (id int PRIMARY KEY, name text)")
    foreign = store(url(server), "app_users")
    for call in (foreign.add(["x"]), foreign.count(), foreign.search("x")):
        with pytest.raises(UserError, match="was not made by PgVectorStore"):
            await call
    assert sql(server, "SELECT count(*) FROM app_users") == [(0,)]


async def test_another_dimension_is_refused_on_search_too(server):
    first = store(url(server), dimensions=16)
    await first.add(["sixteen"])
    with pytest.raises(UserError, match="16-dimensional") as info:
        await store(url(server), first.table, dimensions=8).search("sixteen")
    assert info.value.context["table_dimensions"] == 16


async def test_text_search_stems_ors_the_words_and_ignores_stop_words(server):
    texts = store(url(server))
    await texts.add(["the quick brown fox", "lorem ipsum dolor", "unrelated"], ids=["a", "b", "c"])
    assert [hit.id for hit in await texts.search("foxes", mode="fts")] == ["a"]
    both = await texts.search("fox ipsum", k=5, mode="fts")
    assert sorted(hit.id for hit in both) == ["a", "b"] and all(hit.score > 0 for hit in both)
    assert await texts.search("the of and", mode="fts") == []


async def test_text_postgres_cannot_store_is_a_user_error(server):
    nul = store(url(server))
    with pytest.raises(UserError, match="NUL"):
        await nul.add(["a\x00b"])
    with pytest.raises(UserError, match="surrogate"):
        await nul.add(["fine"], [{"bad": "\ud800"}])


# --- servers that cannot serve -----------------------------------------------------------------


async def test_pooled_connections_the_server_closed_are_replaced(server):
    survivor = store(url(server))
    await survivor.add(["still here"])
    killed = sql(
        server,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = 'gecko_actors'",
    )
    assert killed[0][0] >= 1
    assert await survivor.count() == 1


async def test_a_dead_server_is_a_storage_error_naming_host_and_port():
    port = free_port()
    with pytest.raises(StorageError, match=f"127.0.0.1:{port}") as info:
        await store(f"pgvector://gecko@127.0.0.1:{port}/gecko").count()
    assert f"127.0.0.1:{port}" in (info.value.hint or "")


async def test_a_server_without_pgvector_says_how_to_install_it(tmp_path):
    with pgutil.postgres_server(tmp_path) as plain:
        available = "SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'"
        if sql(plain, available) != [(0,)]:
            pytest.skip("this machine's PostgreSQL has pgvector")
        location = plain.url.replace("postgresql://", "pgvector://", 1)
        with pytest.raises(
            ConfigurationError, match="does not have the pgvector extension"
        ) as info:
            await store(location).add(["x"])
    assert "install pgvector" in (info.value.hint or "")
    assert f"{plain.host}:{plain.port}" in str(info.value)
