"""The checkpoint store, against a local directory, S3 (moto on 127.0.0.1) and memory://.

Every store test runs on every backend. The test's own view of the stored objects (to tamper
with them, or to prove what was written) goes around the store: plain files for ``file://``,
boto3 for ``s3://``, the memory backend itself for ``memory://``. Fencing (two writers, owner
epochs) is tested in ``test_checkpoint_fencing.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import stat
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import msgpack
import pytest
from pydantic import BaseModel
from s3util import KEY_ID, SECRET, MotoS3, s3_client

from gecko_actors.checkpoint import (
    RECORD_VERSION,
    CheckpointStore,
    Manifest,
    StateWrite,
    StepRecord,
    decode_value,
    encode_value,
)
from gecko_actors.checkpoint.backends import MemoryBackend
from gecko_actors.checkpoint.location import parse_uri
from gecko_actors.core.messages import AgentOutput, Message, ToolCall, Usage
from gecko_actors.exceptions import CheckpointError, OwnershipLost, UserError
from gecko_actors.workflow.graph import Next

# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def store(store_uri) -> CheckpointStore:
    return CheckpointStore(store_uri, retries=1, backoff=0.01)


class Raw:
    """The objects under a store's root, read and written around the store."""

    def __init__(self, uri: str) -> None:
        parts = urlsplit(uri)
        self.scheme = parts.scheme
        if self.scheme == "file":
            self.root = Path(parts.path)
        elif self.scheme == "memory":
            self.memory = MemoryBackend(parse_uri(uri))
        else:
            self.bucket = parts.netloc
            self.prefix = parts.path.strip("/")
            port = parse_qs(parts.query)["endpoint_override"][0].rsplit(":", 1)[1]
            self.client = s3_client(int(port))

    def put(self, key: str, data: bytes) -> None:
        if self.scheme == "file":
            path = self.root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        elif self.scheme == "memory":
            self.memory.put(key, data)
        else:
            self.client.put_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}", Body=data)

    def get(self, key: str) -> bytes:
        if self.scheme == "file":
            return (self.root / key).read_bytes()
        if self.scheme == "memory":
            data = self.memory.get(key)
            assert data is not None, key
            return data
        return self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}")["Body"].read()

    def delete(self, key: str) -> None:
        if self.scheme == "file":
            (self.root / key).unlink()
        elif self.scheme == "memory":
            folder, _, name = key.rpartition("/")
            before = self.memory.list(folder)
            files = {e.name: self.memory.get(f"{folder}/{e.name}") for e in before if not e.is_dir}
            assert name in files, key
            self.memory.delete(folder)
            for other, data in files.items():
                if other != name:
                    self.memory.put(f"{folder}/{other}", data)
        else:
            self.client.delete_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}")

    def keys(self, under: str = "") -> list[str]:
        """Every object's key (relative to the root), sorted; only those starting with
        ``under`` if given."""
        if self.scheme == "file":
            found = (
                [str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file()]
                if self.root.exists()
                else []
            )
        elif self.scheme == "memory":
            found = []
            folders = [""]
            while folders:
                folder = folders.pop()
                for entry in self.memory.list(folder):
                    key = f"{folder}/{entry.name}" if folder else entry.name
                    (folders if entry.is_dir else found).append(key)
        else:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=f"{self.prefix}/"
            )
            cut = len(self.prefix) + 1
            found = [obj["Key"][cut:] for page in pages for obj in page.get("Contents", [])]
        return sorted(k for k in found if k.startswith(under))

    def data_key(self, run_id: str, seq: int) -> str:
        """The key of the one data object of step ``seq``."""
        (key,) = self.keys(f"{run_id}/steps/{seq:08d}-")
        return key

    def step_bytes(self, run_id: str, seq: int) -> bytes:
        """Step ``seq``'s packed record: inside its marker, or its data object."""
        marker = msgpack.unpackb(self.get(f"{run_id}/steps/{seq:08d}.commit"))
        return marker["data"] if "data" in marker else self.get(self.data_key(run_id, seq))

    def plant_step(
        self, run_id: str, seq: int, data: bytes, *, version: int = RECORD_VERSION
    ) -> None:
        """Put ``data`` as step ``seq`` with a commit marker that matches it."""
        digest = hashlib.sha256(data).hexdigest()
        name = f"{seq:08d}-{digest}.msgpack"
        marker = {
            "type": "commit",
            "version": version,
            "run_id": run_id,
            "seq": seq,
            "object": name,
            "size": len(data),
            "sha256": digest,
            "epoch": 0,
        }
        self.put(f"{run_id}/steps/{name}", data)
        self.put(f"{run_id}/steps/{seq:08d}.commit", msgpack.packb(marker))


