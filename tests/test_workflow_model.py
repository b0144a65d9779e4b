"""A randomized model check of the run engine (issue 10, item 1), Ray-free.

Hypothesis generates workflows: random DAGs of 5-12 nodes (edges from lower to higher index,
every node reachable from the entry ``n0``) with branches, joins, conditional edges, sync and
async nodes, nodes whose first attempt fails (and are retried), and ``Next`` loops (to the
node itself or back to an earlier one), each taken a bounded number of times (counted in the
run's state). Every node writes its own key ``k_<node>`` plus the shared keys ``log`` and
``total``, which have commutative reducers; its output is a function of its input, its state
snapshot and everything in its ``ctx.outputs``. The engine gives a visit only what its causal
past left: the state it wrote and, for each node in it, that node's latest output in it
(read from the checkpoint when the node has run again since), so nothing a node sees depends
on timing; the reducers make the run's state independent of the commit order.

Each workflow is run once uninterrupted (the reference: every visit that ran must have been
committed), then, for every crash point (both kinds, see ``CrashingStore``; a spread of at
most 20 for long runs), again on a fresh store whose engine dies (an exception that is not an
``Exception``, so that nothing of that engine runs or writes afterwards) right after its k-th
commit, and resumed to its end by a new engine. The resumed run must give the reference's
result, state and committed steps, and no visit committed before the crash may run again.

Two rules of the generator keep the run's committed steps independent of timing; without
them they are not, by design:

- A ``Next`` from node ``s`` to ``t`` resets ``t``'s *region* (``t`` and every node reachable
  from it): it may only hold ``s``, its ancestors and its descendants (``jump_targets``), so
  no visit of the region can be running or finish beside the jump. Branches that do not enter
  the region may still run beside it, and the loop is drawn often from nodes that have one.
  Without the rule, take ``n0 -> x``, ``n0 -> s`` with ``s`` jumping back to ``n0``: if
  ``x``'s first visit is still running when ``s`` commits its jump, it is void and never
  committed; if it finished a moment earlier, it is committed, and its second visit (after
  ``n0``'s second) does not have it in its causal past, so their two writes of ``k_x`` are
  concurrent and the run fails with a write conflict (with reducer keys only it succeeds, but
  with one more step and ``x/1`` in its log). The same workflow thus commits different steps,
  or fails, depending on which of ``x`` and ``s`` finished first (see
  ``test_a_jump_over_a_branch_running_beside_it_depends_on_timing``).
- The last node also has an unconditional edge from ``n0``, so a sink always runs: when every
  sink is pruned, the engine's result is the output of the last node committed, which for two
  branches ending side by side is whichever finished last.
"""

from __future__ import annotations

import asyncio
import json
import operator
import threading
import uuid
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gecko_actors.checkpoint import CheckpointStore, StepRecord
from gecko_actors.workflow import Next, NodeContext, RetryPolicy, WorkflowGraph
from gecko_actors.workflow.engine import RunEngine
from gecko_actors.workflow.execution import LocalExecutor

RUN = "model-run"
INPUT = 7
RETRY_NOW = RetryPolicy(attempts=2, backoff=0)
MAX_CRASH_POINTS = 20  # per workflow: each costs a crashed run, a resumed run and a replay

# --- the generated workflows ------------------------------------------------------------------


@dataclass(frozen=True)
class EdgeSpec:
    source: int
    target: int
    modulus: int | None  # the edge holds when the source's output % modulus != remainder
    remainder: int = 0


@dataclass(frozen=True)
class NodeSpec:
    index: int
    is_async: bool
    yields: int  # asyncio.sleep(0) calls before an async node does its work
    fail_first: bool  # every visit's first attempt raises (the node has two attempts)
    writes_total: bool
    jump: tuple[int, int] | None  # (target index, how many times) of a Next loop

    @property
    def name(self) -> str:
        return f"n{self.index}"


@dataclass(frozen=True)
class WorkflowSpec:
    nodes: tuple[NodeSpec, ...]
    edges: tuple[EdgeSpec, ...]


def _closure(edges: Sequence[EdgeSpec], index: int, forward: bool) -> set[int]:
    """The nodes reachable from ``index`` along ``edges`` (backwards unless ``forward``)."""
    found: set[int] = set()
    todo = [index]
    while todo:
        here = todo.pop()
        for edge in edges:
            near, far = (edge.source, edge.target) if forward else (edge.target, edge.source)
            if near == here and far not in found:
                found.add(far)
                todo.append(far)
    return found


