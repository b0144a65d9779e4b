"""Which versions of a workflow a run may go on with: a pure check (no I/O, no Ray).

A run records the graph it follows (``WorkflowGraph.describe()``). Resumed with another
graph, it goes on only if the new graph keeps what the run already did. The run's past is
its committed steps replayed through its recorded graph (:func:`run_past`, the engine's own
:class:`~gecko_actors.workflow.schedule.Scheduler`, with the edge decisions the steps
recorded): the nodes that *ran* (committed a step), the *frontier* (the visits it would run
next: running, retried or waiting on an interrupt), and the nodes it *pruned*.

Allowed (:func:`changes` finds nothing):

- node code changed: a node keeps its name and kind (its function, agent, prompt,
  retry, timeout, edge conditions' code may change);
- nodes and edges added after the frontier: an added edge may not lead into a node that
  ran, is on the frontier, or was pruned before a node after it ran (that would change
  their join inputs); an added edge *from* a node that ran (and will not run again) must be
  unconditional (its condition was never evaluated): its target runs on resume;
- nodes removed that the run never reached and that are not on the frontier, with their
  edges, and edges removed that lead into such nodes;
- ``max_steps`` changed.

Refused, each with a reason naming it: a node that ran or is on the frontier is gone or
changed kind (or became, or stopped being, a map node); an edge that ran, or that leads into
a node the run already decided, was removed; an edge was added into such a node; a
conditional edge was added from a node that ran; the entry or the workflow's name changed;
a name a migration renamed away names a node again. Last, the steps are replayed through
the new graph (:func:`replay_changes`): every committed visit must replay as it was, and the
frontier's visits must come out the same (visit number and input), so that a parked node
finds its answer; anything else the structural rules missed is refused there.

Renamed nodes are mapped first (:func:`renamed_graph`, :func:`renamed_steps`; ``wf.migrate``
checks a mapping with :func:`check_renames`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gecko_actors.checkpoint.records import StepRecord
from gecko_actors.exceptions import GeckoError, IncompatibleVersion, UserError
from gecko_actors.workflow.graph import Edge, Next, Node, WorkflowGraph
from gecko_actors.workflow.schedule import Scheduler

__all__ = [
    "Past",
    "changes",
    "check_renames",
    "incompatible",
    "renamed_graph",
    "renamed_steps",
    "replay_changes",
    "run_past",
    "skeleton",
    "structural_changes",
    "version_name",
]

_LIVE = ("ready", "running")


@dataclass(frozen=True)
class Past:
    """What a run did, as its recorded graph explains it.

    ``ran``: the nodes with committed steps; ``frontier``: each node with a visit to run
    next -> ``(visit number, input)``; ``pruned``: the nodes pruned; ``steps``: the
    committed steps (node names already mapped through any renames); ``input``: the run's
    input; ``problem``: why the recorded graph does not explain the steps (then nothing else
    is known).
    """

    ran: frozenset[str] = frozenset()
    frontier: dict[str, tuple[int, Any]] = field(default_factory=dict)
    pruned: frozenset[str] = frozenset()
    steps: tuple[StepRecord, ...] = ()
    input: Any = None
    problem: str | None = None

    @property
    def reached(self) -> frozenset[str]:
        """The nodes that ran or are on the frontier."""
        return self.ran | frozenset(self.frontier)


def version_name(version: str | None, unversioned: str = "the new graph") -> str:
    """How messages name a version: ``version 3``, or ``unversioned`` for None."""
    return unversioned if version is None else f"version {version}"


def skeleton(described: Mapping[str, Any]) -> WorkflowGraph:
    """A graph to schedule with, built from ``describe()`` data (recorded, so checked: a
    ValueError when it is malformed). Its conditions are never called: replays use the
    decisions the steps recorded."""
    nodes, edges = described.get("nodes"), described.get("edges")
    if not isinstance(nodes, Mapping) or not isinstance(edges, list):
        raise ValueError("its nodes or edges are malformed")
    graph = WorkflowGraph.__new__(WorkflowGraph)  # no validation: only the shape is needed
    graph.name = str(described.get("name", ""))
    graph.entry = described.get("entry")
    graph.max_steps = 10**9  # a replay checks structure; the live run keeps max_steps
    graph.reducers, graph.target = {}, None
    graph.nodes = {}
    for name, info in nodes.items():
        if not isinstance(name, str) or not isinstance(info, Mapping):
            raise ValueError(f"its node {name!r:.40} is malformed")
        graph.nodes[name] = Node(name, info.get("kind"), None, fan_out=bool(info.get("fan_out")))
    graph.edges = []
    for edge in edges:
        if not (isinstance(edge, list | tuple) and len(edge) == 3):
            raise ValueError(f"its edge {edge!r:.60} is malformed")
        source, target, condition = edge
        if source not in graph.nodes or target not in graph.nodes:
            raise ValueError(f"its edge {source!r:.40} -> {target!r:.40} names unknown nodes")
        graph.edges.append(Edge(source, target, _recorded if condition else None))
    if graph.entry not in graph.nodes:
        raise ValueError(f"its entry {graph.entry!r:.40} is not one of its nodes")
    return graph


def _recorded(ctx: Any) -> bool:  # never called: the recorded decisions are replayed
    return True


# --- renames ---------------------------------------------------------------------------------


def renamed_graph(described: Mapping[str, Any], renames: Mapping[str, str]) -> dict[str, Any]:
    """``describe()`` data with its nodes renamed by ``renames`` (old -> new)."""
    if not renames:
        return dict(described)
    name = _renamer(renames)
    nodes = described.get("nodes") or {}
    return {
        **described,
        "entry": name(described.get("entry")),
        "nodes": {name(n): info for n, info in nodes.items()},
        "edges": [[name(s), name(t), c] for s, t, c in described.get("edges") or []],
    }


def renamed_steps(records: Iterable[StepRecord], renames: Mapping[str, str]) -> list[StepRecord]:
    """``records`` with every node name they carry (the node, a jump's target, the targets
    of their edge decisions) renamed by ``renames`` (old -> new)."""
    if not renames:
        return list(records)
    name = _renamer(renames)
    return [
        dataclasses.replace(
            r,
            node=name(r.node),
            next=None if r.next is None else Next(name(r.next.node), r.next.input),
            routes=None if r.routes is None else {name(t): ok for t, ok in r.routes.items()},
        )
        for r in records
    ]


def _renamer(renames: Mapping[str, str]) -> Any:
    return lambda node: renames.get(node, node) if isinstance(node, str) else node


def check_renames(
    renames: Any,
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    run_id: str,
    run_version: str | None,
    version: str | None,
) -> dict[str, str]:
    """``renames`` (old node name -> new) as a dict, if it can map run ``run_id``'s graph
    ``old`` onto ``new``; else a UserError naming every problem: an old name that is not a
    node of the run's graph, a new name that is not a node of the new one, two old nodes
    mapped to one, an old name that still names a node of the new graph (its steps would be
    ambiguous), a new name that names another node of the run's graph."""
    if not isinstance(renames, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in renames.items()
    ):
        raise UserError(
            f"migrate of run {run_id!r}: the mapping must map old node names (str) to new "
            f"ones (str), got {renames!r:.80}",
            hint='e.g. wf.migrate(run_id, {"review": "check"})',
            run_id=run_id,
        )
    old_nodes, new_nodes = set(old.get("nodes") or {}), set(new.get("nodes") or {})
    theirs, ours = version_name(run_version, "the run's graph"), version_name(version)
    problems = []
    for before, after in renames.items():
        if before not in old_nodes:
            problems.append(
                f"{before!r} is not a node of {theirs} (its nodes: {sorted(old_nodes)})"
            )
        if after not in new_nodes:
            problems.append(f"{after!r} is not a node of {ours} (its nodes: {sorted(new_nodes)})")
        if before == after:
            problems.append(f"{before!r} is mapped to itself")
        elif before in new_nodes:
            problems.append(
                f"{before!r} is still a node of {ours}: the run's steps of {before!r} would be "
                "ambiguous"
            )
        elif after in old_nodes and after not in renames:
            problems.append(f"{after!r} already names another node of {theirs}")
    for after, count in sorted(Counter(renames.values()).items()):
        if count > 1:
            befores = sorted(b for b, a in renames.items() if a == after)
            problems.append(f"{', '.join(map(repr, befores))} are all mapped to {after!r}")
    if problems:
        raise UserError(
            f"cannot migrate run {run_id!r} to {ours}: {'; '.join(problems)}",
            hint="map each renamed node of the run's graph to its new name, once; nothing "
            "was changed",
            run_id=run_id,
        )
    return dict(renames)


