"""ChromaVectorStore: its URLs, its secrets, and the conformance suite on a real Chroma server.

The shared conformance tests (test_vector_conformance) run there on an embedded directory;
here they run again on ``chroma://127.0.0.1:<port>``, a server started by this module with
chromadb's own ``chroma run`` (offline, never a mock). Then what only this store does.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from s3util import free_port
from test_vector_conformance import (  # noqa: F401  (collected here, on a Chroma server)
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
from gecko_actors.stores.chroma import TOKEN_ENV, ChromaVectorStore
from gecko_actors.stores.registry import vector_store_from_url

if importlib.util.find_spec("chromadb") is None and not os.environ.get("GECKO_REQUIRE_STORES"):
    # CI sets GECKO_REQUIRE_STORES: there a missing chromadb fails these tests instead.
    pytest.skip("pip install gecko-actors[chroma]", allow_module_level=True)

TOKEN = "chroma-token-9c41e7"  # unusual: redaction would mask a common word in other tests
PASSWORD = "chroma-pw-52d0b8"
EMBEDDER = HashEmbedder(dimensions=64)
# Starts chromadb's CLI (a Rust binary inside the chromadb wheel) as `chroma` would.
CHROMA_CLI = "import sys; from chromadb.cli.cli import app; sys.argv[0] = 'chroma'; app()"


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def chroma_port(tmp_path_factory) -> Iterator[int]:
    """A throw-away Chroma server on a free 127.0.0.1 port, for this module."""
    directory = tmp_path_factory.mktemp("chroma-server")
    port = free_port()
    log = directory / "server.log"
    command = [sys.executable, "-c", CHROMA_CLI, "run", "--path", str(directory / "data")]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not _ready(port):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"chroma run did not start on port {port}:\n{log.read_text()}")
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def make_store(chroma_port: int) -> Any:
    """The conformance suite's stores, on the server (a fresh collection per test)."""
    return store_factory(f"chroma://127.0.0.1:{chroma_port}")


# --- URLs -------------------------------------------------------------------------------------


def test_directory_urls_follow_the_sqlite_convention(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    relative = vector_store_from_url("chroma:///data/vectors", table="notes")
    assert isinstance(relative, ChromaVectorStore)
    assert relative.path == str(tmp_path / "data" / "vectors")
    assert relative.host is None and relative.table == "notes"
    absolute = ChromaVectorStore.from_url(f"chroma:///{tmp_path}/abs", embedder=EMBEDDER)
    assert absolute.path == str(tmp_path / "abs") and absolute.embedder is EMBEDDER
    assert absolute.location == f"chroma:///{tmp_path}/abs"
    assert absolute.search_modes() == ("vector",)


def test_server_urls():
    store = vector_store_from_url("chroma://db.example")
    assert (store.host, store.port, store.ssl, store.tenant, store.database) == (
        "db.example",
        8000,
        False,
        None,
        None,
    )
    assert store.path is None and store.location == "chroma://db.example:8000"
    full = ChromaVectorStore.from_url("chroma://h:9000/?ssl=TRUE&tenant=t1&database=d1")
    assert (full.port, full.ssl, full.tenant, full.database) == (9000, True, "t1", "d1")
    assert full.location == "chroma://h:9000?ssl=true&tenant=t1&database=d1"
    ipv6 = ChromaVectorStore.from_url("chroma://[::1]:8001?ssl=0")
    assert (ipv6.host, ipv6.port, ipv6.ssl) == ("::1", 8001, False)
    assert ipv6.location == "chroma://[::1]:8001"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("chroma://", "names no host"),
        ("chroma:///", "names no directory"),
        ("chroma:///data?tenant=x", "takes no query parameters"),
        ("chroma://host/some/path", "has no path"),
        ("chroma://host?colour=red", "unknown query parameter 'colour'"),
        ("chroma://host?ssl=maybe", "ssl must be true or false"),
        ("chroma://host?tenant=", "tenant or database is empty"),
        ("chroma://host?database=", "tenant or database is empty"),
        ("chroma://host:99999", "not a number from 1 to 65535"),
        ("chroma://host:http", "not a number from 1 to 65535"),
    ],
)
def test_bad_urls_say_which_part_is_wrong(url: str, problem: str):
    with pytest.raises(UserError, match="invalid vector store URL") as info:
        vector_store_from_url(url)
    assert problem in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        f"chroma://user:{PASSWORD}@host:8000",
        f"chroma://:{PASSWORD}@host",
        f"chroma:///user:{PASSWORD}@data",
        "chroma://user@host",
    ],
)
def test_credentials_in_the_url_are_refused_without_echoing_them(url: str):
    with pytest.raises(UserError, match="carries no credentials") as info:
        vector_store_from_url(url)
    assert TOKEN_ENV in (info.value.hint or "")
    assert PASSWORD not in str(info.value) + (info.value.hint or "") + repr(info.value.context)


