"""Budgets that span processes, kept by the budget governor: a workflow run over hosted
agents stops at its budget and resumes with a larger one; parallel branches in agent hosts
overshoot by no more than the calls in flight; a team's budget, alone and inside a run's."""

from __future__ import annotations

import itertools
import uuid
from pathlib import Path
from typing import Any

import pytest

from gecko_actors import (
    Agent,
    Budget,
    BudgetExceededError,
    ScriptedModel,
    Team,
    UserError,
    Workflow,
)
from gecko_actors.workflow import NodeContext

pytestmark = pytest.mark.usefixtures("ray_session")

ANSWER = "word " * 120  # ~150 tokens; with the previous answer as its prompt, ~300 a call


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def spawn(count: int, reply: str = ANSWER) -> list[Agent]:
    return [Agent.spawn(unique("spender"), model=ScriptedModel([reply] * 50)) for _ in range(count)]


def kill(agents: list[Agent]) -> None:
    for agent in agents:
        agent.kill()


def test_a_run_over_hosted_agents_stops_at_its_budget_then_resumes(tmp_path: Path) -> None:
    agents = spawn(5)
    try:
        wf = Workflow(unique("budgeted"))
        names = ["a", "b", "c", "d", "e"]
        for name, agent in zip(names, agents, strict=True):
            wf.add_node(name, agent)
        for first, second in itertools.pairwise(names):
            wf.add_edge(first, second)
        run = wf.start("go", checkpoint=tmp_path, budget=Budget(tokens=1000))
        with pytest.raises(BudgetExceededError) as caught:
            run.result(timeout=120)
        error = caught.value
        assert error.scope == f"run {run.run_id!r}" and error.node == "d"
        assert list(error.partial) == ["a", "b", "c"]  # what finished, in commit order
        assert error.partial["c"].content == ANSWER
        status = run.status()
        assert status["status"] == "failed"
        spend = status["spend"]
        assert spend["budget"]["tokens"] == 1000 and spend["model_calls"] == 3
        assert spend["tokens"] <= 1000
        assert set(spend["agents"]) == {a.name for a in agents[:3]}  # spent in their hosts
        assert status["nodes"]["c"]["tokens"] > 250

        resumed = wf.resume(run.run_id, checkpoint=tmp_path, budget=Budget(tokens=5000))
        assert resumed.result(timeout=120).content == ANSWER
        final = resumed.status()["spend"]
        assert final["budget"]["tokens"] == 5000 and final["model_calls"] == 5
        assert final["tokens"] > spend["tokens"]  # the spend before the resume still counts
        assert set(final["agents"]) == {a.name for a in agents}  # before the resume too
    finally:
        kill(agents)


def test_parallel_branches_in_agent_hosts_overshoot_by_at_most_the_calls_in_flight(
    tmp_path: Path,
) -> None:
    left, right = spawn(2, reply="word " * 400)  # ~500 tokens a call: beyond the estimate

    def branch(agent: Agent) -> Any:
        async def node(ctx: NodeContext) -> int:
            for i in range(200):
                await agent.arun(f"call {i}")
            return 200

        return node

    try:
        wf = (
            Workflow(unique("parallel"))
            .add_node("start", lambda ctx: "go")
            .add_node("left", branch(left))
            .add_node("right", branch(right))
            .add_edge("start", "left")
            .add_edge("start", "right")
        )
        run = wf.start(None, checkpoint=tmp_path, budget=Budget(tokens=6000))
        with pytest.raises(BudgetExceededError):
            run.result(timeout=120)
        spend = run.status()["spend"]
        assert set(spend["agents"]) == {left.name, right.name}  # both branches spent
        per_call = spend["tokens"] / spend["model_calls"]
        estimate = 256 + 8  # what each call reserved: the default completion, a short prompt
        in_flight = 2  # one call per branch at a time
        assert spend["tokens"] <= 6000 + in_flight * (per_call - estimate) + 1
        assert spend["tokens"] > 6000 - 2 * per_call  # the budget was used, not refused early
    finally:
        kill([left, right])


def test_a_team_stops_at_its_budget_with_the_members_that_answered() -> None:
    members = spawn(4, reply="word " * 200)  # ~260 tokens each; a call reserves ~262
    try:
        team = Team(members, name="graders", budget=Budget(tokens=1000))
        with pytest.raises(BudgetExceededError) as caught:
            team.run("grade this")
        error = caught.value
        # The governor reserves atomically: three reservations fit, the fourth does not.
        assert len(error.partial) == 3 and error.team == "graders"
        assert set(error.partial) < {m.name for m in members}
        assert team.spent.model_calls == 3 and team.spent.tokens <= 1000
        with pytest.raises(BudgetExceededError):  # the budget holds over the team's runs
            team.map(["one", "two"])
        with pytest.raises(UserError, match="must be a Budget"):
            Team(members, budget={"tokens": 5})
    finally:
        kill(members)


def test_a_team_node_spends_from_its_run_s_budget(tmp_path: Path) -> None:
    members = spawn(3, reply="word " * 200)
    try:
        wf = (
            Workflow(unique("team-run"))
            .add_node("intro", lambda ctx: "grade this")
            .add_node("team", Team(members))
            .add_edge("intro", "team")
        )
        run = wf.start(None, checkpoint=tmp_path, budget=Budget(tokens=600))
        with pytest.raises(BudgetExceededError) as caught:
            run.result(timeout=120)
        assert caught.value.node == "team" and list(caught.value.partial) == ["intro"]
        assert run.status()["spend"]["model_calls"] == 2  # two of three reservations fit
    finally:
        kill(members)