# --- the past ----------------------------------------------------------------------------------


def run_past(described: Mapping[str, Any], input: Any, records: Sequence[StepRecord]) -> Past:
    """Replay ``records`` (the run's committed steps, in order, or the first of them)
    through ``described`` (its recorded graph) from ``input``. Parked nodes are on the
    frontier: nothing of a parked visit is committed, so it is still to run."""
    ran = frozenset(r.node for r in records)
    try:
        sched = _replayed(skeleton(described), input, records)
    except _Misfit as exc:
        return Past(ran, steps=tuple(records), input=input, problem=f"{exc} of the run's graph")
    except ValueError as exc:
        return Past(ran, steps=tuple(records), input=input, problem=f"its graph: {exc}")
    frontier = {
        n: (sched.visits[n], sched.inputs.get(n)) for n, s in sched.status.items() if s in _LIVE
    }
    pruned = frozenset(n for n, s in sched.status.items() if s == "pruned")
    return Past(ran, frontier, pruned, tuple(records), input)


class _Misfit(Exception):
    """A committed step that a graph does not replay (the message says which)."""


def _replayed(graph: WorkflowGraph, input: Any, records: Sequence[StepRecord]) -> Scheduler:
    """``graph``'s scheduler once ``records`` are replayed through it; _Misfit names the
    first step that does not fit (its node is not running at that visit, or its jump's
    target is unknown)."""
    sched = Scheduler(graph)
    sched.start(input)
    for record in records:
        sched.take_ready()
        visit = f"step {record.seq} (node {record.node!r}, visit {record.visit})"
        if not (
            sched.status.get(record.node) == "running" and sched.visits[record.node] == record.visit
        ):
            raise _Misfit(f"{visit} does not fit the nodes and edges before it")
        try:
            sched.finish(
                record.node, record.visit, record.output, record.routes, record.next, record.seq
            )
        except GeckoError:  # a jump to a node the graph lacks
            raise _Misfit(f"{visit} jumps to node {record.next.node!r}, gone") from None  # type: ignore[union-attr]
    sched.requeue_running()
    return sched


