"""Versioned workflows: which new graphs a run may go on with (the pure rules of
``workflow/versions.py``, with a randomized check that they never admit a graph the run's
steps do not replay on), a run parked on ``ctx.interrupt`` resumed with a compatible version
by the Ray-free engine, an incompatible one refused with nothing changed, ``wf.migrate`` of
renamed nodes (their steps and journaled answers found under the new names), the strict
rule of runs recorded without their graph, the CLI guard and the viewer; one test on Ray."""

from __future__ import annotations

import pickle
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gecko_actors.checkpoint import CheckpointStore, Manifest, StepRecord
from gecko_actors.checkpoint.upgrades import Upgrade, composed, read_upgrades, write_upgrade
from gecko_actors.cli import main as cli
from gecko_actors.exceptions import CheckpointError, IncompatibleVersion, UserError
from gecko_actors.ui.data import RunsReader
from gecko_actors.workflow import Next, NodeContext, WorkflowGraph
from gecko_actors.workflow.engine import RunEngine
from gecko_actors.workflow.execution import LocalExecutor
from gecko_actors.workflow.fork import create_fork
from gecko_actors.workflow.schedule import Scheduler
from gecko_actors.workflow.status import format_status, status_from_checkpoint
from gecko_actors.workflow.upgrading import migrate_run
from gecko_actors.workflow.versions import (
    changes,
    check_renames,
    renamed_graph,
    renamed_steps,
    replay_changes,
    run_past,
    skeleton,
    structural_changes,
)

# --- the pure rules ---------------------------------------------------------------------------


def fn(name: str) -> Any:
    """A node function named ``name`` (its target name is what describe() records)."""

    def node(ctx: NodeContext) -> Any:
        return ctx.input

    node.__qualname__ = name
    return node


class Agent:  # node_kind tells an agent node by its class name; nothing calls it here
    name = "drafter"


def graph(nodes: dict[str, Any], edges: list[tuple[str, str]], **options: Any) -> WorkflowGraph:
    """A graph of ``nodes`` (name -> target, or None for a plain function) and ``edges``."""
    g = WorkflowGraph("report", **options)
    for name, target in nodes.items():
        g.add_node(name, target if target is not None else fn(name))
    for source, target in edges:
        g.add_edge(source, target)
    return g


def steps(*nodes: str) -> list[StepRecord]:
    """Committed steps, one visit each, in this order."""
    return [StepRecord(seq, node, 1, f"out of {node}") for seq, node in enumerate(nodes)]


def reasons(old: WorkflowGraph, new: WorkflowGraph, records: list[StepRecord]) -> list[str]:
    past = run_past(old.describe(), "topic", records)
    return changes(old.describe(), new.describe(), past, version=new.version)


PIPELINE = {"plan": None, "write": None, "review": None}
CHAIN = [("plan", "write"), ("write", "review")]


def test_the_same_graph_and_node_code_changes_are_compatible() -> None:
    old = graph(PIPELINE, CHAIN)
    assert reasons(old, graph(PIPELINE, CHAIN), steps("plan", "write")) == []
    recoded = graph({"plan": fn("plan_v2"), "write": fn("write_v2"), "review": None}, CHAIN)
    assert recoded.fingerprint() != old.fingerprint()  # the code changed: not the same graph
    assert reasons(old, recoded, steps("plan", "write")) == []
    longer = graph(PIPELINE, CHAIN, max_steps=7)
    assert reasons(old, longer, steps("plan")) == []


def test_nodes_and_edges_added_after_the_frontier_are_compatible() -> None:
    old = graph(PIPELINE, CHAIN)
    after = graph({**PIPELINE, "publish": None}, [*CHAIN, ("review", "publish")])
    assert reasons(old, after, steps("plan", "write")) == []  # review is the frontier
    beside = graph({**PIPELINE, "audit": None}, [*CHAIN, ("plan", "audit")])
    assert reasons(old, beside, steps("plan", "write")) == []  # it runs on resume
    join = graph({**PIPELINE, "extra": None}, [*CHAIN, ("write", "extra"), ("extra", "review")])
    assert reasons(old, join, steps("plan")) == []  # review's join inputs: not decided yet


