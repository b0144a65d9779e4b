"""The workflow semantics of issue 10, end to end: what a user hits through the public API on a
local Ray, on ``file://`` and ``s3://`` checkpoints where storage matters.

- a parallel branch that never touches a key does not put its old value back (lost update);
  map items' state writes merge through a reducer, in item order, or fail naming the key;
- a timed-out attempt is killed before its retry runs, and never writes afterwards;
- ``cancel()`` stops what runs, and ``resume`` continues from the last committed step;
- a jump to a node that does not exist is not committed, and the run resumes once fixed;
- a downstream node sees the same values, of the same types, with or without a restart;
- two engines on one run: the one taken over stops, the checkpoint stays valid.

``tests/test_workflow_engine.py`` has the Ray-free versions (``memory://``). Ordering and
overlap are asserted only from recorded facts (ledgers, checkpoint contents), never from
wall-clock margins. Every side effect goes through a ledger file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import operator
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import ray
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from gecko_actors import WorkflowError
from gecko_actors.checkpoint import CheckpointStore, StateWrite
from gecko_actors.exceptions import OwnershipLost
from gecko_actors.workflow import Next, NodeContext, RetryPolicy, Workflow, WorkflowGraph
from gecko_actors.workflow.engine import RunEngine
from gecko_actors.workflow.execution import LocalExecutor

ray_test = pytest.mark.usefixtures("ray_session")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def record(path: Path | str, **entry: Any) -> None:
    """Append one JSON line to a ledger."""
    with open(path, "a") as ledger:
        ledger.write(json.dumps(entry) + "\n")


def entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def executions(path: Path) -> list[str]:
    """The nodes a ledger recorded, in the order they ran."""
    return [e["node"] for e in entries(path)]


def wait_until(condition: Any, what: str, timeout: float = 60.0) -> None:
    """Poll ``condition`` until it holds (a deadline, not a timing assumption)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def committed(uri: str, run_id: str) -> list[str]:
    return [s.node for s in CheckpointStore(uri).load_steps(run_id)]


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie has stopped running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:  # no /proc (not Linux), or it just exited
        return os.path.exists(f"/proc/{pid}") if os.path.isdir("/proc") else True


# --- lost update: a parallel branch does not revert what another wrote -----------------------


def lost_update_workflow(uri: str, ledger: Path) -> Workflow:
    """``fast`` writes x; ``slow`` (a sync node in a thread) and ``reader`` (async) only read
    it, and finish only once fast's step is committed: exactly the interleaving in which a
    diff against the live state put the old value back."""

    def fast_committed(run_id: str) -> bool:
        return "fast" in committed(uri, run_id)

    def start(ctx: NodeContext) -> str:
        ctx.state["x"] = 0
        return "started"

    def fast(ctx: NodeContext) -> str:
        time.sleep(0.2)
        ctx.state["x"] = 1
        record(ledger, node="fast")
        return "fast"

    def slow(ctx: NodeContext) -> str:
        seen = ctx.state["x"]
        deadline = time.monotonic() + 60
        while not fast_committed(ctx.run_id):
            if time.monotonic() > deadline:
                raise RuntimeError("fast never committed")
            time.sleep(0.05)
        record(ledger, node="slow", x=seen, after_fast=True)
        return "slow"

    async def reader(ctx: NodeContext) -> str:
        seen = ctx.state.get("x")
        deadline = time.monotonic() + 60
        while not await asyncio.to_thread(fast_committed, ctx.run_id):
            if time.monotonic() > deadline:
                raise RuntimeError("fast never committed")
            await asyncio.sleep(0.05)
        record(ledger, node="reader", x=seen, after_fast=True)
        return "read"

    def join(ctx: NodeContext) -> Any:
        return {"x": ctx.state["x"], "from": sorted(ctx.input)}

    wf = Workflow(unique("lost-update"))
    for name, fn in (
        ("start", start),
        ("fast", fast),
        ("slow", slow),
        ("reader", reader),
        ("join", join),
    ):
        wf.add_node(name, fn)
    for branch in ("fast", "slow", "reader"):
        wf.add_edge("start", branch).add_edge(branch, "join")
    return wf


