"""The effect journal without Ray: ``ctx.step`` runs a side effect once per visit across a
retry, a crash before the commit and a resume by another engine; a stale engine's journal
write loses; racing attempts agree on the first value. Plain asyncio over ``memory://``."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import pytest

from gecko_actors.checkpoint import CheckpointStore
from gecko_actors.checkpoint.journal import MISSING, Journal
from gecko_actors.exceptions import OwnershipLost, UserError
from gecko_actors.workflow import NodeContext, RetryPolicy, WorkflowGraph
from gecko_actors.workflow.engine import RunEngine
from gecko_actors.workflow.execution import LocalExecutor


def memory_store() -> CheckpointStore:
    return CheckpointStore(f"memory://{uuid.uuid4().hex}")


class Payments:
    """A side effect that counts how often it really ran."""

    def __init__(self) -> None:
        self.charges: list[str] = []

    def charge(self, order: str, amount: int) -> dict[str, Any]:
        self.charges.append(order)
        return {"receipt": f"r-{len(self.charges)}", "amount": amount}


def open_engine(graph: WorkflowGraph, store: CheckpointStore, create: bool = True) -> RunEngine:
    engine = RunEngine(graph, "r1", store, LocalExecutor(store))
    engine.open("order-7", create=create)
    return engine


async def test_a_retried_visit_gets_the_recorded_result_instead_of_running_it_again() -> None:
    payments, seen = Payments(), []

    def pay(ctx: NodeContext) -> dict[str, Any]:
        receipt = ctx.step("charge", payments.charge, ctx.input, 30)
        seen.append(receipt)
        if ctx.attempt == 1:
            raise RuntimeError("the mail server is down")  # after the charge
        return receipt

    graph = WorkflowGraph("pay").add_node("pay", pay, retry=RetryPolicy(attempts=2, backoff=0))
    engine = open_engine(graph, memory_store())
    await engine.run()
    assert engine.outcome == "succeeded", engine.failure
    assert payments.charges == ["order-7"]  # charged once
    assert seen == [{"receipt": "r-1", "amount": 30}] * 2 and engine.value == seen[0]


async def test_a_step_runs_once_across_a_crash_before_the_commit_and_a_resume() -> None:
    store, payments = memory_store(), Payments()
    crash = asyncio.Event()

    async def pay(ctx: NodeContext) -> str:
        receipt = await ctx.astep("charge", payments.charge, ctx.input, 30)
        if not crash.is_set():
            crash.set()
            await asyncio.sleep(3600)  # the host dies here, before the step commits
        return receipt["receipt"]

    graph = WorkflowGraph("pay").add_node("pay", pay).add_node("ship", lambda ctx: ctx.input)
    graph.add_edge("pay", "ship")
    first = open_engine(graph, store)
    driving = asyncio.create_task(first.run())
    await crash.wait()
    driving.cancel()  # nothing of the visit was committed
    await asyncio.gather(driving, return_exceptions=True)
    assert first.seq == 0 and payments.charges == ["order-7"]

    second = open_engine(graph, store, create=False)
    await second.run()
    assert second.outcome == "succeeded", second.failure
    assert second.value == "r-1" and payments.charges == ["order-7"]


async def test_each_step_of_a_loop_and_of_a_map_item_is_its_own() -> None:
    store, payments = memory_store(), Payments()

    def pay_all(ctx: NodeContext) -> list[str]:
        return [ctx.step("charge", payments.charge, order, 1)["receipt"] for order in ctx.input]

    def pay_one(ctx: NodeContext) -> str:
        return ctx.step("charge", payments.charge, ctx.input, 1)["receipt"]

    graph = (
        WorkflowGraph("loops")
        .add_node("loop", pay_all)
        .add_node("map", pay_one, fan_out=True)
        .add_edge("loop", "map")
    )
    engine = RunEngine(graph, "r1", store, LocalExecutor(store))
    engine.open(["a", "b"])
    await engine.run()
    assert engine.outcome == "succeeded", engine.failure
    assert payments.charges[:2] == ["a", "b"]  # the loop's two steps
    assert sorted(payments.charges[2:]) == ["r-1", "r-2"]  # one per map item
    assert Journal(store, "r1", 1).count() == 4

    # The loop's visit run again (as a re-run would): both results come back, in order,
    # and nothing is charged.
    ctx = NodeContext(
        ["a", "b"], run_id="r1", node="loop", visit=1, journal=Journal(store, "r1", 1)
    )
    assert pay_all(ctx) == ["r-1", "r-2"]
    assert len(payments.charges) == 4


def test_a_stale_engine_cannot_journal_and_racing_attempts_agree() -> None:
    store = memory_store()
    graph = WorkflowGraph("g").add_node("n", lambda ctx: None)
    open_engine(graph, store)
    first = Journal(store, "r1", 1)
    assert first.get("k") is MISSING
    assert first.put("k", {"v": 1}) == {"v": 1}
    assert first.put("k", {"v": 2}) == {"v": 1}  # the first write holds
    newer = store.claim("r1")
    with pytest.raises(OwnershipLost):
        first.put("other", 1)  # taken over: the old engine's effects are not journaled
    assert Journal(store, "r1", newer).put("other", 2) == 2


def test_a_step_needs_a_run_and_a_checkpointable_result() -> None:
    with pytest.raises(UserError, match="outside a workflow run"):
        NodeContext("x").step("charge", print)
    store = memory_store()
    open_engine(WorkflowGraph("g").add_node("n", lambda ctx: None), store)
    ctx = NodeContext("x", run_id="r1", node="n", visit=1, journal=Journal(store, "r1", 1))
    with pytest.raises(UserError, match="step 'r1/n/1/step/bad/1'"):
        ctx.step("bad", object)
    assert Journal(store, "r1", 1).count() == 0  # nothing recorded


# --- tool calls of an agent in a workflow node --------------------------------------------------


async def test_a_journaled_tool_call_is_replayed_when_the_visit_runs_again() -> None:
    from gecko_actors import LocalAgent, ScriptedModel
    from gecko_actors.core.tools import ToolContext

    store = memory_store()
    open_engine(WorkflowGraph("g").add_node("n", lambda ctx: None), store)
    journal = Journal(store, "r1", 1)
    written: list[str] = []

    def write_line(text: str) -> str:
        """Append a line to the ledger."""
        written.append(text)
        return f"line {len(written)}"

    def script() -> ScriptedModel:
        return ScriptedModel([ScriptedModel.call("write_line", text="paid"), "done"])

    context = ToolContext(run_id="r1", idempotency_key="r1/n/1", journal=journal)
    for attempt in (1, 2):  # the visit's first run, then a re-run after a crash
        model = script()
        agent = LocalAgent(model, tools=[write_line])
        output = await agent.arun("pay", tool_context=context)
        assert output.content == "done"
        tool_message = model.calls[1].messages[-1]
        assert tool_message.text == "line 1", attempt  # the recorded result both times
    assert written == ["paid"]  # the tool ran once

    other = ToolContext(run_id="r1", idempotency_key="r1/n/2", journal=journal)
    await LocalAgent(script(), tools=[write_line]).arun("pay", tool_context=other)
    assert written == ["paid", "paid"]  # another visit: its own call


async def test_a_call_with_other_arguments_or_a_failed_call_runs_again() -> None:
    from gecko_actors.core.journaled import execute_journaled
    from gecko_actors.core.messages import ToolCall
    from gecko_actors.core.toolbox import ToolBox
    from gecko_actors.core.tools import ToolContext, tool

    store = memory_store()
    open_engine(WorkflowGraph("g").add_node("n", lambda ctx: None), store)
    journal, runs = Journal(store, "r1", 1), []

    @tool
    def flaky(n: int) -> int:
        """Fails on its first call."""
        runs.append(n)
        if len(runs) == 1:
            raise RuntimeError("down")
        return n * 10

    box = ToolBox([flaky])
    context = [ToolContext(idempotency_key="r1/n/1/call-1", journal=journal)]

    async def call(n: int) -> str:
        results = await execute_journaled(
            box, [ToolCall(id="c", name="flaky", arguments=f'{{"n": {n}}}')], context, journal
        )
        return results[0].content

    assert "down" in await call(1)  # an error is not journaled...
    assert await call(1) == "10"  # ...so the call runs again
    assert await call(1) == "10" and runs == [1, 1]  # then it is replayed
    assert await call(2) == "20" and runs == [1, 1, 2]  # other arguments: a call of its own


@pytest.mark.parametrize("journal_models", [True, False])
async def test_a_workflow_that_journals_model_calls_does_not_ask_the_model_again(
    journal_models: bool,
) -> None:
    from gecko_actors import LocalAgent, ScriptedModel
    from gecko_actors.core.tools import ToolContext

    model = ScriptedModel(lambda messages, tools: f"answer {len(messages)}")

    def ask(ctx: NodeContext) -> str:
        context = ToolContext(
            run_id=ctx.run_id, idempotency_key=ctx.idempotency_key, journal=ctx.journal
        )
        output = LocalAgent(model).run("question", tool_context=context)
        if ctx.attempt == 1:
            raise RuntimeError("after the model answered")
        return output.content

    graph = WorkflowGraph("models", journal_models=journal_models)
    graph.add_node("ask", ask, retry=RetryPolicy(attempts=2, backoff=0))
    engine = open_engine(graph, memory_store())
    await engine.run()
    assert engine.outcome == "succeeded", engine.failure
    assert engine.value == "answer 1"
    assert len(model.calls) == (1 if journal_models else 2)


async def test_the_status_read_from_the_checkpoint_counts_the_journal() -> None:
    from gecko_actors.workflow.status import format_status, status_from_checkpoint

    store = memory_store()
    graph = WorkflowGraph("count").add_node("n", lambda ctx: ctx.step("a", len, "xy"))
    engine = open_engine(graph, store)
    await engine.run()
    status = status_from_checkpoint(store, "r1")
    assert status["journal"] == 1 and "journal: 1 recorded effects" in format_status(status)


@pytest.mark.parametrize(
    ("asked", "default", "setting", "expected"),
    [
        (True, False, "0", True),  # the run's say wins
        (False, True, "1", False),
        (None, True, "0", True),  # then the workflow's default
        (None, None, "1", True),  # then the setting
        (None, None, "0", False),
    ],
)
def test_whether_a_run_journals_model_calls_is_the_run_s_then_the_workflow_s_then_the_setting(
    monkeypatch: pytest.MonkeyPatch,
    asked: bool | None,
    default: bool | None,
    setting: str,
    expected: bool,
) -> None:
    monkeypatch.setenv("GECKO_JOURNAL_MODELS", setting)
    graph = WorkflowGraph("models", journal_models=default)
    assert graph.models_journaled(asked) is expected


async def test_a_run_keeps_the_model_journaling_it_was_created_with_when_resumed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = memory_store()
    graph = WorkflowGraph("kept").add_node("n", lambda ctx: ctx.journal.models)
    monkeypatch.setenv("GECKO_JOURNAL_MODELS", "1")
    first = open_engine(graph, store)
    assert first.manifest.journal_models is True
    assert store.read_manifest("r1").journal_models is True  # recorded in the checkpoint
    monkeypatch.setenv("GECKO_JOURNAL_MODELS", "0")  # the setting changed meanwhile...
    resumed = open_engine(graph, store, create=False)
    resumed.take_over()
    await resumed.run()
    assert resumed.value is True  # ...the run journals as it was created to


def test_a_manifest_without_journal_models_reads_as_not_journaling() -> None:
    from gecko_actors.checkpoint.records import Manifest, manifest_data, manifest_from

    made = Manifest("r1", "wf", "fp", None, 1.0, journal_models=True)
    data = manifest_data(made)
    assert data["journal_models"] is True and manifest_from(dict(data), "m", "r1") == made
    older = manifest_data(dataclasses.replace(made, journal_models=False))
    assert "journal_models" not in older  # an earlier release reads it as before
    assert manifest_from(older, "m", "r1").journal_models is False
    with pytest.raises(UserError, match="journal_models"):
        manifest_data(dataclasses.replace(made, journal_models="yes"))
