"""Fenced commits: one writer per run, whatever two engines do at the same time.

Two engines may meet on one run (a partitioned old host beside its restarted successor, a
driver's ``resume``). The store must keep the run loadable and let exactly one of them win:
content-addressed data, commit markers created only if absent, and owner epochs. These tests
race real threads on ``file://``, ``s3://`` (moto) and ``memory://``, and check every
interleaving of two engines' requests on ``memory://``.
"""

from __future__ import annotations

import itertools
import pickle
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgpack
import pytest

# The objects seen around the store, and a valid step, as in the store's own tests.
from test_checkpoint import Raw, make_step

from gecko_actors.checkpoint import CheckpointStore, Manifest, StateWrite
from gecko_actors.checkpoint.backends import MemoryBackend
from gecko_actors.checkpoint.location import parse_uri
from gecko_actors.exceptions import CheckpointError, ConfigurationError, OwnershipLost, UserError


@pytest.fixture(autouse=True)
def _atomic_moto_conditional_put(monkeypatch):
    """moto checks ``If-None-Match: *`` and then stores the object in two steps, so two
    concurrent conditional PUTs can both succeed there; on S3 itself exactly one does. Make
    moto's PUT handler atomic, so that the race tests test our protocol, not the emulator."""
    from moto.s3.responses import S3Response

    original = S3Response.put_object
    lock = threading.Lock()

    def put_object(self: Any) -> Any:
        with lock:
            return original(self)

    monkeypatch.setattr(S3Response, "put_object", put_object)


def _stores(uri: str, n: int, inline_limit: int | None = None) -> list[CheckpointStore]:
    """``n`` independent store objects on one location, as ``n`` engines would have."""
    limit = {} if inline_limit is None else {"inline_limit": inline_limit}
    return [CheckpointStore(uri, retries=1, backoff=0.01, **limit) for _ in range(n)]


def _race(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls in threads released together by a barrier; each result is the call's
    return value or the exception it raised."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> Any:
        barrier.wait()
        try:
            return call()
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


# --- two writers, one seq --------------------------------------------------------------------


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "objects"])
def test_two_writers_racing_for_one_seq_exactly_one_wins(store_uri, inline):
    raw = Raw(store_uri)
    a, b = _stores(store_uri, 2, inline_limit=None if inline else 0)
    rounds = 20
    for seq in range(rounds):
        records = [
            make_step(seq, f"writer {w}, round {seq}", writes=(StateWrite("w", w),))
            for w in ("a", "b")
        ]
        calls = [
            lambda s=s, r=r: s.commit_step("run", r) for s, r in zip((a, b), records, strict=True)
        ]
        results = _race(calls)
        winners = [i for i, r in enumerate(results) if isinstance(r, int) and r > 0]
        losers = [r for r in results if isinstance(r, OwnershipLost)]
        assert len(winners) == 1 and len(losers) == 1, results
        assert losers[0].seq == seq and "committed first by another engine" in str(losers[0])
        # Both data objects exist (named by their hashes); the marker names the winner's.
        # Inline, the marker holds the winner's data and the loser wrote nothing.
        assert len(raw.keys(f"run/steps/{seq:08d}-")) == (0 if inline else 2)
        steps = a.load_steps("run")
        assert len(steps) == seq + 1
        assert steps[seq] == records[winners[0]]
        assert b.read_step("run", seq) == records[winners[0]]


def test_many_writers_with_random_delays_between_requests(monkeypatch):
    """Three writers per seq on memory://, each request delayed at random: exactly one wins
    every round, and the run always loads."""
    rng = random.Random(7)

    def delayed(method: Callable[..., Any]) -> Callable[..., Any]:
        def call(self: Any, *args: Any) -> Any:
            time.sleep(rng.random() * 0.002)
            return method(self, *args)

        return call

    for name in ("put", "put_if_absent", "get", "list"):
        monkeypatch.setattr(MemoryBackend, name, delayed(getattr(MemoryBackend, name)))
    stores = _stores("memory://fencing-random-delays", 3)
    for seq in range(30):
        records = [make_step(seq, f"writer {w}") for w in range(3)]
        calls = [
            lambda s=s, r=r: s.commit_step("run", r) for s, r in zip(stores, records, strict=True)
        ]
        results = _race(calls)
        won = [records[i] for i, r in enumerate(results) if isinstance(r, int)]
        assert len(won) == 1 and sum(isinstance(r, OwnershipLost) for r in results) == 2
        assert stores[0].load_steps("run")[seq] == won[0]
    stores[0].delete_run("run")


