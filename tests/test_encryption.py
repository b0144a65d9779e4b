"""Encryption at rest of checkpoint payloads (``GECKO_CHECKPOINT_KEY``), without Ray: round
trips, nothing personal on disk, missing, wrong and rotated keys, mixed checkpoints, tampered
and moved payloads, listing and gc without the key, and a whole run through the Ray-free
engine, crashed and resumed. Keys are made at run time; none is written in this file."""

from __future__ import annotations

import base64
import copy
import hashlib
import os
import pickle
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import msgpack
import pytest
from s3util import s3_client

from gecko_actors.checkpoint import (
    CheckpointStore,
    Fork,
    Manifest,
    StateWrite,
    StepRecord,
    crypto,
    decode_value,
)
from gecko_actors.checkpoint.index import RunIndex
from gecko_actors.checkpoint.journal import Journal
from gecko_actors.checkpoint.retention import collect_garbage
from gecko_actors.checkpoint.steps import data_name
from gecko_actors.core.messages import AgentOutput, Usage
from gecko_actors.exceptions import CheckpointError, ConfigurationError, UserError
from gecko_actors.workflow import Next, NodeContext, WorkflowGraph
from gecko_actors.workflow.engine import RunEngine
from gecko_actors.workflow.execution import LocalExecutor
from gecko_actors.workflow.history import run_history
from gecko_actors.workflow.status import status_from_checkpoint

PERSONAL = "PERSONAL-DATA-123"
KEY, OLD = crypto.KEY_VARIABLE, crypto.OLD_KEYS_VARIABLE


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def id_of(key: str) -> str:
    return hashlib.sha256(base64.b64decode(key)).hexdigest()[:8]