def related(edges: Sequence[EdgeSpec], index: int) -> set[int]:
    """``index``, its ancestors and its descendants: the nodes that cannot run beside it."""
    return {index} | _closure(edges, index, False) | _closure(edges, index, True)


def jump_targets(edges: Sequence[EdgeSpec], source: int) -> list[int]:
    """Where a ``Next`` from ``source`` may go: to ``source`` itself or an earlier node whose
    region (itself and every node reachable from it) holds only nodes related to ``source``,
    so that no visit of the region can run beside the jump (see the module docstring)."""
    near = related(edges, source)
    return [t for t in range(source + 1) if {t} | _closure(edges, t, True) <= near]


@st.composite
def workflows(draw: st.DrawFn, failures: bool = True) -> WorkflowSpec:
    """A random DAG in segments: a *collector* node joins every open branch of the segment
    before it, and later nodes only take predecessors from its segment on; inside a segment,
    any node may be a predecessor of a later one; ``n0`` also feeds the last node. At most two
    nodes loop, each to a target of ``jump_targets``: a collector may jump to any node up to
    itself, any node to itself or to an earlier node whose region no branch running beside it
    enters."""
    size = draw(st.integers(5, 12))
    edges: list[EdgeSpec] = []
    barrier, has_successor = 0, set()
    for k in range(1, size):
        window = range(barrier, k)
        if draw(st.integers(0, 4)) == 0:
            preds = [m for m in window if m not in has_successor]
            barrier = k
        else:
            most = min(3, len(window))
            preds = sorted(draw(st.sets(st.sampled_from(window), min_size=1, max_size=most)))
        for p in preds:
            has_successor.add(p)
            modulus = draw(st.sampled_from([None, None, None, 2, 3, 4]))
            remainder = 0 if modulus is None else draw(st.integers(0, modulus - 1))
            edges.append(EdgeSpec(p, k, modulus, remainder))
    # A sink that always runs (see the module docstring): an unconditional edge from n0.
    edges = [e for e in edges if (e.source, e.target) != (0, size - 1)]
    edges.append(EdgeSpec(0, size - 1, None))
    back = {k: [t for t in jump_targets(edges, k) if t != k] for k in range(size)}
    # Nodes that can jump back while a branch they are not on may still run (the case the
    # region rule is about) are rare in random DAGs, so they are drawn to loop more often.
    beside = [k for k in range(size) if back[k] and len(related(edges, k)) < size]
    jumps: dict[int, tuple[int, int]] = {}
    for k in range(size):  # (hypothesis draws small values first: 0 means no jump)
        if len(jumps) < 2 and draw(st.integers(0, 1 if k in beside else 3)) == 1:
            if k in beside or (back[k] and not draw(st.booleans())):
                jumps[k] = (draw(st.sampled_from(back[k])), draw(st.integers(1, 2)))
            else:
                jumps[k] = (k, draw(st.integers(1, 2)))
    nodes = tuple(
        NodeSpec(
            index=k,
            is_async=draw(st.booleans()),
            yields=draw(st.integers(0, 2)),
            fail_first=failures and draw(st.integers(0, 4)) == 0,
            writes_total=draw(st.booleans()),
            jump=jumps.get(k),
        )
        for k in range(size)
    )
    return WorkflowSpec(nodes, tuple(edges))


# --- running them ------------------------------------------------------------------------------


class Ledger:
    """Every attempt of every node: (phase, node, visit, attempt, idempotency key)."""

    def __init__(self) -> None:
        self.phase = "first"
        self.entries: list[tuple[str, str, int, int, str]] = []
        self._lock = threading.Lock()

    def reset(self) -> None:
        self.phase, self.entries = "first", []

    def record(self, ctx: NodeContext) -> None:
        with self._lock:
            self.entries.append((self.phase, ctx.node, ctx.visit, ctx.attempt, ctx.idempotency_key))


def merge_sorted(old: list[str], new: list[str]) -> list[str]:
    return sorted(old + new)


def digest(*parts: Any) -> int:
    return zlib.crc32(json.dumps(parts, sort_keys=True).encode())