def make_step(seq: int, output=None, **changes) -> StepRecord:
    """A valid StepRecord; ``changes`` override its fields."""
    fields = {
        "seq": seq,
        "node": "work",
        "visit": 1,
        "output": output,
        "attempts": 1,
        "duration": 0.5,
        "finished_at": 1_700_000_000.0 + seq,
    }
    return StepRecord(**{**fields, **changes})


_step = make_step


class Answer(BaseModel):
    title: str
    score: float


@dataclasses.dataclass
class Point:
    x: int
    y: int


# --- manifest and status ---------------------------------------------------------------------


def test_manifest_round_trip_and_separate_status(store, store_uri):
    raw = Raw(store_uri)
    manifest = Manifest(
        run_id="run-1",
        workflow="research",
        fingerprint="f" * 64,
        input={"question": "why?", "limits": [1, 2.5, None]},
        created_at=1_700_000_000.25,
    )
    assert store.create_manifest(manifest) == manifest
    assert store.read_manifest("run-1") == manifest
    before = raw.get("run-1/manifest.msgpack")
    # Created only if absent: a second engine gets the stored manifest back, not its own.
    other = dataclasses.replace(manifest, fingerprint="0" * 64, input="another input")
    assert store.create_manifest(other) == manifest

    assert store.update_status("run-1", "succeeded", result=AgentOutput(content="done")) > 0
    got = store.read_manifest("run-1")
    assert got.status == "succeeded"
    assert got.result == AgentOutput(content="done")
    assert got.error is None and got.finished_at is not None
    assert (got.workflow, got.input, got.created_at) == ("research", manifest.input, 1.7e9 + 0.25)

    store.update_status("run-1", "failed", error="node 'b' failed: boom")
    got = store.read_manifest("run-1")
    assert (got.status, got.error, got.result) == ("failed", "node 'b' failed: boom", None)
    store.update_status("run-1", "running")  # a resume
    assert store.read_manifest("run-1").finished_at is None

    # The status lives in its own object: the manifest's bytes never change.
    assert raw.get("run-1/manifest.msgpack") == before
    assert raw.keys() == ["run-1/manifest.msgpack", "run-1/status.msgpack"]

    assert store.read_manifest("no-such-run") is None
    with pytest.raises(UserError, match="status"):
        store.update_status("run-1", "done")


# --- steps -----------------------------------------------------------------------------------