def test_the_constructor_wants_a_directory_or_a_server(tmp_path: Path):
    for kwargs in ({}, {"path": tmp_path, "host": "h"}, {"path": ""}):
        with pytest.raises(UserError, match="needs a directory"):
            ChromaVectorStore(**kwargs)
    with pytest.raises(UserError, match="port"):
        ChromaVectorStore(host="h", port=0)


@pytest.mark.parametrize("table", ["ab", "x" * 513, "_notes", "notes-", "my..notes", "10.0.0.1"])
def test_a_table_name_chroma_refuses_is_a_user_error(tmp_path: Path, table: str):
    with pytest.raises(UserError, match="Chroma refuses the table") as info:
        vector_store_from_url(f"chroma:///{tmp_path}/db", table=table)
    assert "3 to 512 letters" in str(info.value) and "IPv4" in str(info.value)


async def test_a_name_chroma_accepts_works(tmp_path: Path):
    store = ChromaVectorStore(tmp_path / "db", table="a.b-c_d", embedder=EMBEDDER)
    await store.add(["hello"])
    assert await store.count() == 1


# --- the embedded database --------------------------------------------------------------------


async def test_a_missing_collection_is_empty(tmp_path: Path):
    store = ChromaVectorStore(tmp_path / "db", embedder=EMBEDDER)
    assert await store.count() == 0
    assert await store.search("anything") == []
    assert await store.delete(["x"]) == 0
    assert await store.source_hashes() == {}


async def test_big_writes_scans_and_deletes_go_in_batches(tmp_path: Path):
    store = ChromaVectorStore(tmp_path / "db", embedder=EMBEDDER)
    store._batch = 3  # Chroma's cap is thousands of rows: make it small
    metas = [{"source": f"s{i % 2}.md", "content_hash": f"h{i % 2}"} for i in range(10)]
    ids = await store.add([f"text {i}" for i in range(10)], metas)
    assert await store.count() == 10
    assert await store.source_hashes() == {"s0.md": "h0", "s1.md": "h1"}
    assert await store.delete([*ids[:7], "unknown"]) == 7
    assert await store.count() == 3


async def test_chroma_never_embeds(tmp_path: Path, monkeypatch):
    """Chroma's default embedding model would be downloaded on first use: never used here."""
    from chromadb.utils.embedding_functions import ONNXMiniLM_L6_V2

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("chromadb tried to use its default embedding model")

    monkeypatch.setattr(ONNXMiniLM_L6_V2, "__call__", refuse)
    monkeypatch.setattr(ONNXMiniLM_L6_V2, "_download_model_if_not_exists", refuse)
    store = ChromaVectorStore(tmp_path / "db", embedder=EMBEDDER)
    await store.add(["the cat sat on the mat", "stock markets fell"])
    [hit] = await store.search("the cat sat on the mat", k=1)
    assert hit.text == "the cat sat on the mat"


