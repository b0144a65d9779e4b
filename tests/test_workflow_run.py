"""Workflows on Ray: parallel branches, loops, retries, and runs that survive the loss of their
coordinator. Every side effect goes through a ledger file (one line per execution)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import ray
from s3util import MotoS3

from gecko_actors import UserError, WorkflowError
from gecko_actors.checkpoint import CheckpointStore
from gecko_actors.exceptions import CheckpointError
from gecko_actors.testing.chaos import kill_run_host, storage_outage
from gecko_actors.workflow import Next, NodeContext, RetryPolicy, Workflow

pytestmark = pytest.mark.usefixtures("ray_session")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def ledger_step(path: str, seconds: float = 0.0):
    """A node that sleeps, then records its execution (node and idempotency key)."""

    def step(ctx: NodeContext) -> dict:
        start = time.time()
        time.sleep(seconds)
        with open(path, "a") as ledger:
            ledger.write(f"{ctx.node} {ctx.idempotency_key}\n")
        return {"node": ctx.node, "start": start, "end": time.time(), "input": ctx.input}

    return step


def executions(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


def test_parallel_branches_overlap_and_join(tmp_path: Path, checkpoint_uri: str) -> None:
    ledger = str(tmp_path / "ledger")
    wf = (
        Workflow(unique("diamond"))
        .add_node("start", ledger_step(ledger))
        .add_node("left", ledger_step(ledger, 1.5))
        .add_node("right", ledger_step(ledger, 1.5))
        .add_node("join", lambda ctx: sorted(ctx.input))
        .add_edge("start", "left")
        .add_edge("start", "right")
        .add_edge("left", "join")
        .add_edge("right", "join")
    )
    # No warm-up: function nodes run in the coordinator's threads, so neither branch waits
    # for a CPU slot or a new worker process, even on a cold, loaded machine.
    run = wf.start("go", checkpoint=checkpoint_uri)
    assert run.result(timeout=120) == ["left", "right"]
    status = run.status()
    assert status["status"] == "succeeded" and status["steps"] == 4
    # No barrier: the two branches ran at the same time.
    steps = CheckpointStore(checkpoint_uri).load_steps(run.run_id)
    left, right = (s.output for s in steps if s.node in ("left", "right"))
    assert max(left["start"], right["start"]) < min(left["end"], right["end"])
    assert sorted(executions(tmp_path / "ledger")) == ["left", "right", "start"]
    kinds = [e["type"] for e in run.events()]  # Gecko's event names
    assert kinds[0] == "workflow_started" and kinds[-1] == "workflow_completed"
    assert kinds.count("node_started") == kinds.count("node_completed") == 4


def test_conditions_prune_and_next_loops(checkpoint_uri: str) -> None:
    def critic(ctx: NodeContext):
        drafts = ctx.state.get("drafts", 0) + 1
        ctx.state["drafts"] = drafts
        return "approved" if drafts >= 3 else Next("write", f"revise {drafts}")

    wf = (
        Workflow(unique("loop"), max_steps=20)
        .add_node("write", lambda ctx: f"draft of {ctx.input}")
        .add_node("critic", critic)
        .add_node("publish", lambda ctx: f"published ({ctx.input})")
        .add_node("archive", lambda ctx: "never")
        .add_edge("write", "critic")
        .add_edge("critic", "publish", when=lambda ctx: ctx.input == "approved")
        .add_edge("critic", "archive", when=lambda ctx: ctx.input != "approved")
    )
    run = wf.start("topic", checkpoint=checkpoint_uri)
    assert run.result(timeout=120) == "published (approved)"
    assert run.status()["nodes"]["write"]["visit"] == 3


def test_max_steps_and_failures_are_workflow_errors(tmp_path: Path) -> None:
    looping = Workflow(unique("forever"), max_steps=4).add_node("a", lambda ctx: Next("a", 1))
    with pytest.raises(WorkflowError, match="exceeded max_steps=4"):
        looping.start(None, checkpoint=tmp_path).result(timeout=120)

    attempts = tmp_path / "attempts"

    def flaky(ctx: NodeContext) -> str:
        with open(attempts, "a") as f:
            f.write("x")
        raise RuntimeError(f"attempt {ctx.attempt} broke")

    retry = RetryPolicy(attempts=3, backoff=0.01)
    failing = Workflow(unique("flaky")).add_node("shaky", flaky, retry=retry)
    with pytest.raises(WorkflowError, match=r"'shaky'.*after 3 attempt") as info:
        failing.start(None, checkpoint=tmp_path).result(timeout=120)
    assert info.value.node == "shaky" and info.value.attempt == 3
    assert attempts.read_text() == "xxx"


def test_coordinator_crash_resumes_without_redoing_committed_nodes(
    tmp_path: Path, checkpoint_uri: str
) -> None:
    ledger = tmp_path / "ledger"
    wf = Workflow(unique("chain"))
    for name in ("a", "b", "c", "d"):
        wf.add_node(name, ledger_step(str(ledger), 0.8))
    wf.add_edge("a", "b").add_edge("b", "c").add_edge("c", "d")
    run = wf.start("x", checkpoint=checkpoint_uri)
    deadline = time.monotonic() + 60
    while run.status()["nodes"].get("b", {}).get("state") != "done":
        assert time.monotonic() < deadline, run.status()
        time.sleep(0.1)
    ray.kill(run.actor, no_restart=False)  # the coordinator crashes; Ray restarts it
    assert run.result(timeout=120)["node"] == "d"
    counts = {n: executions(ledger).count(n) for n in "abcd"}
    assert counts["a"] == 1 and counts["b"] == 1 and counts["d"] == 1
    assert counts["c"] in (1, 2)  # in flight at the crash: run again with the same key
    keys = {line.split()[1] for line in ledger.read_text().splitlines() if line.startswith("c ")}
    assert len(keys) == 1


def test_resume_checks_the_graph_and_returns_stored_results(checkpoint_uri: str) -> None:
    name = unique("stored")
    wf = Workflow(name).add_node("only", lambda ctx: ctx.input * 2)
    run = wf.start(21, checkpoint=checkpoint_uri)
    assert run.result(timeout=120) == 42
    ray.kill(run.actor, no_restart=True)
    assert wf.resume(run.run_id, checkpoint=checkpoint_uri).result(timeout=60) == 42
    changed = Workflow(name).add_node("first", lambda ctx: 0)  # "only" ran: it cannot go
    with pytest.raises(UserError, match="different graph"):
        changed.resume(run.run_id, checkpoint=checkpoint_uri)
    with pytest.raises(UserError, match="no run"):
        wf.resume("missing-run", checkpoint=checkpoint_uri)
    with pytest.raises(UserError, match="already exists"):
        wf.start(1, run_id=run.run_id, checkpoint=checkpoint_uri)


def test_invalid_graph_fails_before_any_actor(tmp_path: Path) -> None:
    wf = Workflow(unique("broken")).add_node("a", lambda ctx: 1).add_edge("a", "ghost")
    before = set(ray.util.list_named_actors())
    with pytest.raises(UserError, match="ghost"):
        wf.start(None, checkpoint=tmp_path)
    fine = Workflow(unique("in-memory")).add_node("a", lambda ctx: 1)
    with pytest.raises(UserError, match="memory:// store lives in one process"):
        fine.start(None, checkpoint="memory://runs")
    with pytest.raises(UserError, match=r"the run's input.*of type builtins.object"):
        fine.start({"x": object()}, checkpoint=tmp_path)
    assert set(ray.util.list_named_actors()) == before


def shout(messages, tools):
    return messages[-1].text.upper()


def test_agent_team_and_map_nodes(tmp_path: Path) -> None:
    from gecko_actors import Agent, ScriptedModel, Team

    planner = Agent.spawn(unique("planner"), model=ScriptedModel(shout))
    members = [Agent.spawn(unique("member"), model=ScriptedModel(shout)) for _ in range(2)]
    try:
        wf = (
            Workflow(unique("mixed"))
            .add_node("plan", planner)
            .add_node("split", lambda ctx: ctx.input.content.split())
            .add_node("each", lambda ctx: f"<{ctx.input}>", fan_out=True)
            .add_node("team", Team(members))
            .add_node("report", lambda ctx: ctx.input)
            .add_edge("plan", "split")
            .add_edge("split", "each")
            .add_edge("each", "team")
            .add_edge("team", "report")
        )
        run = wf.start("two words", checkpoint=tmp_path)
        result = run.result(timeout=120)
        assert [o.content for o in result["outputs"]] == ['["<TWO>", "<WORDS>"]'] * 2
        assert result["errors"] == [None, None]
        nodes = run.status()["nodes"]
        assert nodes["plan"]["tokens"] > 0 and nodes["team"]["tokens"] > 0
        assert nodes["split"]["tokens"] == 0  # no model call
        assert run.status()["tokens"] == sum(n["tokens"] for n in nodes.values())
        assert "plan" in run.summary() and "succeeded" in run.summary()
    finally:
        for agent in [planner, *members]:
            agent.kill()


def test_nested_workflows_run_as_child_runs(tmp_path: Path, checkpoint_uri: str) -> None:
    ledger = tmp_path / "ledger"
    inner = (
        Workflow(unique("inner"))
        .add_node("x", ledger_step(str(ledger)))
        .add_node("y", lambda ctx: f"{ctx.input['input']}!")
        .add_edge("x", "y")
    )
    outer = (
        Workflow(unique("outer"))
        .add_node("prep", lambda ctx: ctx.input.upper())
        .add_node("sub", inner)
        .add_node("split", lambda ctx: list(ctx.input.rstrip("!")))
        .add_node("each", inner, fan_out=True)
        .add_edge("prep", "sub")
        .add_edge("sub", "split")
        .add_edge("split", "each")
    )
    run = outer.start("ab", checkpoint=checkpoint_uri)
    assert run.result(timeout=120) == ["A!", "B!"]
    children = {f"{run.run_id}.sub.1", f"{run.run_id}.each.1.0", f"{run.run_id}.each.1.1"}
    assert children <= set(CheckpointStore(checkpoint_uri).list_runs())
    keys = [line.split()[1] for line in ledger.read_text().splitlines()]
    assert sorted(keys) == sorted(f"{child}/x/1" for child in children)
    # A changed child is a changed parent: its run could not be resumed with it.
    other = Workflow(inner.name).add_node("x", lambda ctx: 0)
    assert Workflow(outer.name).add_node("sub", other).fingerprint() != (
        Workflow(outer.name).add_node("sub", inner).fingerprint()
    )


def test_a_failed_run_resumes_from_its_last_committed_step(
    tmp_path: Path, checkpoint_uri: str
) -> None:
    ledger, gate = tmp_path / "ledger", tmp_path / "gate"
    record = ledger_step(str(ledger))

    def guarded(ctx: NodeContext) -> dict:
        if not gate.exists():
            raise RuntimeError("the gate is closed")
        return record(ctx)

    wf = Workflow(unique("gated")).add_node("a", record).add_node("b", guarded)
    wf.add_node("c", record).add_edge("a", "b").add_edge("b", "c")
    run = wf.start("x", checkpoint=checkpoint_uri)
    with pytest.raises(WorkflowError, match="the gate is closed") as info:
        run.result(timeout=120)
    assert info.value.node == "b"
    status = run.status()
    assert status["status"] == "failed" and status["nodes"]["b"]["state"] == "failed"
    assert "RuntimeError: the gate is closed" in status["nodes"]["b"]["error"]
    summary = run.summary()
    assert "failed" in summary and "the gate is closed" in summary
    assert [e["type"] for e in run.events()][-2:] == ["node_error", "workflow_error"]
    gate.touch()
    again = wf.resume(run.run_id, checkpoint=checkpoint_uri)
    assert again.result(timeout=120)["node"] == "c"
    assert executions(ledger) == ["a", "b", "c"]  # a was committed: not run again
    assert again.status()["status"] == "succeeded"


def test_an_s3_outage_fails_the_run_clearly_and_resume_loses_nothing(tmp_path: Path) -> None:
    server = MotoS3("gecko-outage-wf").start()
    try:
        uri, ledger = server.uri(), tmp_path / "ledger"
        wf = Workflow(unique("outage"))
        for name, seconds in (("a", 0), ("b", 1.5), ("c", 0), ("d", 0)):
            wf.add_node(name, ledger_step(str(ledger), seconds))
        wf.add_edge("a", "b").add_edge("b", "c").add_edge("c", "d")
        run = wf.start("x", checkpoint=uri)
        deadline = time.monotonic() + 60
        while run.status()["nodes"].get("b", {}).get("state") != "running":
            assert time.monotonic() < deadline, run.status()
            time.sleep(0.05)
        with storage_outage(server):  # b finishes, but its step cannot be committed
            with pytest.raises(CheckpointError, match="was not committed: could not") as info:
                run.result(timeout=120)
            assert "s3://gecko-outage-wf/" in str(info.value) and "(node 'b')" in str(info.value)
            assert run.status()["status"] == "failed"
        assert wf.resume(run.run_id, checkpoint=uri).result(timeout=120)["node"] == "d"
        # a was committed before the outage; b's result was lost with it, so b ran again,
        # with the same idempotency key.
        assert executions(ledger) == ["a", "b", "b", "c", "d"]
        keys = {line.split()[1] for line in ledger.read_text().splitlines() if line[0] == "b"}
        assert len(keys) == 1
    finally:
        server.stop()


@pytest.mark.parametrize("kill_after", [1, 2, 3, 4, 5])
def test_coordinator_killed_at_each_step(
    tmp_path: Path, checkpoint_uri: str, kill_after: int
) -> None:
    """A 6-node workflow with a parallel section; the coordinator is SIGKILLed once k steps
    are committed. The run ends as an uninterrupted one would, and every node that was
    committed before the crash ran exactly once."""
    ledger = tmp_path / "ledger"
    wf = Workflow(unique("six"))
    for name in ("a", "b", "c", "d", "e", "f"):
        wf.add_node(name, ledger_step(str(ledger), 0.3))
    wf.add_edge("a", "b").add_edge("a", "c").add_edge("b", "d").add_edge("c", "d")
    wf.add_edge("d", "e").add_edge("e", "f")
    run = wf.start("x", checkpoint=checkpoint_uri)
    kill_run_host(run, at_step=kill_after)
    assert run.result(timeout=120)["node"] == "f"
    # The first kill_after steps were committed before the kill.
    committed = [r.node for r in CheckpointStore(checkpoint_uri).load_steps(run.run_id)]
    committed = committed[:kill_after]
    lines = [line.split() for line in ledger.read_text().splitlines()]
    for node in "abcdef":
        keys = {key for name, key in lines if name == node}
        assert len(keys) == 1, (node, keys)  # one visit, one idempotency key
    for node in committed:
        assert [name for name, _ in lines].count(node) == 1, node


def test_a_finished_coordinator_exits_and_its_handle_reads_the_checkpoint(
    checkpoint_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gecko_actors._actors.common import lookup

    monkeypatch.setenv("GECKO_WORKFLOW_LINGER", "0.2")
    wf = Workflow(unique("brief")).add_node("a", lambda ctx: ctx.input + 1)
    wf.add_node("b", lambda ctx: ctx.input * 10).add_edge("a", "b")
    run = wf.start(1, checkpoint=checkpoint_uri, dedicated=True)
    assert run.info()["placement"] == "dedicated"
    assert run.result(timeout=120) == 20
    deadline = time.monotonic() + 60
    while lookup(f"workflow/{run.run_id}") is not None:  # its process is freed
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert run.result() == 20  # now from the checkpoint
    status = run.status()
    assert status["status"] == "succeeded" and set(status["nodes"]) == {"a", "b"}
    assert "succeeded" in run.summary() and list(run.events()) == []
    again = wf.resume(run.run_id, checkpoint=checkpoint_uri)  # a new coordinator, same answer
    assert again.result(timeout=60) == 20


def read_upstream(ctx: NodeContext) -> dict:
    """A node that reads other nodes' outputs: in a Ray task, they are asked of the
    coordinator on access (nothing but a handle travels with the task)."""
    import os

    return {"a": ctx.outputs["a"], "names": sorted(ctx.outputs), "pid": os.getpid()}


def test_where_function_nodes_run_and_what_they_read(tmp_path: Path) -> None:
    wf = (
        Workflow(unique("where"))
        .add_node("a", lambda ctx: {"big": "x" * 50_000})
        .add_node("in_process", read_upstream)  # a sync function: a coordinator thread
        .add_node("killable", read_upstream, timeout=60)  # sync with a timeout: a Ray task
        .add_node("sized", read_upstream, num_cpus=0.5)  # asks for resources: a Ray task
        .add_edge("a", "in_process")
        .add_edge("a", "killable")
        .add_edge("a", "sized")
    )
    run = wf.start(None, checkpoint=tmp_path)
    result = run.result(timeout=120)
    coordinator_pid = ray.get(run.actor.__ray_call__.remote(lambda self: __import__("os").getpid()))
    for node in ("in_process", "killable", "sized"):
        assert result[node]["a"] == {"big": "x" * 50_000}
        assert result[node]["names"] == ["a"]
    assert result["in_process"]["pid"] == coordinator_pid
    assert result["killable"]["pid"] != coordinator_pid != result["sized"]["pid"]