@ray_test
def test_a_parallel_branch_that_only_reads_a_key_does_not_revert_it(
    tmp_path: Path, checkpoint_uri: str
) -> None:
    ledger = tmp_path / "ledger"
    wf = lost_update_workflow(checkpoint_uri, ledger)
    run = wf.start("go", checkpoint=checkpoint_uri)
    assert run.result(timeout=120) == {"x": 1, "from": ["fast", "reader", "slow"]}
    # The facts of the scenario: slow and reader read x == 0 from their snapshot, and finished
    # only after fast had committed x = 1.
    seen = {e["node"]: e for e in entries(ledger)}
    assert seen["slow"]["x"] == 0 and seen["reader"]["x"] == 0
    steps = {s.node: s for s in CheckpointStore(checkpoint_uri).load_steps(run.run_id)}
    assert steps["fast"].seq < steps["slow"].seq and steps["fast"].seq < steps["reader"].seq
    assert steps["fast"].writes == (StateWrite("x", 1),)
    assert steps["slow"].writes == () and steps["reader"].writes == ()  # read, not written
    assert steps["join"].writes == ()
    assert run.status()["status"] == "succeeded"


def map_item(ctx: NodeContext) -> int:
    # Items finish in reverse order; their writes still merge in item order.
    time.sleep(0.1 * (3 - ctx.item))
    ctx.state["seen"] = [ctx.input]
    return ctx.input * 10


def map_workflow(reducers: dict[str, Any] | None) -> Workflow:
    wf = Workflow(unique("map-state"), reducers=reducers)
    wf.add_node("split", lambda ctx: list(ctx.input))
    wf.add_node("each", map_item, fan_out=True)
    wf.add_node("collect", lambda ctx: {"outputs": ctx.input, "seen": ctx.state.get("seen")})
    return wf.add_edge("split", "each").add_edge("each", "collect")


@ray_test
def test_map_items_state_writes_merge_by_reducer_in_item_order(checkpoint_uri: str) -> None:
    run = map_workflow({"seen": operator.add}).start([3, 1, 2], checkpoint=checkpoint_uri)
    assert run.result(timeout=120) == {"outputs": [30, 10, 20], "seen": [3, 1, 2]}
    steps = {s.node: s for s in CheckpointStore(checkpoint_uri).load_steps(run.run_id)}
    assert steps["each"].writes == tuple(StateWrite("seen", [i]) for i in (3, 1, 2))

    clash = map_workflow(None).start([3, 1, 2], checkpoint=checkpoint_uri)
    with pytest.raises(WorkflowError, match="'seen'") as info:
        clash.result(timeout=120)
    assert info.value.node == "each"
    assert committed(checkpoint_uri, clash.run_id) == ["split"]  # the bad step is not stored
    assert clash.status()["status"] == "failed"


# --- abandoned attempt: a timed-out attempt is killed before its retry ------------------------


@ray_test
def test_a_timed_out_attempt_is_killed_before_its_retry_and_never_writes(tmp_path: Path) -> None:
    starts, ledger = tmp_path / "starts", tmp_path / "ledger"

    def side_effect(ctx: NodeContext) -> str:
        # A sync node with a timeout: each attempt runs as a Ray task of its own.
        previous = entries(starts)
        record(starts, attempt=ctx.attempt, pid=os.getpid(), key=ctx.idempotency_key)
        if ctx.attempt == 1:
            time.sleep(3)
        record(
            ledger,
            node=ctx.node,
            attempt=ctx.attempt,
            key=ctx.idempotency_key,
            # Is an earlier attempt's process still running as this one starts?
            earlier_alive=[process_alive(e["pid"]) for e in previous],
        )
        return f"attempt {ctx.attempt}"

    retry = RetryPolicy(attempts=2, backoff=0)
    wf = Workflow(unique("abandoned")).add_node("effect", side_effect, timeout=1, retry=retry)
    run = wf.start(None, checkpoint=tmp_path / "checkpoints")
    assert run.result(timeout=120) == "attempt 2"
    finished = time.monotonic()
    first, second = entries(starts)
    assert (first["attempt"], second["attempt"]) == (1, 2)
    assert first["key"] == second["key"]  # one visit: the same idempotency key
    # Bounded check: attempt 1 would have written 3 s after it started; over the 4 s after
    # the result, the ledger never gains a line.
    while time.monotonic() < finished + 4:
        assert [e["attempt"] for e in entries(ledger)] == [2], entries(ledger)
        time.sleep(0.2)
    (only,) = entries(ledger)
    assert only["key"] == first["key"]
    assert only["earlier_alive"] == [False]  # attempt 1 had stopped before attempt 2 ran
    wait_until(lambda: not process_alive(first["pid"]), "attempt 1's worker to be killed", 30)
    kinds = [(e["type"], e.get("attempt")) for e in run.events()]
    assert ("node_retried", 1) in kinds
    retried = next(e for e in run.events() if e["type"] == "node_retried")
    assert "timed out after 1" in retried["error"]
    status = run.status()
    assert status["status"] == "succeeded" and status["nodes"]["effect"]["attempts"] == 2