@pytest.fixture(autouse=True)
def no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts without keys, whatever the environment holds."""
    monkeypatch.delenv(KEY, raising=False)
    monkeypatch.delenv(OLD, raising=False)


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    found = new_key()
    monkeypatch.setenv(KEY, found)
    return found


def file_store(tmp_path: Path) -> tuple[CheckpointStore, Path]:
    root = tmp_path / "checkpoints"
    return CheckpointStore(f"file://{root}"), root


def stored_bytes(root: Path) -> list[bytes]:
    return [p.read_bytes() for p in root.rglob("*") if p.is_file()]


def write_run(store: CheckpointStore, run_id: str = "r1", steps: int = 2) -> None:
    """A manifest, a status, ``steps`` steps and two journal entries, all holding PERSONAL."""
    manifest = Manifest(run_id, "wf", "fp", {"name": PERSONAL}, time.time(), graph={"n": 1})
    store.create_manifest(manifest)
    for seq in range(steps):
        store.commit_step(run_id, step(seq, f"{PERSONAL} {seq}"))
    journal = Journal(store, run_id, 1)
    journal.put(f"{run_id}/n/1/step/lookup", {"found": PERSONAL})
    journal.put(f"{run_id}/n/2/step/lookup", {"found": "other"})
    store.update_status(run_id, "succeeded", result=[PERSONAL], error=f"{PERSONAL} failed")


def step(seq: int, output: Any, **changes: Any) -> StepRecord:
    fields = {
        "writes": (StateWrite("who", PERSONAL), StateWrite("gone", None, True)),
        "usage": Usage(prompt_tokens=5, completion_tokens=7, total_tokens=12),
        "next": Next("n", {"again": PERSONAL}),
        "epoch": 1,
        "finished_at": 1.0 + seq,
        "input_summary": f"asked about {PERSONAL}",
        **changes,
    }
    return StepRecord(seq, "n", seq + 1, output, **fields)


# --- round trips ------------------------------------------------------------------------------


def test_every_payload_round_trips_with_a_key(store_uri: str, key: str) -> None:
    store = CheckpointStore(store_uri)
    output = AgentOutput(content=PERSONAL, usage=Usage(prompt_tokens=3, total_tokens=3))
    fork = Fork("parent", 0, state={"who": PERSONAL, "__gecko__": "escaped"}, node="n", input=1)
    manifest = Manifest("r1", "wf", "fp", {"name": PERSONAL}, 10.0, fork=fork)
    assert store.create_manifest(manifest) == manifest
    store.commit_step("r1", step(0, output))
    big = step(1, PERSONAL * 10_000)  # past the inline limit: a data object of its own
    store.commit_step("r1", big)
    waiting = {"n": {"key": "r1/n/1/interrupt/0", "payload": {"q": PERSONAL}, "until": 5.0}}
    store.update_status("r1", "waiting", result=None, error=PERSONAL, extra={"waiting": waiting})
    journal = Journal(store, "r1", 1)
    assert journal.put("r1/n/1/step/x", {"v": PERSONAL}) == {"v": PERSONAL}

    got = store.read_manifest("r1")
    assert (got.input, got.fork, got.error) == ({"name": PERSONAL}, fork, PERSONAL)
    assert got.waiting == waiting and got.status == "waiting"
    assert store.load_steps("r1") == [step(0, output), big]
    assert store.read_step("r1", 1) == big
    assert journal.get("r1/n/1/step/x") == {"v": PERSONAL}
    assert [e["value"] for e in journal.entries()] == [{"v": PERSONAL}]


def test_nothing_personal_reaches_the_disk(tmp_path: Path, monkeypatch) -> None:
    plain, plain_root = file_store(tmp_path / "plain")
    write_run(plain)
    assert any(PERSONAL.encode() in raw for raw in stored_bytes(plain_root))  # the test sees it

    monkeypatch.setenv(KEY, new_key())
    store, root = file_store(tmp_path / "sealed")
    write_run(store)
    files = stored_bytes(root)
    assert len(files) == 6 and not any(PERSONAL.encode() in raw for raw in files)
    assert store.read_manifest("r1").result == [PERSONAL]


def test_headers_stay_clear_for_listing_index_and_gc_without_the_key(
    tmp_path: Path, monkeypatch
) -> None:
    store, _ = file_store(tmp_path)
    key = new_key()
    monkeypatch.setenv(KEY, key)
    write_run(store)
    monkeypatch.delenv(KEY)

    assert store.list_runs() == ["r1"]
    entries = RunIndex(store).rebuild(write=False)  # what `gecko-actors list` falls back to
    assert (entries["r1"].workflow, entries["r1"].status) == ("wf", "succeeded")
    marked = store.marking()
    manifest = marked.read_manifest("r1")
    mark = crypto.marker(id_of(key))
    assert mark == f"<encrypted: key {id_of(key)}>" and crypto.is_marker(manifest.input)
    assert (manifest.status, manifest.result, manifest.error) == ("succeeded", mark, mark)
    steps = marked.load_steps("r1")
    assert [(s.seq, s.node, s.visit, s.epoch, s.usage.total_tokens) for s in steps] == [
        (0, "n", 1, 1, 12),
        (1, "n", 2, 1, 12),
    ]
    assert steps[0].output == steps[0].writes[0].value == steps[0].next.input == mark
    assert steps[0].writes[1] == StateWrite("gone", None, True)
    assert steps[0].next.node == "n" and steps[0].input_summary == mark
    history = run_history(marked, "r1")  # what `gecko-actors history` and the UI would show
    assert history["input"] == mark and history["steps"][0]["output"] == mark
    assert history["steps"][0]["state"] == {"who": mark, "gone": None}
    status = status_from_checkpoint(marked, "r1")
    assert status["status"] == "succeeded" and status["journal"] == 2

    from click.testing import CliRunner

    from gecko_actors.cli import main
    from gecko_actors.ui.data import RunsReader

    for command in ("status", "history"):  # the CLI and the viewer show it, payloads marked
        shown = CliRunner().invoke(main, [command, "r1", "--checkpoint", store.uri, "--json"])
        assert shown.exit_code == 0 and mark in shown.output and PERSONAL not in shown.output
    page = RunsReader(store).run("r1")
    assert page["run"]["status"] == "succeeded" and mark in str(page["steps"])

    report = collect_garbage(store, older_than=0)  # gc needs no key
    assert report.deleted == ("r1",) and store.list_runs() == []


# --- missing, wrong and malformed keys --------------------------------------------------------


def test_reading_without_the_key_or_with_another_is_a_checkpoint_error(
    tmp_path: Path, monkeypatch
) -> None:
    store, _ = file_store(tmp_path)
    key = new_key()
    monkeypatch.setenv(KEY, key)
    write_run(store)
    journal = Journal(store, "r1", 1)
    for setting in (None, new_key()):
        if setting is None:
            monkeypatch.delenv(KEY)
        else:
            monkeypatch.setenv(KEY, setting)
        for read in (
            lambda: store.read_manifest("r1"),
            lambda: store.load_steps("r1"),
            lambda: store.read_step("r1", 0),
            lambda: journal.get("r1/n/1/step/lookup"),
            lambda: journal.entries(),
        ):
            with pytest.raises(CheckpointError) as caught:
                read()
            error = caught.value
            assert f"is encrypted with key {id_of(key)}" in error.message
            assert error.key_id == id_of(key) and error.run_id == "r1"
            assert KEY in error.hint and key not in str(error)
            again = pickle.loads(pickle.dumps(error))
            assert (type(again), again.key_id, str(again)) == (
                CheckpointError,
                id_of(key),
                str(error),
            )


def test_a_malformed_key_is_a_configuration_error_naming_the_variable(monkeypatch) -> None:
    store = CheckpointStore(f"memory://{uuid.uuid4().hex}")
    manifest = Manifest("r1", "wf", "fp", PERSONAL, 1.0)
    hex_key = os.urandom(32).hex()
    short = base64.b64encode(os.urandom(16)).decode()
    for name, value in (
        (KEY, hex_key),
        (KEY, "not base64!"),
        (KEY, short),
        (OLD, f"{new_key()},{short}"),
    ):
        monkeypatch.setenv(name, value)
        with pytest.raises(ConfigurationError) as caught:
            store.create_manifest(manifest)
        assert isinstance(caught.value, UserError) and caught.value.variable == name
        assert name in caught.value.message and "os.urandom(32)" in caught.value.hint
        assert value not in str(caught.value) and short not in str(caught.value)
        monkeypatch.delenv(name)
    assert store.read_manifest("r1") is None  # nothing was written


def test_without_cryptography_plain_checkpoints_still_work(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None)
    crypto._keyring.cache_clear()
    try:
        store = CheckpointStore(f"memory://{uuid.uuid4().hex}")
        write_run(store)
        assert store.load_steps("r1")[0].output == f"{PERSONAL} 0"
        monkeypatch.setenv(KEY, new_key())
        with pytest.raises(ConfigurationError, match=r"gecko-actors\[encryption\]"):
            write_run(store, "r2")
    finally:
        crypto._keyring.cache_clear()


# --- mixed checkpoints and rotation -----------------------------------------------------------


def sealed_key_ids(root: Path, run_id: str) -> list[str | None]:
    """The key id that sealed each step's output (None: stored in clear), in seq order."""
    found = []
    for marker in sorted((root / run_id / "steps").glob("*.commit")):
        rec = msgpack.unpackb(marker.read_bytes())
        step_rec = msgpack.unpackb(rec["data"])
        output = step_rec["output"]
        found.append(output["key"] if isinstance(output, dict) else None)
    return found


