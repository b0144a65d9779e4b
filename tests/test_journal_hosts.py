"""The effect journal on Ray: a function node's ``ctx.step`` side effect, and an agent node's
tool call, run once across a SIGKILL of their workflow host (Ray restarts the host, which
resumes the run), on file:// and s3://."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path

import pytest

from gecko_actors.checkpoint import CheckpointStore
from gecko_actors.checkpoint.journal import Journal
from gecko_actors.testing.chaos import kill_and_restart
from gecko_actors.workflow import NodeContext, Workflow

pytestmark = pytest.mark.usefixtures("ray_session")


def charge(ledger: str, run_id: str) -> str:
    """A side effect: one line in ``ledger`` per real charge."""
    with open(ledger, "a") as out:
        out.write(f"{run_id}\n")
    return f"receipt-{len(Path(ledger).read_text().splitlines())}"


def pay_then_wait(ledger: str, gate: str):
    async def pay(ctx: NodeContext) -> str:
        receipt = await ctx.astep("charge", charge, ledger, ctx.run_id)
        while not os.path.exists(gate):  # the host is killed while the node waits here
            await asyncio.sleep(0.05)
        return receipt

    return pay


@pytest.mark.parametrize("where", ["file", "s3"])
def test_a_step_runs_once_across_a_host_kill(tmp_path: Path, where: str, request) -> None:
    uri = f"file://{tmp_path}" if where == "file" else request.getfixturevalue("s3").uri()
    ledger, gate = tmp_path / "ledger", tmp_path / "gate"
    wf = Workflow(f"pay-{uuid.uuid4().hex[:8]}").add_node(
        "pay", pay_then_wait(str(ledger), str(gate))
    )
    run = wf.start(None, checkpoint=uri)
    journal = Journal(CheckpointStore(uri), run.run_id, 1)
    deadline = time.monotonic() + 120
    while journal.count() < 1:  # charged, and the charge journaled
        assert time.monotonic() < deadline, "the step did not run"
        time.sleep(0.05)
    kill_and_restart(run.actor)  # SIGKILL: Ray restarts the host, which resumes
    gate.touch()
    assert run.result(timeout=120) == "receipt-1"
    assert ledger.read_text().splitlines() == [run.run_id]  # charged once


def ledger_tool(ledger: str):
    def write_line(text: str) -> str:
        """Append a line to the ledger."""
        with open(ledger, "a") as out:
            out.write(f"{text}\n")
        return "written"

    return write_line


def gated_model(gate: str):
    """Calls the tool first; once the tool answered, waits for ``gate`` (the host is killed
    meanwhile), then answers."""

    def reply(messages, tools):
        from gecko_actors import ScriptedModel

        if messages[-1].role != "tool":
            return ScriptedModel.call("write_line", text="paid")
        while not os.path.exists(gate):
            time.sleep(0.05)
        return "done"

    return reply


@pytest.mark.parametrize("where", ["file", "s3"])
def test_an_agent_node_s_tool_call_runs_once_across_a_host_kill(
    tmp_path: Path, where: str, request
) -> None:
    from gecko_actors import Agent, ScriptedModel

    uri = f"file://{tmp_path}" if where == "file" else request.getfixturevalue("s3").uri()

    ledger, gate = tmp_path / "ledger", tmp_path / "gate"
    agent = Agent.spawn(
        f"payer-{uuid.uuid4().hex[:8]}",
        model=ScriptedModel(gated_model(str(gate))),
        tools=[ledger_tool(str(ledger))],
    )
    try:
        wf = Workflow(f"agent-pay-{uuid.uuid4().hex[:8]}").add_node("pay", agent)
        run = wf.start("pay the order", checkpoint=uri, journal_models=True)
        journal = Journal(CheckpointStore(uri), run.run_id, 1)
        deadline = time.monotonic() + 120
        while journal.count() < 2:  # the model's call of the tool, then the tool's result
            assert time.monotonic() < deadline, "the tool did not run"
            time.sleep(0.05)
        assert run.status()["journal"] == 2  # a live run's status counts them too
        kill_and_restart(run.actor)  # SIGKILL before the node commits
        gate.touch()
        assert run.result(timeout=120).content == "done"
        assert ledger.read_text().splitlines() == ["paid"]  # the visit ran again: no new line
    finally:
        agent.kill()


def test_a_run_journals_model_calls_as_its_start_says(tmp_path: Path) -> None:
    store = CheckpointStore(f"file://{tmp_path}")
    wf = Workflow(f"say-{uuid.uuid4().hex[:8]}").add_node("n", lambda ctx: ctx.input)
    assert os.environ["GECKO_JOURNAL_MODELS"] == "1"  # the pytest plugin's default
    for asked, expected in ((None, True), (False, False), (False, False), (True, True)):
        run = wf.start("x", checkpoint=tmp_path, journal_models=asked)
        assert run.result(timeout=120) == "x"
        assert store.read_manifest(run.run_id).journal_models is expected, asked
    assert wf.journal_models is None  # the workflow's own default is unchanged