# --- cancel a running run, then resume it -----------------------------------------------------


@ray_test
def test_cancel_stops_a_running_run_and_resume_continues_it(
    tmp_path: Path, checkpoint_uri: str
) -> None:
    ledger, release = tmp_path / "ledger", tmp_path / "release"

    def first(ctx: NodeContext) -> str:
        record(ledger, node="first", event="end")
        return "first"

    def sync_slow(ctx: NodeContext) -> str:  # in a coordinator thread: cannot be interrupted
        token = uuid.uuid4().hex
        record(ledger, node="sync_slow", event="start", token=token)
        time.sleep(2)
        record(ledger, node="sync_slow", event="end", token=token)
        return "sync"

    async def async_wait(ctx: NodeContext) -> str:  # on the coordinator's loop: cancelled
        token = uuid.uuid4().hex
        record(ledger, node="async_wait", event="start", token=token)
        while not release.exists():
            await asyncio.sleep(0.05)
        record(ledger, node="async_wait", event="end", token=token)
        return "async"

    wf = (
        Workflow(unique("cancel"))
        .add_node("first", first)
        .add_node("sync_slow", sync_slow)
        .add_node("async_wait", async_wait)
        .add_node("join", lambda ctx: sorted(ctx.input))
        .add_edge("first", "sync_slow")
        .add_edge("first", "async_wait")
        .add_edge("sync_slow", "join")
        .add_edge("async_wait", "join")
    )
    run = wf.start(None, checkpoint=checkpoint_uri)

    def started(node: str) -> list[str]:
        return [e["token"] for e in entries(ledger) if e["node"] == node and e["event"] == "start"]

    wait_until(lambda: started("sync_slow") and started("async_wait"), "both branches to start")
    (cancelled_async,) = started("async_wait")
    (sync_token,) = started("sync_slow")
    run.cancel()
    # cancel() returned once the running attempts had stopped: the thread had returned...
    ends = [(e["node"], e.get("token")) for e in entries(ledger) if e["event"] == "end"]
    assert ("sync_slow", sync_token) in ends
    assert all(node != "async_wait" for node, _ in ends)
    status = run.status()
    assert status["status"] == "cancelled"
    assert committed(checkpoint_uri, run.run_id) == ["first"]  # stopped work is not committed
    assert [e["type"] for e in run.events()][-1] == "workflow_cancelled"

    release.touch()  # ...and the cancelled coroutine is gone: it will not write now
    again = wf.resume(run.run_id, checkpoint=checkpoint_uri)
    assert again.result(timeout=120) == ["async_wait", "sync_slow"]
    assert executions(ledger).count("first") == 1  # committed before the cancel: not re-run
    async_ends = [
        e["token"] for e in entries(ledger) if e["node"] == "async_wait" and e["event"] == "end"
    ]
    assert len(async_ends) == 1 and async_ends[0] != cancelled_async
    assert async_ends == [t for t in started("async_wait") if t != cancelled_async]
    assert committed(checkpoint_uri, run.run_id)[0] == "first"
    assert sorted(committed(checkpoint_uri, run.run_id)) == sorted(
        ["first", "sync_slow", "async_wait", "join"]
    )
    assert again.status()["status"] == "succeeded"


# --- failed jump: a bad step is not committed; the fixed run resumes -----------------------


