"""Workflow graphs and the scheduler's join/prune/loop rules (pure, no Ray)."""

from __future__ import annotations

import pytest

from gecko_actors import ScriptedModel, UserError, WorkflowError
from gecko_actors.workflow import Next, NodeContext, RetryPolicy, WorkflowGraph
from gecko_actors.workflow.schedule import Scheduler


def fn(ctx: NodeContext) -> str:
    return "x"


def is_long(ctx: NodeContext) -> bool:
    return len(str(ctx.input)) > 3


def diamond() -> WorkflowGraph:
    return (
        WorkflowGraph("diamond")
        .add_node("start", fn)
        .add_node("left", fn)
        .add_node("right", fn)
        .add_node("join", fn)
        .add_edge("start", "left")
        .add_edge("start", "right", when=is_long)
        .add_edge("left", "join")
        .add_edge("right", "join")
    )


def run_steps(sched: Scheduler, outputs: dict[str, object], routes=None) -> list[str]:
    """Drive a scheduler to the end, finishing visits in order; returns the execution order."""
    order: list[str] = []
    while True:
        ready = sched.take_ready()
        if not ready:
            return order
        for visit in ready:
            order.append(visit.node)
            sched.finish(
                visit.node,
                visit.visit,
                outputs.get(visit.node, visit.node),
                (routes or {}).get(visit.node),
            )


# --- definition and validation ----------------------------------------------------------------


def test_validate_accepts_a_good_graph_and_first_node_is_the_entry() -> None:
    graph = diamond()
    graph.validate()
    assert graph.entry == "start"
    assert graph.sinks() == ["join"]
    assert graph.reachable("left") == {"left", "join"}


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: WorkflowGraph("w"), "has no nodes"),
        (lambda: WorkflowGraph("w").add_node("a", fn).set_entry("zzz"), "no valid entry"),
        (
            lambda: WorkflowGraph("w").add_node("a", fn).add_edge("a", "ghost"),
            "unknown nodes: ['ghost']",
        ),
        (
            lambda: (
                WorkflowGraph("w")
                .add_node("a", fn)
                .add_node("b", fn)
                .add_node("c", fn)
                .add_edge("a", "b")
                .add_edge("b", "c")
                .add_edge("c", "b")
            ),
            "cycle: b → c → b",
        ),
        (
            lambda: WorkflowGraph("w").add_node("a", fn).add_node("island", fn),
            "cannot be reached from 'a': ['island']",
        ),
    ],
)
def test_invalid_graphs_name_the_nodes(build, message: str) -> None:
    with pytest.raises(UserError) as info:
        build().validate()
    assert message in str(info.value)


def test_bad_definitions_are_refused_at_once() -> None:
    graph = WorkflowGraph("w").add_node("a", fn)
    with pytest.raises(UserError, match="already has a node named 'a'"):
        graph.add_node("a", fn)
    with pytest.raises(UserError, match="cannot run a int"):
        graph.add_node("b", 42)
    with pytest.raises(UserError, match="invalid"):
        graph.add_node("has space", fn)
    with pytest.raises(UserError, match="not callable"):
        graph.add_edge("a", "a", when="yes")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="timeout"):
        graph.add_node("c", fn, timeout=0)
    with pytest.raises(UserError, match="max_steps"):
        WorkflowGraph("w", max_steps=0)
    with pytest.raises(UserError, match="retry policy"):
        RetryPolicy(attempts=0)


def test_retry_policy_backs_off_exponentially_up_to_a_cap() -> None:
    policy = RetryPolicy(attempts=5, backoff=0.5, max_backoff=3)
    assert [policy.delay(a) for a in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3]
    graph = WorkflowGraph("w").add_node("a", fn, retry=3, num_cpus=2)
    assert graph.nodes["a"].retry.attempts == 3
    assert graph.nodes["a"].resources == {"num_cpus": 2}


def test_node_kinds() -> None:
    from gecko_actors.core.agent import LocalAgent

    inner = WorkflowGraph("inner").add_node("x", fn)
    graph = WorkflowGraph("outer").add_node("f", fn).add_node("sub", inner)
    assert graph.nodes["f"].kind == "function" and graph.nodes["sub"].kind == "workflow"
    # An in-process LocalAgent is not a node target: workflows run agent actors.
    with pytest.raises(UserError):
        graph.add_node("local", LocalAgent(ScriptedModel([])))


def test_mermaid() -> None:
    text = diamond().to_mermaid()
    assert text.splitlines()[0] == "flowchart TD"
    assert 'start(["start<br/>function"])' in text  # the entry is drawn rounded
    assert "start -. is_long .-> right" in text
    assert "left --> join" in text


def test_fingerprint_changes_with_structure_only() -> None:
    assert diamond().fingerprint() == diamond().fingerprint()
    changed = diamond().add_node("extra", fn).add_edge("join", "extra")
    assert changed.fingerprint() != diamond().fingerprint()
    other_condition = diamond()
    other_condition.edges[1] = type(other_condition.edges[1])("start", "right", lambda c: True)
    assert other_condition.fingerprint() != diamond().fingerprint()


# --- the scheduler ---------------------------------------------------------------------------


