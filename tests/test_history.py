"""A run's history, read from its checkpoint alone: every committed step in order, with what
each visit was given and returned, the state it wrote, its attempts, its journal's effects
and the answers it was given (who, when); the same through ``gecko-actors history``."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from gecko_actors.checkpoint import CheckpointStore, StepRecord
from gecko_actors.checkpoint.steps import step_data, step_from
from gecko_actors.cli import main as cli
from gecko_actors.core.messages import AgentOutput, Message
from gecko_actors.workflow import NodeContext, RetryPolicy, WorkflowGraph
from gecko_actors.workflow.engine import RunEngine
from gecko_actors.workflow.execution import LocalExecutor
from gecko_actors.workflow.history import format_history, run_history, summary


def open_engine(graph: WorkflowGraph, store: CheckpointStore) -> RunEngine:
    engine = RunEngine(graph, "h1", store, LocalExecutor(store))
    engine.open({"order": 7}, create=True)
    return engine


def shop_graph() -> WorkflowGraph:
    def cart(ctx: NodeContext) -> str:
        ctx.state["cart"] = 3
        return "cart of 3"

    def pay(ctx: NodeContext) -> str:
        receipt = ctx.step("charge", lambda: "r-1")
        if ctx.attempt == 1:
            raise RuntimeError("mail server down")  # after the charge: retried
        ctx.state["paid"] = True
        del ctx.state["cart"]
        return receipt

    def approve(ctx: NodeContext) -> str:
        return f"approved: {ctx.interrupt({'question': 'ship it?', 'receipt': ctx.input})}"

    return (
        WorkflowGraph("shop")
        .add_node("cart", cart)
        .add_node("pay", pay, retry=RetryPolicy(attempts=2, backoff=0))
        .add_node("approve", approve)
        .add_edge("cart", "pay")
        .add_edge("pay", "approve")
    )


async def finished_run(store: CheckpointStore) -> None:
    engine = open_engine(shop_graph(), store)
    await engine.run()
    assert engine.outcome == "waiting", engine.failure
    assert await engine.respond("approve", "yes", by="ana") is False
    await engine.run()
    assert engine.outcome == "succeeded", engine.failure


async def test_history_lists_every_step_with_its_input_output_state_and_attempts() -> None:
    store = CheckpointStore(f"memory://{uuid.uuid4().hex}")
    await finished_run(store)
    history = run_history(store, "h1")
    assert history["workflow"] == "shop" and history["status"] == "succeeded"
    assert history["input"] == '{"order": 7}'
    steps = history["steps"]
    assert [(s["seq"], s["node"], s["visit"]) for s in steps] == [
        (0, "cart", 1), (1, "pay", 1), (2, "approve", 1)
    ]  # fmt: skip
    cart, pay, approve = steps
    assert cart["input"] == '{"order": 7}' and cart["output"] == "cart of 3"
    assert cart["state"] == {"cart": "3"}
    assert pay["input"] == "cart of 3" and pay["output"] == "r-1"
    assert pay["state"] == {"paid": "true", "cart": None}  # None: the key was deleted
    assert pay["attempts"] == 2 and pay["effects"] == {"step": 1}  # charged once, journaled
    assert approve["output"] == "approved: yes" and approve["effects"] == {}
    [answer] = approve["answers"]
    assert answer["question"] == {"question": "ship it?", "receipt": "r-1"}
    assert answer["answer"] == "yes" and answer["by"] == "ana" and answer["at"] > 0
    assert all(s["duration"] >= 0 and s["finished_at"] > 0 for s in steps)


async def test_a_waiting_run_s_history_shows_the_question_it_waits_on() -> None:
    store = CheckpointStore(f"memory://{uuid.uuid4().hex}")
    engine = open_engine(shop_graph(), store)
    await engine.run()
    history = run_history(store, "h1")
    assert [s["node"] for s in history["steps"]] == ["cart", "pay"]
    assert history["waiting"] == {"approve": {"question": "ship it?", "receipt": "r-1"}}
    assert "waiting: approve:" in format_history(history)


async def test_a_run_s_checkpoint_holds_its_graph_to_draw_it_later() -> None:
    store = CheckpointStore(f"memory://{uuid.uuid4().hex}")
    await finished_run(store)
    graph = store.read_manifest("h1").graph
    assert graph == json.loads(json.dumps(shop_graph().describe()))  # as plain data
    assert graph["edges"] == [["cart", "pay", None], ["pay", "approve", None]]
    assert set(graph["nodes"]) == {"cart", "pay", "approve"}


def test_an_unknown_run_has_no_history() -> None:
    assert run_history(CheckpointStore(f"memory://{uuid.uuid4().hex}"), "nope") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain  text\nover lines", "plain text over lines"),
        (Message.user("hi there"), "hi there"),
        (AgentOutput(content="the answer", messages=[]), "the answer"),
        ({"a": [1, 2]}, '{"a": [1, 2]}'),
        ({"when": object}, '{"when": "<class \'object\'>"}'),  # JSON has no form for it
        ("x" * 500, "x" * 197 + "..."),
    ],
)
def test_a_summary_is_one_short_line(value: Any, expected: str) -> None:
    assert summary(value) == expected


def test_a_step_record_without_an_input_summary_reads_as_before() -> None:
    record = StepRecord(0, "n", 1, "out", input_summary="in")
    data = step_data("r", record)
    assert step_from(dict(data), "w", "r", 0) == record
    older = step_data("r", StepRecord(0, "n", 1, "out"))
    assert "input_summary" not in older  # an earlier release reads it as before
    assert step_from(dict(older), "w", "r", 0).input_summary is None


async def test_the_history_command_prints_the_steps_and_their_answers(tmp_path: Path) -> None:
    await finished_run(CheckpointStore(f"file://{tmp_path}"))
    runner = CliRunner()
    text = runner.invoke(cli, ["history", "h1", "--checkpoint", str(tmp_path)])
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert lines[0].startswith("run h1 (shop): succeeded, 3 step(s)")
    assert any(line.startswith("#1 pay (visit 1)") and "2 attempts" in line for line in lines)
    assert "    journaled: 1 step" in lines
    assert any("asked: " in line and "by ana" in line and line.endswith(": yes") for line in lines)
    as_json = runner.invoke(cli, ["history", "h1", "--checkpoint", str(tmp_path), "--json"])
    assert json.loads(as_json.stdout)["steps"][2]["answers"][0]["by"] == "ana"
    missing = runner.invoke(cli, ["history", "nope", "--checkpoint", str(tmp_path)])
    assert missing.exit_code == 1 and "no run 'nope'" in missing.output
