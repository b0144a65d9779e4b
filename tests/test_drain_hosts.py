"""Draining a workflow host on Ray: it lets its runs go (one in the middle of a node, one
waiting for an answer) without recording anything, exits, and a host of the same pool takes
each over from its checkpoint; the runs' handles follow them there, and nothing committed
runs again."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import ray

import gecko_actors
from gecko_actors.checkpoint import CheckpointStore
from gecko_actors.exceptions import UserError
from gecko_actors.workflow import NodeContext, Workflow

pytestmark = pytest.mark.usefixtures("ray_session")


def until(check: Any, deadline: float) -> None:
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_drained_host_hands_its_runs_over_and_their_handles_follow(tmp_path: Path) -> None:
    go, attempts = tmp_path / "go", tmp_path / "attempts"

    async def slow(ctx: NodeContext) -> str:
        # Async: a host stops it at once (a sync node in a thread would run to its end first).
        with attempts.open("a") as out:  # each host that runs it says so
            out.write("ran\n")
        while not go.exists():
            await asyncio.sleep(0.05)
        return "slow done"

    def ask(ctx: NodeContext) -> str:
        return f"sent: {ctx.interrupt({'q': 'send?'})}"

    uri = str(tmp_path / "runs")
    first = Workflow(f"pre-{uuid.uuid4().hex[:6]}").add_node("first", lambda ctx: "first")
    first.add_node("slow", slow).add_edge("first", "slow")
    long = first.start(None, checkpoint=uri)
    waits = Workflow(f"ask-{uuid.uuid4().hex[:6]}").add_node("ask", ask).start(None, checkpoint=uri)
    deadline = time.monotonic() + 120
    until(attempts.exists, deadline)
    until(lambda: waits.status()["status"] == "waiting", deadline)
    host = long.info()["host"]
    assert waits.info()["host"] == host

    report = gecko_actors.drain_workflow_host(host, timeout=0.5)
    assert set(report["released"]) == {long.run_id, waits.run_id}, report
    assert report["ended"] == []

    go.touch()
    assert long.result(timeout=120) == "slow done"  # the handle followed the run
    waits.respond("ask", "yes")
    assert waits.result(timeout=120) == "sent: yes"
    store = CheckpointStore(f"file://{uri}")
    steps = [r.node for r in store.load_steps(long.run_id)]
    assert steps == ["first", "slow"]  # committed once: 'first' did not run again
    assert attempts.read_text().split() == ["ran", "ran"]  # the node in flight ran again


def test_draining_a_host_that_does_not_exist_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="no live workflow host is named"):
        gecko_actors.drain_workflow_host("workflows/host/nope/9")


def test_a_deploy_lets_a_waiting_run_go_and_the_new_version_resumes_it(tmp_path: Path) -> None:
    def ask(ctx: NodeContext) -> str:
        return f"v1: {ctx.interrupt({'q': 'send?'})}"

    def ask_again(ctx: NodeContext) -> str:  # version 2: the node's code changed
        return f"v2: {ctx.interrupt({'q': 'send?'})}"

    name = f"deploy-{uuid.uuid4().hex[:6]}"
    old = Workflow(name, version=1).add_node("ask", ask)
    run = old.start(None, checkpoint=tmp_path)
    until(lambda: run.status()["status"] == "waiting", time.monotonic() + 120)

    report = gecko_actors.drain_workflow_host(run.info()["host"], hand_over=False)
    assert report["released"] == {run.run_id: None}
    new = Workflow(name, version=2).add_node("ask", ask_again)
    resumed = new.resume(run.run_id, checkpoint=tmp_path)
    until(lambda: resumed.status()["status"] == "waiting", time.monotonic() + 120)
    assert resumed.status()["version"] == "2"
    resumed.respond("ask", "yes")
    assert resumed.result(timeout=120) == "v2: yes"


def test_a_handle_follows_its_run_when_the_host_was_killed_for_good(tmp_path: Path) -> None:
    go = tmp_path / "go"

    async def slow(ctx: NodeContext) -> str:
        while not go.exists():
            await asyncio.sleep(0.05)
        return "done"

    run = (
        Workflow(f"gone-{uuid.uuid4().hex[:6]}")
        .add_node("slow", slow)
        .start(None, checkpoint=tmp_path)
    )
    until(
        lambda: run.status()["nodes"].get("slow", {}).get("state") == "running",
        time.monotonic() + 120,
    )
    ray.kill(run.actor, no_restart=True)  # no Ray restart: the handle's next call makes it again
    go.touch()
    assert run.result(timeout=120) == "done"  # from the host made again, which resumed it