def test_a_run_started_in_clear_goes_on_encrypted(tmp_path: Path, monkeypatch) -> None:
    store, root = file_store(tmp_path)
    write_run(store, steps=1)  # before encryption was turned on
    key = new_key()
    monkeypatch.setenv(KEY, key)
    store.commit_step("r1", step(1, "sealed"))
    Journal(store, "r1", 1).put("r1/n/3/step/lookup", PERSONAL)
    assert sealed_key_ids(root, "r1") == [None, id_of(key)]
    assert [s.output for s in store.load_steps("r1")] == [f"{PERSONAL} 0", "sealed"]
    values = [e["value"] for e in Journal(store, "r1", 1).entries()]
    assert values == [{"found": PERSONAL}, {"found": "other"}, PERSONAL]
    assert store.read_manifest("r1").input == {"name": PERSONAL}


def test_rotation_old_keys_still_decrypt_and_new_records_use_the_new_key(
    tmp_path: Path, monkeypatch
) -> None:
    store, root = file_store(tmp_path)
    first, second = new_key(), new_key()
    monkeypatch.setenv(KEY, first)
    write_run(store, steps=1)
    monkeypatch.setenv(KEY, second)
    monkeypatch.setenv(OLD, f" {new_key()} ,{first},")  # spaces and an empty item are fine
    store.commit_step("r1", step(1, "after rotation"))
    assert sealed_key_ids(root, "r1") == [id_of(first), id_of(second)]
    assert [s.output for s in store.load_steps("r1")] == [f"{PERSONAL} 0", "after rotation"]
    assert store.read_manifest("r1").input == {"name": PERSONAL}

    monkeypatch.delenv(OLD)  # the old key retired too early: its records say which key
    with pytest.raises(CheckpointError, match=f"key {id_of(first)}"):
        store.load_steps("r1")
    monkeypatch.setenv(KEY, first)  # the old key alone cannot read what the new one sealed
    with pytest.raises(CheckpointError, match=f"key {id_of(second)}"):
        store.load_steps("r1")

    monkeypatch.delenv(KEY)  # turned off: old keys only decrypt, new records are clear
    monkeypatch.setenv(OLD, f"{first},{second}")
    store.commit_step("r1", step(2, "clear again"))
    assert sealed_key_ids(root, "r1") == [id_of(first), id_of(second), None]
    assert [s.output for s in store.load_steps("r1")][1:] == ["after rotation", "clear again"]