async def test_data_persists_across_processes(tmp_path: Path):
    """Written by another process that has exited, read by a store opened here afterwards."""
    url = f"chroma:///{tmp_path}/db"
    code = textwrap.dedent(
        f"""
        import asyncio
        from gecko_actors.core.embedders import HashEmbedder
        from gecko_actors.stores.registry import vector_store_from_url
        store = vector_store_from_url({url!r}, table="kept", embedder=HashEmbedder(dimensions=64))
        asyncio.run(store.add(["persisted text", "another"], [{{"n": 1}}, {{"n": 2}}]))
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    store = vector_store_from_url(url, table="kept", embedder=EMBEDDER)
    assert await store.count() == 2
    [hit] = await store.search("persisted text", k=1)
    assert (hit.text, hit.metadata) == ("persisted text", {"n": 1})
    with pytest.raises(UserError, match="holds 64-dimensional vectors"):
        await ChromaVectorStore(tmp_path / "db", "kept", HashEmbedder(dimensions=8)).add(["x"])


# --- the server ----------------------------------------------------------------------------


async def test_a_closed_port_is_a_storage_error_naming_it():
    port = free_port()
    store = ChromaVectorStore.from_url(f"chroma://127.0.0.1:{port}", embedder=EMBEDDER)
    with pytest.raises(StorageError, match=f"127.0.0.1:{port}") as info:
        await store.count()
    assert "chroma run" in (info.value.hint or "")


async def test_the_token_comes_from_the_environment_and_never_travels(chroma_port, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    url = f"chroma://127.0.0.1:{chroma_port}"
    store = ChromaVectorStore.from_url(url, table="tokened", embedder=EMBEDDER)
    await store.add(["with a token"])  # this server has no auth: it ignores the token
    assert await store.count() == 1
    assert TOKEN not in repr(store) and TOKEN not in store.location
    shipped = pickle.dumps(store)
    assert TOKEN.encode() not in shipped
    copy = pickle.loads(shipped)
    assert await copy.count() == 1


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Records each request's headers and refuses it, as a server with token auth would."""

    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:
        self.seen.append(dict(self.headers))
        body = json.dumps({"error": "AuthError", "message": "Forbidden"}).encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args: Any) -> None:
        pass


async def test_the_token_is_sent_as_a_bearer_header_and_never_shown(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    _Recorder.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        store = ChromaVectorStore.from_url(f"chroma://127.0.0.1:{port}", embedder=EMBEDDER)
        with pytest.raises(StorageError) as info:
            await store.count()
    finally:
        server.shutdown()
        server.server_close()
    assert _Recorder.seen, "the client sent no request"
    headers = {k.lower(): v for k, v in _Recorder.seen[0].items()}
    assert headers["authorization"] == f"Bearer {TOKEN}"
    shown = str(info.value) + (info.value.hint or "") + repr(info.value.context)
    assert TOKEN not in shown and f"127.0.0.1:{port}" in shown


async def test_a_collection_with_another_distance_is_refused(chroma_port):
    import chromadb
    from chromadb.config import Settings

    client = chromadb.HttpClient(
        "127.0.0.1", chroma_port, settings=Settings(anonymized_telemetry=False)
    )
    client.create_collection("made-elsewhere", embedding_function=None)  # l2 by default
    store = ChromaVectorStore(host="127.0.0.1", port=chroma_port, table="made-elsewhere")
    with pytest.raises(UserError, match="not made by ChromaVectorStore"):
        await store.count()


async def test_tenant_and_database_from_the_url(chroma_port):
    import chromadb
    from chromadb.config import Settings

    admin = chromadb.AdminClient(
        Settings(
            chroma_api_impl="chromadb.api.fastapi.FastAPI",
            chroma_server_host="127.0.0.1",
            chroma_server_http_port=chroma_port,
            anonymized_telemetry=False,
        )
    )
    admin.create_tenant("team-a")
    admin.create_database("vectors", tenant="team-a")
    base = f"chroma://127.0.0.1:{chroma_port}"
    query = "?tenant=team-a&database=vectors"
    scoped = vector_store_from_url(base + query, table="scoped", embedder=EMBEDDER)
    default = vector_store_from_url(base, table="scoped", embedder=EMBEDDER)
    await scoped.add(["only in team-a"])
    assert await scoped.count() == 1
    assert await default.count() == 0
    missing = vector_store_from_url(f"{base}?database=nope", embedder=EMBEDDER)
    with pytest.raises(StorageError, match="nope"):
        await missing.count()