def behaviour(spec: NodeSpec, ledger: Ledger) -> Any:
    """What node ``spec`` does: deterministic in what it reads, bounded loops."""

    def step(ctx: NodeContext) -> Any:
        ledger.record(ctx)
        if spec.fail_first and ctx.attempt == 1:
            raise RuntimeError(f"{spec.name}: the first attempt fails")
        # Every output it is given: ctx.outputs is the visit's causal past, whatever ran beside.
        outputs = {name: ctx.outputs[name] for name in sorted(ctx.outputs)}
        value = digest(spec.name, ctx.input, dict(ctx.state), outputs) % 1000
        ctx.state[f"k_{spec.name}"] = value
        ctx.state["log"] = [f"{spec.name}/{ctx.visit}"]
        if spec.writes_total:
            ctx.state["total"] = value % 10
        if spec.jump is not None:
            target, times = spec.jump
            taken = ctx.state.get(f"jumps_{spec.name}", 0)
            if taken < times:
                ctx.state[f"jumps_{spec.name}"] = taken + 1
                return Next(f"n{target}", value)
        return value

    if spec.is_async:

        async def async_node(ctx: NodeContext) -> Any:
            for _ in range(spec.yields):
                await asyncio.sleep(0)
            return step(ctx)

        return async_node

    def sync_node(ctx: NodeContext) -> Any:
        return step(ctx)

    return sync_node


def condition(modulus: int, remainder: int) -> Any:
    def when(ctx: NodeContext) -> bool:
        return ctx.input % modulus != remainder

    return when


def build(spec: WorkflowSpec, ledger: Ledger) -> WorkflowGraph:
    graph = WorkflowGraph(
        "model", max_steps=1000, reducers={"log": merge_sorted, "total": operator.add}
    )
    for node in spec.nodes:
        retry = RETRY_NOW if node.fail_first else None
        graph.add_node(node.name, behaviour(node, ledger), retry=retry)
    for edge in spec.edges:
        when = None if edge.modulus is None else condition(edge.modulus, edge.remainder)
        graph.add_edge(f"n{edge.source}", f"n{edge.target}", when=when)
    graph.validate()
    return graph


class Crash(BaseException):
    """The engine's process died (not an Exception: the engine cannot catch and record it)."""


class CrashingStore(CheckpointStore):
    """A store whose engine dies right after its ``k``-th commit: ``before`` the next commit
    (or before the final status, once every step is committed) writes anything, or ``after``
    the k-th commit was stored but before the engine learnt it."""

    def __init__(self, uri: str, k: int, mode: str) -> None:
        super().__init__(uri)
        self.k, self.mode, self.commits = k, mode, 0

    def commit_step(self, run_id: str, record: StepRecord) -> int:
        if self.mode == "before" and self.commits == self.k:
            raise Crash
        written = super().commit_step(run_id, record)
        self.commits += 1
        if self.mode == "after" and self.commits == self.k:
            raise Crash
        return written

    def update_status(self, run_id: str, status: str, **kwargs: Any) -> int:
        if status != "running" and self.mode == "before" and self.commits == self.k:
            raise Crash
        return super().update_status(run_id, status, **kwargs)


def fresh_uri() -> str:
    return f"memory://model-{uuid.uuid4().hex}"


def opened(graph: WorkflowGraph, store: CheckpointStore, input: Any = INPUT) -> RunEngine:
    engine = RunEngine(graph, RUN, store, LocalExecutor(store))
    engine.open(input)
    return engine


def committed(steps: list[StepRecord]) -> dict[tuple[str, int], tuple[Any, ...]]:
    """What each committed visit decided, by (node, visit); each visit committed once."""
    by_visit = {(s.node, s.visit): (s.output, s.writes, s.next, s.routes) for s in steps}
    assert len(by_visit) == len(steps), [(s.node, s.visit) for s in steps]
    assert [s.seq for s in steps] == list(range(len(steps)))
    return by_visit


def crash_points(steps: int) -> list[tuple[int, str]]:
    points = [(k, "before") for k in range(steps + 1)]
    points += [(k, "after") for k in range(1, steps + 1)]
    if len(points) > MAX_CRASH_POINTS:  # a long run: take a spread (and the last point)
        stride = len(points) / MAX_CRASH_POINTS
        points = [points[int(i * stride)] for i in range(MAX_CRASH_POINTS - 1)] + [points[-1]]
    return points


