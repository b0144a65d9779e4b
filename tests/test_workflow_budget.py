"""A workflow run's budget, without Ray: the hard stop, what finished in ``.partial``, the
spend in the status and the checkpoint, a resume with a larger budget, and the overshoot of
parallel branches. Plain asyncio over a ``memory://`` store, agents in the engine's process."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from typing import Any

import pytest

from gecko_actors import Budget, BudgetExceededError, LocalAgent, ScriptedModel
from gecko_actors.checkpoint import CheckpointStore
from gecko_actors.core.budget import current_spending
from gecko_actors.core.messages import Message
from gecko_actors.workflow import NodeContext, RetryPolicy, WorkflowGraph
from gecko_actors.workflow.engine import RunEngine
from gecko_actors.workflow.execution import LocalExecutor
from gecko_actors.workflow.status import status_from_checkpoint

# ~1,150 characters: ScriptedModel bills ~4 characters a token, so each answer is ~300
# tokens with its prompt, while a call reserves its prompt plus 256 (no max_tokens).
ANSWER = "word " * 230


def memory_store() -> CheckpointStore:
    return CheckpointStore(f"memory://{uuid.uuid4().hex}")


def agent_node(agent: LocalAgent) -> Any:
    """A node that asks ``agent`` (in the engine's process: agent nodes need Ray)."""

    async def node(ctx: NodeContext) -> Any:
        return await agent.arun(f"continue from {ctx.node}")

    return node


def chain(names: list[str], calls: dict[str, int]) -> WorkflowGraph:
    """Agent nodes in a row, each answering ~300 tokens; ``calls`` counts model calls."""

    def answer(messages: list[Message], tools: Any) -> str:
        calls["all"] = calls.get("all", 0) + 1
        return ANSWER

    graph = WorkflowGraph("budgeted")
    for name in names:
        agent = LocalAgent(ScriptedModel(answer), name=f"agent-{name}")
        graph.add_node(name, agent_node(agent), retry=RetryPolicy(attempts=3, backoff=0.0))
    for first, second in itertools.pairwise(names):
        graph.add_edge(first, second)
    return graph


def engine(graph: WorkflowGraph, store: CheckpointStore, **open_args: Any) -> RunEngine:
    eng = RunEngine(graph, "r1", store, LocalExecutor(store))
    eng.open(open_args.pop("input", "go"), **open_args)
    return eng


async def test_a_run_stops_at_its_budget_with_what_finished_then_resumes_with_more() -> None:
    store, calls = memory_store(), {}
    graph = chain(["a", "b", "c", "d", "e"], calls)
    eng = engine(graph, store, budget=Budget(tokens=1000))
    await eng.run()

    assert eng.outcome == "failed"
    error = eng.failure
    assert isinstance(error, BudgetExceededError), error
    assert error.scope == "run 'r1'" and error.run_id == "r1" and error.node == "d"
    assert sorted(error.partial) == ["a", "b", "c"]  # the committed nodes' outputs
    assert error.partial["c"].content == ANSWER
    assert 800 < error.spent["tokens"] <= 1000
    # Refused before it was sent, and not retried (the retry would be refused again).
    assert eng.nodes["d"]["state"] == "failed" and eng.nodes["d"]["attempts"] == 1
    spend = eng.spend.status()
    assert spend["budget"]["tokens"] == 1000 and spend["model_calls"] == 3
    assert set(spend["agents"]) == {"agent-a", "agent-b", "agent-c"}

    stored = status_from_checkpoint(store, "r1")  # the spend outlives the process
    assert stored["status"] == "failed" and stored["spend"]["tokens"] == spend["tokens"]
    assert stored["spend"]["agents"]["agent-b"]["tokens"] > 250
    assert stored["nodes"]["c"]["tokens"] > 250  # each step records what its visit spent

    again = RunEngine(graph, "r1", store, LocalExecutor(store))
    again.open(None, create=False, budget=Budget(tokens=5000))
    await again.run()
    assert again.outcome == "succeeded", again.failure
    assert sum(calls.values()) == 5  # a, b and c were not run again
    final = status_from_checkpoint(store, "r1")["spend"]
    assert final["budget"]["tokens"] == 5000 and final["model_calls"] == 5
    assert final["tokens"] > 1400  # what was spent before the resume still counts


async def test_a_resume_without_a_budget_keeps_the_recorded_one() -> None:
    store = memory_store()
    graph = chain(["a", "b", "c", "d"], {})
    await engine(graph, store, budget=Budget(tokens=700)).run()
    again = RunEngine(graph, "r1", store, LocalExecutor(store))
    again.open(None, create=False)
    await again.run()
    assert isinstance(again.failure, BudgetExceededError)  # still 700: c is refused again
    assert sorted(again.failure.partial) == ["a", "b"]


async def test_a_dollar_budget_stops_the_next_call_once_reached() -> None:
    store = memory_store()
    graph = WorkflowGraph("usd")
    for name in "abc":
        model = ScriptedModel([ANSWER], price=(1e-3, 1e-3))  # ~$0.30 a call
        graph.add_node(name, agent_node(LocalAgent(model, name=name)))
    graph.add_edge("a", "b").add_edge("b", "c")
    eng = engine(graph, store, budget=Budget(usd=0.5))
    await eng.run()
    assert isinstance(eng.failure, BudgetExceededError)
    assert sorted(eng.failure.partial) == ["a", "b"]  # b started under $0.5, ended over it
    assert 0.5 < eng.spend.status()["usd"] < 0.7


async def test_a_budget_covers_agents_called_from_function_nodes_sync_and_async() -> None:
    store = memory_store()
    seen: list[Any] = []

    def sync_node(ctx: NodeContext) -> str:  # in a thread: it must see the run's budget
        seen.append(current_spending())
        return LocalAgent(ScriptedModel([ANSWER]), name="in-thread").run("x").content

    async def async_node(ctx: NodeContext) -> str:
        agent = LocalAgent(ScriptedModel([ANSWER]), name="in-task")
        return (await agent.arun("x")).content

    graph = WorkflowGraph("fn").add_node("s", sync_node).add_node("t", async_node)
    graph.add_edge("s", "t")
    eng = engine(graph, store, budget=Budget(model_calls=1))
    await eng.run()
    assert seen[0] is not None and seen[0].labels == ("node:s/1",)
    assert isinstance(eng.failure, BudgetExceededError) and eng.failure.node == "t"
    assert "1 model calls" in str(eng.failure)
    assert status_from_checkpoint(store, "r1")["nodes"]["s"]["tokens"] > 250


async def test_parallel_branches_overshoot_by_no_more_than_the_calls_in_flight() -> None:
    """Two branches call their agents as fast as they can under one budget. Each call
    reserves its estimate first, so the run stops with at most the calls in flight over
    (each by what it used beyond its estimate)."""
    store = memory_store()
    spans: list[tuple[str, float, float]] = []

    def branch(name: str) -> Any:
        async def slow(messages: list[Message], tools: Any) -> str:
            start = time.monotonic()
            await asyncio.sleep(0.01)
            spans.append((name, start, time.monotonic()))
            return "word " * 400  # ~500 tokens a call: beyond its ~270 estimate

        agent = LocalAgent(ScriptedModel(slow), name=name)

        async def node(ctx: NodeContext) -> int:
            for i in range(100):
                await agent.arun(f"call {i}")
            return 100

        return node

    graph = WorkflowGraph("parallel").add_node("start", lambda ctx: "go")
    for name in ("left", "right"):
        graph.add_node(name, branch(name)).add_edge("start", name)
    eng = engine(graph, store, budget=Budget(tokens=5000))
    await eng.run()

    assert isinstance(eng.failure, BudgetExceededError)
    left = [s for s in spans if s[0] == "left"]
    right = [s for s in spans if s[0] == "right"]
    assert left and right
    # The branches' calls overlapped (from the recorded times): both were in flight at once.
    assert any(a[1] < b[2] and b[1] < a[2] for a in left for b in right)
    spent = eng.spend.status()
    per_call = spent["tokens"] / spent["model_calls"]
    estimate = 256 + 10  # what a call reserved: the default completion and its short prompt
    in_flight = 2  # one call per branch at a time
    assert spent["tokens"] <= 5000 + in_flight * (per_call - estimate) + 1
    assert spent["tokens"] > 5000 - per_call  # the budget was used, not refused early


async def test_a_bad_budget_is_a_user_error_before_anything_is_stored() -> None:
    from gecko_actors import UserError

    with pytest.raises(UserError, match="tokens must be a positive int"):
        Budget(tokens=0)
    with pytest.raises(UserError, match="usd"):
        Budget(usd=float("nan"))


async def test_a_tool_that_asks_another_agent_spends_from_the_run_s_budget() -> None:
    store = memory_store()
    helper = LocalAgent(ScriptedModel([ANSWER] * 3), name="helper")

    async def consult(question: str) -> str:
        """Ask the helper agent."""
        return (await helper.arun(question)).content

    caller = LocalAgent(
        ScriptedModel([ScriptedModel.call("consult", question="why?"), "done"]),
        tools=[consult],
        name="caller",
    )
    graph = WorkflowGraph("tools").add_node("ask", agent_node(caller))
    eng = engine(graph, store, budget=Budget(tokens=100_000))
    await eng.run()
    assert eng.outcome == "succeeded", eng.failure
    agents = eng.spend.status()["agents"]
    assert agents["helper"]["model_calls"] == 1 and agents["caller"]["model_calls"] == 2
