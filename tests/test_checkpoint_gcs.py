"""``gs://`` checkpoints end to end, against fake-gcs-server on 127.0.0.1 (see gcsutil).

The same life of a run as on the other backends: a manifest, committed steps read back, a
second writer's conditional create refused, runs listed and deleted, an outage survived. The
test's own view of the bucket goes around the store, through google-cloud-storage.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from gcsutil import FakeGcs
from test_checkpoint import make_step

from gecko_actors.checkpoint import CheckpointStore, Manifest, StateWrite
from gecko_actors.exceptions import CheckpointError, ConfigurationError, OwnershipLost, UserError


@pytest.fixture(scope="module")
def gcs() -> Iterator[FakeGcs]:
    """One fake GCS server for this module; each test takes its own prefix."""
    server = FakeGcs().start()
    yield server
    server.close()


def _store(uri: str) -> CheckpointStore:
    return CheckpointStore(uri, retries=1, backoff=0.01)


def _keys(gcs: FakeGcs, uri: str) -> list[str]:
    """Every object under the store's prefix, relative to it, as GCS itself lists them."""
    prefix = uri.split("?")[0].split("/", 3)[3] + "/"
    blobs = gcs.client().list_blobs(gcs.bucket, prefix=prefix)
    return sorted(blob.name[len(prefix) :] for blob in blobs)


def _manifest(run_id: str) -> Manifest:
    return Manifest(run_id, "wf", "fp", None, time.time())


# --- the life of a run -----------------------------------------------------------------------


def test_a_run_is_written_read_back_listed_and_deleted(gcs: FakeGcs):
    uri = gcs.uri()
    store = _store(uri)
    assert store.list_runs() == []
    for run_id in ("run-b", "run-a"):
        assert store.create_manifest(_manifest(run_id)).run_id == run_id
        for seq in range(3):
            store.commit_step(run_id, make_step(seq, f"{run_id} {seq}"))
    # A folder without a manifest is not a run.
    gcs.client().bucket(gcs.bucket).blob(
        f"{uri.split('?')[0].split('/', 3)[3]}/x/y"
    ).upload_from_string(b"z")

    assert [s.output for s in store.load_steps("run-a")] == [f"run-a {i}" for i in range(3)]
    assert store.read_manifest("run-b").workflow == "wf"
    keys = _keys(gcs, uri)
    assert "run-a/manifest.msgpack" in keys and "run-a/steps/00000002.commit" in keys
    # Runs are folders no marker object names: GCS reports them as prefixes of a listing.
    assert store.list_runs() == ["run-a", "run-b"]
    assert CheckpointStore(uri).list_runs() == ["run-a", "run-b"]  # a fresh store too

    store.delete_run("run-a")
    store.delete_run("never-existed")  # nothing to delete is no error
    assert store.list_runs() == ["run-b"]
    assert not [k for k in _keys(gcs, uri) if k.startswith("run-a/")]
    assert store.read_manifest("run-a") is None and store.load_steps("run-a") == []
    store.commit_step("run-a", make_step(0, "again"))  # a deleted run_id can be used again
    assert [s.output for s in store.load_steps("run-a")] == ["again"]


def test_a_second_writers_conditional_create_is_refused(gcs: FakeGcs):
    uri = gcs.uri()
    first, second = _store(uri), _store(uri)
    record = make_step(0, "first", writes=(StateWrite("k", 1),))
    assert first.commit_step("run-f", record) > 0
    with pytest.raises(OwnershipLost, match="committed first by another engine"):
        second.commit_step("run-f", dataclasses.replace(record, output="second"))
    assert second.load_steps("run-f") == [record]  # the first writer's step, untouched

    backend = first._backend()
    assert backend.put_if_absent("run-f/fence", b"one") is True
    assert backend.put_if_absent("run-f/fence", b"two") is False
    assert second._backend().get("run-f/fence") == b"one"