def test_a_conditional_edge_added_after_a_node_that_ran_is_refused() -> None:
    old = graph(PIPELINE, CHAIN)
    new = graph(PIPELINE, CHAIN).add_node("audit", fn("audit"))
    new.add_edge("plan", "audit", when=lambda ctx: True)
    found = reasons(old, new, steps("plan", "write"))
    assert found == [
        "edge 'plan' -> 'audit' was added with a condition (lambda) after node 'plan' ran: "
        "the condition was never evaluated in this run"
    ]
    # From a node on the frontier it is decided when that node finishes: fine.
    assert reasons(old, new, steps()) == []


def test_removed_nodes_that_ran_or_wait_are_refused_the_others_are_not() -> None:
    old = graph({**PIPELINE, "notes": None}, [*CHAIN, ("write", "notes")])
    gone = graph({"plan": None, "write": None, "notes": None}, [CHAIN[0], ("write", "notes")])
    assert reasons(old, gone, steps("plan", "write", "notes", "review")) == [
        "node 'review' ran in this run but is gone from the new graph"
    ]
    assert reasons(old, gone, steps("plan", "write")) == [
        "node 'review' is running or waiting in this run but is gone from the new graph"
    ]
    assert reasons(old, gone, steps("plan")) == []  # review never reached: removable
    v3 = graph(PIPELINE, CHAIN, version=3)
    assert reasons(old, v3, steps("plan")) == []
    assert reasons(old, v3, steps("plan", "write", "notes")) == [
        "node 'notes' ran in this run but is gone from version 3"
    ]


def test_kind_fan_out_entry_name_and_edges_that_ran_are_refused_by_name() -> None:
    old = graph(
        {"plan": None, "draft": Agent(), "send": None}, [("plan", "draft"), ("draft", "send")]
    )
    kind = graph(
        {"plan": None, "draft": None, "send": None}, [("plan", "draft"), ("draft", "send")]
    )
    assert reasons(old, kind, steps("plan", "draft")) == [
        "node 'draft' changed kind from agent to function"
    ]
    assert reasons(old, kind, steps()) == []  # draft not reached yet: free to change
    mapped = WorkflowGraph("report").add_node("plan", fn("plan")).add_node("draft", Agent())
    mapped.add_node("send", fn("send"), fan_out=True).add_edge("plan", "draft")
    mapped.add_edge("draft", "send")
    assert reasons(old, mapped, steps("plan", "draft")) == [
        "node 'send' changed from a plain node to a map one"
    ]
    moved = graph(PIPELINE, CHAIN).set_entry("write")
    assert "entry changed from 'plan' to 'write'" in reasons(graph(PIPELINE, CHAIN), moved, [])
    other = WorkflowGraph("other").add_node("plan", fn("plan"))
    assert reasons(WorkflowGraph("report").add_node("plan", fn("plan")), other, []) == [
        "the workflow's name changed from 'report' to 'other'"
    ]
    rerouted = graph(
        {**PIPELINE, "edit": None}, [("plan", "edit"), ("edit", "write"), ("write", "review")]
    )
    assert reasons(graph(PIPELINE, CHAIN), rerouted, steps("plan", "write")) == [
        "edge 'plan' -> 'write' ran but was removed",
        "edge 'edit' -> 'write' was added, but node 'write' ran in this run (its inputs would "
        "change)",
    ]


def test_the_join_inputs_of_a_node_that_ran_cannot_change() -> None:
    def wide(*extra: tuple[str, str]) -> WorkflowGraph:
        nodes = {"a": None, "b": None, "c": None, "j": None, "x": None}
        return graph(nodes, [("a", "b"), ("a", "c"), ("b", "j"), ("c", "j"), *extra])

    old = wide()
    assert reasons(old, wide(("x", "j")), steps("a", "b", "c", "j")) == [
        "edge 'x' -> 'j' was added, but node 'j' ran in this run (its inputs would change)"
    ]
    assert reasons(old, wide(("x", "j")), steps("a", "b")) == []  # j has not run yet
    # A pruned branch that the join counted: it cannot go, whatever led to it.
    pruned_b = [
        StepRecord(0, "a", 1, "out", routes={"b": False}),
        StepRecord(1, "c", 1, "out"),
        StepRecord(2, "j", 1, "out"),
    ]
    cond = WorkflowGraph("report")
    for name in ("a", "b", "c", "j"):
        cond.add_node(name, fn(name))
    cond.add_edge("a", "b", when=lambda ctx: False).add_edge("a", "c")
    cond.add_edge("b", "j").add_edge("c", "j")
    without_b = graph({"a": None, "c": None, "j": None}, [("a", "c"), ("c", "j")])
    found = reasons(cond, without_b, pruned_b)
    assert found == [
        "node 'b' was pruned in this run before a node after it ran but is gone from the new graph"
    ]