@ray_test
def test_a_jump_to_a_missing_node_is_not_committed_and_the_fixed_run_resumes(
    tmp_path: Path, checkpoint_uri: str
) -> None:
    ledger, target = tmp_path / "ledger", tmp_path / "target"
    target.write_text("nope")  # data the test controls: the graph stays the same

    def prepare(ctx: NodeContext) -> str:
        record(ledger, node="prepare")
        ctx.state["prepared"] = True
        return "prepared"

    def jumper(ctx: NodeContext) -> Any:
        record(ledger, node="jumper", input=ctx.input)
        if ctx.input == "again":
            return {"done": True, "prepared": ctx.state["prepared"]}
        return Next(target.read_text(), "again")

    wf = Workflow(unique("jump")).add_node("prepare", prepare).add_node("jumper", jumper)
    wf.add_edge("prepare", "jumper")
    fingerprint = wf.fingerprint()
    run = wf.start(None, checkpoint=checkpoint_uri)
    with pytest.raises(WorkflowError, match="'nope'") as info:
        run.result(timeout=120)
    assert info.value.node == "jumper"
    assert committed(checkpoint_uri, run.run_id) == ["prepare"]  # the bad step is not stored
    status = run.status()
    assert status["status"] == "failed" and status["nodes"]["jumper"]["state"] == "failed"

    target.write_text("jumper")  # the fix
    assert wf.fingerprint() == fingerprint
    again = wf.resume(run.run_id, checkpoint=checkpoint_uri)
    assert again.result(timeout=120) == {"done": True, "prepared": True}
    assert executions(ledger) == ["prepare", "jumper", "jumper", "jumper"]  # prepare ran once
    steps = CheckpointStore(checkpoint_uri).load_steps(run.run_id)
    assert [(s.node, s.visit) for s in steps] == [("prepare", 1), ("jumper", 1), ("jumper", 2)]
    assert steps[1].next == Next("jumper", "again")
    assert again.status()["status"] == "succeeded"


# --- the same values, of the same types, after a restart ---------------------------------------


class Report(BaseModel):
    title: str
    score: float


@dataclasses.dataclass
class Point:
    x: int
    tags: tuple[str, ...]


def types_workflow(folder: Path) -> Workflow:
    """``model`` returns a pydantic model and stores a dataclass; ``observe`` records what it
    receives, once ``folder/go`` exists."""
    go = folder / "go"

    def model(ctx: NodeContext) -> Report:
        record(folder / "model", node="model")
        ctx.state["point"] = Point(3, ("a", "b"))
        return Report(title="t", score=0.5)

    def observe(ctx: NodeContext) -> str:
        record(folder / "observe-starts", node="observe")
        deadline = time.monotonic() + 90
        while not go.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("never told to go")
            time.sleep(0.05)
        values = {
            "input": ctx.input,
            "output": ctx.outputs["model"],
            "point": ctx.state["point"],
        }
        record(
            folder / "observed",
            node="observe",
            **{f"{k}_type": type(v).__name__ for k, v in values.items()},
            **{k: to_jsonable_python(v) for k, v in values.items()},
        )
        return "observed"

    wf = Workflow(unique("types")).add_node("model", model).add_node("observe", observe)
    return wf.add_edge("model", "observe")


@ray_test
def test_downstream_sees_the_same_values_and_types_with_or_without_a_restart(
    tmp_path: Path, checkpoint_uri: str
) -> None:
    plain, crashed = tmp_path / "plain", tmp_path / "crashed"
    plain.mkdir()
    crashed.mkdir()

    (plain / "go").touch()
    fresh = types_workflow(plain).start(None, checkpoint=checkpoint_uri)
    assert fresh.result(timeout=120) == "observed"

    run = types_workflow(crashed).start(None, checkpoint=checkpoint_uri)
    wait_until(lambda: run.status()["nodes"].get("model", {}).get("state") == "done", "model")
    wait_until(lambda: (crashed / "observe-starts").exists(), "observe to start")
    assert committed(checkpoint_uri, run.run_id) == ["model"]
    ray.kill(run.actor, no_restart=False)  # SIGKILL the coordinator; Ray restarts it
    wait_until(lambda: len(entries(crashed / "observe-starts")) == 2, "observe to run again")
    (crashed / "go").touch()
    assert run.result(timeout=120) == "observed"
    assert executions(crashed / "model") == ["model"]  # committed before the crash: ran once

    (before,) = entries(plain / "observed")
    (after,) = entries(crashed / "observed")
    assert after == before
    assert before == {
        "node": "observe",
        "input_type": "dict",
        "output_type": "dict",
        "point_type": "dict",
        "input": {"title": "t", "score": 0.5},
        "output": {"title": "t", "score": 0.5},
        "point": {"x": 3, "tags": ["a", "b"]},
    }