def test_two_writers_racing_for_each_seq_exactly_one_wins(gcs: FakeGcs):
    uri = gcs.uri()
    writers = [_store(uri), _store(uri)]
    rounds = 8
    for seq in range(rounds):
        barrier = threading.Barrier(2)

        def commit(w: int, seq: int = seq, barrier: threading.Barrier = barrier) -> object:
            barrier.wait()
            try:
                return writers[w].commit_step("run-r", make_step(seq, f"writer {w}"))
            except OwnershipLost as exc:
                return exc

        with ThreadPoolExecutor(2) as pool:
            outcomes = list(pool.map(commit, [0, 1]))
        assert sum(isinstance(o, OwnershipLost) for o in outcomes) == 1, outcomes
    steps = _store(uri).load_steps("run-r")
    assert [s.seq for s in steps] == list(range(rounds))


# --- where the clients go, and what they send ---------------------------------------------------


def test_storage_emulator_host_sends_both_clients_to_the_emulator(gcs, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
    prefix = f"emulated-{time.time_ns()}"
    store = _store(f"gs://{gcs.bucket}/{prefix}")  # no endpoint in the URI
    store.create_manifest(_manifest("run-e"))  # google-cloud-storage's conditional create
    store.commit_step("run-e", make_step(0, "through the emulator"))  # and pyarrow's writes
    assert store.list_runs() == ["run-e"]
    assert store.load_steps("run-e")[0].output == "through the emulator"
    assert "run-e/manifest.msgpack" in _keys(gcs, f"gs://{gcs.bucket}/{prefix}")
    options = store._backend().filesystem().__reduce__()[1][0]
    assert options["endpoint_override"] == f"127.0.0.1:{gcs.port}"
    assert options["anonymous"] is True and options["scheme"] == "http"


def test_a_plain_http_endpoint_gets_no_credentials(gcs: FakeGcs):
    store = _store(gcs.uri())
    store.commit_step("run-h", make_step(0, "anonymous"))
    backend = store._backend()
    from google.auth.credentials import AnonymousCredentials

    assert isinstance(backend.client()._credentials, AnonymousCredentials)
    options = backend.filesystem().__reduce__()[1][0]
    assert options["anonymous"] is True
    assert options["retry_time_limit"].total_seconds() == 1  # the store retries, not the SDK


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("scheme=ftp", "scheme"),
        ("retry_limit_seconds=0.5", "retry_limit_seconds"),
        ("color=blue", "color"),
    ],
)
def test_bad_gs_options_are_user_errors_naming_them(query: str, named: str):
    with pytest.raises(UserError, match=named):  # at parse time, or at the first use
        CheckpointStore(f"gs://bucket/prefix?{query}").list_runs()


def test_without_google_cloud_storage_listing_says_what_to_install(gcs, monkeypatch):
    # `from google.cloud import storage` fails, as where the package is not installed.
    monkeypatch.setitem(sys.modules, "google.cloud.storage", None)
    monkeypatch.delattr("google.cloud.storage", raising=False)
    store = _store(gcs.uri())
    for action in (store.list_runs, lambda: store.create_manifest(_manifest("run-m"))):
        with pytest.raises(ConfigurationError, match="pip install google-cloud-storage"):
            action()


# --- an outage ----------------------------------------------------------------------------------


def test_gcs_writes_fail_while_the_server_is_down_then_recover():
    server = FakeGcs("gecko-outage").start()
    try:
        store = CheckpointStore(server.uri(), retries=2, backoff=0.05)
        store.create_manifest(_manifest("run-o"))
        store.commit_step("run-o", make_step(0, "before the outage"))
        server.stop()
        with pytest.raises(CheckpointError, match="after 3 attempt") as info:
            store.commit_step("run-o", make_step(1, "during the outage"))
        assert "gs://gecko-outage/" in str(info.value) and "run 'run-o'" in str(info.value)
        with pytest.raises(CheckpointError):
            store.list_runs()
        server.start()
        store.commit_step("run-o", make_step(1, "after the outage"))  # the same store object
        assert [s.output for s in store.load_steps("run-o")] == [
            "before the outage",
            "after the outage",
        ]
        assert store.list_runs() == ["run-o"]
    finally:
        server.close()