def test_a_mapping_is_checked_before_anything_and_names_each_problem() -> None:
    old = graph(PIPELINE, CHAIN).describe()
    new = graph(
        {"outline": None, "write": None, "check": None}, [("outline", "write"), ("write", "check")]
    ).describe()
    ok = check_renames(
        {"plan": "outline", "review": "check"}, old, new, run_id="r", run_version=None, version="2"
    )
    assert ok == {"plan": "outline", "review": "check"}
    renamed = renamed_graph(old, ok)
    assert set(renamed["nodes"]) == {"outline", "write", "check"} and renamed["entry"] == "outline"
    with pytest.raises(UserError) as bad:
        check_renames(
            {"ghost": "outline", "plan": "nowhere", "write": "check", "review": "check"},
            old,
            new,
            run_id="r",
            run_version="1",
            version="2",
        )
    text = str(bad.value)
    assert "'ghost' is not a node of version 1" in text
    assert "'nowhere' is not a node of version 2" in text
    assert "'write' is still a node of version 2" in text
    assert "'review', 'write' are all mapped to 'check'" in text
    with pytest.raises(UserError, match="must map old node names"):
        check_renames(["plan"], old, new, run_id="r", run_version=None, version=None)


def test_renamed_steps_and_the_names_a_migration_took_away() -> None:
    records = [
        StepRecord(0, "plan", 1, "p", routes={"write": True}),
        StepRecord(1, "write", 1, "w", next=Next("plan", "again")),
    ]
    renamed = renamed_steps(records, {"plan": "outline"})
    assert [r.node for r in renamed] == ["outline", "write"]
    assert renamed[0].routes == {"write": True} and renamed[1].next == Next("outline", "again")
    old = graph({"outline": None, "write": None}, [("outline", "write")]).describe()
    back = graph(
        {"outline": None, "write": None, "plan": None}, [("outline", "write"), ("write", "plan")]
    )
    past = run_past(old, "t", renamed_steps(steps("plan"), {"plan": "outline"}))
    assert changes(old, back.describe(), past, renamed_away={"plan": "outline"}) == [
        "node 'plan' was renamed by a migration of this run: its old name cannot name a node again"
    ]
    ups = [
        Upgrade(1, "2", "f" * 64, {}, {"a": "b"}),
        Upgrade(2, "3", "f" * 64, {}, {"b": "c", "x": "y"}),
    ]
    assert composed(ups) == {"a": "c", "b": "c", "x": "y"}


def test_a_step_the_recorded_graph_does_not_explain_is_reported() -> None:
    old = graph(PIPELINE, CHAIN).describe()
    past = run_past(old, "t", steps("plan", "review"))  # review before write: impossible
    assert past.problem and "step 1 (node 'review', visit 1)" in past.problem
    assert changes(old, old, past) == [past.problem]
    assert run_past({"nodes": 3}, "t", []).problem == "its graph: its nodes or edges are malformed"
    with pytest.raises(ValueError, match="entry"):
        skeleton({"nodes": {"a": {}}, "edges": [], "entry": "b"})


def test_incompatible_version_pickles_with_its_reasons() -> None:
    old = graph(PIPELINE, CHAIN, version=1)
    new = graph({"plan": None}, [], version=2)
    past = run_past(old.describe(), "t", steps("plan", "write"))
    error = IncompatibleVersion(
        "x", run_id="r", reasons=changes(old.describe(), new.describe(), past)
    )
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is IncompatibleVersion and again.reasons == error.reasons
    assert again.error_code == "incompatible_version" and isinstance(again, UserError)


# --- randomized: what the named rules admit, the steps replay on ------------------------------