# --- tampering and moving ---------------------------------------------------------------------


def rewrite_step(root: Path, run_id: str, seq: int, change) -> None:
    """Change step ``seq``'s record with ``change(rec)`` and give it a matching marker, as
    someone who can write to the storage could."""
    marker_path = root / run_id / "steps" / f"{seq:08d}.commit"
    marker = msgpack.unpackb(marker_path.read_bytes())
    rec = msgpack.unpackb(marker["data"])
    change(rec)
    data = msgpack.packb(rec, use_bin_type=True)
    digest = hashlib.sha256(data).hexdigest()
    marker.update(data=data, size=len(data), sha256=digest, object=data_name(seq, digest))
    marker_path.write_bytes(msgpack.packb(marker, use_bin_type=True))


def flip(sealed: dict[str, Any]) -> None:
    data = bytearray(sealed["data"])
    data[0] ^= 1
    sealed["data"] = bytes(data)


def rewrite(path: Path, change) -> None:
    rec = msgpack.unpackb(path.read_bytes())
    change(rec)
    path.write_bytes(msgpack.packb(rec, use_bin_type=True))


def journal_path(root: Path, run_id: str, key: str) -> Path:
    return root / run_id / "journal" / f"{hashlib.sha256(key.encode()).hexdigest()}.msgpack"


def test_a_flipped_byte_is_detected(tmp_path: Path, key: str) -> None:
    store, root = file_store(tmp_path)
    write_run(store)
    rewrite_step(root, "r1", 0, lambda rec: flip(rec["output"]))
    rewrite(root / "r1" / "manifest.msgpack", lambda rec: flip(rec["input"]))
    rewrite(journal_path(root, "r1", "r1/n/1/step/lookup"), lambda rec: flip(rec["value"]))
    for read in (
        lambda: store.load_steps("r1"),
        lambda: store.read_manifest("r1"),
        lambda: store.marking().read_manifest("r1"),  # markers are for missing keys only
        lambda: Journal(store, "r1", 1).get("r1/n/1/step/lookup"),
    ):
        with pytest.raises(CheckpointError, match=r"does not decrypt with key .*tampered"):
            read()
    assert Journal(store, "r1", 1).get("r1/n/2/step/lookup") == {"found": "other"}


def test_a_payload_moved_to_another_record_does_not_decrypt(tmp_path: Path, key: str) -> None:
    store, root = file_store(tmp_path)
    write_run(store)
    first = msgpack.unpackb(
        msgpack.unpackb((root / "r1/steps/00000000.commit").read_bytes())["data"]
    )
    rewrite_step(root, "r1", 1, lambda rec: rec.update(output=first["output"]))
    with pytest.raises(CheckpointError, match="copied from another record"):
        store.read_step("r1", 1)
    assert store.read_step("r1", 0).output == f"{PERSONAL} 0"

    one = journal_path(root, "r1", "r1/n/1/step/lookup")
    value = msgpack.unpackb(one.read_bytes())["value"]
    rewrite(journal_path(root, "r1", "r1/n/2/step/lookup"), lambda rec: rec.update(value=value))
    with pytest.raises(CheckpointError, match="copied from another record"):
        Journal(store, "r1", 1).get("r1/n/2/step/lookup")

    # A whole entry copied under another key's name is refused too (key or no key).
    other = journal_path(root, "r1", "r1/n/9/step/lookup")
    other.write_bytes(one.read_bytes())
    with pytest.raises(CheckpointError, match="holds the entry of key"):
        Journal(store, "r1", 1).get("r1/n/9/step/lookup")

    manifest = msgpack.unpackb((root / "r1/manifest.msgpack").read_bytes())
    rewrite(root / "r1/status.msgpack", lambda rec: rec.update(result=manifest["input"]))
    with pytest.raises(CheckpointError, match="copied from another record"):
        store.read_manifest("r1")