def test_steps_round_trip_every_kind_of_value(store):
    call = ToolCall(id="call-1", name="calculator", arguments='{"expression": "6*7"}')
    usage = Usage(requests=2, prompt_tokens=30, completion_tokens=5, total_tokens=35, cost=0.01)
    output = AgentOutput(
        content="42",
        tool_calls=[call],
        usage=usage,
        structured=Answer(title="six times seven", score=0.5),
        messages=[
            Message.system("be brief"),
            Message.user("what is 6*7?"),
            Message.assistant(None, [call]),
            Message.tool_result("call-1", {"value": 42}, "calculator"),
            Message.assistant("42"),
        ],
    )
    nested = {"list": [1, 2.5, None, True, {"deep": ["x", b"\x00"]}], "pair": (1, "two")}
    records = [
        _step(
            0,
            output,
            writes=(StateWrite("answer", "42"), StateWrite("draft", deleted=True)),
            usage=usage,
            routes={"b": True, "c": False},
            next=None,
            epoch=3,
        ),
        _step(1, {"__gecko__": "just a user key", **nested}),
        _step(2, b"\x00\xff binary \x80"),
        _step(3, Message.user("hello"), next=Next("work", Message.user("again"))),
        _step(4, usage),
        _step(5, Point(1, 2), writes=(StateWrite("point", Point(3, 4)), StateWrite("tags", ["a"]))),
        _step(6, Answer(title="t", score=1.0)),
        _step(7, None, node="join", visit=3, attempts=2),
    ]
    for seq in (3, 0, 6, 1, 7, 5, 2, 4):  # commit order is not seq order
        assert store.commit_step("run-v", records[seq]) > 0

    steps = store.load_steps("run-v")
    assert [s.seq for s in steps] == list(range(8))

    first = steps[0].output
    assert isinstance(first, AgentOutput)
    assert first.structured == {"title": "six times seven", "score": 0.5}
    assert first == output.model_copy(update={"structured": first.structured})
    assert first.tool_calls == [call] and first.messages == output.messages
    assert steps[0].writes == (StateWrite("answer", "42"), StateWrite("draft", None, True))
    assert isinstance(steps[0].writes, tuple)
    assert steps[0].usage == usage and isinstance(steps[0].usage, Usage)
    assert steps[0].routes == {"b": True, "c": False}
    assert (steps[0].epoch, steps[0].next, steps[0].attempts) == (3, None, 1)

    assert steps[1].output == {
        "__gecko__": "just a user key",
        "list": [1, 2.5, None, True, {"deep": ["x", b"\x00"]}],
        "pair": [1, "two"],
    }
    assert steps[2].output == b"\x00\xff binary \x80"
    assert steps[3].output == Message.user("hello")
    assert steps[3].next == Next("work", Message.user("again"))
    assert isinstance(steps[3].next, Next) and steps[3].usage is None
    assert steps[4].output == usage and isinstance(steps[4].output, Usage)
    assert steps[5].output == {"x": 1, "y": 2}
    assert steps[5].writes == (StateWrite("point", {"x": 3, "y": 4}), StateWrite("tags", ["a"]))
    assert steps[6].output == {"title": "t", "score": 1.0}
    assert dataclasses.replace(steps[7]) == records[7]
    assert steps[7].finished_at == records[7].finished_at
    # Every record that holds only values which come back as themselves round-trips whole.
    assert steps[0] == dataclasses.replace(records[0], output=first)  # all but `structured`
    for seq in (2, 3, 4, 7):
        assert steps[seq] == records[seq], seq
        assert store.read_step("run-v", seq) == records[seq]
    with pytest.raises(CheckpointError, match="step 8 of run 'run-v' is not committed"):
        store.read_step("run-v", 8)


def test_invalid_step_fields_are_named_and_nothing_is_written(store, store_uri):
    cases = [
        ({"seq": -1}, "StepRecord.seq"),
        ({"node": ""}, "StepRecord.node"),
        ({"visit": 1.5}, "StepRecord.visit"),
        ({"duration": -1}, "StepRecord.duration"),
        ({"epoch": "1"}, "StepRecord.epoch"),
        ({"usage": {"requests": 1}}, "StepRecord.usage .* expected a Usage"),
        ({"next": {"node": "a", "input": 1}}, "StepRecord.next .* expected a Next"),
        ({"routes": {"b": "yes"}}, "StepRecord.routes"),
        ({"writes": {"k": 1}}, "StepRecord.writes"),
        ({"writes": (("k", 1),)}, "StepRecord.writes .*item 0 is a tuple"),
        ({"writes": (StateWrite("k", 1, deleted=True),)}, "a deletion with value None"),
    ]
    for changes, message in cases:
        with pytest.raises(UserError, match=message):
            store.commit_step("run-bad", dataclasses.replace(_step(0, "ok"), **changes))
    with pytest.raises(UserError, match=r"writes\[1\] \(state key 'bad'\) of type builtins.set"):
        store.commit_step("run-bad", _step(0, writes=(StateWrite("ok", 1), StateWrite("bad", {1}))))
    assert Raw(store_uri).keys() == []


@pytest.mark.parametrize("backend", ["file", "memory"])
def test_bytes_per_step_stay_flat(backend, tmp_path):
    """A step costs the same whether it is the 10th or the 1,000th: history is never
    rewritten. The bytes are the records' own, whatever the backend (S3 would only make the
    1,000 commits slow: the other tests cover its I/O)."""
    uri = f"file://{tmp_path}/runs" if backend == "file" else f"memory://flat-{uuid.uuid4().hex}"
    store = CheckpointStore(uri)
    payload = {"summary": "x" * 400, "scores": [0.5] * 10}

    def commit(seq: int) -> int:
        writes = (StateWrite("round", "r"),)
        record = _step(seq, payload, visit=seq + 1, writes=writes, usage=Usage(total_tokens=9))
        return store.commit_step("long-run", record)

    sizes = [commit(seq) for seq in range(1000)]
    assert sizes[999] <= 1.1 * sizes[9]
    assert max(sizes) - min(sizes) <= 8  # the seq and visit numbers' own digits
    assert [s.seq for s in store.load_steps("long-run")] == list(range(1000))