# --- the check ---------------------------------------------------------------------------------


def changes(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    past: Past,
    *,
    version: str | None = None,
    renamed_away: Iterable[str] = (),
) -> list[str]:
    """Each change of ``new`` (``describe()`` data) that the run whose ``past`` its graph
    ``old`` explains cannot go on with ([] when it can). ``version`` names the new graph in
    the reasons; ``renamed_away``: the names migrations of the run mapped to others."""
    if past.problem is not None:
        return [past.problem]
    found = structural_changes(old, new, past, version=version, renamed_away=renamed_away)
    return found or replay_changes(new, past, version=version)


def structural_changes(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    past: Past,
    *,
    version: str | None = None,
    renamed_away: Iterable[str] = (),
) -> list[str]:
    """The changes of ``new`` that touch what the run did, by name (see the module's
    docstring for the rules)."""
    ours = version_name(version)
    old_nodes, new_nodes = old.get("nodes") or {}, new.get("nodes") or {}
    reasons = []
    if old.get("name") != new.get("name"):
        reasons.append(
            f"the workflow's name changed from {old.get('name')!r} to {new.get('name')!r}"
        )
    if old.get("entry") != new.get("entry"):
        reasons.append(f"entry changed from {old.get('entry')!r} to {new.get('entry')!r}")
    for name in sorted(set(renamed_away) & set(new_nodes)):
        reasons.append(
            f"node {name!r} was renamed by a migration of this run: its old name cannot "
            "name a node again"
        )
    old_edges = _edges(old)
    decided = _decided(past, old_edges)
    for name in sorted(decided):
        if name not in new_nodes:
            reasons.append(f"node {name!r} {_did(name, past)} but is gone from {ours}")
        elif name in past.reached:
            before, after = old_nodes.get(name) or {}, new_nodes[name]
            if before.get("kind") != after.get("kind"):
                reasons.append(
                    f"node {name!r} changed kind from {before.get('kind')} to {after.get('kind')}"
                )
            elif bool(before.get("fan_out")) != bool(after.get("fan_out")):
                was, now = ("a map", "a plain") if before.get("fan_out") else ("a plain", "a map")
                reasons.append(f"node {name!r} changed from {was} node to {now} one")
    new_edges = _edges(new)
    for source, target in sorted(set(old_edges) - set(new_edges)):
        gone = target not in new_nodes or (source in decided and source not in new_nodes)
        if target not in decided or gone:
            continue  # its target is undecided, or a removed node's reason says it already
        if source in past.ran and target in past.reached:
            reasons.append(f"edge {source!r} -> {target!r} ran but was removed")
        else:
            reasons.append(
                f"edge {source!r} -> {target!r} was removed, but node {target!r} "
                f"{_did(target, past)} (its inputs would change)"
            )
    for source, target in sorted(set(new_edges) - set(old_edges)):
        if target in decided:
            reasons.append(
                f"edge {source!r} -> {target!r} was added, but node {target!r} "
                f"{_did(target, past)} (its inputs would change)"
            )
        elif source in past.ran and source not in past.frontier and new_edges[(source, target)]:
            reasons.append(
                f"edge {source!r} -> {target!r} was added with a condition "
                f"({new_edges[(source, target)]}) after node {source!r} ran: the condition "
                "was never evaluated in this run"
            )
    return reasons


