"""MilvusVectorStore: its URLs, its secrets, its limits, and the conformance suite on a server.

The conformance suite (test_vector_conformance) runs it on a Milvus Lite file; here it runs
again on ``milvus://127.0.0.1:<port>?db=...``: Milvus Lite's own gRPC server (``milvus-lite
server``) started in a separate process, which speaks the protocol of a Milvus server.
"""

from __future__ import annotations

import gc
import importlib.util
import pickle
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from s3util import free_port
from test_vector_conformance import (  # noqa: F401  (collected here, on a server)
    require,
    store_factory,
    test_add_then_search_finds_the_closest_text_first,
    test_bad_input_is_refused_and_nothing_is_lost,
    test_concurrent_writers_on_one_table,
    test_delete_by_ids_and_by_source_and_source_hashes,
    test_ids_upsert_and_the_last_repeat_wins,
    test_precomputed_vectors_and_pickling,
    test_text_modes_where_supported,
    test_where_uses_json_equality,
    test_where_widens_the_candidates_until_k_match,
)

from gecko_actors.core.embedders import HashEmbedder
from gecko_actors.exceptions import StorageError, UserError
from gecko_actors.stores import milvus
from gecko_actors.stores.milvus import TOKEN_ENV, MilvusVectorStore
from gecko_actors.stores.registry import vector_store_from_url

TOKEN = "root:milvus-token-7f3a9c"
DATABASE = "gecko_test"


@pytest.fixture
def lite(tmp_path: Path) -> str:
    """The URL of a fresh Milvus Lite file."""
    require(
        all(importlib.util.find_spec(m) for m in ("pymilvus", "milvus_lite")),
        'pip install "gecko-actors[milvus]"',
    )
    return f"milvus:///{tmp_path}/vectors.db"


def build(url: str, **options: Any) -> MilvusVectorStore:
    return vector_store_from_url(url, embedder=HashEmbedder(dimensions=16), **options)


# --- URLs -------------------------------------------------------------------------------------


def test_urls_name_a_lite_file_or_a_server(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    relative = build("milvus:///data/vectors.db", table="docs")
    assert (relative.location, relative.table) == (str(tmp_path / "data/vectors.db"), "docs")
    assert build(f"milvus:///{tmp_path}/v.db").location == str(tmp_path / "v.db")
    server = build("milvus://localhost")
    assert (server.host, server.port, server.secure, server.db) == ("localhost", 19530, False, None)
    assert server.location == "milvus://localhost:19530"
    remote = build("milvus://milvus.example.com:19540?secure=true&db=prod")
    assert (remote.port, remote.secure, remote.db) == (19540, True, "prod")
    assert remote.location == "milvus://milvus.example.com:19540?db=prod"
    assert build("milvus://[::1]:19531").location == "milvus://[::1]:19531"
    assert not (tmp_path / "data").exists()  # nothing is opened before the first call


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("milvus:///vectors", "must end in '.db'"),
        ("milvus:///data/.db", "must end in '.db'"),
        ("milvus:///", "must end in '.db'"),
        ("milvus:///v.db?secure=true", "takes no query parameters"),
        ("milvus://vectors.db", "names no server host"),
        ("milvus://", "names no server host"),
        ("milvus://localhost:99999", "port"),
        ("milvus://localhost/prod", "path after the host"),
        ("milvus://localhost?token=abc", "unknown query parameter 'token'"),
        ("milvus://localhost?secure=yes", "neither true nor false"),
        ("milvus://localhost?db=my-db", "invalid Milvus database name"),
    ],
)
def test_bad_urls_say_what_is_wrong(url, problem):
    with pytest.raises(UserError, match=problem):
        build(url)


def test_table_names_milvus_refuses_are_refused(tmp_path):
    with pytest.raises(UserError, match="invalid Milvus collection name 'my-docs'"):
        build(f"milvus:///{tmp_path}/v.db", table="my-docs")


@pytest.mark.parametrize(
    "url",
    [
        "milvus://root:s3cret-pw-91x@localhost:19530",
        "milvus://:s3cret-pw-91x@localhost",
        "milvus://s3cret-pw-91x@localhost",
        "milvus:///root:s3cret-pw-91x@vectors.db",
    ],
)
def test_credentials_in_urls_are_refused_and_never_echoed(url):
    with pytest.raises(UserError) as info:
        build(url)
    assert "s3cret-pw-91x" not in str(info.value) + repr(info.value.context)
    if "///" not in url:
        assert TOKEN_ENV in (info.value.hint or "")