# --- two engines on one run, on real storage --------------------------------------------------


@pytest.mark.parametrize("finishes_first", ["old", "new"])
async def test_two_engines_on_one_run_the_replaced_one_stops_and_the_checkpoint_stays_valid(
    checkpoint_uri: str, finishes_first: str
) -> None:
    """The storage-matters version of the engine test: the second engine opens the run while
    the first is in the middle of ``b``; whichever ``b`` finishes first, the first engine
    stops with OwnershipLost and the second finishes the run."""
    gates = [asyncio.Event(), asyncio.Event()]  # one per execution of b
    runs: list[str] = []

    async def step(ctx: NodeContext) -> str:
        runs.append(ctx.node)
        if ctx.node == "b":
            await gates[runs.count("b") - 1].wait()
        return ctx.node

    wf = WorkflowGraph(unique("owners")).add_node("a", step).add_node("b", step)
    wf.add_node("c", step).add_edge("a", "b").add_edge("b", "c")
    store = CheckpointStore(checkpoint_uri)
    run_id = unique("run")

    def engine() -> RunEngine:
        eng = RunEngine(wf, run_id, store, LocalExecutor(store))
        eng.open("input")
        return eng

    async def until(condition: Any, what: str) -> None:
        deadline = time.monotonic() + 60
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.01)

    old = engine()
    old_task = asyncio.create_task(old.run())
    await until(lambda: "b" in runs, "the first engine to run b")
    new = await asyncio.to_thread(engine)  # opened while the first engine is inside b
    new_task = asyncio.create_task(new.run())
    await until(lambda: runs.count("b") == 2, "the second engine to run b again")
    assert new.epoch > old.epoch

    if finishes_first == "old":
        gates[0].set()
        await asyncio.wait_for(old_task, 60)
        assert [s.node for s in store.load_steps(run_id)] == ["a"]  # its b was refused
        gates[1].set()
        await asyncio.wait_for(new_task, 60)
    else:
        gates[1].set()
        await asyncio.wait_for(new_task, 60)
        assert new.outcome == "succeeded"
        gates[0].set()
        await asyncio.wait_for(old_task, 60)

    assert isinstance(old.failure, OwnershipLost), old.failure
    assert new.outcome == "succeeded" and new.value == "c", new.failure
    assert runs == ["a", "b", "b", "c"]
    steps = store.load_steps(run_id)  # verifies every marker against its data
    assert [s.node for s in steps] == ["a", "b", "c"]
    assert [s.epoch for s in steps] == [old.epoch, new.epoch, new.epoch]
    assert store.read_manifest(run_id).status == "succeeded"

    later = await asyncio.to_thread(engine)  # a third engine, resuming later
    assert later.manifest.status == "succeeded" and later.manifest.result == "c"
    assert later.result() == "c" and runs == ["a", "b", "b", "c"]


@ray_test
def test_cancel_with_a_timeout_says_when_a_thread_keeps_the_run_stopping(tmp_path: Path) -> None:
    started, gate = tmp_path / "started", tmp_path / "gate"

    def stubborn(ctx: NodeContext) -> str:
        started.touch()
        # A sync function in a coordinator thread cannot be interrupted: it ends only when the
        # test opens the gate, after the cancel has said so.
        deadline = time.monotonic() + 120
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        return "done"

    run = Workflow(unique("stubborn")).add_node("n", stubborn).start(None, checkpoint=tmp_path)
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(WorkflowError, match="still stopping"):
        run.cancel(timeout=0.2)
    gate.touch()
    with pytest.raises(WorkflowError, match="cancelled"):
        run.result(timeout=60)
    assert run.status()["status"] == "cancelled"