async def check(spec: WorkflowSpec) -> None:
    ledger = Ledger()
    graph = build(spec, ledger)

    reference_store = CheckpointStore(fresh_uri())
    reference = opened(graph, reference_store)
    await reference.run()
    assert reference.outcome == "succeeded", reference.failure
    reference_steps = reference_store.load_steps(RUN)
    expected = committed(reference_steps)
    expected_state = reference.state
    assert all(key == f"{RUN}/{node}/{visit}" for _, node, visit, _, key in ledger.entries)
    # No jump voided a running visit: every visit that ran was committed.
    assert {(node, visit) for _, node, visit, _, _ in ledger.entries} == set(expected)
    reference_store.delete_run(RUN)

    for k, mode in crash_points(len(reference_steps)):
        where = f"crash {mode} commit {k + (mode == 'before')} of {len(reference_steps)}"
        ledger.reset()
        uri = fresh_uri()
        first = opened(graph, CrashingStore(uri, k, mode))
        with pytest.raises(Crash):
            await first.run()
        store = CheckpointStore(uri)
        before = {(s.node, s.visit) for s in store.load_steps(RUN)}
        assert len(before) == k, where

        ledger.phase = "resumed"
        second = opened(graph, store)
        assert second.seq == k, where
        await second.run()
        assert second.outcome == "succeeded", (where, second.failure)
        assert second.value == reference.value, where
        assert second.state == expected_state, where
        steps = store.load_steps(RUN)  # verifies every step against its marker
        assert committed(steps) == expected, where
        assert [s.epoch for s in steps] == [first.epoch] * k + [second.epoch] * (len(steps) - k)
        again = {(n, v) for phase, n, v, _, _ in ledger.entries if phase == "resumed"}
        assert not again & before, (where, sorted(again & before))
        assert all(key == f"{RUN}/{n}/{v}" for _, n, v, _, key in ledger.entries), where
        manifest = store.read_manifest(RUN)
        assert manifest is not None and manifest.status == "succeeded", where
        assert manifest.result == reference.value, where
        replayed = opened(graph, store)  # a third engine only replays the checkpoint
        assert replayed.state == expected_state and replayed.result() == reference.value, where
        store.delete_run(RUN)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(workflows())
def test_a_run_crashed_at_any_commit_and_resumed_ends_as_an_uninterrupted_one(
    spec: WorkflowSpec,
) -> None:
    asyncio.run(check(spec))


def test_the_generator_makes_joins_conditions_loops_failures_and_both_kinds_of_node() -> None:
    seen: Counter[str] = Counter()

    @settings(max_examples=60, deadline=None, derandomize=True, database=None)
    @given(workflows())
    def collect(spec: WorkflowSpec) -> None:
        targets = Counter(e.target for e in spec.edges)
        seen["join"] += any(n > 1 for n in targets.values())
        seen["condition"] += any(e.modulus is not None for e in spec.edges)
        loops = [(n.index, n.jump[0]) for n in spec.nodes if n.jump is not None]
        seen["loop"] += bool(loops)
        seen["loop back"] += any(t < k for k, t in loops)
        beside = [(k, t) for k, t in loops if len(related(spec.edges, k)) < len(spec.nodes)]
        seen["loop beside a branch"] += bool(beside)
        seen["loop back beside a branch"] += any(t < k for k, t in beside)
        seen["failure"] += any(n.fail_first for n in spec.nodes)
        seen["async"] += any(n.is_async for n in spec.nodes)
        seen["sync"] += any(not n.is_async for n in spec.nodes)

    collect()
    features = ("join", "condition", "loop", "failure", "async", "sync", "loop back")
    features += ("loop beside a branch", "loop back beside a branch")
    assert all(seen[f] >= 5 for f in features), seen


# --- schedules the generated workflows exclude or cannot force (regression tests) -------------


async def test_outputs_of_an_older_visit_in_the_causal_past_survive_a_restart() -> None:
    """``ctx.outputs`` holds each node's latest output in the visit's causal past: after a
    restart between ``x``'s second visit and ``v``'s, ``v`` still sees ``x``'s first output
    (read from the checkpoint), although ``x`` has a newer visit that is not in its past."""
    stores: list[CheckpointStore] = []

    async def v(ctx: NodeContext) -> list[str]:
        seen = sorted(ctx.outputs)
        while ctx.visit == 2 and ("x", 2) not in visits(stores[-1]):
            await asyncio.sleep(0.005)  # commit order: x's second visit, then v's
        return seen

    def jump_once(ctx: NodeContext) -> Any:
        if ctx.state.get("jumped"):
            return "end"
        ctx.state["jumped"] = True
        return Next("i", "again")

    graph = (  # i feeds x and v, which join at c; c jumps back to i once
        WorkflowGraph("older-outputs")
        .add_node("i", lambda ctx: ctx.input)
        .add_node("x", lambda ctx: "x")
        .add_node("v", v)
        .add_node("c", jump_once)
        .add_edge("i", "x")
        .add_edge("i", "v")
        .add_edge("x", "c")
        .add_edge("v", "c")
    )
    stores.append(CheckpointStore(fresh_uri()))
    await opened(graph, stores[-1]).run()
    order = visits(stores[-1])
    assert output_of(stores[-1], "v", 2) == ["c", "i", "v", "x"]  # x's visit 1 is in its past

    # The same run, dead after ("x", 2) committed and before ("v", 2) did, then resumed.
    uri = fresh_uri()
    stores.append(CrashingStore(uri, order.index(("v", 2)), "before"))
    with pytest.raises(Crash):
        await opened(graph, stores[-1]).run()
    stores.append(CheckpointStore(uri))
    resumed = opened(graph, stores[-1])
    await resumed.run()
    assert resumed.outcome == "succeeded", resumed.failure
    assert output_of(stores[-1], "v", 2) == ["c", "i", "v", "x"]