def test_a_value_that_cannot_be_encoded_writes_nothing(store, store_uri):
    bad = _step(0, {"fine": [1, 2], "broken": {"deeper": object()}})
    with pytest.raises(UserError, match=r"output\['broken'\]\['deeper'\] of type builtins.object"):
        store.commit_step("run-e", bad)
    with pytest.raises(UserError, match="AgentOutput"):
        store.commit_step("run-e", _step(0, "ok", writes=(StateWrite("seen", {1, 2}),)))
    assert Raw(store_uri).keys() == []
    assert store.load_steps("run-e") == []


def test_a_torn_write_is_not_loaded(store, store_uri):
    raw = Raw(store_uri)
    store.commit_step("run-t", _step(0, "first"))
    store.commit_step("run-t", _step(1, "second"))
    # The process died between the data object and its commit marker.
    raw.delete("run-t/steps/00000001.commit")
    assert [s.output for s in store.load_steps("run-t")] == ["first"]
    # A data object with no marker at all (never committed) is ignored too.
    raw.put(f"run-t/steps/00000002-{'ab' * 32}.msgpack", b"\x93half a rec")
    assert [s.output for s in store.load_steps("run-t")] == ["first"]
    # The retried visit commits seq 1 again, with other content: it replaces the torn one.
    store.commit_step("run-t", _step(1, "second, retried"))
    assert [s.output for s in store.load_steps("run-t")] == ["first", "second, retried"]


def test_a_missing_commit_marker_before_the_last_is_an_error(store, store_uri):
    """A gap in the markers (a manual or partial delete, a lifecycle rule) would make the
    engine's next seq differ from the stored one, and its next commit collide forever."""
    raw = Raw(store_uri)
    for seq in range(4):
        store.commit_step("run-g", _step(seq, f"step {seq}"))
    raw.delete("run-g/steps/00000002.commit")
    with pytest.raises(CheckpointError, match=r"run 'run-g'.*step 2 is missing") as info:
        store.load_steps("run-g")
    assert (info.value.run_id, info.value.seq) == ("run-g", 2)
    assert info.value.uri.endswith("run-g/steps/00000002.commit")
    assert "restore the missing step or delete the run" in str(info.value)
    raw.delete("run-g/steps/00000000.commit")  # the first missing one is named
    with pytest.raises(CheckpointError, match="step 0 is missing") as info:
        store.load_steps("run-g")
    assert info.value.seq == 0


def test_tampered_or_truncated_data_is_refused(store_uri):
    raw = Raw(store_uri)
    store = CheckpointStore(store_uri, retries=1, backoff=0.01, inline_limit=0)
    store.commit_step("run-x", _step(0, "a value of some length"))
    assert not msgpack.unpackb(raw.get("run-x/steps/00000000.commit")).get("data")
    key = raw.data_key("run-x", 0)
    good = raw.get(key)
    raw.put(key, good.replace(b"some", b"SOME"))
    with pytest.raises(CheckpointError, match=r"00000000-[0-9a-f]{64}\.msgpack.*sha256") as info:
        store.load_steps("run-x")
    assert info.value.uri.endswith(key)
    with pytest.raises(CheckpointError, match="sha256"):
        store.read_step("run-x", 0)
    raw.put(key, good[:-4])
    with pytest.raises(CheckpointError, match=r"00000000-[0-9a-f]{64}\.msgpack.*truncated"):
        store.load_steps("run-x")
    raw.put(key, good)
    assert store.load_steps("run-x")[0].output == "a value of some length"
    raw.delete(key)  # a marker whose data is gone
    with pytest.raises(CheckpointError, match="does not exist"):
        store.load_steps("run-x")


