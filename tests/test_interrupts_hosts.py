"""Human in the loop on Ray: one branch parks on ``ctx.interrupt`` while the other
finishes, its workflow host is SIGKILLed while the run waits, and an answer given from a
second driver (the CLI, in another process) completes the run."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import ray

from gecko_actors import UserError
from gecko_actors.testing.chaos import kill_and_restart
from gecko_actors.workflow import NodeContext, Workflow

pytestmark = pytest.mark.usefixtures("ray_session")


def draft(ctx: NodeContext) -> str:
    answer = ctx.interrupt({"question": "send it?", "draft": f"about {ctx.input}"})
    return f"sent: {answer}"


def research(ctx: NodeContext) -> str:
    return "notes"


def join(ctx: NodeContext) -> list[Any]:
    return sorted(map(str, ctx.outputs.values()))


def waiting(run: Any, deadline: float) -> dict[str, Any]:
    while (status := run.status())["status"] != "waiting":
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
    return status


@pytest.mark.parametrize("where", ["file", "s3"])
def test_a_parked_branch_survives_a_host_kill_and_an_answer_from_another_driver(
    tmp_path: Path, where: str, request
) -> None:
    uri = f"file://{tmp_path}" if where == "file" else request.getfixturevalue("s3").uri()
    wf = (
        Workflow(f"approve-{uuid.uuid4().hex[:8]}")
        .add_node("start", lambda ctx: ctx.input)
        .add_node("draft", draft)
        .add_node("research", research)
        .add_node("join", join)
        .add_edge("start", "draft")
        .add_edge("start", "research")
        .add_edge("draft", "join")
        .add_edge("research", "join")
    )
    run = wf.start("the plan", checkpoint=uri)
    deadline = time.monotonic() + 120
    status = waiting(run, deadline)
    assert status["waiting"] == {"draft": {"question": "send it?", "draft": "about the plan"}}
    assert status["nodes"]["research"]["state"] == "done"  # the other branch finished
    with pytest.raises(UserError, match="waiting: 'draft'"):
        run.respond("research", "no")

    kill_and_restart(run.actor)  # SIGKILL while it waits: Ray restarts the host
    waiting(run, deadline)  # the restarted host drove it again: it waits again

    address = ray.get_runtime_context().gcs_address
    answer = subprocess.run(
        [sys.executable, "-m", "gecko_actors.cli", "respond", run.run_id, "draft", "yes",
         "--by", "ana", "--address", address],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert answer.returncode == 0, answer.stderr[-2000:]
    assert run.result(timeout=120) == ["notes", "sent: yes", "the plan"]
    assert run.status()["waiting"] == {}


def test_a_dedicated_run_waits_across_a_coordinator_kill_and_takes_its_answer(
    tmp_path: Path,
) -> None:
    wf = Workflow(f"ask-{uuid.uuid4().hex[:8]}").add_node("draft", draft)
    run = wf.start("x", checkpoint=tmp_path, dedicated=True)
    deadline = time.monotonic() + 120
    waiting(run, deadline)
    kill_and_restart(run.actor)  # Ray restarts the coordinator, which drives it again
    waiting(run, deadline)
    run.respond("draft", "ok")
    assert run.result(timeout=120) == "sent: ok"


def test_a_waiting_hosted_run_can_be_cancelled(tmp_path: Path) -> None:
    from gecko_actors import WorkflowError

    run = (
        Workflow(f"ask-{uuid.uuid4().hex[:8]}")
        .add_node("draft", draft)
        .start("x", checkpoint=tmp_path)
    )
    waiting(run, time.monotonic() + 120)
    run.cancel(timeout=60)
    with pytest.raises(WorkflowError, match="cancelled while it waited"):
        run.result(timeout=60)
    assert run.status()["status"] == "cancelled"


def test_an_agent_node_s_approval_tool_parks_its_branch_until_approved(tmp_path: Path) -> None:
    from gecko_actors import Agent, ScriptedModel, tool

    ledger = tmp_path / "ledger"

    @tool(approval=True)
    def pay(amount: int) -> str:
        """Pay an amount."""
        with open(ledger, "a") as out:
            out.write(f"{amount}\n")
        return "paid"

    def model(messages: list[Any], tools: Any) -> Any:
        if messages[-1].role == "tool":
            return f"result: {messages[-1].text}"
        return ScriptedModel.call("pay", amount=30)

    agent = Agent.spawn(f"payer-{uuid.uuid4().hex[:8]}", model=ScriptedModel(model), tools=[pay])
    try:
        run = (
            Workflow(f"pay-{uuid.uuid4().hex[:8]}")
            .add_node("pay", agent)
            .start("pay", checkpoint=tmp_path)
        )
        status = waiting(run, time.monotonic() + 120)
        assert status["waiting"] == {"pay": {"tool": "pay", "arguments": {"amount": 30}}}
        assert not ledger.exists()
        run.respond("pay", {"arguments": {"amount": 25}}, by="ana")
        assert run.result(timeout=120).content == "result: paid"
        assert ledger.read_text().splitlines() == ["25"]
    finally:
        agent.kill()