def visits(store: CheckpointStore) -> list[tuple[str, int]]:
    return [(s.node, s.visit) for s in store.load_steps(RUN)]


def output_of(store: CheckpointStore, node: str, visit: int) -> Any:
    [step] = [s for s in store.load_steps(RUN) if (s.node, s.visit) == (node, visit)]
    return step.output


async def test_a_visit_running_when_a_jump_resets_its_region_is_void() -> None:
    """A visit still running when a ``Next`` jump resets its region is never committed: the
    node runs again in the new pass, on the new pass's input."""
    store = CheckpointStore(fresh_uri())

    async def slow(ctx: NodeContext) -> Any:
        if ctx.visit == 1:  # still running when j jumps back to i and i runs again
            while ("i", 2) not in visits(store):
                await asyncio.sleep(0.005)
        return ctx.input

    def jump_once(ctx: NodeContext) -> Any:
        if ctx.state.get("jumped"):
            return "end"
        ctx.state["jumped"] = True
        return Next("i", "second")

    graph = (
        WorkflowGraph("void-visit")
        .add_node("i", lambda ctx: ctx.input)
        .add_node("j", jump_once)
        .add_node("y", slow)
        .add_edge("i", "j")
        .add_edge("i", "y")
    )
    engine = opened(graph, store, "first")
    await engine.run()
    assert engine.outcome == "succeeded", engine.failure
    # As when y's first visit ends before the jump: y runs again on i's second output.
    assert engine.value == {"j": "end", "y": "second"}
    assert sorted(visits(store)) == [("i", 1), ("i", 2), ("j", 1), ("j", 2), ("y", 2)]


async def test_a_jump_over_a_branch_running_beside_it_depends_on_timing() -> None:
    """Why the generator keeps a jump's region to the jumping node's relatives: ``s`` jumps
    back to ``i`` while ``x``, on another branch of ``i``, may still run. If ``x`` is still
    running at the jump, its visit is void and the run succeeds; if it finished first, it is
    committed, and ``x``'s next visit, which does not have it in its causal past, conflicts
    with its write. Both are the engine's rules; only timing decides between them."""
    stores: list[CheckpointStore] = []

    async def x(ctx: NodeContext) -> Any:
        while x_waits and ctx.visit == 1 and ("i", 2) not in visits(stores[-1]):
            await asyncio.sleep(0.005)
        ctx.state["x"] = ctx.input  # a key without a reducer
        return ctx.input

    async def s(ctx: NodeContext) -> Any:
        while not x_waits and ctx.visit == 1 and ("x", 1) not in visits(stores[-1]):
            await asyncio.sleep(0.005)
        if ctx.state.get("jumped"):
            return "end"
        ctx.state["jumped"] = True
        return Next("i", "second")

    graph = (
        WorkflowGraph("jump-beside")
        .add_node("i", lambda ctx: ctx.input)
        .add_node("x", x)
        .add_node("s", s)
        .add_edge("i", "x")
        .add_edge("i", "s")
    )
    x_waits = True  # x's first visit is still running when s jumps
    stores.append(CheckpointStore(fresh_uri()))
    engine = opened(graph, stores[-1], "first")
    await engine.run()
    assert engine.outcome == "succeeded", engine.failure
    assert sorted(visits(stores[-1])) == [("i", 1), ("i", 2), ("s", 1), ("s", 2), ("x", 2)]

    x_waits = False  # x's first visit finishes before s jumps
    stores.append(CheckpointStore(fresh_uri()))
    engine = opened(graph, stores[-1], "first")
    await engine.run()
    assert engine.outcome == "failed"
    assert "both wrote state key 'x' in parallel" in str(engine.failure)
    assert ("x", 1) in visits(stores[-1])
