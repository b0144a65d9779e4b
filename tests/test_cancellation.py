"""Cancellation that is real and confirmed, and per-call idempotency keys.

Cancelling the coroutine that awaits an agent (or a team, or a tool call) stops the work where
it runs, and the CancelledError comes out only once it has stopped. Every assertion reads
recorded facts (marker files the tools write, events, flags set by threads), never a
wall-clock margin; the one fixed wait (4 s after a cancellation, past the tool's 3 s sleep)
only gives a wrongly surviving tool the time to show itself.

This module deliberately avoids ``from __future__ import annotations``: the tools built below
are shipped to Ray workers by value, and their ``ToolContext`` annotation must be the class
itself, not a string that the worker would have to resolve.
"""

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

from gecko_actors import (
    Agent,
    InMemorySessionStore,
    LocalAgent,
    ScriptedModel,
    Team,
    ToolContext,
    UserError,
    tool,
)
from gecko_actors.core.events import EventBus
from gecko_actors.core.toolbox import ToolBox, gather_all

NAMESPACE = "gecko"
TOOL_SLEEP = 3.0  # seconds the slow tools sleep before their side effect
PAST_TOOL_SLEEP = 4.0  # seconds waited after a cancellation, to let a survivor show itself


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def until(predicate: Callable[[], Any], *, what: str, timeout: float = 60.0) -> None:
    """Poll ``predicate`` (the deadline only fails the test; it never decides an outcome)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


# --- what runs inside the actors (built here, shipped by value) ----------------------------


def make_slow_writer(folder: str):
    """An async tool: write ``<label>-<agent>.started`` (the call's key and attempt), sleep,
    then append to ``<label>-<agent>.out``; a cancellation writes ``...cancelled``."""

    async def slow_write(label: str, ctx: ToolContext) -> str:
        """Record the start, sleep, then append a line to the label's output file."""
        import asyncio
        import pathlib

        stem = pathlib.Path(folder) / f"{label}-{ctx.agent}"
        stem.with_suffix(".started").write_text(f"{ctx.idempotency_key}|{ctx.attempt}")
        try:
            await asyncio.sleep(TOOL_SLEEP)
        except asyncio.CancelledError:
            stem.with_suffix(".cancelled").touch()
            raise
        with open(stem.with_suffix(".out"), "a") as fh:
            fh.write("written\n")
        return "written"

    return tool(slow_write)


def make_slow_sync(folder: str):
    """A sync tool: write ``<label>.started``, block 2 s, then write ``<label>.finished``."""

    def slow_sync(label: str) -> str:
        """Record the start, block, then record the end."""
        import pathlib
        import time

        base = pathlib.Path(folder)
        (base / f"{label}.started").touch()
        time.sleep(2.0)
        (base / f"{label}.finished").touch()
        return "finished"

    return tool(slow_sync)


def tool_caller() -> ScriptedModel:
    """The input is ``"<tool> <label>"``: call that tool with that label, then answer."""

    def reply(messages, tools):
        last = messages[-1]
        if last.role == "tool":
            return f"tool said: {last.text}"
        name, label = last.text.split()
        return ScriptedModel.call(name, label=label)

    return ScriptedModel(reply)


def kill_named(*actor_names: str) -> None:
    for actor_name in actor_names:
        try:
            ray.kill(ray.get_actor(actor_name, namespace=NAMESPACE), no_restart=True)
        except ValueError:
            continue


# --- Ray: agent, toolbox actor, team -------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cancel")


@pytest.fixture(scope="module")
def tool_agent(ray_session, folder) -> Iterator[Agent]:
    """One agent whose tools live in their own toolbox actor (the default placement)."""
    name = unique("canceller")
    agent = Agent.spawn(
        name,
        model=tool_caller(),
        tools=[make_slow_writer(str(folder)), make_slow_sync(str(folder))],
        session_store=InMemorySessionStore(),
    )
    yield agent
    kill_named(f"agent/{name}", f"toolbox/{name}/0")


async def test_cancelling_arun_stops_the_async_tool_in_its_toolbox(tool_agent, folder) -> None:
    label = unique("solo")
    stem = folder / f"{label}-{tool_agent.name}"
    context = ToolContext(idempotency_key="run-7/node/1", attempt=2)
    task = asyncio.ensure_future(tool_agent.arun(f"slow_write {label}", tool_context=context))
    await until(stem.with_suffix(".started").exists, what="the tool to start")

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Confirmed: the cancellation came back only after the tool had been cancelled.
    assert stem.with_suffix(".cancelled").exists()
    # The tool saw its own key (the run's, with the call number) and the attempt unchanged.
    assert stem.with_suffix(".started").read_text() == "run-7/node/1/call-1|2"
    await asyncio.sleep(PAST_TOOL_SLEEP)
    assert not stem.with_suffix(".out").exists()


async def test_cancelling_arun_waits_for_a_sync_tool_thread(tool_agent, folder) -> None:
    label = unique("sync")
    task = asyncio.ensure_future(tool_agent.arun(f"slow_sync {label}"))
    await until((folder / f"{label}.started").exists, what="the tool to start")

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # A thread cannot be interrupted: "stopped" means the cancellation waited for it.
    assert (folder / f"{label}.finished").exists()


def test_a_blocking_run_past_its_timeout_is_cancelled(tool_agent, folder) -> None:
    label = unique("timeout")
    stem = folder / f"{label}-{tool_agent.name}"
    with pytest.raises(ray.exceptions.GetTimeoutError):
        tool_agent.run(f"slow_write {label}", timeout=0.5)
    # Whether the timeout came before or after the tool started, the run has stopped.
    if stem.with_suffix(".started").exists():
        assert stem.with_suffix(".cancelled").exists()
    time.sleep(PAST_TOOL_SLEEP)
    assert not stem.with_suffix(".out").exists()


async def test_cancelling_team_arun_stops_every_member(ray_session, folder) -> None:
    names = [unique("member") for _ in range(2)]
    members = [
        Agent.spawn(
            n,
            model=tool_caller(),
            tools=[make_slow_writer(str(folder))],
            tools_in_process=True,
            session_store=InMemorySessionStore(),
        )
        for n in names
    ]
    try:
        label = unique("team")
        stems = [folder / f"{label}-{n}" for n in names]
        task = asyncio.ensure_future(Team(members).arun(f"slow_write {label}"))
        for stem in stems:
            await until(stem.with_suffix(".started").exists, what=f"{stem.name} to start")

        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert all(stem.with_suffix(".cancelled").exists() for stem in stems)
        await asyncio.sleep(PAST_TOOL_SLEEP)
        assert not any(stem.with_suffix(".out").exists() for stem in stems)
    finally:
        for n in names:
            kill_named(f"agent/{n}")


# --- core, no Ray --------------------------------------------------------------------------


async def test_engine_propagates_cancellation_and_cancels_async_tools() -> None:
    started = asyncio.Event()
    facts: list[str] = []

    @tool
    async def wait_long(seconds: float) -> str:
        """Wait."""
        started.set()
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            facts.append("tool cancelled")
            raise
        facts.append("tool finished")
        return "done"

    bus = EventBus()
    bus.subscribe("run_cancelled", lambda event: facts.append(event.type))
    model = ScriptedModel([ScriptedModel.call("wait_long", seconds=30), "never"])
    agent = LocalAgent(model, [wait_long], event_bus=bus)
    task = asyncio.ensure_future(agent.arun("go"))
    await started.wait()

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert facts == ["tool cancelled", "run_cancelled"]
    assert model.remaining == 1  # the model was not called again


async def test_cancelling_a_sync_tool_waits_for_its_thread() -> None:
    release = threading.Event()
    started = threading.Event()
    finished = threading.Event()

    @tool
    def blocked() -> str:
        """Block until released."""
        started.set()
        release.wait(30)
        finished.set()
        return "released"

    task = asyncio.ensure_future(ToolBox([blocked]).execute("blocked", {}))
    await until(started.is_set, what="the thread to start")
    task.cancel()
    for _ in range(20):  # let the cancellation run as far as it can
        await asyncio.sleep(0)
    assert not task.done()  # it cannot be done: the thread is still blocked
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished.is_set()


async def test_a_cancelled_sync_tool_is_waited_for_only_until_its_timeout() -> None:
    release = threading.Event()
    started = threading.Event()

    @tool(timeout=0.5)
    def stuck() -> str:
        """Block until released."""
        started.set()
        release.wait(30)
        return "released"

    task = asyncio.ensure_future(ToolBox([stuck]).execute("stuck", {}))
    await until(started.is_set, what="the thread to start")
    task.cancel()
    try:
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not release.is_set()  # abandoned at its deadline, as a timed-out call is
    finally:
        release.set()


async def test_gather_all_waits_for_every_sibling_when_cancelled() -> None:
    facts: list[str] = []

    async def quick_to_cancel() -> None:
        await asyncio.sleep(30)

    both_running = asyncio.Event()

    async def slow_to_cancel() -> None:
        both_running.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(0.2)  # cleanup that outlasts its sibling's cancellation
            facts.append("slow sibling stopped")
            raise

    task = asyncio.ensure_future(gather_all([quick_to_cancel(), slow_to_cancel()]))
    await both_running.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert facts == ["slow sibling stopped"]


def two_then_one_model() -> ScriptedModel:
    """Two tool calls in the first turn, one in the second, then an answer: the same on
    every run (a retry replays the same calls)."""

    def reply(messages, tools):
        since_user = len(messages) - max(i for i, m in enumerate(messages) if m.role == "user")
        turn = sum(1 for m in messages[-since_user:] if m.role == "assistant")
        if turn == 0:
            return [
                ScriptedModel.call("record", note="a"),
                ScriptedModel.call("record", note="b"),
            ]
        if turn == 1:
            return ScriptedModel.call("record", note="c")
        return "done"

    return ScriptedModel(reply)


async def test_execute_many_takes_one_context_per_call() -> None:
    @tool
    def key(ctx: ToolContext) -> str:
        """Return the call's key."""
        return str(ctx.idempotency_key)

    box = ToolBox([key])
    calls = [ScriptedModel.call("key"), ScriptedModel.call("key")]
    contexts = [ToolContext(idempotency_key="k/call-1"), ToolContext(idempotency_key="k/call-2")]
    results = await box.execute_many(calls, contexts)
    assert [r.content for r in results] == ["k/call-1", "k/call-2"]
    with pytest.raises(UserError, match="2 tool calls"):
        await box.execute_many(calls, contexts[:1])


async def test_each_tool_call_gets_its_own_stable_idempotency_key() -> None:
    seen: list[tuple[str, str | None, int]] = []

    @tool
    def record(note: str, ctx: ToolContext) -> str:
        """Record the call's key."""
        seen.append((note, ctx.idempotency_key, ctx.attempt))
        return "ok"

    context = ToolContext(idempotency_key="run-1/step/2", attempt=3)
    expected = [
        ("a", "run-1/step/2/call-1", 3),
        ("b", "run-1/step/2/call-2", 3),
        ("c", "run-1/step/2/call-3", 3),
    ]
    for _ in range(2):  # the second run is a retry of the same visit
        seen.clear()
        agent = LocalAgent(two_then_one_model(), [record])
        assert (await agent.arun("go", tool_context=context)).content == "done"
        assert sorted(seen) == expected


async def test_without_a_key_tools_get_none() -> None:
    seen: list[str | None] = []

    @tool
    def record(note: str, ctx: ToolContext) -> str:
        """Record the call's key."""
        seen.append(ctx.idempotency_key)
        return "ok"

    await LocalAgent(two_then_one_model(), [record]).arun("go")
    assert seen == [None, None, None]