def test_a_malformed_sealed_payload_is_refused(tmp_path: Path, key: str) -> None:
    store, root = file_store(tmp_path)
    write_run(store)
    bad_nonce = {"__gecko__": "sealed", "key": id_of(key), "nonce": b"short", "data": b"x" * 20}
    rewrite_step(root, "r1", 0, lambda rec: rec.update(output=bad_nonce))
    with pytest.raises(CheckpointError, match="malformed encrypted payload"):
        store.load_steps("r1")
    rewrite_step(root, "r1", 0, lambda rec: rec.update(output={**bad_nonce, "extra": 1}))
    with pytest.raises(CheckpointError, match="malformed encrypted payload"):
        store.marking().load_steps("r1")
    with pytest.raises(CheckpointError, match="encrypted and was read without being decrypted"):
        decode_value({**bad_nonce, "nonce": os.urandom(12)})


def test_options_travel_with_the_store_and_a_marking_store_never_writes(key: str) -> None:
    uri = f"memory://{uuid.uuid4().hex}"
    store = CheckpointStore(uri, encrypted="mark")
    assert pickle.loads(pickle.dumps(store)).encrypted == "mark"
    assert CheckpointStore(uri).marking().encrypted == "mark"
    with pytest.raises(UserError, match="encrypted"):
        CheckpointStore(uri, encrypted="ignore")
    # What it read may be markers: written back, they would replace the payloads for good.
    for write in (
        lambda: store.create_manifest(Manifest("r1", "wf", "fp", 1, 1.0)),
        lambda: store.update_status("r1", "failed", error="x"),
        lambda: store.commit_step("r1", step(0, "x")),
        lambda: Journal(store, "r1", 1).put("r1/n/1/step/x", 1),
    ):
        with pytest.raises(UserError, match=r"cannot .* through a store with encrypted='mark'"):
            write()
    assert CheckpointStore(uri).list_runs() == []


def test_one_run_on_s3_is_sealed_too(s3, key: str) -> None:
    store = CheckpointStore(s3.uri())
    write_run(store)
    prefix = store.uri.split("/", 3)[3].split("?")[0]
    client = s3_client(s3.port)
    listed = client.list_objects_v2(Bucket=s3.bucket, Prefix=prefix)["Contents"]
    bodies = [client.get_object(Bucket=s3.bucket, Key=o["Key"])["Body"].read() for o in listed]
    assert len(bodies) == 6 and not any(PERSONAL.encode() in body for body in bodies)
    assert store.load_steps("r1")[1].output == f"{PERSONAL} 1"


# --- a whole run through the engine -----------------------------------------------------------