# --- owner epochs ----------------------------------------------------------------------------


def test_claims_are_unique_and_increasing(store_uri):
    stores = _stores(store_uri, 6)
    assert stores[0].current_epoch("run") == 0
    epochs = _race([lambda s=s: s.claim("run") for s in stores])
    assert sorted(epochs) == [2, 3, 4, 5, 6, 7]  # epoch 1 is the creator's, never claimed
    assert stores[0].claim("run") == 8
    assert all(s.current_epoch("run") == 8 for s in stores)


def test_a_stale_epoch_can_neither_commit_nor_set_the_status(store_uri):
    raw = Raw(store_uri)
    old, new = _stores(store_uri, 2)
    old.create_manifest(Manifest("run", "wf", "fp", None, time.time()))
    e_old = old.claim("run")
    assert old.commit_step("run", make_step(0, "by the old engine", epoch=e_old)) > 0
    assert old.update_status("run", "running", epoch=e_old) > 0

    e_new = new.claim("run")  # a restarted engine takes the run over
    assert e_new == e_old + 1
    before = {key: raw.get(key) for key in raw.keys(under="")}
    with pytest.raises(OwnershipLost, match="taken over by another engine") as info:
        old.commit_step("run", make_step(1, "too late", epoch=e_old))
    assert (info.value.epoch, info.value.owner_epoch, info.value.seq) == (e_old, e_new, 1)
    with pytest.raises(OwnershipLost):
        old.update_status("run", "failed", error="the old engine gave up", epoch=e_old)
    with pytest.raises(OwnershipLost):  # even a step it committed before is not re-committed
        old.commit_step("run", make_step(0, "by the old engine", epoch=e_old))
    assert {key: raw.get(key) for key in raw.keys(under="")} == before  # nothing written

    assert new.commit_step("run", make_step(1, "by the new engine", epoch=e_new)) > 0
    assert new.update_status("run", "succeeded", result="done", epoch=e_new) > 0
    assert [s.output for s in new.load_steps("run")] == ["by the old engine", "by the new engine"]
    assert [s.epoch for s in new.load_steps("run")] == [e_old, e_new]
    assert new.read_manifest("run").status == "succeeded"

    # The error crosses process boundaries (Ray) with its context.
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is OwnershipLost and isinstance(copy, CheckpointError)
    assert (copy.run_id, copy.epoch, copy.owner_epoch, copy.seq) == ("run", e_old, e_new, 1)
    assert str(copy) == str(info.value) and copy.error_code == "ownership_lost"


def test_an_identical_recommit_writes_nothing(store_uri):
    (store,) = _stores(store_uri, 1)
    epoch = store.claim("run")
    record = make_step(0, {"answer": 42}, writes=(StateWrite("k", "v"),), epoch=epoch)
    assert store.commit_step("run", record) > 0
    assert store.commit_step("run", record) == 0
    assert _race([lambda: store.commit_step("run", record)] * 2) == [0, 0]
    assert store.load_steps("run") == [record]


def test_create_manifest_once(store_uri):
    stores = _stores(store_uri, 4)
    manifests = [Manifest("run", "wf", f"fingerprint {i}", i, 1.0 + i) for i in range(4)]
    results = _race(
        [lambda s=s, m=m: s.create_manifest(m) for s, m in zip(stores, manifests, strict=True)]
    )
    assert len(set(results)) == 1 and results[0] in manifests
    assert stores[0].read_manifest("run") == results[0]


# --- what a losing writer leaves behind ------------------------------------------------------