RANDOM = settings(
    derandomize=True, database=None, deadline=None, max_examples=300,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip


@st.composite
def runs_and_changes(draw: Any) -> tuple[dict[str, Any], dict[str, Any], list[StepRecord]]:
    """A random DAG, a random partial run of it (conditions decided at random, an
    occasional jump back), and a random set of changes to it."""
    size = draw(st.integers(2, 7))
    names = [f"n{i}" for i in range(size)]
    edges: dict[tuple[str, str], str | None] = {}
    for j in range(1, size):
        sources = draw(st.sets(st.integers(0, j - 1), min_size=1, max_size=3))
        for i in sources:
            edges[(names[i], names[j])] = draw(st.sampled_from([None, None, "cond"]))
    kinds = {n: draw(st.sampled_from(["function", "agent"])) for n in names}
    old = {
        "name": "wf",
        "entry": names[0],
        "max_steps": 100,
        "nodes": {n: {"kind": kinds[n], "target": n, "fan_out": False} for n in names},
        "edges": [[s, t, c] for (s, t), c in edges.items()],
    }
    sched = Scheduler(skeleton(old))
    sched.start("in")
    records: list[StepRecord] = []
    for seq in range(draw(st.integers(0, 2 * size))):
        sched.take_ready()
        running = sorted(sched.running)
        if not running:
            break
        node = draw(st.sampled_from(running))
        routes = {t: draw(st.booleans()) for (s, t), c in edges.items() if s == node and c}
        jump = None
        earlier = names[: names.index(node)]
        if earlier and draw(st.integers(0, 9)) == 0:
            jump = Next(draw(st.sampled_from(earlier)), "again")
        record = StepRecord(seq, node, sched.visits[node], f"{node}#{seq}", routes=routes or None)
        if jump is not None:
            record = StepRecord(seq, node, sched.visits[node], None, next=jump)
        sched.finish(node, record.visit, record.output, record.routes, record.next, seq)
        records.append(record)
    new = {**old, "nodes": dict(old["nodes"]), "edges": [list(e) for e in old["edges"]]}
    for turn in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["add", "remove", "edge+", "edge-", "kind", "cond"]))
        current = list(new["nodes"])
        if op == "add":
            name = f"x{turn}"
            new["nodes"][name] = {"kind": "function", "target": name, "fan_out": False}
            source = draw(st.sampled_from(current))
            new["edges"].append([source, name, draw(st.sampled_from([None, "cond"]))])
            if draw(st.booleans()):  # and into a later node: a new join input
                later = (
                    [n for n in current if n in names and names.index(n) > names.index(source)]
                    if source in names
                    else []
                )
                if later:
                    new["edges"].append([name, draw(st.sampled_from(later)), None])
        elif op == "remove" and len(current) > 1:
            gone = draw(st.sampled_from([n for n in current if n != new["entry"]] or current))
            if gone != new["entry"]:
                del new["nodes"][gone]
                new["edges"] = [e for e in new["edges"] if gone not in e[:2]]
        elif op == "edge+":
            order = [n for n in names if n in new["nodes"]]
            if len(order) >= 2:
                i, j = sorted(
                    draw(
                        st.lists(
                            st.integers(0, len(order) - 1), min_size=2, max_size=2, unique=True
                        )
                    )
                )
                if [order[i], order[j]] not in [e[:2] for e in new["edges"]]:
                    new["edges"].append([order[i], order[j], draw(st.sampled_from([None, "cond"]))])
        elif op == "edge-" and new["edges"]:
            new["edges"].pop(draw(st.integers(0, len(new["edges"]) - 1)))
        elif op == "kind":
            node = draw(st.sampled_from(current))
            new["nodes"][node] = {**new["nodes"][node], "kind": "team"}
        elif op == "cond" and new["edges"]:
            edge = new["edges"][draw(st.integers(0, len(new["edges"]) - 1))]
            edge[2] = None if edge[2] else "cond"
    return old, new, records


@RANDOM
@given(runs_and_changes())
def test_what_the_named_rules_admit_replays_as_it_ran(
    case: tuple[dict[str, Any], dict[str, Any], list[StepRecord]],
) -> None:
    old, new, records = case
    past = run_past(old, "in", records)
    assert past.problem is None, past.problem
    assert changes(old, old, past) == []  # the same graph always goes on
    if not structural_changes(old, new, past):
        assert replay_changes(new, past) == [], (old, new, records)


# --- the engine: resume with another version ----------------------------------------------------


def memory_store() -> CheckpointStore:
    return CheckpointStore(f"memory://{uuid.uuid4().hex}")


def snapshot(store: CheckpointStore, folder: str = "") -> dict[str, bytes]:
    """Every object of ``store`` (path -> bytes): what "nothing changed" compares."""
    found = {}
    for entry in store._list(folder, None):
        path = f"{folder}/{entry.name}" if folder else entry.name
        if entry.is_dir:
            found.update(snapshot(store, path))
        else:
            found[path] = store._get(path, None)
    return found