def test_small_steps_travel_inside_their_marker_and_are_verified(store, store_uri):
    raw = Raw(store_uri)
    big = "x" * (store.inline_limit + 1)
    store.commit_step("run-i", _step(0, "small"))
    store.commit_step("run-i", _step(1, big))
    # One object for the small step (its marker), two for the big one.
    assert raw.keys("run-i/steps/00000000") == ["run-i/steps/00000000.commit"]
    assert len(raw.keys("run-i/steps/00000001")) == 2
    assert [s.output for s in store.load_steps("run-i")] == ["small", big]
    assert store.read_step("run-i", 0).output == "small"
    key = "run-i/steps/00000000.commit"
    good = msgpack.unpackb(raw.get(key))
    damaged = [
        (good["data"].replace(b"small", b"SMALL"), "sha256"),
        (good["data"][:-2], "truncated or tampered with"),
        ("not bytes", "invalid 'data'"),
    ]
    for data, message in damaged:
        raw.put(key, msgpack.packb({**good, "data": data}))
        for load in (lambda: store.load_steps("run-i"), lambda: store.read_step("run-i", 0)):
            with pytest.raises(CheckpointError, match=message) as info:
                load()
            assert info.value.uri.endswith(key)
    raw.put(key, msgpack.packb(good))
    assert store.load_steps("run-i")[0].output == "small"