def test_orphan_data_objects_do_not_break_loading(store_uri):
    raw = Raw(store_uri)
    (store,) = _stores(store_uri, 1)
    store.commit_step("run", make_step(0, "committed"))
    # A losing writer's data (a valid record with other content) and plain garbage, both
    # named like data objects of seq 0 and 1 but named by no marker.
    loser = msgpack.unpackb(raw.step_bytes("run", 0))
    loser["output"] = "the loser's"
    raw.put(f"run/steps/00000000-{'1' * 64}.msgpack", msgpack.packb(loser))
    raw.put(f"run/steps/00000000-{'2' * 64}.msgpack", b"garbage")
    raw.put(f"run/steps/00000001-{'3' * 64}.msgpack", b"torn")
    assert [s.output for s in store.load_steps("run")] == ["committed"]
    assert store.read_step("run", 0).output == "committed"


# --- every interleaving of two engines (memory://) -------------------------------------------


class _Schedule:
    """Lets threads run their storage requests one at a time, in a given order of thread
    names; once the order is used up (or names a thread that is done), requests run as they
    come, still one at a time. Records what ran."""

    def __init__(self, order: tuple[str, ...]) -> None:
        self.order = list(order)
        self.pos = 0
        self.done: set[str] = set()
        self.log: list[tuple[str, str, str]] = []
        self.cv = threading.Condition()

    def _my_turn(self, me: str) -> bool:
        while self.pos < len(self.order) and self.order[self.pos] in self.done:
            self.pos += 1
        return self.pos >= len(self.order) or self.order[self.pos] == me

    def run(self, me: str, what: str, path: str, fn: Callable[[], Any]) -> Any:
        with self.cv:
            assert self.cv.wait_for(lambda: self._my_turn(me), timeout=10), "schedule stuck"
            try:
                self.log.append((me, what, path))
                return fn()
            finally:
                self.pos += 1
                self.cv.notify_all()

    def finish(self, me: str) -> None:
        with self.cv:
            self.done.add(me)
            self.cv.notify_all()


class _Scheduled(MemoryBackend):
    """A memory backend whose every request waits for its turn in a :class:`_Schedule`."""

    def __init__(self, uri: str, schedule: _Schedule) -> None:
        super().__init__(parse_uri(uri))
        self.schedule = schedule

    def _call(self, what: str, path: str, fn: Callable[[], Any]) -> Any:
        return self.schedule.run(threading.current_thread().name, what, path, fn)

    def put(self, path: str, data: bytes) -> None:
        return self._call("put", path, lambda: super(_Scheduled, self).put(path, data))

    def put_if_absent(self, path: str, data: bytes) -> bool:
        return self._call("create", path, lambda: super(_Scheduled, self).put_if_absent(path, data))

    def get(self, path: str) -> bytes | None:
        return self._call("get", path, lambda: super(_Scheduled, self).get(path))

    def list(self, folder: str) -> list:
        return self._call("list", folder, lambda: super(_Scheduled, self).list(folder))


