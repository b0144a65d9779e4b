"""Durable timers without Ray: ``ctx.sleep`` parks a branch until its deadline (kept in the
journal, so a new engine keeps it), the run says ``waiting`` with its timers while nothing
else runs, the code after the sleep runs once and never early; an interrupt's ``timeout``
answers with its default. Plain asyncio over ``memory://``."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from gecko_actors.checkpoint import CheckpointStore
from gecko_actors.checkpoint.journal import Journal
from gecko_actors.exceptions import UserError
from gecko_actors.workflow import NodeContext, WorkflowGraph
from gecko_actors.workflow.driven import DrivenRun
from gecko_actors.workflow.engine import RunEngine
from gecko_actors.workflow.execution import LocalExecutor
from gecko_actors.workflow.status import format_status, status_from_checkpoint


def memory_store() -> CheckpointStore:
    return CheckpointStore(f"memory://{uuid.uuid4().hex}")


def engine_of(graph: WorkflowGraph, store: CheckpointStore, input: Any = "go") -> RunEngine:
    events: list[dict[str, Any]] = []
    engine = RunEngine(
        graph,
        "r1",
        store,
        LocalExecutor(store),
        on_event=lambda k, **d: events.append({"type": k, **d}),
    )
    engine.events = events  # type: ignore[attr-defined]
    engine.open(input)
    return engine


def sleeper(log: list[tuple[str, float]], seconds: float) -> Any:
    def nap(ctx: NodeContext) -> str:
        ctx.step("before", lambda: log.append(("effect", time.time())))
        log.append(("ran", time.time()))
        ctx.sleep(seconds)
        log.append(("woke", time.time()))
        return "rested"

    return nap


async def test_a_sleep_parks_its_branch_the_run_waits_and_a_later_drive_goes_on() -> None:
    store, log = memory_store(), []
    graph = (
        WorkflowGraph("nap")
        .add_node("start", lambda ctx: ctx.input)
        .add_node("nap", sleeper(log, 0.4))
        .add_node("other", lambda ctx: "done")
        .add_node("join", lambda ctx: sorted(map(str, ctx.outputs.values())))
        .add_edge("start", "nap")
        .add_edge("start", "other")
        .add_edge("nap", "join")
        .add_edge("other", "join")
    )
    engine = engine_of(graph, store)
    await engine.run()
    assert engine.outcome == "waiting", engine.failure
    assert engine.nodes["nap"]["state"] == "sleeping" and engine.nodes["other"]["state"] == "done"
    assert engine.waiting.status() == {}  # nothing to answer
    until = engine.next_wake()
    assert until is not None and engine.waiting.timers() == {"nap": until}
    assert [e["type"] for e in engine.events].count("node_sleeping") == 1

    stored = status_from_checkpoint(store, "r1")
    assert stored["status"] == "waiting" and stored["timers"] == {"nap": until}
    assert stored["waiting"] == {} and stored["nodes"]["nap"]["state"] == "sleeping"
    assert "timer: nap runs again at" in format_status(stored)
    with pytest.raises(UserError, match="not waiting for an answer"):
        await engine.respond("nap", "wake up")

    await engine.run()  # too early: it parks again, with the same deadline
    assert engine.outcome == "waiting" and engine.next_wake() == until
    await asyncio.sleep(max(0.0, until - time.time()))
    await engine.run()
    assert engine.outcome == "succeeded", engine.failure
    assert engine.value == ["done", "go", "rested"]
    woke = [at for kind, at in log if kind == "woke"]
    assert len(woke) == 1 and woke[0] >= until  # once, and never early
    assert [kind for kind, _ in log].count("effect") == 1  # the step before it ran once


async def test_a_new_engine_keeps_the_first_deadline_and_fires_late_once(tmp_path) -> None:
    uri, log = f"file://{tmp_path}", []
    graph = WorkflowGraph("nap").add_node("nap", sleeper(log, 0.5))
    first = engine_of(graph, CheckpointStore(uri))
    await first.run()
    until = first.next_wake()
    assert until is not None
    await asyncio.sleep(0.05)

    def engine() -> RunEngine:  # what a restarted host, or a resume on a new cluster, makes
        made = RunEngine(graph, "r1", CheckpointStore(uri), LocalExecutor(CheckpointStore(uri)))
        made.open(None, create=False)
        return made

    second = engine()
    await second.run()
    assert second.outcome == "waiting" and second.next_wake() == until  # not now + 0.5 again
    assert CheckpointStore(uri).read_manifest("r1").waiting["nap"]["until"] == until
    await asyncio.sleep(max(0.0, until - time.time()) + 0.5)  # nothing was up when it was due
    third = engine()
    await third.run()
    assert third.outcome == "succeeded" and third.value == "rested"
    woke = [at for kind, at in log if kind == "woke"]
    assert len(woke) == 1 and woke[0] >= until


async def test_a_drive_under_way_wakes_a_sleeper_by_itself() -> None:
    store, log = memory_store(), []

    async def slow(ctx: NodeContext) -> str:
        await asyncio.sleep(0.6)  # longer than the sleep: the drive never ends meanwhile
        return "slow"

    graph = (
        WorkflowGraph("nap")
        .add_node("start", lambda ctx: None)
        .add_node("nap", sleeper(log, 0.2))
        .add_node("slow", slow)
        .add_edge("start", "nap")
        .add_edge("start", "slow")
    )
    engine = engine_of(graph, store)
    await engine.run()
    assert engine.outcome == "succeeded", engine.failure
    assert [kind for kind, _ in log].count("woke") == 1


async def test_async_nodes_sleep_until_an_instant() -> None:
    store, seen = memory_store(), []
    at = datetime.now(timezone.utc) + timedelta(seconds=0.3)

    async def wait(ctx: NodeContext) -> str:
        await ctx.asleep_until(at)
        seen.append(time.time())
        return "later"

    run = DrivenRun("r1")
    run.open(
        lambda sink: RunEngine(
            WorkflowGraph("at").add_node("w", wait),
            "r1",
            store,
            LocalExecutor(store),
            on_event=sink,
        ),
        None,
    )
    run.on_wake = run.reopen  # what a host does: drive it again when its timer is due
    await run.drive()
    assert run.engine.outcome == "waiting"
    assert await asyncio.wait_for(run.result(), 30) == "later"
    assert len(seen) == 1 and seen[0] >= at.timestamp()


async def test_an_interrupt_with_a_timeout_takes_its_default_or_the_answer_that_came_first() -> (
    None
):
    def ask(ctx: NodeContext) -> str:
        return f"answer: {ctx.interrupt({'q': 'ok?'}, timeout=0.3, default='no reply')}"

    graph = WorkflowGraph("ask").add_node("ask", ask)
    store = memory_store()
    engine = engine_of(graph, store)
    await engine.run()
    assert engine.outcome == "waiting" and engine.waiting.status() == {"ask": {"q": "ok?"}}
    due = engine.next_wake()
    assert due is not None and status_from_checkpoint(store, "r1")["timers"] == {"ask": due}
    await asyncio.sleep(max(0.0, due - time.time()))
    await engine.run()
    assert engine.outcome == "succeeded" and engine.value == "answer: no reply"
    entries = Journal(store, "r1", 0).entries()
    answer = next(e["value"] for e in entries if e["key"].endswith("/interrupt/1"))
    assert answer["by"] == "timeout"

    answered = memory_store()
    engine = engine_of(graph, answered)
    await engine.run()
    assert await engine.respond("ask", "yes", by="ana") is False
    await asyncio.sleep(0.4)  # past the timeout: the answer came first and holds
    await engine.run()
    assert engine.value == "answer: yes"


async def test_a_sleep_in_a_nested_workflow_finishes_inside_its_parent() -> None:
    log: list[tuple[str, float]] = []
    child = WorkflowGraph("child").add_node("nap", sleeper(log, 0.2))
    graph = WorkflowGraph("parent").add_node("sub", child).add_node("after", lambda ctx: "end")
    graph.add_edge("sub", "after")
    engine = engine_of(graph, memory_store())
    await engine.run()
    assert engine.outcome == "succeeded", engine.failure
    assert [kind for kind, _ in log].count("woke") == 1


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda ctx: ctx.sleep(-1), "seconds must be >= 0"),
        (lambda ctx: ctx.sleep("1h"), "must be a number of seconds"),
        (lambda ctx: ctx.sleep_until(datetime(2030, 1, 1)), "timezone-aware"),
        (lambda ctx: ctx.interrupt("q", timeout=float("nan")), "timeout must be >= 0"),
    ],
)
async def test_bad_timers_fail_the_node_with_the_reason(call: Any, match: str) -> None:
    engine = engine_of(WorkflowGraph("bad").add_node("n", call), memory_store())
    await engine.run()
    assert engine.outcome == "failed"
    assert match in str(engine.failure)


def test_outside_a_run_a_sleep_is_refused() -> None:
    with pytest.raises(UserError, match="outside a workflow run"):
        NodeContext(None).sleep(1)
