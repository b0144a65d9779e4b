"""Where a run stands, node by node, read from its checkpoint alone (Ray-free): each node's
state (pending, running, waiting, sleeping, done, failed, pruned), how many times it
committed, and the jumps (``Next``) its steps took.

The graph comes from the manifest (``WorkflowGraph.describe()``, recorded when the run was
created). Its committed steps are replayed through the engine's own :class:`Scheduler`, with
the edge decisions they recorded, so the nodes it would run next (the *frontier*) are exactly
the engine's: running for a running run, failed for a failed one. A run written before the
graph was recorded shows only the nodes its steps name.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from gecko_actors.checkpoint import Manifest, StepRecord
from gecko_actors.workflow.graph import Edge, Node, WorkflowGraph
from gecko_actors.workflow.schedule import Scheduler

__all__ = ["GraphView", "Progress", "graph_view", "progress"]

# The engine names the node that failed a run first: "node 'pay' of workflow run ...".
_FAILED_NODE = re.compile(r"\bnode '([A-Za-z0-9_][A-Za-z0-9_.:-]{0,99})'")


@dataclass(frozen=True)
class GraphView:
    """A run's graph as plain data: nodes (name -> kind and whether it maps over a list),
    edges ``(source, target, condition name or None)``, the entry, and whether it came from
    the manifest (``recorded``) or only from the nodes the steps name."""

    nodes: dict[str, dict[str, Any]]
    edges: list[tuple[str, str, str | None]]
    entry: str | None
    recorded: bool


@dataclass
class Progress:
    """Each node's ``state``, its ``visits`` (committed steps), the ``latest`` node to commit,
    and the ``jumps`` taken: ``(source, target) -> how many times``."""

    states: dict[str, str]
    visits: dict[str, int]
    latest: str | None = None
    jumps: dict[tuple[str, str], int] = field(default_factory=dict)


def graph_view(manifest: Manifest, records: list[StepRecord]) -> GraphView:
    """The graph to draw for ``manifest``'s run: as recorded, or (a run from before the graph
    was recorded, or a record that does not make sense) the nodes its steps and parked
    branches name, in the order they first appear."""
    recorded = _recorded(manifest.graph)
    if recorded is not None:
        return recorded
    names: dict[str, dict[str, Any]] = {}
    for name in [r.node for r in records] + list(manifest.waiting or {}):
        names.setdefault(str(name), {"kind": "", "fan_out": False})
    entry = records[0].node if records else None
    return GraphView(names, [], entry, recorded=False)


def _recorded(graph: Any) -> GraphView | None:
    """The recorded graph, checked: the store is outside data, and a page must not break on
    one odd record (``None`` then: the nodes of the steps are drawn instead)."""
    if not isinstance(graph, dict):
        return None
    nodes, edges = graph.get("nodes"), graph.get("edges")
    if not isinstance(nodes, dict) or not isinstance(edges, list):
        return None
    found: dict[str, dict[str, Any]] = {}
    for name, info in nodes.items():
        if not isinstance(name, str) or not isinstance(info, dict):
            return None
        found[name] = {"kind": str(info.get("kind", "")), "fan_out": bool(info.get("fan_out"))}
    pairs: list[tuple[str, str, str | None]] = []
    for edge in edges:
        if not (isinstance(edge, list | tuple) and len(edge) == 3):
            return None
        source, target, condition = edge
        if source not in found or target not in found:
            return None
        pairs.append((source, target, None if condition is None else str(condition)))
    entry = graph.get("entry")
    return GraphView(found, pairs, entry if entry in found else None, recorded=True)


def progress(manifest: Manifest, records: list[StepRecord], view: GraphView) -> Progress:
    """Each node's state once ``records`` (the run's committed steps) are applied, given the
    run's status in ``manifest``."""
    visits = dict(Counter(r.node for r in records))
    jumps = dict(Counter((r.node, r.next.node) for r in records if r.next is not None))
    latest = records[-1].node if records else None
    states = {name: "done" if visits.get(name) else "pending" for name in view.nodes}
    frontier = _replay(view, records, states) if view.recorded else []
    status = manifest.status
    parked = (manifest.waiting or {}) if status == "waiting" else {}
    failed = _failed_node(manifest.error, view) if status == "failed" else None
    if status == "running":
        for name in frontier or ([view.entry] if view.entry and not records else []):
            states[name] = "running"
    elif status == "failed":
        for name in [failed] if failed else frontier:
            states[name] = "failed"
    for name, entry in parked.items():
        if name in states:  # a sleep's entry says it takes no answer
            states[name] = "waiting" if entry.get("answerable", True) else "sleeping"
    return Progress(states, visits, latest, jumps)


def _replay(view: GraphView, records: list[StepRecord], states: dict[str, str]) -> list[str]:
    """Replay the steps through the engine's scheduler (with their recorded edge decisions
    and jumps); mark pruned nodes in ``states`` and return the frontier: the nodes it would
    run next."""
    graph = WorkflowGraph.__new__(WorkflowGraph)  # no validation: only its shape is needed
    graph.name, graph.entry, graph.max_steps = "view", view.entry, 10**9
    graph.nodes = {n: Node(n, "function", None) for n in view.nodes}
    graph.edges = [Edge(s, t, _condition if c else None) for s, t, c in view.edges]
    if view.entry is None:
        return []
    sched = Scheduler(graph)
    sched.start(None)
    try:
        for record in records:
            sched.take_ready()
            if record.node in graph.nodes:
                sched.finish(record.node, record.visit, None, record.routes, record.next)
    except Exception:  # a record the graph does not explain: draw what is committed
        return []
    for name, status in sched.status.items():
        if status == "pruned" and states.get(name) == "pending":
            states[name] = "pruned"
    return [n for n, s in sched.status.items() if s in ("ready", "running")]


def _condition(ctx: Any) -> bool:  # never called: the recorded decisions are replayed
    return True


def _failed_node(error: str | None, view: GraphView) -> str | None:
    """The node a failed run's error names, if it is one of the graph's."""
    for match in _FAILED_NODE.finditer(error or ""):
        if match[1] in view.nodes:
            return match[1]
    return None