def _two_engines(order: tuple[str, ...], n: int) -> None:
    uri = f"memory://interleaving-{n}"
    setup = CheckpointStore(uri)
    e_a = setup.claim("run")
    for seq in range(3):
        setup.commit_step("run", make_step(seq, f"step {seq}", epoch=e_a))
    schedule = _Schedule(order)
    old, new = CheckpointStore(uri), CheckpointStore(uri)
    old._io = _Scheduled(uri, schedule)  # the engines' requests go through the schedule
    new._io = _Scheduled(uri, schedule)
    mine = {"A": make_step(3, "by A", epoch=e_a), "B": None}
    outcome: dict[str, Any] = {}

    def engine_a() -> None:
        try:
            outcome["A"] = old.commit_step("run", mine["A"])
        except Exception as exc:
            outcome["A"] = exc
        finally:
            schedule.finish("A")

    def engine_b() -> None:  # a new engine takes the run over, then commits the same seq
        try:
            mine["B"] = make_step(3, "by B", epoch=new.claim("run"))
            outcome["B"] = new.commit_step("run", mine["B"])
        except Exception as exc:
            outcome["B"] = exc
        finally:
            schedule.finish("B")

    threads = [
        threading.Thread(target=f, name=name) for name, f in (("A", engine_a), ("B", engine_b))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    won = sorted(name for name, result in outcome.items() if isinstance(result, int))
    lost = [result for result in outcome.values() if isinstance(result, OwnershipLost)]
    assert len(won) == 1 and len(lost) == 1, (order, outcome, schedule.log)
    steps = setup.load_steps("run")
    assert [s.output for s in steps] == ["step 0", "step 1", "step 2", f"by {won[0]}"]
    assert steps[3] == mine[won[0]]
    # A claim that completed before A's ownership check always fences A out.
    names = [(who, what) for who, what, _ in schedule.log]
    if ("B", "create") in names and names.index(("B", "create")) < names.index(("A", "list")):
        assert won == ["B"], schedule.log
    setup.delete_run("run")


def test_every_interleaving_of_two_engines_keeps_one_writer():
    """Engine A (epoch 1) commits step 3 while engine B claims the run (epoch 2) and commits
    its own step 3: for every order of their first 9 storage requests, exactly one commit
    wins, the other raises OwnershipLost, and the run loads with the winner's step."""
    orders = list(itertools.product("AB", repeat=9))
    for n, order in enumerate(orders):
        _two_engines(order, n)
    assert len(orders) == 512


# --- S3-compatible servers that ignore If-None-Match -----------------------------------------


def _client_of(backend: Any, monkeypatch: pytest.MonkeyPatch, put_object: Callable) -> Any:
    """Make ``backend`` use a boto3 client whose ``put_object`` is ``put_object(real, **kw)``."""
    client = backend._make_client()
    real = client.put_object
    monkeypatch.setattr(client, "put_object", lambda **kw: put_object(real, **kw))
    monkeypatch.setattr(backend, "_make_client", lambda: client)
    return client


def test_s3_checks_once_that_the_server_honours_conditional_writes(s3, monkeypatch):
    uri = s3.uri()
    store = CheckpointStore(uri, retries=0)
    keys: list[str] = []

    def put_object(real: Callable, **kw: Any) -> Any:
        keys.append(kw["Key"])
        return real(**kw)

    _client_of(store._backend(), monkeypatch, put_object)
    epoch = store.claim("run")
    store.commit_step("run", make_step(0, "fenced", epoch=epoch))
    store.commit_step("run", make_step(1, "fenced too", epoch=epoch))
    prefix = parse_uri(uri).root.partition("/")[2]
    probes = [key for key in keys if key.startswith(f"{prefix}/.gecko-fence-probe/")]
    assert len(probes) == 2 and probes[0] == probes[1]  # the same object, twice, once
    assert len(keys) == 5  # the probe's two PUTs, then the claim and two markers
    assert Raw(uri).keys(under=".gecko-fence-probe") == []  # deleted afterwards
    assert [s.output for s in store.load_steps("run")] == ["fenced", "fenced too"]


def test_s3_servers_that_ignore_if_none_match_are_refused(s3, monkeypatch):
    """Such a server stores every conditional PUT: two engines would both commit a seq, so
    the store refuses it at the first fenced write, before writing anything of the run."""
    uri = s3.uri()
    store = CheckpointStore(uri, retries=2, backoff=0.01)

    def ignoring_the_condition(real: Callable, **kw: Any) -> Any:
        kw.pop("IfNoneMatch", None)
        return real(**kw)

    _client_of(store._backend(), monkeypatch, ignoring_the_condition)
    with pytest.raises(ConfigurationError, match="does not support conditional writes") as info:
        store.claim("run")
    assert isinstance(info.value, UserError)
    assert f"127.0.0.1:{s3.port}" in str(info.value) and "fenced" in str(info.value)
    with pytest.raises(ConfigurationError):
        store.create_manifest(Manifest("run", "wf", "fp", None, time.time()))
    assert Raw(uri).keys() == []  # no claim, no manifest, no probe left behind


def test_s3_servers_that_reject_if_none_match_are_refused():
    """A server that answers 501 to the header cannot fence either: a ConfigurationError, not
    a transient error retried until the store gives up."""
    from botocore.exceptions import ClientError

    from gecko_actors.checkpoint import s3

    class Client:
        meta = type("Meta", (), {"endpoint_url": "http://s3.example"})()

        def put_object(self, **kw: Any) -> None:
            response = {
                "Error": {"Code": "NotImplemented", "Message": "If-None-Match"},
                "ResponseMetadata": {"HTTPStatusCode": 501},
            }
            raise ClientError(response, "PutObject")

    with pytest.raises(ConfigurationError, match=r"'http://s3\.example' does not support"):
        s3.put_if_absent(Client(), "bucket", "run/steps/00000000.commit", b"marker")