def test_parallel_branches_then_a_join_with_both_outputs() -> None:
    sched = Scheduler(diamond())
    sched.start("a long input")
    first = sched.take_ready()
    assert [(v.node, v.visit, v.input) for v in first] == [("start", 1, "a long input")]
    sched.finish("start", 1, "ok", routes={"right": True})
    assert sorted(v.node for v in sched.take_ready()) == ["left", "right"]  # no barrier
    sched.finish("left", 1, "L")
    assert sched.take_ready() == []  # the join waits for the live right branch
    sched.finish("right", 1, "R")
    (join,) = sched.take_ready()
    assert join.input == {"left": "L", "right": "R"}
    sched.finish("join", 1, "done")
    assert sched.finished and sched.result() == "done"


def test_a_pruned_branch_does_not_block_its_join() -> None:
    sched = Scheduler(diamond())
    sched.start("hi")
    order = run_steps(sched, {"left": "L"}, routes={"start": {"right": False}})
    assert order == ["start", "left", "join"]
    assert sched.status["right"] == "pruned"
    assert sched.inputs["join"] == "L"  # only the live predecessor's output


def test_pruning_propagates_through_a_chain() -> None:
    graph = (
        WorkflowGraph("chain")
        .add_node("a", fn)
        .add_node("b", fn)
        .add_node("c", fn)
        .add_node("d", fn)
        .add_edge("a", "b", when=is_long)
        .add_edge("b", "c")
        .add_edge("a", "d")
    )
    sched = Scheduler(graph)
    sched.start("x")
    order = run_steps(sched, {}, routes={"a": {"b": False}})
    assert order == ["a", "d"]
    assert (sched.status["b"], sched.status["c"]) == ("pruned", "pruned")
    assert sched.result() == "d"  # the one sink that ran


def test_next_loops_until_done_with_new_visits() -> None:
    graph = (
        WorkflowGraph("loop", max_steps=20)
        .add_node("plan", fn)
        .add_node("write", fn)
        .add_node("critic", fn)
        .add_node("publish", fn)
        .add_edge("plan", "write")
        .add_edge("write", "critic")
        .add_edge("critic", "publish")
    )
    sched = Scheduler(graph)
    sched.start("topic")
    seen: list[tuple[str, int, object]] = []
    rounds = 0
    while not sched.finished:
        for visit in sched.take_ready():
            seen.append((visit.node, visit.visit, visit.input))
            jump = None
            if visit.node == "critic" and rounds < 2:
                rounds += 1
                jump = Next("write", f"revise {rounds}")
            sched.finish(visit.node, visit.visit, f"{visit.node}#{visit.visit}", None, jump)
    assert [s[:2] for s in seen] == [
        ("plan", 1),
        ("write", 1),
        ("critic", 1),
        ("write", 2),
        ("critic", 2),
        ("write", 3),
        ("critic", 3),
        ("publish", 1),
    ]
    assert seen[3][2] == "revise 1" and seen[5][2] == "revise 2"
    assert sched.result() == "publish#1"


def test_max_steps_stops_a_runaway_loop() -> None:
    graph = WorkflowGraph("forever", max_steps=5).add_node("a", fn)
    sched = Scheduler(graph, run_id="r1")
    sched.start(0)
    with pytest.raises(WorkflowError, match="exceeded max_steps=5") as info:
        for _ in range(10):
            (visit,) = sched.take_ready()
            sched.finish("a", visit.visit, None, None, Next("a", visit.visit))
    assert info.value.run_id == "r1" and info.value.node == "a"


def test_jump_to_an_unknown_node_is_a_workflow_error() -> None:
    sched = Scheduler(WorkflowGraph("w").add_node("a", fn))
    sched.start(0)
    (visit,) = sched.take_ready()
    with pytest.raises(WorkflowError, match="unknown node 'nope'"):
        sched.finish("a", visit.visit, None, None, Next("nope"))


def test_stale_and_duplicate_finishes_are_ignored() -> None:
    sched = Scheduler(diamond())
    sched.start("long input")
    (start,) = sched.take_ready()
    assert sched.finish("start", start.visit, "ok")
    assert not sched.finish("start", start.visit, "again")  # already done
    assert not sched.finish("left", 99, "wrong visit")
    assert sched.steps == 1


def test_replaying_finished_steps_rebuilds_the_state() -> None:
    """What a restarted coordinator does with the committed steps of a checkpoint."""
    live = Scheduler(diamond())
    live.start("long input")
    log = []
    for _ in range(2):
        for visit in live.take_ready():
            routes = {"right": True} if visit.node == "start" else None
            live.finish(visit.node, visit.visit, visit.node.upper(), routes)
            log.append((visit.node, visit.visit, visit.node.upper(), routes))
    replayed = Scheduler(diamond())
    replayed.start("long input")
    for node, visit, output, routes in log:
        replayed.take_ready()
        assert replayed.finish(node, visit, output, routes)
    # The join is what is left, with the same input and visit number in both.
    assert [(v.node, v.visit, v.input) for v in replayed.take_ready()] == [
        (v.node, v.visit, v.input) for v in live.take_ready()
    ]


def test_replay_requeues_the_visits_that_were_in_flight() -> None:
    """A branch running when the coordinator died must run again, with the same visit."""
    replay = Scheduler(diamond())
    replay.start("long input")
    replay.take_ready()
    replay.finish("start", 1, "ok", {"right": True})
    replay.take_ready()  # left and right were dispatched; only left was committed
    replay.finish("left", 1, "L")
    assert replay.take_ready() == []  # right still counts as running
    replay.requeue_running()
    assert [(v.node, v.visit) for v in replay.take_ready()] == [("right", 1)]
