"""What only QdrantVectorStore does (the shared behaviour is in test_vector_conformance).

Local mode runs on a folder; the server mode runs against a small fake of Qdrant's REST API
on 127.0.0.1 (there is no Qdrant server here), which checks what the store sends.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from s3util import free_port

pytest.importorskip("qdrant_client")

from qdrant_client import QdrantClient, models

from gecko_actors.core.embedders import HashEmbedder
from gecko_actors.exceptions import StorageError, UserError
from gecko_actors.stores.qdrant import API_KEY_ENV, QdrantVectorStore
from gecko_actors.stores.registry import vector_store_from_url

REPO = Path(__file__).resolve().parent.parent


def local(tmp_path: Path, table: str = "docs", dimensions: int = 64) -> QdrantVectorStore:
    return vector_store_from_url(
        f"qdrant:///{tmp_path}/q", table=table, embedder=HashEmbedder(dimensions=dimensions)
    )


# --- URLs ---------------------------------------------------------------------------------


def test_local_urls_follow_the_sqlite_convention(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    relative = vector_store_from_url("qdrant:///data/q", table="t")
    assert isinstance(relative, QdrantVectorStore)
    assert relative.path == str(tmp_path.resolve() / "data" / "q")
    assert relative.host is None and relative.table == "t"
    absolute = vector_store_from_url(f"qdrant:///{tmp_path}/abs")  # four slashes in all
    assert absolute.path == str(tmp_path.resolve() / "abs")
    assert absolute.location == f"qdrant:///{tmp_path.resolve()}/abs"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("qdrant://localhost", ("localhost", 6333, False, False, 30, "qdrant://localhost:6333")),
        (
            "qdrant://db.example:7000/?https=true&grpc=1&timeout=5",
            ("db.example", 7000, True, True, 5, "qdrant://db.example:7000"),
        ),
        ("qdrant://[::1]:6400?https=FALSE", ("::1", 6400, False, False, 30, "qdrant://[::1]:6400")),
    ],
)
def test_server_urls(url: str, expected: tuple[Any, ...]):
    store = vector_store_from_url(url)
    got = (store.host, store.port, store.https, store.grpc, store.timeout, store.location)
    assert got == expected
    assert store.path is None


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("qdrant://", "the host is missing"),
        ("qdrant:///", "names no folder"),
        ("qdrant:///data?mode=x", "takes no query parameters"),
        ("qdrant://host:99999", "not a number from 1 to 65535"),
        ("qdrant://host?tls=true", "unknown query parameter 'tls'"),
        ("qdrant://host?https=maybe", "'maybe' is not true or false"),
        ("qdrant://host?timeout=0", "not a whole number above 0"),
        ("qdrant://host/prefix", "unexpected path '/prefix'"),
        ("qdrant://someone@host", "user name"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, problem: str):
    with pytest.raises(UserError, match="invalid vector store URL") as info:
        vector_store_from_url(url)
    assert problem in info.value.message


@pytest.mark.parametrize("url", ["qdrant://user:Pw-9f3kQz@host", "qdrant://:Pw-9f3kQz@host:6333"])
def test_a_password_in_the_url_is_refused_without_being_shown(url: str):
    with pytest.raises(UserError, match="password") as info:
        vector_store_from_url(url)
    error = info.value
    assert API_KEY_ENV in (error.hint or "")
    raw = f"{error.message} {error.hint} {error.context} {error!s} {error!r}"
    assert "Pw-9f3kQz" not in raw


def test_the_constructor_wants_a_folder_or_a_host(tmp_path: Path):
    with pytest.raises(UserError, match="either a folder"):
        QdrantVectorStore()
    with pytest.raises(UserError, match="either a folder"):
        QdrantVectorStore(tmp_path, host="localhost")
    with pytest.raises(UserError, match="invalid vector table name"):
        QdrantVectorStore(tmp_path, table="a/b")


# --- the local mode -------------------------------------------------------------------------


async def test_stores_on_one_folder_share_one_client_until_the_last_closes(tmp_path: Path):
    first, second = local(tmp_path, "a"), local(tmp_path, "b")
    copy = pickle.loads(pickle.dumps(first))
    await first.add(["in a"])
    await second.add(["in b", "also in b"])
    assert (await copy.count(), await second.count()) == (1, 2)
    client = first._connect()[0]
    assert second._connect()[0] is client and copy._connect()[0] is client
    with pytest.raises(RuntimeError, match="already accessed"):  # Qdrant's own rule
        QdrantClient(path=str(tmp_path / "q"))
    for store in (first, second):
        store.close()
    with pytest.raises(RuntimeError, match="already accessed"):  # copy still uses it
        QdrantClient(path=str(tmp_path / "q"))
    copy.close()
    raw = QdrantClient(path=str(tmp_path / "q"))  # released: anyone may open it now
    try:
        assert raw.count("b").count == 2
    finally:
        raw.close()


async def test_data_outlives_the_store_and_a_closed_store_reopens(tmp_path: Path):
    store = local(tmp_path)
    ids = await store.add(["persisted text", "another"], [{"n": 1}, {"n": 2}])
    store.close()
    fresh = local(tmp_path)
    assert await fresh.count() == 2
    [hit] = await fresh.search("persisted text", k=1)
    assert (hit.id, hit.metadata) == (ids[0], {"n": 1})
    fresh.close()
    assert await store.count() == 2  # the closed store connects again when used
    store.close()


async def test_any_string_id_round_trips_through_a_uuid(tmp_path: Path):
    store = local(tmp_path)
    ids = ["ünï/cødé id", "x" * 500, "42", str(uuid.uuid4())]
    await store.add([f"text {i}" for i in range(4)], ids=ids)
    assert {hit.id for hit in await store.search("text", k=10)} == set(ids)
    raw_ids = {str(p.id) for p in store._connect()[0].scroll("docs", limit=10)[0]}
    assert len(raw_ids) == 4 and raw_ids.isdisjoint(ids)  # Qdrant holds UUIDs, we hold ours
    assert await store.delete([*ids[:2], "unknown"]) == 2
    assert sorted(key for key, _ in await store._run("scan", store._scan_sync)) == sorted(ids[2:])
    store.close()


async def test_a_collection_deleted_behind_the_store_reads_as_empty(tmp_path: Path):
    store = local(tmp_path)
    await store.add(["one", "two"])
    store._connect()[0].delete_collection("docs")
    assert await store.count() == 0
    assert await store.search("one") == []
    assert await store.delete(["anything"]) == 0
    assert await store.source_hashes() == {}
    await store.add(["three"])  # and it is created again
    assert await store.count() == 1
    store.close()


async def test_a_search_with_another_dimension_is_a_user_error(tmp_path: Path):
    store = local(tmp_path)
    await store.add(["sixty-four dimensions"])
    other = local(tmp_path, dimensions=32)
    with pytest.raises(UserError, match="holds 64-dimensional vectors") as info:
        await other.search("x")
    assert info.value.context["embedder_dimensions"] == 32
    store.close()
    other.close()


async def test_a_collection_made_by_someone_else_is_refused(tmp_path: Path):
    raw = QdrantClient(path=str(tmp_path / "q"))
    config = models.VectorParams(size=64, distance=models.Distance.EUCLID)
    raw.create_collection("docs", vectors_config=config)
    raw.close()
    store = local(tmp_path)
    with pytest.raises(UserError, match="not made by QdrantVectorStore"):
        await store.add(["x"])
    store.close()


async def test_a_pickled_store_reopens_in_another_process_which_then_holds_the_folder(
    tmp_path: Path,
):
    store = local(tmp_path)
    await store.add(["shipped to an actor"], [{"k": "v"}])
    store.close()  # one process at a time may hold the folder
    (tmp_path / "store.pickle").write_bytes(pickle.dumps(store))
    code = (
        "import asyncio, pickle, sys\n"
        f"store = pickle.loads(open({str(tmp_path / 'store.pickle')!r}, 'rb').read())\n"
        "hit = asyncio.run(store.search('shipped to an actor', k=1))[0]\n"
        "print(hit.text, hit.metadata, flush=True)\n"
        "sys.stdin.read()"  # holds the folder until told to exit
    )
    actor = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert actor.stdout is not None
        assert actor.stdout.readline().strip() == "shipped to an actor {'k': 'v'}"
        with pytest.raises(StorageError, match="already accessed by another instance") as info:
            await store.count()
        assert store.location in str(info.value)
    finally:
        actor.communicate("", timeout=60)
    assert actor.returncode == 0
    assert await store.count() == 1  # released when that process ended
    store.close()


# --- the server mode (a fake Qdrant REST API on 127.0.0.1) ------------------------------------


class FakeQdrant(BaseHTTPRequestHandler):
    """Answers the few REST calls the store makes, for one collection of 64-dimensional
    vectors, and records every request (method, path, headers, body)."""

    requests: list[tuple[str, str, dict[str, str], Any]]
    exists = True

    def _answer(self) -> None:
        size = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(size)) if size else None
        self.requests.append((self.command, self.path, dict(self.headers), body))
        path = self.path.partition("?")[0]
        status, result = 200, None
        if not self.exists:
            status = 404
        elif path == "/collections/docs" and self.command == "GET":
            result = {
                "status": "green",
                "optimizer_status": "ok",
                "segments_count": 1,
                "payload_schema": {},
                "config": {
                    "params": {"vectors": {"size": 64, "distance": "Cosine"}},
                    "hnsw_config": {"m": 16, "ef_construct": 100, "full_scan_threshold": 10},
                    "optimizer_config": {"default_segment_number": 0, "flush_interval_sec": 5},
                },
            }
        elif path == "/collections/docs/points/query":
            payload = {"id": "our-id", "text": "found", "metadata": '{"a": 1}'}
            point = {"id": str(uuid.uuid4()), "version": 1, "score": 1.0000001, "payload": payload}
            result = {"points": [point]}
        elif path == "/collections/docs/points/count":
            result = {"count": 7}
        else:
            status = 500
        envelope = {"result": result, "status": "ok", "time": 0.0}
        if status == 404:
            envelope = {"status": {"error": "Not found: Collection `docs` doesn't exist!"}}
        elif status != 200:
            envelope = {"status": {"error": f"the fake has no {self.command} {path}"}}
        data = json.dumps(envelope).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *args: Any) -> None:  # quiet
        pass


@pytest.fixture
def fake_qdrant() -> Iterator[tuple[int, type[FakeQdrant]]]:
    handler = type("Handler", (FakeQdrant,), {"requests": [], "exists": True})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()


@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")
async def test_the_api_key_comes_from_the_environment_only(fake_qdrant, monkeypatch):
    port, handler = fake_qdrant
    key = "qk-" + uuid.uuid4().hex
    monkeypatch.setenv(API_KEY_ENV, key)
    store = vector_store_from_url(f"qdrant://127.0.0.1:{port}?timeout=5", table="docs")
    assert await store.count() == 7
    assert {r[2].get("api-key") for r in handler.requests} == {key}
    assert key not in repr(store) and key.encode() not in pickle.dumps(store)  # even connected
    copy = pickle.loads(pickle.dumps(store))
    monkeypatch.delenv(API_KEY_ENV)
    handler.requests.clear()
    assert await copy.count() == 7  # where the copy connects, there is no key
    assert all("api-key" not in r[2] for r in handler.requests)


async def test_a_server_search_is_exact_and_reads_our_payload(fake_qdrant):
    port, handler = fake_qdrant
    store = vector_store_from_url(
        f"qdrant://127.0.0.1:{port}", table="docs", embedder=HashEmbedder(dimensions=64)
    )
    [hit] = await store.search("anything", k=3)
    assert (hit.id, hit.text, hit.metadata, hit.score) == ("our-id", "found", {"a": 1}, 1.0)
    [query] = [r[3] for r in handler.requests if r[1].startswith("/collections/docs/points/query")]
    assert query["params"]["exact"] is True and query["limit"] == 3
    sent = query["query"]  # {"nearest": vector} in newer clients, the vector in older ones
    assert len(sent.get("nearest", sent) if isinstance(sent, dict) else sent) == 64


async def test_a_missing_server_collection_reads_as_empty(fake_qdrant):
    port, handler = fake_qdrant
    handler.exists = False
    store = vector_store_from_url(f"qdrant://127.0.0.1:{port}", table="docs")
    assert await store.count() == 0
    assert await store.search("x") == []
    assert await store.delete(["x"]) == 0


async def test_an_unreachable_server_is_a_storage_error_naming_it():
    port = free_port()  # bound and released: nothing listens there
    store = vector_store_from_url(f"qdrant://127.0.0.1:{port}?timeout=3", table="docs")
    for call in (store.count(), store.add(["x"]), store.search("x")):
        with pytest.raises(StorageError) as info:
            await asyncio.wait_for(call, 60)  # a hang fails instead of stalling the suite
        assert f"127.0.0.1:{port}" in str(info.value)
