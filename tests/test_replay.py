"""Offline replay (``gecko_actors.testing.replay``): a recorded run runs again from its
effect journal, with no model, tool or side effect called, and the first step whose output
differs from the record is reported."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gecko_actors import LocalAgent, ScriptedModel, tool
from gecko_actors.checkpoint import CheckpointStore
from gecko_actors.core.tools import ToolContext
from gecko_actors.exceptions import UserError
from gecko_actors.testing import ReplayReport, replay
from gecko_actors.workflow import NodeContext, WorkflowGraph
from gecko_actors.workflow.engine import RunEngine
from gecko_actors.workflow.execution import LocalExecutor
from gecko_actors.workflow.fork import create_fork


class World:
    """What the run touches, counted: model calls, tool calls and charges."""

    def __init__(self) -> None:
        self.tools: list[str] = []
        self.charges: list[int] = []

        @tool
        def lookup(city: str) -> str:
            """The weather in a city."""
            self.tools.append(city)
            return f"sunny in {city}"

        self.lookup = lookup
        self.model = ScriptedModel(
            lambda messages, tools: (
                ScriptedModel.call("lookup", city="Lyon")
                if messages[-1].role != "tool"
                else f"report: {messages[-1].text}"
            )
        )


def graph(world: World, suffix: str = "", prompt: str = "weather in Lyon?") -> WorkflowGraph:
    def ask(ctx: NodeContext) -> str:
        context = ToolContext(
            run_id=ctx.run_id, idempotency_key=ctx.idempotency_key, journal=ctx.journal
        )
        agent = LocalAgent(world.model, tools=[world.lookup])
        return agent.run(prompt, tool_context=context).content

    def charge(ctx: NodeContext) -> dict[str, Any]:
        receipt = ctx.step("charge", lambda: world.charges.append(5) or len(world.charges))
        return {"forecast": ctx.input, "receipt": receipt}

    def report(ctx: NodeContext) -> str:
        return f"{ctx.input['forecast']} (receipt {ctx.input['receipt']}){suffix}"

    return (
        WorkflowGraph("weather", journal_models=True)
        .add_node("ask", ask)
        .add_node("charge", charge)
        .add_node("report", report)
        .add_edge("ask", "charge")
        .add_edge("charge", "report")
    )


def record(g: WorkflowGraph, tmp_path: Path, run_id: str = "w1") -> Any:
    store = CheckpointStore(f"file://{tmp_path}")
    engine = RunEngine(g, run_id, store, LocalExecutor(store))
    engine.open("go")
    asyncio.run(engine.run())
    assert engine.outcome == "succeeded", engine.failure
    return engine.value


def test_a_replay_reproduces_every_step_without_calling_anything(tmp_path: Path) -> None:
    world = World()
    assert record(graph(world), tmp_path) == "report: sunny in Lyon (receipt 1)"
    calls = (len(world.model.calls), list(world.tools), list(world.charges))
    report = replay("w1", checkpoint=tmp_path, workflow=graph(world))
    assert isinstance(report, ReplayReport) and report.ok, report
    assert (report.recorded_steps, report.replayed_steps, report.outcome) == (3, 3, "succeeded")
    assert (len(world.model.calls), world.tools, world.charges) == calls  # nothing ran again
    assert "every output is the same" in str(report)


def test_a_changed_node_function_is_the_first_difference(tmp_path: Path) -> None:
    world = World()
    record(graph(world), tmp_path)
    report = replay("w1", checkpoint=tmp_path, workflow=graph(world, suffix="!"))
    assert not report.ok
    d = report.difference
    assert (d.seq, d.node, d.visit, d.reason) == (2, "report", 1, "its output differs")
    assert d.recorded == "report: sunny in Lyon (receipt 1)" and d.replayed.endswith("1)!")


def test_a_changed_prompt_stops_at_the_model_call_the_recording_lacks(tmp_path: Path) -> None:
    world = World()
    record(graph(world), tmp_path)
    calls = len(world.model.calls)
    report = replay("w1", checkpoint=tmp_path, workflow=graph(world, prompt="rain in Lyon?"))
    d = report.difference
    assert (d.seq, d.node, d.replayed) == (0, "ask", None)
    assert "not replayed" in d.reason and "holds no model" in d.reason
    assert len(world.model.calls) == calls  # the provider was never asked


def test_a_run_that_did_not_journal_its_model_calls_cannot_be_replayed(tmp_path: Path) -> None:
    world = World()
    g = graph(world)
    g.journal_models = False
    record(g, tmp_path)
    report = replay("w1", checkpoint=tmp_path, workflow=graph(world))
    assert report.difference.node == "ask" and "journal_models=True" in report.difference.reason


def test_what_cannot_be_replayed_is_refused(tmp_path: Path) -> None:
    world = World()
    record(graph(world), tmp_path)
    with pytest.raises(UserError, match="no run 'nope'"):
        replay("nope", checkpoint=tmp_path, workflow=graph(world))
    other = graph(world)
    del other.nodes["report"]  # it ran: a version without it cannot replay the run
    other.edges = other.edges[:1]
    with pytest.raises(UserError, match="graph"):
        replay("w1", checkpoint=tmp_path, workflow=other)
    create_fork(graph(world), CheckpointStore(f"file://{tmp_path}"), "w1", 1, run_id="f1")
    with pytest.raises(UserError, match="replay the parent"):
        replay("f1", checkpoint=tmp_path, workflow=graph(world))


async def test_a_replay_runs_from_async_code(tmp_path: Path) -> None:
    world = World()
    await asyncio.to_thread(record, graph(world), tmp_path)
    assert replay("w1", checkpoint=tmp_path, workflow=graph(world)).ok