def replay_changes(new: Mapping[str, Any], past: Past, *, version: str | None = None) -> list[str]:
    """What replaying the run's steps through ``new`` does not reproduce: a committed visit
    that does not replay, or a frontier visit that comes out with another visit number or
    input (a parked node would not find its answer)."""
    ours = version_name(version)
    try:
        sched = _replayed(skeleton(new), past.input, past.steps)
    except _Misfit as exc:
        return [f"{exc} on {ours}"]
    except ValueError as exc:
        return [f"{ours}: {exc}"]
    reasons = []
    for node, (visit, given) in sorted(past.frontier.items()):
        if sched.status.get(node) not in _LIVE or sched.visits[node] != visit:
            reasons.append(f"node {node!r} would not go on at its visit {visit} on {ours}")
        elif not _same(sched.inputs.get(node), given):
            reasons.append(f"node {node!r} would go on with another input on {ours}")
    return reasons


def incompatible(
    run_id: str,
    workflow: str,
    reasons: Sequence[str],
    *,
    version: str | None,
    run_version: str | None,
) -> IncompatibleVersion:
    """The error of a resume (or fork) with a graph that run ``run_id`` cannot go on with,
    naming each of ``reasons`` and how to go on."""
    ours, theirs = version_name(version), version_name(run_version, "the run's own graph")
    return IncompatibleVersion(
        f"run {run_id!r} of workflow {workflow!r} cannot go on with {ours}, a different "
        f"graph from {theirs}: {'; '.join(reasons)}",
        hint="keep what the run already did (node code may change; nodes and edges may be "
        "added after where it stands, and removed where it never went); map renamed nodes "
        "with wf.migrate(run_id, {'old': 'new'}, checkpoint=...); or resume it with "
        f"{theirs}. Nothing of the run was changed",
        run_id=run_id,
        workflow=workflow,
        version=version,
        run_version=run_version,
        reasons=list(reasons),
    )


# --- helpers -------------------------------------------------------------------------------------


def _edges(described: Mapping[str, Any]) -> dict[tuple[str, str], str | None]:
    """Each edge ``(source, target)`` -> its condition's name (None: unconditional)."""
    return {(s, t): c or None for s, t, c in described.get("edges") or []}


def _decided(past: Past, old_edges: Mapping[tuple[str, str], Any]) -> set[str]:
    """The nodes whose inputs the run already settled: those that ran or are on the
    frontier, and, transitively, pruned nodes that lead into them (their pruning is part of
    a join that was made)."""
    decided = set(past.reached)
    grew = True
    while grew:
        grew = False
        for source, target in old_edges:
            if target in decided and source in past.pruned and source not in decided:
                decided.add(source)
                grew = True
    return decided


def _did(node: str, past: Past) -> str:
    """What the run did with ``node``, for a reason."""
    if node in past.ran:
        return "ran in this run"
    if node in past.frontier:
        return "is running or waiting in this run"
    return "was pruned in this run before a node after it ran"


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # a value whose == raises: compare its text
        return repr(a) == repr(b)