class Calls:
    """How often each node function really ran (a resumed run must not run done nodes)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1


def approval(
    calls: Calls,
    version: Any,
    *,
    upper: bool = False,
    publish: bool = False,
    names: tuple[str, str] = ("plan", "review"),
) -> WorkflowGraph:
    """plan -> review (asks a human) [-> publish]; ``upper``: review's code changed."""
    first, second = names

    def plan(ctx: NodeContext) -> str:
        calls("plan")
        return f"plan of {ctx.input}"

    def review(ctx: NodeContext) -> str:
        calls("review")
        ctx.step("notify", calls, "notify")  # journaled: once, whatever the name
        answer = ctx.interrupt({"question": "publish?", "draft": ctx.input})
        return f"{answer.upper() if upper else answer}: {ctx.input}"

    def publish_(ctx: NodeContext) -> str:
        calls("publish")
        return f"published ({ctx.input})"

    g = WorkflowGraph("approve", version=version).add_node(first, plan).add_node(second, review)
    g.add_edge(first, second)
    if publish:
        g.add_node("publish", publish_).add_edge(second, "publish")
    return g


async def drive(graph: WorkflowGraph, store: CheckpointStore, create: bool = False) -> RunEngine:
    engine = RunEngine(graph, "r1", store, LocalExecutor(store))
    engine.open("topic", create=create)
    await engine.run()
    return engine


async def test_a_parked_run_goes_on_with_a_compatible_version_and_records_it() -> None:
    store, calls = memory_store(), Calls()
    first = await drive(approval(calls, 1), store, create=True)
    assert first.outcome == "waiting" and store.read_manifest("r1").version == "1"

    v2 = approval(calls, 2, upper=True, publish=True)  # review's code changed; publish added
    again = await drive(v2, store)
    assert again.outcome == "waiting" and again.manifest.version == "2", again.failure
    assert not await again.respond("review", "yes", by="ana")
    await again.run()
    assert again.outcome == "succeeded", again.failure
    assert again.value == "published (YES: plan of topic)"
    assert calls.counts == {"plan": 1, "review": 3, "notify": 1, "publish": 1}

    [upgrade] = read_upgrades(store, "r1")
    assert (upgrade.number, upgrade.label, upgrade.renames) == (1, "2", {})
    assert upgrade.graph == v2.describe() and upgrade.fingerprint == v2.fingerprint()
    status = status_from_checkpoint(store, "r1")
    assert status["version"] == "2" and "(approve version 2): succeeded" in format_status(status)
    # The next resume compares against version 2: version 1 lacks what ran since.
    with pytest.raises(IncompatibleVersion) as refused:
        await drive(approval(calls, 1), store)
    assert "node 'publish' ran in this run but is gone from version 1" in str(refused.value)
    assert "wf.migrate(run_id" in str(refused.value) and "resume it with version 2" in str(
        refused.value
    )
    # The same version again: no upgrade, nothing listed beyond it.
    await drive(approval(calls, 2, upper=True, publish=True), store)
    assert len(read_upgrades(store, "r1")) == 1


async def test_an_answer_given_before_the_deploy_is_found_by_the_new_version() -> None:
    store, calls = memory_store(), Calls()
    first = await drive(approval(calls, "2026.1"), store, create=True)
    assert not await first.respond("review", "ok")  # journaled; the run is not driven
    done = await drive(approval(calls, "2026.2", publish=True), store)
    assert done.outcome == "succeeded" and done.value == "published (ok: plan of topic)"
    assert calls.counts["plan"] == 1 and calls.counts["notify"] == 1


async def test_an_incompatible_version_is_refused_with_its_reasons_and_changes_nothing() -> None:
    store, calls = memory_store(), Calls()
    await drive(approval(calls, 1), store, create=True)
    before = snapshot(store)
    gone = WorkflowGraph("approve", version=3).add_node("review", fn("review"))
    with pytest.raises(IncompatibleVersion) as refused:
        await drive(gone, store)
    error = refused.value
    assert error.reasons == [
        "entry changed from 'plan' to 'review'",
        "node 'plan' ran in this run but is gone from version 3",
    ]
    assert (error.run_id, error.version, error.run_version) == ("r1", "3", "1")
    assert snapshot(store) == before  # no upgrade, no claim, no status
    # The run's own version still resumes it.
    assert (await drive(approval(calls, 1), store)).outcome == "waiting"