class _Exploit:
    """Unpickling this creates a file: the proof that nothing from a checkpoint executes."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag

    def __reduce__(self):
        return (open, (str(self.flag), "w"))


def test_a_pickle_payload_is_refused_and_never_executed(store, store_uri, tmp_path):
    raw = Raw(store_uri)
    flag = tmp_path / "pwned"
    payload = pickle.dumps(_Exploit(flag))
    raw.plant_step("run-p", 0, payload)  # with a marker that matches it
    with pytest.raises(CheckpointError, match=r"00000000-[0-9a-f]{64}\.msgpack") as info:
        store.load_steps("run-p")
    assert "not a valid msgpack record" in str(info.value)
    raw.put("run-p/manifest.msgpack", payload)
    with pytest.raises(CheckpointError, match=r"manifest\.msgpack"):
        store.read_manifest("run-p")
    raw.put("run-p/steps/00000000.commit", payload)
    with pytest.raises(CheckpointError, match=r"00000000\.commit"):
        store.load_steps("run-p")
    assert not flag.exists()


def test_unknown_types_versions_and_tags_are_refused(store, store_uri):
    raw = Raw(store_uri)
    store.commit_step("scratch", _step(0, {"v": 1}))
    template = msgpack.unpackb(raw.step_bytes("scratch", 0))
    template["run_id"] = "run-u"
    cases = [
        ({"version": RECORD_VERSION + 1}, f"version {RECORD_VERSION + 1}"),
        ({"type": "surprise"}, "unknown type 'surprise'"),
        ({"type": "manifest"}, "'manifest' record, not a 'step'"),
        ({"output": {"__gecko__": "os.system", "data": "rm -rf /"}}, "unknown tag 'os.system'"),
        ({"output": msgpack.ExtType(42, b"\x00")}, "extension type 42"),
        ({"output": msgpack.Timestamp(1, 0)}, "other than plain data"),
        ({"extra": 1}, "unexpected"),
        ({"run_id": "another-run"}, "belongs to run 'another-run'"),
        ({"seq": 5}, "holds step 5"),
        ({"writes": {"k": 1}}, "invalid 'writes'"),
        ({"writes": [{"key": "k", "value": 1}]}, "malformed 'writes'"),
        ({"writes": [{"key": "k", "value": 1, "deleted": True}]}, "malformed 'writes'"),
        ({"usage": {"requests": "many"}}, "malformed 'usage'"),
        ({"next": {"node": "a"}}, "malformed 'next'"),
        ({"epoch": None}, "invalid 'epoch'"),
    ]
    for changes, message in cases:
        raw.plant_step("run-u", 0, msgpack.packb({**template, **changes}, datetime=False))
        with pytest.raises(CheckpointError, match=message) as info:
            store.load_steps("run-u")
        assert "run-u/steps/00000000-" in str(info.value), changes
    raw.put("run-u/steps/00000000.commit", msgpack.packb({"type": "commit", "version": 99}))
    with pytest.raises(CheckpointError, match=r"00000000\.commit.*version 99"):
        store.load_steps("run-u")
    # A manifest (and a status) are checked the same way.
    raw.put("run-u/manifest.msgpack", msgpack.packb({"type": "manifest", "version": 7}))
    with pytest.raises(CheckpointError, match=r"manifest\.msgpack.*version 7"):
        store.read_manifest("run-u")


def test_version_1_checkpoints_are_refused_clearly(store, store_uri):
    raw = Raw(store_uri)
    old_step = {"type": "step", "version": 1, "run_id": "old", "seq": 0, "node": "a"}
    data = msgpack.packb(old_step)
    # Version 1's layout: the data object named by seq, a marker without an epoch.
    raw.put("old/steps/00000000.msgpack", data)
    marker = {"type": "commit", "version": 1, "run_id": "old", "seq": 0}
    marker |= {"object": "00000000.msgpack", "size": len(data), "sha256": "0" * 64}
    raw.put("old/steps/00000000.commit", msgpack.packb(marker))
    raw.put("old/manifest.msgpack", msgpack.packb({"type": "manifest", "version": 1}))
    for load in (lambda: store.load_steps("old"), lambda: store.read_step("old", 0)):
        with pytest.raises(CheckpointError, match=r"00000000\.commit.*version 1") as info:
            load()
        assert "written by another gecko_actors version" in str(info.value)
    with pytest.raises(CheckpointError, match=r"manifest\.msgpack.*version 1") as info:
        store.read_manifest("old")
    assert "another gecko_actors version" in str(info.value)


def test_recommit_is_idempotent_and_a_conflict_raises(store):
    record = _step(0, {"answer": 42}, writes=(StateWrite("k", "v"),))
    assert store.commit_step("run-i", record) > 0
    assert store.commit_step("run-i", record) == 0  # same content: already committed
    with pytest.raises(OwnershipLost, match="committed first by another engine") as info:
        store.commit_step("run-i", dataclasses.replace(record, output={"answer": 43}))
    assert isinstance(info.value, CheckpointError)
    assert (info.value.seq, info.value.owner_epoch) == (0, 0)
    assert store.load_steps("run-i") == [record]


def test_list_and_delete_runs(store, store_uri):
    assert store.list_runs() == []
    for run_id in ("run-b", "run-a"):
        store.create_manifest(Manifest(run_id, "wf", "fp", None, time.time()))
        store.commit_step(run_id, _step(0, run_id))
    Raw(store_uri).put("not-a-run/readme.txt", b"no manifest here")
    assert store.list_runs() == ["run-a", "run-b"]
    store.delete_run("run-a")
    store.delete_run("never-existed")
    assert store.list_runs() == ["run-b"]
    assert store.read_manifest("run-a") is None and store.load_steps("run-a") == []
    assert CheckpointStore(store_uri).list_runs() == ["run-b"]
    store.commit_step("run-a", _step(0, "again"))  # a deleted run_id can be used again
    assert [s.output for s in store.load_steps("run-a")] == ["again"]


@pytest.mark.parametrize("run_id", ["", "../escape", "a/b", ".hidden", "a b", "x" * 201, 7])
def test_invalid_run_ids(store, run_id):
    with pytest.raises(UserError, match="run_id"):
        store.load_steps(run_id)
    with pytest.raises(UserError, match="run_id"):
        store.commit_step(run_id, _step(0))


def test_the_store_pickles(store):
    store.commit_step("run-k", _step(0, "before"))  # the filesystem client exists now
    copy = pickle.loads(pickle.dumps(store))
    assert (copy.uri, copy.retries, copy.backoff) == (store.uri, store.retries, store.backoff)
    copy.commit_step("run-k", _step(1, "from the copy"))
    assert [s.output for s in store.load_steps("run-k")] == ["before", "from the copy"]


# --- URIs ------------------------------------------------------------------------------------


def test_relative_paths_are_refused():
    for uri in ("runs/checkpoints", "./runs", "file://runs/checkpoints", "file:relative"):
        with pytest.raises(UserError, match="absolute") as info:
            CheckpointStore(uri)
        assert "file:///" in str(info.value)


def test_credentials_in_a_uri_are_refused_without_echoing_them():
    secret = "wJalrXUtnFEMIK7MDENGbPxRfiCYzzzSECRET"
    for uri in (
        f"s3://AKIAIOSFODNN7EXAMPLE:{secret}@bucket/prefix",
        f"s3://bucket/prefix?access_key=AKIAIOSFODNN7EXAMPLE&secret_key={secret}",
        f"s3://bucket/prefix?region=us-east-1&session_token={secret}",
        f"gs://bucket/prefix?access_token={secret}",
    ):
        with pytest.raises(UserError, match="AWS_ACCESS_KEY_ID") as info:
            CheckpointStore(uri)
        text = f"{info.value} {info.value!r} {info.value.to_dict()}"
        assert secret not in text and "AKIAIOSFODNN7EXAMPLE" not in text
        assert "credentials" in text


def test_other_uri_mistakes():
    with pytest.raises(UserError, match="unsupported checkpoint URI scheme 'ftp'"):
        CheckpointStore("ftp://host/dir")
    with pytest.raises(UserError, match="unknown query parameter 'colour'"):
        CheckpointStore("s3://bucket/prefix?colour=blue")
    with pytest.raises(UserError, match="invalid 'scheme'"):
        CheckpointStore("s3://bucket/prefix?scheme=ftp")
    with pytest.raises(UserError, match="bucket/prefix"):
        CheckpointStore("s3:///prefix")
    with pytest.raises(UserError, match="retries"):
        CheckpointStore("/tmp/x", retries=-1)
    for uri in ("memory://", "memory://name?size=1", "memory://a/../b", "memory://a b"):
        with pytest.raises(UserError, match="memory://name"):
            CheckpointStore(uri)


def test_accepted_uris(tmp_path, s3):
    plain = CheckpointStore(str(tmp_path / "plain"))
    plain.commit_step("r", _step(0, "plain path"))
    assert (tmp_path / "plain" / "r" / "steps" / "00000000.commit").exists()
    assert CheckpointStore(f"file://{tmp_path}/plain").load_steps("r")[0].output == "plain path"
    # gs:// builds its client lazily: constructing the store needs no network or credentials.
    assert repr(CheckpointStore("gs://bucket/prefix")) == "CheckpointStore('gs://bucket/prefix')"
    uri = s3.uri()
    remote = CheckpointStore(uri)
    assert repr(remote) == f"CheckpointStore({uri!r})" and str(remote) == repr(remote)
    remote.commit_step("r", _step(0, "through the endpoint"))
    assert remote.load_steps("r")[0].output == "through the endpoint"
    options = remote._backend().filesystem().__reduce__()[1][0]
    assert options["allow_delayed_open"] is True  # one PUT per object, not a multipart upload
    assert options["endpoint_override"] == f"127.0.0.1:{s3.port}"
    # memory:// is per process: a copy of the store (only its URI travels) sees the same
    # objects here, and would see its own process's memory elsewhere.
    memory = CheckpointStore("memory://accepted-uris")
    memory.commit_step("r", _step(0, "in memory"))
    copy = pickle.loads(pickle.dumps(memory))
    assert copy.load_steps("r")[0].output == "in memory"
    memory.delete_run("r")
    assert copy.load_steps("r") == [] and copy.list_runs() == []


# --- file:// --------------------------------------------------------------------------------


def test_file_listings_stay_complete_while_another_thread_writes(tmp_path):
    """A write's temporary file can vanish between the listing of its name and its stat: the
    listing still holds every committed object, never [] (with [], a taking-over engine would
    re-run committed steps, and a fenced-out engine's owner check would let it through)."""
    store = CheckpointStore(f"file://{tmp_path}/checkpoints", retries=0, inline_limit=0)
    epoch = store.claim("run")
    records = [_step(seq, f"step {seq}", epoch=epoch) for seq in range(3)]
    for record in records:
        store.commit_step("run", record)
    backend = store._backend()
    steps = sorted(e.name for e in backend.list("run/steps"))
    assert len(steps) == 6 and not any(name.startswith(".") for name in steps)
    data_name = next(name for name in steps if name.startswith("00000002-"))
    data = backend.get(f"run/steps/{data_name}")
    marker = backend.get("run/steps/00000002.commit")
    stop = threading.Event()

    def writer() -> None:  # a retried commit of step 2: temporary files come and go
        while not stop.is_set():
            backend.put(f"run/steps/{data_name}", data)
            backend.put_if_absent("run/steps/00000002.commit", marker)
            backend.put_if_absent("run/owner/00000001.msgpack", b"a rival claim")

    thread = threading.Thread(target=writer)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # interleave the two threads often
    thread.start()
    try:
        for i in range(2000):
            assert sorted(e.name for e in backend.list("run/steps")) == steps, i
            assert store.current_epoch("run") == epoch, i
            if i % 50 == 0:
                assert store.load_steps("run") == records, i
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(switch)


@pytest.mark.parametrize("how", ["put", "put_if_absent"])
def test_file_writes_are_synced_before_they_are_published(tmp_path, monkeypatch, how):
    """The data reaches the disk before its name points at it (else a power loss can leave a
    marker naming an empty file), and the folder after (so that the name survives too)."""
    events: list[tuple[str, str]] = []
    real_fsync, real_link, real_replace = os.fsync, os.link, os.replace

    def fsync(fd: int) -> None:
        info = os.fstat(fd)
        kind = "folder" if stat.S_ISDIR(info.st_mode) else "file"
        if kind == "file":  # the whole data is written (not just buffered) when it is synced
            assert info.st_size == len(b"the data")
        events.append(("fsync", kind))
        real_fsync(fd)

    def publish(real, name):
        def call(src, dst, *args, **kwargs):
            events.append((name, os.path.basename(dst)))
            return real(src, dst, *args, **kwargs)

        return call

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", publish(real_link, "link"))
    monkeypatch.setattr(os, "replace", publish(real_replace, "replace"))
    backend = CheckpointStore(f"file://{tmp_path}/checkpoints")._backend()
    (tmp_path / "checkpoints" / "run").mkdir(parents=True)
    getattr(backend, how)("run/object", b"the data")
    step = "link" if how == "put_if_absent" else "replace"
    assert events == [("fsync", "file"), (step, "object"), ("fsync", "folder")]
    assert (tmp_path / "checkpoints" / "run" / "object").read_bytes() == b"the data"
    assert os.listdir(tmp_path / "checkpoints" / "run") == ["object"]


# --- failures --------------------------------------------------------------------------------


def test_file_writes_that_fail_raise_after_retries(tmp_path):
    (tmp_path / "blocker").write_text("a regular file where a directory should be")
    store = CheckpointStore(f"file://{tmp_path}/blocker/checkpoints", retries=2, backoff=0.01)
    with pytest.raises(CheckpointError, match="after 3 attempt") as info:
        store.commit_step("run-f", _step(0, "lost?"))
    assert "step 0 of run 'run-f'" in str(info.value) and "checkpoints/run-f/" in str(info.value)
    with pytest.raises(CheckpointError, match=r"write checkpoint object .*manifest\.msgpack"):
        store.create_manifest(Manifest("run-f", "wf", "fp", None, time.time()))


def test_s3_writes_fail_while_the_server_is_down_then_recover():
    server = MotoS3("gecko-outage").start()
    try:
        store = CheckpointStore(server.uri(), retries=2, backoff=0.05)
        store.commit_step("run-o", _step(0, "before the outage"))
        server.stop()
        with pytest.raises(CheckpointError, match="after 3 attempt") as info:
            store.commit_step("run-o", _step(1, "during the outage"))
        message = str(info.value)
        assert "s3://gecko-outage/" in message and "step 1 of run 'run-o'" in message
        assert SECRET not in message and KEY_ID not in message
        with pytest.raises(CheckpointError):
            store.load_steps("run-o")
        server.start()
        store.commit_step("run-o", _step(1, "after the outage"))  # the same store object
        assert [s.output for s in store.load_steps("run-o")][-1] == "after the outage"
    finally:
        server.stop()


# --- values ----------------------------------------------------------------------------------


def test_encode_and_decode_values():
    value = {"a": [1, (2, 3)], "b": b"\x01", "c": {"d": None, "e": 1.5, "f": True}}
    encoded = encode_value(value)
    assert msgpack.unpackb(msgpack.packb(encoded), raw=False) == encoded
    assert decode_value(encoded) == {**value, "a": [1, [2, 3]]}
    assert encode_value(Usage(requests=1))["__gecko__"] == "Usage"
    tagged = encode_value(Answer(title="t", score=1))
    assert tagged["type"] == f"{__name__}.Answer"
    assert decode_value(tagged) == {"title": "t", "score": 1.0}  # never re-imported

    for bad, name in ((object(), "builtins.object"), ({1, 2}, "builtins.set")):
        with pytest.raises(UserError, match=name) as info:
            encode_value(bad)
        assert "AgentOutput" in str(info.value) and "dataclasses" in str(info.value)
    with pytest.raises(UserError, match="int key"):
        encode_value({1: "x"})
    with pytest.raises(UserError, match="64 bits"):
        encode_value(2**70)
    loop: list = []
    loop.append(loop)
    with pytest.raises(UserError, match="nested too deeply"):
        encode_value(loop)
    with pytest.raises(CheckpointError, match="unknown tag 'Pickle'"):
        decode_value({"__gecko__": "Pickle", "data": b"\x80\x04"})
    with pytest.raises(CheckpointError, match="invalid"):
        decode_value({"__gecko__": "Message", "data": {"role": "wizard"}})
