"""Human in the loop without Ray: ``ctx.interrupt`` parks one branch while the others run,
``respond`` answers it (during the drive, or after the run ended as waiting), answers come
in order, and a waiting run survives its engine. Plain asyncio over ``memory://``."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from gecko_actors.checkpoint import CheckpointStore
from gecko_actors.exceptions import UserError
from gecko_actors.workflow import NodeContext, WorkflowGraph
from gecko_actors.workflow.engine import RunEngine
from gecko_actors.workflow.execution import LocalExecutor
from gecko_actors.workflow.status import status_from_checkpoint


def memory_store() -> CheckpointStore:
    return CheckpointStore(f"memory://{uuid.uuid4().hex}")


def open_engine(graph: WorkflowGraph, store: CheckpointStore, create: bool = True) -> RunEngine:
    events: list[dict[str, Any]] = []
    engine = RunEngine(
        graph,
        "r1",
        store,
        LocalExecutor(store),
        on_event=lambda kind, **d: events.append({"type": kind, **d}),
    )
    engine.events = events  # type: ignore[attr-defined]
    engine.open("topic", create=create)
    return engine


def approval_graph(ran: list[str], gate: asyncio.Event | None = None) -> WorkflowGraph:
    def draft(ctx: NodeContext) -> str:
        ran.append("draft")
        answer = ctx.interrupt({"question": "send it?", "draft": f"about {ctx.input}"})
        return f"sent: {answer}"

    async def research(ctx: NodeContext) -> str:
        ran.append("research")
        if gate is not None:
            await gate.wait()
        return "notes"

    return (
        WorkflowGraph("approve")
        .add_node("start", lambda ctx: ctx.input)
        .add_node("draft", draft)
        .add_node("research", research)
        .add_node("join", lambda ctx: sorted(map(str, ctx.outputs.values())))
        .add_edge("start", "draft")
        .add_edge("start", "research")
        .add_edge("draft", "join")
        .add_edge("research", "join")
    )


async def test_one_branch_parks_the_other_finishes_then_an_answer_completes_the_run() -> None:
    store, ran = memory_store(), []
    engine = open_engine(approval_graph(ran), store)
    await engine.run()
    assert engine.outcome == "waiting", engine.failure
    assert engine.waiting.status() == {"draft": {"question": "send it?", "draft": "about topic"}}
    assert (
        engine.nodes["draft"]["state"] == "waiting" and engine.nodes["research"]["state"] == "done"
    )
    assert [e["node"] for e in engine.events if e["type"] == "node_waiting"] == ["draft"]
    stored = store.read_manifest("r1")
    assert (
        stored.status == "waiting" and stored.waiting["draft"]["payload"]["question"] == "send it?"
    )
    assert status_from_checkpoint(store, "r1")["status"] == "waiting"

    assert await engine.respond("draft", "yes", by="ana") is False  # no drive: drive it again
    await engine.run()
    assert engine.outcome == "succeeded", engine.failure
    assert engine.value == ["notes", "sent: yes", "topic"]
    assert sorted(ran) == ["draft", "draft", "research"]  # research committed: not run again


async def test_an_answer_during_the_drive_wakes_the_parked_branch_at_once() -> None:
    store, ran, gate = memory_store(), [], asyncio.Event()
    engine = open_engine(approval_graph(ran, gate), store)
    driving = asyncio.create_task(engine.run())
    while "draft" not in engine.waiting.parked:
        await asyncio.sleep(0.01)
    assert engine.outcome == "running"  # research still runs
    assert await engine.respond("draft", "ok") is True  # the drive under way takes it
    while ran.count("draft") < 2:
        await asyncio.sleep(0.01)
    gate.set()
    await driving
    assert engine.outcome == "succeeded" and "sent: ok" in engine.value


async def test_answers_come_in_order_and_the_first_answer_holds() -> None:
    store = memory_store()

    def form(ctx: NodeContext) -> tuple[Any, Any]:
        name = ctx.interrupt("name?")
        age = ctx.interrupt("age?")
        return name, age

    engine = open_engine(WorkflowGraph("form").add_node("form", form), store)
    await engine.run()
    assert engine.waiting.status() == {"form": "name?"}
    with pytest.raises(UserError, match=r"node 'nope' .* not waiting .*waiting: 'form'"):
        await engine.respond("nope", 1)
    await engine.respond("form", "Ana")
    with pytest.raises(UserError, match="not waiting"):
        await engine.respond("form", "Bob")  # answered already: the first answer holds
    await engine.run()
    assert engine.waiting.status() == {"form": "age?"}
    await engine.respond("form", 41)
    await engine.run()
    assert engine.outcome == "succeeded" and engine.value == ["Ana", 41]


async def test_a_waiting_run_survives_its_engine_and_a_new_engine_finishes_it() -> None:
    store, ran = memory_store(), []
    graph = approval_graph(ran)
    await open_engine(graph, store).run()  # then the engine is gone (a host crash)

    again = open_engine(graph, store, create=False)
    await again.run()  # the parked node runs again and parks again; research is committed
    assert again.outcome == "waiting" and sorted(ran) == ["draft", "draft", "research"]
    assert not await again.respond("draft", "fine")
    await again.run()
    assert again.outcome == "succeeded" and "sent: fine" in again.value


async def test_a_bad_payload_fails_the_node_and_a_waiting_run_can_be_cancelled() -> None:
    store = memory_store()
    bad = WorkflowGraph("bad").add_node("ask", lambda ctx: ctx.interrupt(object()))
    engine = open_engine(bad, store)
    await engine.run()
    assert engine.outcome == "failed" and "interrupt payload" in str(engine.failure)

    waiting = open_engine(approval_graph([]), memory_store())
    await waiting.run()
    await waiting.give_up()
    assert waiting.outcome == "cancelled"
    assert waiting.store.read_manifest("r1").status == "cancelled"


# --- tools that need a human's approval --------------------------------------------------------


def mail_graph(sent: list[dict[str, str]]) -> WorkflowGraph:
    from gecko_actors import LocalAgent, ScriptedModel, tool

    @tool(approval=True)
    def send_mail(to: str, body: str) -> str:
        """Send a mail."""
        sent.append({"to": to, "body": body})
        return f"sent to {to}"

    def model(messages: list[Any], tools: Any) -> Any:
        if messages[-1].role == "tool":
            return f"done: {messages[-1].text}"
        return ScriptedModel.call("send_mail", to="a@example.com", body="hello")

    async def mailer(ctx: NodeContext) -> str:
        agent = LocalAgent(ScriptedModel(model), tools=[send_mail])
        return (await agent.arun("mail them", tool_context=_context(ctx))).content

    return WorkflowGraph("mail").add_node("mail", mailer)


def _context(ctx: NodeContext) -> Any:
    """What an agent node gives its agent (a function node asking an agent does it by hand)."""
    from gecko_actors.core.tools import ToolContext

    return ToolContext(run_id=ctx.run_id, idempotency_key=ctx.idempotency_key, journal=ctx.journal)


@pytest.mark.parametrize(
    ("answer", "reply", "mails"),
    [
        (True, "done: sent to a@example.com", [{"to": "a@example.com", "body": "hello"}]),
        ({"reject": "too curt"}, "rejected it: too curt", []),
        (
            {"arguments": {"to": "b@example.com", "body": "hello, dear"}},
            "done: sent to b@example.com",
            [{"to": "b@example.com", "body": "hello, dear"}],
        ),
    ],
)
async def test_a_call_to_an_approval_tool_parks_until_approved_rejected_or_edited(
    answer: Any, reply: str, mails: list[dict[str, str]]
) -> None:
    sent: list[dict[str, str]] = []
    engine = open_engine(mail_graph(sent), memory_store())
    await engine.run()
    assert engine.outcome == "waiting", engine.failure
    payload = {"tool": "send_mail", "arguments": {"to": "a@example.com", "body": "hello"}}
    assert engine.waiting.status() == {"mail": payload} and sent == []
    await engine.respond("mail", answer)
    await engine.run()
    assert engine.outcome == "succeeded", engine.failure
    assert reply in engine.value and sent == mails


async def test_outside_a_workflow_an_approval_tool_is_refused_and_the_model_told() -> None:
    from gecko_actors import LocalAgent, ScriptedModel, tool

    @tool(approval=True)
    def wipe_disk() -> str:
        """Wipe the disk."""
        raise AssertionError("must not run")

    model = ScriptedModel([ScriptedModel.call("wipe_disk"), "ok"])
    await LocalAgent(model, tools=[wipe_disk]).arun("clean up")
    assert "needs a human's approval" in model.calls[1].messages[-1].text


async def test_a_run_no_host_holds_gets_its_answer_in_the_checkpoint() -> None:
    from gecko_actors.workflow.waiting import answer_in_checkpoint

    store, ran = memory_store(), []
    graph = approval_graph(ran)
    await open_engine(graph, store).run()  # waits; then its cluster is gone
    with pytest.raises(UserError, match=r"'research' .* \(waiting: 'draft'\)"):
        answer_in_checkpoint(store, "r1", "research", "no", None)
    answer_in_checkpoint(store, "r1", "draft", "yes", "ana")
    resumed = open_engine(graph, store, create=False)
    await resumed.run()
    assert resumed.outcome == "succeeded" and "sent: yes" in resumed.value