async def test_migrate_maps_renamed_nodes_their_steps_and_journal(tmp_path: Path) -> None:
    from gecko_actors.workflow.run import Workflow

    store, calls = CheckpointStore(f"file://{tmp_path}"), Calls()
    first = await drive(approval(calls, 1), store, create=True)
    assert not await first.respond("review", "yes")  # answered under the old name
    names = ("outline", "check")
    v3 = approval(calls, 3, publish=True, names=names)
    with pytest.raises(IncompatibleVersion, match="node 'plan' ran in this run but is gone"):
        await drive(v3, store)

    wf = Workflow("approve", version=3)
    wf.nodes, wf.edges, wf.entry = v3.nodes, v3.edges, v3.entry
    before = snapshot(store)
    for bad, problem in [
        ({"ghost": "outline"}, "'ghost' is not a node of version 1"),
        ({"plan": "nowhere"}, "'nowhere' is not a node of version 3"),
        ({"plan": "check", "review": "check"}, "are all mapped to 'check'"),
    ]:
        with pytest.raises(UserError, match=problem):
            wf.migrate("r1", bad, checkpoint=str(tmp_path))
    with pytest.raises(IncompatibleVersion, match="node 'review' is running or waiting"):
        wf.migrate("r1", {"plan": "outline"}, checkpoint=str(tmp_path))
    assert snapshot(store) == before  # nothing written by a refused migration

    assert (
        wf.migrate("r1", {"plan": "outline", "review": "check"}, checkpoint=str(tmp_path)) is None
    )
    [upgrade] = read_upgrades(store, "r1")
    assert upgrade.renames == {"plan": "outline", "review": "check"} and upgrade.label == "3"
    done = await drive(v3, store)
    assert done.outcome == "succeeded", done.failure
    assert done.value == "published (yes: plan of topic)"  # the answer, under the old name
    assert calls.counts == {"plan": 1, "review": 2, "notify": 1, "publish": 1}
    status = status_from_checkpoint(store, "r1")
    assert list(status["nodes"]) == ["outline", "check", "publish"] and status["version"] == "3"
    # A fork of the migrated run maps the shared steps too.
    create_fork(v3, store, "r1", 1, run_id="r1-fork")
    fork = RunEngine(v3, "r1-fork", store, LocalExecutor(store))
    fork.open(None, create=False)
    assert fork.sched.status["outline"] == "done" and fork.sched.status["check"] == "ready"


async def test_two_migrations_compose_and_the_old_name_cannot_come_back() -> None:
    store, calls = memory_store(), Calls()
    await drive(approval(calls, 1), store, create=True)
    v2 = approval(calls, 2, names=("outline", "review"))
    migrate_run(v2, store, "r1", {"plan": "outline"})
    v3 = approval(calls, 3, names=("draft", "review"), publish=True)
    migrate_run(v3, store, "r1", {"outline": "draft"})
    assert composed(read_upgrades(store, "r1")) == {"plan": "draft", "outline": "draft"}
    again = await drive(v3, store)
    assert again.outcome == "waiting" and again.sched.status["draft"] == "done"
    assert calls.counts["plan"] == 1
    back = approval(calls, 4, names=("draft", "plan"))
    with pytest.raises(IncompatibleVersion, match="'plan' was renamed by a migration"):
        migrate_run(back, store, "r1", {"review": "plan"})
    with pytest.raises(UserError, match="no run 'nope'"):
        migrate_run(v3, store, "nope", {})


async def test_a_run_recorded_without_its_graph_keeps_the_strict_rule() -> None:
    store, calls = memory_store(), Calls()
    v1 = approval(calls, None)
    store.create_manifest(Manifest("r1", "approve", v1.fingerprint(), "topic", time.time()))
    changed = approval(calls, None, publish=True)
    with pytest.raises(UserError, match="different graph") as refused:
        await drive(changed, store)
    assert not isinstance(refused.value, IncompatibleVersion)
    assert read_upgrades(store, "r1") == []
    # The same structure with a version: goes on, and from now on the graph is recorded.
    versioned = await drive(approval(calls, 5), store)
    assert versioned.outcome == "waiting" and versioned.manifest.graph is not None
    assert [u.label for u in read_upgrades(store, "r1")] == ["5"]