def test_the_token_is_never_in_repr_or_pickles(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    store = build("milvus://localhost?db=prod")
    assert TOKEN not in repr(store) and TOKEN.encode() not in pickle.dumps(store)
    copy = pickle.loads(pickle.dumps(store))
    assert (copy.location, copy.table) == (store.location, store.table)


# --- Milvus Lite ------------------------------------------------------------------------------


async def test_missing_collection_reads_as_empty(lite):
    store = build(lite)
    assert await store.count() == 0
    assert await store.search("x") == [] and await store.search("x", mode="fts") == []
    assert await store.delete(["a"]) == 0
    assert await store.source_hashes() == {}


async def test_data_outlives_the_store_and_the_file_is_released(lite):
    store = build(lite, table="kept")
    await store.add(["persisted text", "another text"], [{"n": 1}, {"n": 2}], ids=["p", "q"])
    path = store.location
    del store
    gc.collect()
    # The last store on the file is gone: its client is closed and Milvus Lite's server
    # stopped, so the next store re-opens the file from disk.
    assert ("lite", path) not in milvus._CLIENTS
    fresh = build(lite, table="kept")
    assert await fresh.count() == 2
    [hit] = await fresh.search("persisted text", k=1)
    assert (hit.id, hit.metadata) == ("p", {"n": 1})
    [hit] = await fresh.search("another", k=1, mode="fts")
    assert hit.id == "q" and hit.score > 0


async def test_too_long_ids_texts_and_metadata_are_refused(lite):
    store = build(lite)
    await store.add(["kept"])
    with pytest.raises(UserError, match=r"id of the entry .* 4097 bytes .* 4096 bytes"):
        await store.add(["a"], ids=["x" * 4097])
    with pytest.raises(UserError, match=r"text .* 80000 bytes .* 65535 bytes") as info:
        await store.add(["é" * 40000])  # two bytes each: the limit is in bytes
    assert "chunks" in (info.value.hint or "")
    with pytest.raises(UserError, match=r"metadata .* 65535 bytes"):
        await store.add(["a"], [{"big": "x" * 70000}])
    await store.add(["é" * 32767], ids=["i" * 4096])  # at the limits
    assert await store.count() == 2


async def test_ids_with_quotes_and_newlines_are_deleted_and_counted(lite):
    store = build(lite)
    ids = ['say "hi"', "it's", "back\\slash", "two\nlines", "tab\tand\rcr"]
    await store.add([f"text {i}" for i in range(5)], ids=ids)
    assert await store.delete([*ids[:3], "missing", 'say "hi"']) == 3
    assert await store.delete(ids) == 2
    assert await store.count() == 0


async def test_a_collection_made_by_something_else_is_refused(lite):
    from pymilvus import MilvusClient

    store = build(lite, table="foreign")
    await store.count()  # opens the file in this process; a client on it shares its server
    client = MilvusClient(store.location)
    client.create_collection("foreign", dimension=16)
    client.close()
    with pytest.raises(UserError, match="not made by MilvusVectorStore"):
        await store.add(["x"])


async def test_a_lite_file_held_elsewhere_is_a_clear_storage_error(lite):
    from milvus_lite import MilvusLite

    store = build(lite)
    holder = MilvusLite(store.location)  # holds the file's lock, as another process would
    try:
        with pytest.raises(StorageError, match="could not open the Milvus Lite database") as info:
            await store.count()
        assert "one process at a time" in (info.value.hint or "")
    finally:
        holder.close()
    assert await store.count() == 0  # the next call opens it


# --- a server ---------------------------------------------------------------------------------


async def test_an_unreachable_server_is_a_storage_error_naming_it(lite):
    port = free_port()  # closed: nothing listens on it
    store = MilvusVectorStore(host="127.0.0.1", port=port, timeout=5)
    with pytest.raises(StorageError, match=f"127.0.0.1:{port}"):
        await store.count()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    """``milvus://127.0.0.1:<port>?db=...``: Milvus Lite's gRPC server in its own process."""
    require(
        all(importlib.util.find_spec(m) for m in ("pymilvus", "milvus_lite")),
        'pip install "gecko-actors[milvus]"',
    )
    from pymilvus import MilvusClient

    directory = tmp_path_factory.mktemp("milvus-server")
    port = free_port()
    command = [sys.executable, "-m", "milvus_lite", "server", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--data-dir", str(directory / "data.db")]
    log = (directory / "server.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not _listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"milvus-lite server did not start on port {port}")
            time.sleep(0.05)
        client = MilvusClient(f"http://127.0.0.1:{port}")
        client.create_database(DATABASE)
        client.close()
        yield f"milvus://127.0.0.1:{port}?db={DATABASE}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
def make_store(server: str, monkeypatch) -> Any:
    """The conformance tests' stores, on the server, with a token in the environment."""
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    return store_factory(server)


async def test_a_connected_store_keeps_the_token_out_of_repr_and_pickles(make_store):
    store = make_store()
    await store.add(["hello"])
    assert TOKEN not in repr(store) and TOKEN.encode() not in pickle.dumps(store)
    assert await pickle.loads(pickle.dumps(store)).count() == 1
