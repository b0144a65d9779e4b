"""The run engine without Ray: state merging, reducers, cancellation, what is committed, values
across restarts, and two engines on one run. Plain asyncio over a ``memory://`` store."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import operator
import threading
import time
import uuid
from typing import Any

import pytest
from pydantic import BaseModel

from gecko_actors.checkpoint import CheckpointStore
from gecko_actors.checkpoint.store import CREATOR_EPOCH
from gecko_actors.exceptions import OwnershipLost, UserError
from gecko_actors.workflow import Next, NodeContext, RetryPolicy, WorkflowGraph
from gecko_actors.workflow.engine import RunEngine
from gecko_actors.workflow.execution import LocalExecutor


def memory_store() -> CheckpointStore:
    return CheckpointStore(f"memory://{uuid.uuid4().hex}")


def engine(graph: WorkflowGraph, store: CheckpointStore, run_id: str = "r1", input: Any = None):
    eng = RunEngine(graph, run_id, store, LocalExecutor(store))
    eng.open(input)
    return eng


async def run(
    graph: WorkflowGraph,
    input: Any = None,
    store: CheckpointStore | None = None,
    run_id: str = "r1",
) -> RunEngine:
    eng = engine(graph, store or memory_store(), run_id, input)
    await eng.run()
    return eng


def value(v: Any):
    """A node returning ``v``."""
    return lambda ctx: v


# --- state: per-node diffs against the node's own snapshot ------------------------------------


async def test_a_parallel_branch_does_not_revert_what_another_wrote() -> None:
    async def fast(ctx: NodeContext) -> str:
        await asyncio.sleep(0.01)
        ctx.state["x"] = 1
        return "fast"

    async def slow(ctx: NodeContext) -> str:
        await asyncio.sleep(0.1)  # reads nothing, writes nothing: its snapshot said x == 0
        return f"slow saw {ctx.state['x']}"

    def start(ctx: NodeContext) -> None:
        ctx.state["x"] = 0

    wf = (
        WorkflowGraph("lost-update")
        .add_node("start", start)
        .add_node("fast", fast)
        .add_node("slow", slow)
        .add_node("join", lambda ctx: (ctx.state["x"], ctx.input))
        .add_edge("start", "fast")
        .add_edge("start", "slow")
        .add_edge("fast", "join")
        .add_edge("slow", "join")
    )
    eng = await run(wf)
    assert eng.outcome == "succeeded", eng.failure
    assert eng.value == [1, {"fast": "fast", "slow": "slow saw 0"}]  # a tuple is stored as a list
    assert eng.state == {"x": 1}
    steps = eng.store.load_steps("r1")
    assert [w.key for s in steps if s.node == "slow" for w in s.writes] == []


async def test_deletions_and_in_place_changes_are_writes_and_nan_is_not() -> None:
    def start(ctx: NodeContext) -> None:
        ctx.state.update(notes=["a"], gone=1, nan=math.nan, same=2)

    def change(ctx: NodeContext) -> None:
        ctx.state["notes"].append("b")  # in place
        del ctx.state["gone"]
        _ = ctx.state["nan"], ctx.state["same"]  # read only: NaN != NaN, yet no write

    wf = WorkflowGraph("diff").add_node("start", start).add_node("change", change)
    wf.add_edge("start", "change")
    eng = await run(wf)
    assert eng.outcome == "succeeded", eng.failure
    change_step = next(s for s in eng.store.load_steps("r1") if s.node == "change")
    assert [(w.key, w.deleted) for w in change_step.writes] == [("gone", True), ("notes", False)]
    state = eng.state
    assert state["notes"] == ["a", "b"] and "gone" not in state and state["same"] == 2


async def test_parallel_writes_to_one_key_without_a_reducer_fail_naming_both() -> None:
    def writer(ctx: NodeContext) -> None:
        ctx.state["k"] = ctx.node

    wf = (
        WorkflowGraph("conflict")
        .add_node("s", value(None))
        .add_node("a", writer)
        .add_node("b", writer)
        .add_edge("s", "a")
        .add_edge("s", "b")
    )
    eng = await run(wf)
    assert eng.outcome == "failed"
    message = str(eng.failure)
    assert "'a'" in message and "'b'" in message and "'k'" in message and "reducer" in message
    # Nothing of the losing step was committed.
    assert len(eng.store.load_steps("r1")) == 2


async def test_a_reducer_merges_parallel_writes_in_commit_order_and_replays_it() -> None:
    async def note(ctx: NodeContext) -> None:
        await asyncio.sleep({"a": 0.05, "b": 0.0, "c": 0.02}[ctx.node])
        ctx.state["notes"] = [ctx.node]

    wf = WorkflowGraph("reduce", reducers={"notes": operator.add}).add_node("s", value(None))
    for name in "abc":
        wf.add_node(name, note).add_edge("s", name)
    wf.add_node("join", lambda ctx: ctx.state["notes"])
    for name in "abc":
        wf.add_edge(name, "join")
    store = memory_store()
    eng = await run(wf, store=store)
    assert eng.outcome == "succeeded", eng.failure
    assert eng.value == ["b", "c", "a"]  # commit order (a non-commutative reducer)
    replayed = engine(wf, store)
    assert replayed.state == eng.state == {"notes": ["b", "c", "a"]}


async def test_map_items_updates_merge_by_the_same_rule() -> None:
    def item(ctx: NodeContext) -> int:
        ctx.state["seen"] = [ctx.input]
        return ctx.input * 2

    merged = WorkflowGraph("map", reducers={"seen": operator.add})
    merged.add_node("m", item, fan_out=True)
    eng = await run(merged, [1, 2, 3])
    assert eng.value == [2, 4, 6] and eng.state == {"seen": [1, 2, 3]}

    clash = WorkflowGraph("map-clash").add_node("m", item, fan_out=True)
    eng = await run(clash, [1, 2])
    assert eng.outcome == "failed" and "'seen'" in str(eng.failure)


RETRY_NOW = RetryPolicy(attempts=2, backoff=0)

# --- cancellation --------------------------------------------------------------------------


async def test_a_timed_out_async_attempt_is_cancelled_before_the_retry() -> None:
    ledger: list[tuple[int, str, float]] = []

    async def flaky(ctx: NodeContext) -> str:
        ledger.append((ctx.attempt, "start", time.monotonic()))
        if ctx.attempt == 1:
            await asyncio.sleep(5)
            ledger.append((ctx.attempt, "side effect", time.monotonic()))
        return f"attempt {ctx.attempt}"

    wf = WorkflowGraph("timeout").add_node("n", flaky, timeout=0.2, retry=RETRY_NOW)
    eng = await run(wf)
    assert eng.value == "attempt 2"
    await asyncio.sleep(0.1)
    assert [(a, what) for a, what, _ in ledger] == [(1, "start"), (2, "start")]


async def test_a_timed_out_sync_attempt_in_a_thread_is_waited_for_before_the_retry() -> None:
    ledger: list[tuple[int, str, float]] = []
    lock = threading.Lock()

    def slow(ctx: NodeContext) -> str:
        with lock:
            ledger.append((ctx.attempt, "start", time.monotonic()))
        if ctx.attempt == 1:
            time.sleep(0.4)
        with lock:
            ledger.append((ctx.attempt, "end", time.monotonic()))
        return f"attempt {ctx.attempt}"

    wf = WorkflowGraph("thread-timeout").add_node("n", slow, timeout=0.1, retry=RETRY_NOW)
    eng = await run(wf)
    assert eng.value == "attempt 2"
    events = [(a, what) for a, what, _ in ledger]
    assert events == [(1, "start"), (1, "end"), (2, "start"), (2, "end")]


async def test_cancel_stops_running_attempts_and_keeps_committed_steps() -> None:
    started = asyncio.Event()
    effects: list[str] = []

    async def long(ctx: NodeContext) -> None:
        started.set()
        await asyncio.sleep(5)
        effects.append("never")

    wf = WorkflowGraph("cancel").add_node("a", value(1)).add_node("b", long).add_edge("a", "b")
    eng = engine(wf, memory_store())
    task = asyncio.create_task(eng.run())
    await started.wait()
    eng.cancel()
    await task
    assert eng.outcome == "cancelled" and effects == []
    assert [s.node for s in eng.store.load_steps("r1")] == ["a"]
    assert eng.store.read_manifest("r1").status == "cancelled"
    started.clear()
    effects.clear()
    resumed = asyncio.create_task(eng.run())  # the same engine drives it again
    await started.wait()
    eng.cancel()
    await resumed
    assert eng.outcome == "cancelled" and [s.node for s in eng.store.load_steps("r1")] == ["a"]


# --- only good steps are committed; a fixed run resumes ----------------------------------------

TARGET = {"name": "nope"}


def jumper(ctx: NodeContext) -> Any:
    return "done" if ctx.input == "again" else Next(TARGET["name"], "again")


async def test_a_bad_jump_is_not_committed_and_the_run_resumes_once_fixed() -> None:
    wf = WorkflowGraph("jump").add_node("a", value("a")).add_node("j", jumper).add_edge("a", "j")
    store = memory_store()
    eng = await run(wf, store=store)
    assert eng.outcome == "failed" and "'nope'" in str(eng.failure)
    assert [s.node for s in store.load_steps("r1")] == ["a"]
    TARGET["name"] = "j"
    try:
        again = engine(wf, store)
        await again.run()
    finally:
        TARGET["name"] = "nope"
    assert again.outcome == "succeeded" and again.value == "done"
    assert [s.node for s in store.load_steps("r1")] == ["a", "j", "j"]


async def test_exceeding_max_steps_is_not_committed() -> None:
    wf = WorkflowGraph("loop", max_steps=3).add_node("n", lambda ctx: Next("n", None))
    eng = await run(wf)
    assert eng.outcome == "failed" and "max_steps=3" in str(eng.failure)
    assert len(eng.store.load_steps("r1")) == 3


async def test_an_output_that_cannot_be_stored_fails_the_node_clearly() -> None:
    wf = WorkflowGraph("bad-output").add_node("n", lambda ctx: object())
    eng = await run(wf)
    assert eng.outcome == "failed"
    assert "'n'" in str(eng.failure) and "object" in str(eng.failure)
    assert eng.store.load_steps("r1") == []


# --- the same values after a restart --------------------------------------------------------------


class Report(BaseModel):
    title: str
    score: float


@dataclasses.dataclass
class Point:
    x: int


async def test_downstream_sees_the_same_values_with_or_without_a_restart() -> None:
    seen: list[Any] = []
    crash = {"once": False}

    def model(ctx: NodeContext) -> Report:
        ctx.state["point"] = Point(3)
        return Report(title="t", score=0.5)

    def observe(ctx: NodeContext) -> str:
        if crash["once"]:
            crash["once"] = False
            raise RuntimeError("the process died here")
        seen.append((ctx.input, ctx.outputs["model"], ctx.state["point"]))
        return "ok"

    wf = WorkflowGraph("types").add_node("model", model).add_node("observe", observe)
    wf.add_edge("model", "observe")
    await run(wf)
    fresh = seen.pop()

    store = memory_store()  # the same run, failing after "model" committed, then resumed
    crash["once"] = True
    assert (await run(wf, store=store)).outcome == "failed"
    assert (await run(wf, store=store)).outcome == "succeeded"
    assert seen.pop() == fresh == ({"title": "t", "score": 0.5},) * 2 + ({"x": 3},)
    assert [s.node for s in store.load_steps("r1")] == ["model", "observe"]


# --- two engines on one run --------------------------------------------------------------------


def gated_chain(name: str) -> tuple[WorkflowGraph, asyncio.Event, list[str]]:
    """a → b → c, where b waits for the returned gate; every execution is listed in order."""
    gate = asyncio.Event()
    runs: list[str] = []

    async def step(ctx: NodeContext) -> str:
        runs.append(ctx.node)
        if ctx.node == "b":
            await gate.wait()
        return ctx.node

    wf = WorkflowGraph(name).add_node("a", step).add_node("b", step).add_node("c", step)
    return wf.add_edge("a", "b").add_edge("b", "c"), gate, runs


async def test_an_engine_whose_run_was_taken_over_stops_without_corrupting_it() -> None:
    wf, gate, runs = gated_chain("owners")
    store = memory_store()
    old = engine(wf, store)
    old_task = asyncio.create_task(old.run())
    while "b" not in runs:
        await asyncio.sleep(0.01)
    new = engine(wf, store)  # a second engine takes the run over (a newer owner epoch)
    new_task = asyncio.create_task(new.run())
    while runs.count("b") < 2:  # the new owner runs the visit in flight again
        await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(old_task, new_task)
    assert isinstance(old.failure, OwnershipLost), old.failure
    assert new.outcome == "succeeded" and new.value == "c"
    steps = store.load_steps("r1")
    assert [s.node for s in steps] == ["a", "b", "c"]
    assert [s.epoch for s in steps] == [old.epoch, new.epoch, new.epoch]
    assert store.read_manifest("r1").status == "succeeded"


async def test_a_step_the_replaced_engine_committed_late_is_taken_as_committed() -> None:
    wf, gate, runs = gated_chain("late")
    store = memory_store()
    engine(wf, store)  # the run's creator, being replaced: its epoch is 1 without a claim
    old_epoch = CREATOR_EPOCH
    new = engine(wf, store)  # opens the existing run: it claims epoch 2 when it runs
    task = asyncio.create_task(new.run())
    while "b" not in runs:
        await asyncio.sleep(0.01)
    # The old owner commits b in the instant before it would have seen the new claim: the
    # store's owner check is what it slipped past.
    late = CheckpointStore(store.uri)
    late._check_owner = lambda *args, **kwargs: None  # type: ignore[method-assign]
    a_step = store.load_steps("r1")[0]
    late.commit_step(
        "r1", dataclasses.replace(a_step, seq=1, node="b", output="late b", epoch=old_epoch)
    )
    gate.set()
    await task
    assert new.outcome == "succeeded", new.failure
    steps = store.load_steps("r1")
    assert [(s.node, s.output) for s in steps] == [("a", "a"), ("b", "late b"), ("c", "c")]
    assert (old_epoch, steps[2].epoch) == (1, new.epoch) and new.epoch == 2


def test_bad_reducers_are_user_errors() -> None:
    with pytest.raises(UserError, match="reducer"):
        WorkflowGraph("r", reducers={"k": "not callable"})  # type: ignore[dict-item]


# --- found in review: each of these failed before its fix ------------------------------------


async def test_an_update_its_reducer_cannot_merge_fails_the_node_and_is_not_committed() -> None:
    def a(ctx: NodeContext) -> None:
        ctx.state["notes"] = ["a"]

    def b(ctx: NodeContext) -> None:
        ctx.state["notes"] = "b"  # a str: list + str raises

    wf = WorkflowGraph("bad-merge", reducers={"notes": operator.add})
    wf.add_node("a", a).add_node("b", b).add_node("c", value(1)).add_edge("a", "b")
    wf.add_edge("b", "c")
    eng = await run(wf)
    assert eng.outcome == "failed" and eng.failure.node == "b"
    assert "'notes'" in str(eng.failure) and "add" in str(eng.failure)
    assert [s.node for s in eng.store.load_steps("r1")] == ["a"]


async def test_a_visit_made_void_by_a_jump_is_stopped_and_its_failure_ignored() -> None:
    effects: list[tuple[int, str]] = []

    async def x(ctx: NodeContext) -> str:
        effects.append((ctx.visit, "start"))
        if ctx.visit == 1:
            await asyncio.sleep(5)
            raise RuntimeError("the void visit failed late")
        return "x2"

    def j(ctx: NodeContext) -> Any:
        return Next("x", "again") if ctx.visit == 1 else "j2"

    wf = WorkflowGraph("void").add_node("s", value(None)).add_node("x", x).add_node("j", j)
    wf.add_edge("s", "x").add_edge("s", "j")
    eng = await run(wf)
    assert eng.outcome == "succeeded", eng.failure
    assert effects == [(1, "start"), (2, "start")]  # visit 1 never got past its sleep
    assert [(s.node, s.visit) for s in eng.store.load_steps("r1")] == [("s", 1), ("j", 1), ("x", 2)]


async def test_conditions_see_the_state_the_node_just_wrote() -> None:
    def decide(ctx: NodeContext) -> None:
        ctx.state["ok"] = True

    wf = (
        WorkflowGraph("cond-state")
        .add_node("n", decide)
        .add_node("yes", value("yes"))
        .add_node("no", value("no"))
        .add_edge("n", "yes", when=lambda c: c.state.get("ok"))
        .add_edge("n", "no", when=lambda c: not c.state.get("ok"))
    )
    assert (await run(wf)).value == "yes"


async def test_a_condition_that_raises_fails_its_node_naming_the_edge() -> None:
    def broken(ctx: NodeContext) -> bool:
        return ctx.input["missing"]

    wf = WorkflowGraph("cond-error").add_node("n", value({})).add_node("m", value(1))
    wf.add_edge("n", "m", when=broken)
    eng = await run(wf)
    assert eng.outcome == "failed" and eng.failure.node == "n"
    assert "broken" in str(eng.failure) and "'n' → 'm'" in str(eng.failure)
    assert eng.store.load_steps("r1") == []


async def test_cancelling_twice_still_waits_for_the_running_thread() -> None:
    started, ended = threading.Event(), threading.Event()

    def slow(ctx: NodeContext) -> None:
        started.set()
        time.sleep(0.5)
        ended.set()

    eng = engine(WorkflowGraph("cancel-twice").add_node("n", slow), memory_store())
    task = asyncio.create_task(eng.run())
    await asyncio.to_thread(started.wait)
    eng.cancel()
    await asyncio.sleep(0.05)
    eng.cancel()
    task.cancel()  # and a cancel of the task that runs it
    await asyncio.gather(task, return_exceptions=True)
    assert ended.is_set()  # run() returned only once the thread had


async def test_a_cancel_after_the_run_ended_does_not_cancel_its_resume() -> None:
    flaky = {"fail": True}

    def node(ctx: NodeContext) -> str:
        if flaky["fail"]:
            raise RuntimeError("first time")
        return "ok"

    eng = engine(WorkflowGraph("late-cancel").add_node("n", node), memory_store())
    await eng.run()
    assert eng.outcome == "failed"
    eng.cancel()  # nothing to cancel
    flaky["fail"] = False
    await eng.run()
    assert eng.outcome == "succeeded" and eng.value == "ok"


async def test_the_input_has_the_same_type_in_a_fresh_and_a_resumed_run() -> None:
    wf = WorkflowGraph("input-type").add_node("n", lambda ctx: type(ctx.input).__name__)
    assert (await run(wf, Report(title="t", score=1.0))).value == "dict"


async def test_rebinding_state_replaces_it_and_key_order_is_no_write() -> None:
    def start(ctx: NodeContext) -> None:
        ctx.state["d"] = {"a": 1, "b": 2}
        ctx.state["gone"] = 1

    def reorder(ctx: NodeContext) -> None:
        ctx.state["d"] = {"b": 2, "a": 1}  # assigned: a write, though equal

    def rebind(ctx: NodeContext) -> None:
        ctx.state = {"d": {"b": 2, "a": 1}, "new": 1}

    wf = WorkflowGraph("rebind").add_node("start", start).add_node("reorder", reorder)
    wf.add_node("rebind", rebind).add_edge("start", "reorder").add_edge("reorder", "rebind")
    eng = await run(wf)
    assert eng.outcome == "succeeded", eng.failure
    assert eng.state == {"d": {"a": 1, "b": 2}, "new": 1}