async def test_a_step_committed_under_a_graph_the_engine_lacks_is_not_silently_dropped() -> None:
    store, calls = memory_store(), Calls()
    await drive(approval(calls, 1), store, create=True)
    # An older engine went on with a node this graph lacks, after the upgrade was checked.
    store.commit_step("r1", StepRecord(1, "review", 1, "done"))
    store.commit_step("r1", StepRecord(2, "publish", 1, "x"))
    write_upgrade(
        store,
        "r1",
        Upgrade(1, "9", approval(calls, 9).fingerprint(), approval(calls, 9).describe()),
    )
    with pytest.raises(CheckpointError, match="step 2 of run 'r1' \\(node 'publish'"):
        await drive(approval(calls, 9), store)


# --- the CLI guard, the status line and the viewer -----------------------------------------------


def test_resume_refuses_a_target_of_another_version(tmp_path: Path) -> None:
    target = tmp_path / "flows.py"
    target.write_text(
        "from gecko_actors import Workflow\n"
        "workflow = Workflow('report', version=4).add_node('a', lambda ctx: 1)\n"
        "plain = Workflow('report').add_node('a', lambda ctx: 1)\n"
    )
    runner = CliRunner()
    wrong = runner.invoke(cli, ["resume", "r1", f"{target}:workflow", "--version", "3"])
    assert wrong.exit_code == 1 and "is version 4 of workflow 'report', not 3" in wrong.output
    none = runner.invoke(cli, ["resume", "r1", f"{target}:plain", "--version", "3"])
    assert none.exit_code == 1 and "has no version" in none.output
    alone = runner.invoke(cli, ["resume", "r1", "--version", "3"])
    assert alone.exit_code == 1 and "--version needs TARGET" in alone.output


async def test_status_and_the_viewer_show_the_version_the_run_follows(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}"
    store, calls = CheckpointStore(uri), Calls()
    await drive(approval(calls, 1), store, create=True)
    shown = CliRunner().invoke(cli, ["status", "r1", "--checkpoint", uri])
    assert shown.exit_code == 0 and "(approve version 1): waiting" in shown.output
    await drive(approval(calls, 2, publish=True), store)
    reader = RunsReader(store)
    [row] = reader.runs()["runs"]
    assert row["version"] == "2"
    page = reader.run("r1")
    assert page["run"]["version"] == "2" and "publish" in page["graph"]["states"]


# --- on Ray: Workflow.start, then resume with the next version ----------------------------------


def ray_plan(ctx: NodeContext) -> str:
    return f"plan of {ctx.input}"


def ray_review(ctx: NodeContext) -> str:
    return f"{ctx.interrupt('publish?')}: {ctx.input}"


def ray_review_v2(ctx: NodeContext) -> str:
    return f"{str(ctx.interrupt('publish?')).upper()}: {ctx.input}"


def ray_publish(ctx: NodeContext) -> str:
    return f"published ({ctx.input})"


@pytest.mark.usefixtures("ray_session")
def test_on_ray_a_waiting_run_is_resumed_with_the_next_version(tmp_path: Path) -> None:
    from gecko_actors.workflow.run import Workflow

    name = f"approve-{uuid.uuid4().hex[:8]}"
    v1 = Workflow(name, version=1).add_node("plan", ray_plan).add_node("review", ray_review)
    v1.add_edge("plan", "review")
    run = v1.start("topic", checkpoint=tmp_path)
    deadline = time.monotonic() + 120
    while run.status()["status"] != "waiting":
        assert time.monotonic() < deadline, run.status()
        time.sleep(0.05)

    v2 = Workflow(name, version=2).add_node("plan", ray_plan).add_node("review", ray_review_v2)
    v2.add_node("publish", ray_publish).add_edge("plan", "review").add_edge("review", "publish")
    broken = Workflow(name, version=3).add_node("review", ray_review_v2)
    with pytest.raises(IncompatibleVersion, match="node 'plan' ran in this run but is gone"):
        broken.resume(run.run_id, checkpoint=tmp_path)
    resumed = v2.resume(run.run_id, checkpoint=tmp_path)  # the same host holds it: reopened
    while resumed.status()["status"] != "waiting" or resumed.status()["version"] != "2":
        assert time.monotonic() < deadline, resumed.status()
        time.sleep(0.05)
    resumed.respond("review", "yes")
    assert resumed.result(timeout=120) == "published (YES: plan of topic)"
    assert resumed.status()["version"] == "2"