class Lookups:
    """A side effect that counts how often it really ran."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, name: str) -> dict[str, Any]:
        self.calls += 1
        return {"record": f"{name}'s file", "call": self.calls}


def claims_graph(lookups: Lookups, crash: dict[str, bool]) -> WorkflowGraph:
    def intake(ctx: NodeContext) -> str:
        ctx.state["who"] = ctx.input["name"]
        return f"claim of {ctx.input['name']}"

    def ask(ctx: NodeContext) -> str:
        return ctx.interrupt({"question": "approve?", "about": ctx.state["who"]})

    def finish(ctx: NodeContext) -> dict[str, Any]:
        found = ctx.step("lookup", lookups, ctx.state["who"])
        if crash["once"]:
            crash["once"] = False
            raise RuntimeError("the host died here, after the journaled lookup")
        return {"input": ctx.input, "outputs": dict(ctx.outputs), "found": found}

    return (
        WorkflowGraph("claims")
        .add_node("intake", intake)
        .add_node("ask", ask)
        .add_node("finish", finish)
        .add_edge("intake", "ask")
        .add_edge("ask", "finish")
    )


async def drive(store: CheckpointStore, crash: bool) -> tuple[Any, int]:
    """The claims run to its end (answered with personal data), with a crash in ``finish``
    and a resume by a new engine if ``crash``; returns its value and how often the lookup
    ran."""
    lookups, crashing = Lookups(), {"once": crash}
    graph = claims_graph(lookups, crashing)
    engine = RunEngine(graph, "r1", store, LocalExecutor(store))
    engine.open({"name": PERSONAL})
    await engine.run()
    assert engine.outcome == "waiting", engine.failure
    assert store.read_manifest("r1").waiting["ask"]["payload"]["about"] == PERSONAL
    await engine.respond("ask", f"yes, {PERSONAL} may go", by="ana")
    await engine.run()
    if crash:
        assert engine.outcome == "failed"
        engine = RunEngine(graph, "r1", store, LocalExecutor(store))  # the host came back
        engine.open(None, create=False)
        await engine.run()
    assert engine.outcome == "succeeded", engine.failure
    return engine.value, lookups.calls


async def test_an_encrypted_run_crashed_and_resumed_gives_the_same_result(
    tmp_path: Path, key: str
) -> None:
    expected, calls = await drive(CheckpointStore(f"memory://{uuid.uuid4().hex}"), crash=False)
    assert expected["found"] == {"record": f"{PERSONAL}'s file", "call": 1} and calls == 1
    assert expected["input"] == f"yes, {PERSONAL} may go"

    store, root = file_store(tmp_path)
    assert await drive(store, crash=True) == (expected, 1)  # the lookup ran once
    assert not any(PERSONAL.encode() in raw for raw in stored_bytes(root))
    history = run_history(store, "r1")
    assert history["steps"][-1]["effects"] == {"step": 1}
    assert history["steps"][1]["answers"][0]["by"] == "ana"
    assert PERSONAL in history["steps"][1]["answers"][0]["answer"]
    assert store.read_manifest("r1").result == expected


async def test_resuming_an_encrypted_run_without_the_key_fails_clearly(
    tmp_path: Path, monkeypatch
) -> None:
    store, _ = file_store(tmp_path)
    key = new_key()
    monkeypatch.setenv(KEY, key)
    graph = claims_graph(Lookups(), {"once": False})
    engine = RunEngine(graph, "r1", store, LocalExecutor(store))
    engine.open({"name": PERSONAL})
    await engine.run()
    assert engine.outcome == "waiting"
    monkeypatch.delenv(KEY)
    again = RunEngine(graph, "r1", store, LocalExecutor(store))
    with pytest.raises(CheckpointError, match=f"encrypted with key {id_of(key)}"):
        again.open(None, create=False)


def test_a_sealed_record_opens_to_the_record_it_was(key: str) -> None:
    rec = {"type": "step", "run_id": "r", "seq": 3, "output": [1, {"a": b"x"}], "writes": []}
    sealed = crypto.seal_record(copy.deepcopy(rec))
    assert sealed["output"]["__gecko__"] == "sealed" and sealed["output"]["key"] == id_of(key)
    assert crypto.open_record(msgpack.unpackb(msgpack.packb(sealed)), "here") == rec


def test_a_schedule_s_input_is_sealed_and_listed_without_the_key(
    tmp_path: Path, monkeypatch
) -> None:
    from gecko_actors.checkpoint.schedules import Schedule, ScheduleBook
    from gecko_actors.workflow.schedules import list_schedules

    store, root = file_store(tmp_path)
    key = new_key()
    monkeypatch.setenv(KEY, key)
    ScheduleBook(store).save(Schedule("daily", "0 6 * * *", "report", {"who": PERSONAL}))
    assert not any(PERSONAL.encode() in data for data in stored_bytes(root))
    assert ScheduleBook(store).load("daily")[0].input == {"who": PERSONAL}
    monkeypatch.delenv(KEY)
    with pytest.raises(CheckpointError, match=f"encrypted with key {id_of(key)}"):
        ScheduleBook(store).load("daily")  # the firer needs the key to start its runs
    [listed] = list_schedules(store.uri)  # the CLI lists it, its input marked
    assert listed["name"] == "daily" and listed["input"] == crypto.marker(id_of(key))
