"""Workflow graphs: definition and validation, pure (no Ray, no I/O).

The coordinator actor needs the graph, so the definition lives here, below it; the public
``Workflow`` handle adds ``start``/``resume`` on top.

Semantics, in short:

- A node runs an agent, a team, a function (sync or async, given a :class:`NodeContext`), or
  another workflow. A *map* node runs its target once per item of a list, in parallel, and
  collects the results in order.
- Edges may carry a condition ``when(ctx) -> bool`` (sync or async). Every edge whose
  condition holds is followed, so branches run in parallel; make conditions exclusive for a
  switch. An edge whose condition is false is *pruned*, and pruning propagates: a node all of
  whose incoming edges are pruned is pruned too.
- Join rule: a node with several incoming edges runs once every predecessor that can still
  reach it has finished (or been pruned), and at least one incoming edge is live.
- A node may return :class:`Next` to jump to any node with a new input (this is how loops
  work; the static graph itself must be acyclic). ``max_steps`` bounds the node executions of
  a run.
"""

from __future__ import annotations

import hashlib
import json
import re
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from gecko_actors.core.durations import duration_seconds
from gecko_actors.exceptions import UserError, WorkflowError
from gecko_actors.settings import load_settings
from gecko_actors.workflow.context import NodeContext

NodeKind = Literal["agent", "team", "function", "workflow"]
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,99}")
# How much of a bad jump target, and how many valid node names, an error message shows: a
# node may return anything (a 10 MB string, a list of a million names).
_REPR = reprlib.Repr()  # keyword arguments need Python 3.12
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong, _REPR.maxlist = 3, 80, 80, 80, 5
_SHOWN_NODES = 30


@dataclass(frozen=True)
class Next:
    """Returned by a node: continue at ``node`` with ``input`` (loops, retries of a stage).

    ``node`` is the name (a str) of a node of the same workflow; anything else fails the
    visit that returned it with a :class:`~gecko_actors.exceptions.WorkflowError` naming the
    target and the valid nodes (see :meth:`WorkflowGraph.jump_target`), before its step is
    committed.
    """

    node: str
    input: Any = None


@dataclass(frozen=True)
class RetryPolicy:
    """How often a node is tried, and how long to wait between tries (exponential)."""

    attempts: int = 1
    backoff: float = 1.0
    max_backoff: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.backoff < 0 or self.max_backoff < 0:
            raise UserError(
                f"invalid retry policy {self}", hint="attempts >= 1, backoff and max_backoff >= 0"
            )

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return min(self.backoff * 2 ** (attempt - 1), self.max_backoff)


@dataclass
class Node:
    name: str
    kind: NodeKind
    target: Any
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float | None = None
    fan_out: bool = False
    resources: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    when: Callable[[NodeContext], Any] | None = None


class WorkflowGraph:
    """Nodes, edges and an entry point; build it with the chaining methods, then
    :meth:`validate`.

    Args:
        name: the workflow's name (runs are ``<name>-<random>`` unless named).
        max_steps: how many steps a run may commit (a loop's guard).
        reducers: how concurrent writes to a state key merge, per key.
        journal_models: journal its agent nodes' model calls too (tool calls and
            ``ctx.step`` always are): a visit run again gets the recorded responses, with no
            provider call and no spend, and a finished run can be replayed offline. The
            default for its runs (a run may say otherwise); ``None``: the
            ``GECKO_JOURNAL_MODELS`` setting.
        version: this graph's version (a str or an int, kept as a str), recorded by the runs
            it creates: a run resumed with another version goes on if the new graph is
            compatible with what the run did (see ``workflow/versions.py``).
        retention: how long ``gecko-actors gc`` keeps its finished runs (``"30d"``, a
            ``timedelta`` or seconds), recorded by each run it creates; ``None``: kept until
            a gc with ``--older-than`` deletes them.
    """

    def __init__(
        self,
        name: str,
        *,
        max_steps: int = 100,
        reducers: Mapping[str, Callable[[Any, Any], Any]] | None = None,
        journal_models: bool | None = None,
        version: str | int | None = None,
        retention: str | timedelta | float | None = None,
    ) -> None:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise UserError(
                f"workflow name {name!r} is invalid",
                hint="use 1-100 letters, digits, '_', '.', ':' or '-'",
            )
        if max_steps < 1:
            raise UserError(f"max_steps must be >= 1, got {max_steps}")
        for key, reducer in (reducers or {}).items():
            if not isinstance(key, str) or not callable(reducer):
                raise UserError(
                    f"reducer for state key {key!r} of workflow {name!r} is invalid",
                    hint="reducers maps str keys to functions (old, update) -> merged, "
                    "e.g. {'notes': operator.add}",
                )
        self.name = name
        self.max_steps = max_steps
        # Whether its runs journal model calls too, by default (tool calls and steps always
        # are); a run records what it was started with in its manifest.
        self.journal_models = journal_models
        self.reducers: dict[str, Callable[[Any, Any], Any]] = dict(reducers or {})
        self.nodes: dict[str, Node] = {}
        self.edges: list[Edge] = []
        self.entry: str | None = None
        # ``module:attr`` (or ``/abs/file.py:attr``) this workflow was loaded from, if any: a
        # workflow host imports it again after a restart instead of keeping a pickled copy.
        self.target: str | None = None
        self.version = _version(version)
        self.retention = None if retention is None else duration_seconds(retention, "retention")

    # --- building -----------------------------------------------------------------------

    def add_node(
        self,
        name: str,
        target: Any,
        *,
        retry: RetryPolicy | int | None = None,
        timeout: float | None = None,
        fan_out: bool = False,
        num_cpus: float | None = None,
        num_gpus: float | None = None,
    ) -> WorkflowGraph:
        """Add a node running ``target`` (an Agent, a Team, a function or a workflow).

        ``retry`` is a :class:`RetryPolicy` or a number of attempts; ``fan_out=True`` makes a
        map node (its input must be a list; the target runs once per item, in parallel);
        ``num_cpus``/``num_gpus`` are the Ray resources of a function node's task.
        """
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise UserError(
                f"node name {name!r} is invalid",
                hint="use 1-100 letters, digits, '_', '.', ':' or '-'",
            )
        if name in self.nodes:
            raise UserError(
                f"workflow {self.name!r} already has a node named {name!r}",
                hint="node names must be unique",
                node=name,
            )
        if timeout is not None and timeout <= 0:
            raise UserError(f"timeout of node {name!r} must be positive, got {timeout}")
        policy = RetryPolicy(attempts=retry) if isinstance(retry, int) else retry
        resources = {
            k: v for k, v in (("num_cpus", num_cpus), ("num_gpus", num_gpus)) if v is not None
        }
        self.nodes[name] = Node(
            name,
            node_kind(name, target),
            target,
            policy or RetryPolicy(),
            timeout,
            fan_out,
            resources,
        )
        if self.entry is None:
            self.entry = name  # the first node, unless set_entry says otherwise
        return self

    def add_edge(
        self, source: str, target: str, *, when: Callable[[NodeContext], Any] | None = None
    ) -> WorkflowGraph:
        """Run ``target`` after ``source`` (if ``when(ctx)`` holds)."""
        self._check_name("add_edge source", source)
        self._check_name("add_edge target", target)
        if when is not None and not callable(when):
            raise UserError(f"the condition of edge {source!r} → {target!r} is not callable")
        self.edges.append(Edge(source, target, when))
        return self

    def set_entry(self, name: str) -> WorkflowGraph:
        """Start runs at node ``name`` (by default, the first node added)."""
        self._check_name("set_entry", name)
        self.entry = name
        return self

    def _check_name(self, what: str, name: Any) -> None:
        """Refuse a node reference that is not a str (a list would break :meth:`validate`
        with a TypeError); whether the node exists is checked by :meth:`validate`."""
        if not isinstance(name, str):
            raise UserError(
                f"{what} of workflow {self.name!r} got {_REPR.repr(name)} "
                f"(of type {type(name).__name__}), not a node name",
                hint=f"name one of {_node_list(self.nodes)} by its name (a str)",
            )

    # --- checking -----------------------------------------------------------------------

    def validate(self) -> None:
        """Raise :class:`UserError` naming the nodes at fault: no entry, an edge to or from
        an unknown node, a static cycle (with its path), nodes unreachable from the entry."""
        if not self.nodes:
            raise UserError(f"workflow {self.name!r} has no nodes", hint="add_node(...) first")
        if self.entry is None or self.entry not in self.nodes:
            raise UserError(
                f"workflow {self.name!r} has no valid entry node ({self.entry!r})",
                hint=f"set_entry(...) with one of {sorted(self.nodes)}",
            )
        unknown = sorted({n for e in self.edges for n in (e.source, e.target)} - set(self.nodes))
        if unknown:
            raise UserError(
                f"edges of workflow {self.name!r} name unknown nodes: {unknown}",
                hint=f"known nodes: {sorted(self.nodes)}",
                nodes=unknown,
            )
        cycle = self._find_cycle()
        if cycle:
            raise UserError(
                f"workflow {self.name!r} has a cycle: {' → '.join(cycle)}",
                hint="the graph must be acyclic: loop by returning Next(node, input) from a node",
                nodes=cycle,
            )
        unreachable = sorted(set(self.nodes) - self.reachable(self.entry))
        if unreachable:
            raise UserError(
                f"nodes of workflow {self.name!r} cannot be reached from {self.entry!r}: "
                f"{unreachable}",
                hint="connect them with add_edge or remove them",
                nodes=unreachable,
            )

    def jump_target(self, source: str, target: Any, run_id: str | None = None) -> str:
        """The node that a ``Next(target, ...)`` returned by node ``source`` jumps to.

        Raises :class:`WorkflowError` (with ``run_id``, ``node=source`` and ``target``) if
        ``target`` is not the name of one of this graph's nodes: not a str (a list of names,
        None, a number), empty, or unknown. The message shows the target (clipped) and the
        valid names; a ``str`` subclass (a ``StrEnum`` member) comes back as a plain str.
        """
        shown = _REPR.repr(target)
        if not isinstance(target, str):
            problem = (
                f"returned Next(node={shown}): a jump target must be a node's name (a str), "
                f"not of type {type(target).__name__}"
            )
        elif str.__str__(target) in self.nodes:
            return str.__str__(target)
        else:
            problem = f"jumped to unknown node {shown}"
        raise WorkflowError(
            f"node {source!r} of workflow {self.name!r} {problem}",
            hint=f"Next(...) must name one of {_node_list(self.nodes)}",
            run_id=run_id,
            node=source,
            target=shown,
        )

    def successors(self, name: str) -> list[Edge]:
        return [e for e in self.edges if e.source == name]

    def predecessors(self, name: str) -> list[Edge]:
        return [e for e in self.edges if e.target == name]

    def reachable(self, start: str) -> set[str]:
        """``start`` and every node reachable from it along edges."""
        seen, todo = {start}, [start]
        while todo:
            for edge in self.successors(todo.pop()):
                if edge.target not in seen:
                    seen.add(edge.target)
                    todo.append(edge.target)
        return seen

    def sinks(self) -> list[str]:
        sources = {e.source for e in self.edges}
        return [n for n in self.nodes if n not in sources]

    def _find_cycle(self) -> list[str] | None:
        state: dict[str, int] = {}  # 1: on the current path, 2: done
        path: list[str] = []

        def visit(node: str) -> list[str] | None:
            state[node] = 1
            path.append(node)
            for edge in self.successors(node):
                if state.get(edge.target) == 1:
                    return [*path[path.index(edge.target) :], edge.target]
                if edge.target not in state and (found := visit(edge.target)):
                    return found
            path.pop()
            state[node] = 2
            return None

        for node in self.nodes:
            if node not in state and (found := visit(node)):
                return found
        return None

    # --- describing ---------------------------------------------------------------------

    def to_mermaid(self) -> str:
        """A mermaid flowchart of the graph (conditional edges are dotted and labelled)."""
        lines = ["flowchart TD"]
        for node in self.nodes.values():
            label = f"{node.name}<br/>{node.kind}{' (map)' if node.fan_out else ''}"
            shape = f'(["{label}"])' if node.name == self.entry else f'["{label}"]'
            lines.append(f"    {_mermaid_id(node.name)}{shape}")
        for edge in self.edges:
            arrow = f"-. {_condition_name(edge.when)} .->" if edge.when else "-->"
            lines.append(f"    {_mermaid_id(edge.source)} {arrow} {_mermaid_id(edge.target)}")
        return "\n".join(lines)

    def shape(self) -> tuple[Any, ...]:
        """Everything a change to the graph changes, by identity where it is code (equal
        shapes: the same graph, to the same functions). Cheap: no pickling, no hashing."""
        nodes = tuple(
            (n.name, n.kind, n.target, n.retry, n.timeout, n.fan_out, tuple(n.resources.items()))
            for n in self.nodes.values()
        )
        reducers = tuple(self.reducers.items())
        return (
            self.name,
            self.entry,
            self.max_steps,
            self.target,
            self.journal_models,
            nodes,
            tuple(self.edges),
            reducers,
            self.version,
            self.retention,
        )

    def models_journaled(self, asked: bool | None = None) -> bool:
        """Whether a run started now journals its model calls: as ``asked`` (the run's
        say), else as the graph's default, else as the ``GECKO_JOURNAL_MODELS`` setting."""
        for say in (asked, self.journal_models):
            if say is not None:
                return bool(say)
        return load_settings().journal_models

    def fingerprint(self) -> str:
        """A hash of the graph's structure: nodes (name, kind, target), edges (with their
        conditions' names), entry and max_steps. A checkpoint remembers it, so a run is never
        resumed with a different graph."""
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()

    def describe(self) -> dict[str, Any]:
        """The structure as plain data (what the fingerprint covers)."""
        return {
            "name": self.name,
            "entry": self.entry,
            "max_steps": self.max_steps,
            "nodes": {
                n.name: {"kind": n.kind, "target": target_name(n.target), "fan_out": n.fan_out}
                for n in self.nodes.values()
            },
            "edges": [
                [e.source, e.target, _condition_name(e.when) if e.when else None]
                for e in self.edges
            ],
        }


def _version(version: Any) -> str | None:
    """A workflow's version as its runs record it: a str (an int becomes one), or None."""
    if version is None:
        return None
    if type(version) is int or (isinstance(version, str) and 0 < len(version) <= 100):
        return str(version)
    raise UserError(
        f"a workflow's version must be a str (1-100 characters) or an int, got {version!r:.40}",
        hint='e.g. Workflow("report", version=3) or version="2026-05-01"',
    )


def node_kind(name: str, target: Any) -> NodeKind:
    """What kind of node ``target`` makes; anything else is a UserError."""
    kind = type(target).__name__
    if kind == "Agent":
        return "agent"
    if kind == "Team":
        return "team"
    if isinstance(target, WorkflowGraph):
        return "workflow"
    if callable(target):
        return "function"
    raise UserError(
        f"node {name!r}: cannot run a {type(target).__name__}",
        hint="a node runs an Agent, a Team, a function or a Workflow",
        node=name,
    )


def target_name(target: Any) -> str:
    if isinstance(target, WorkflowGraph):  # its structure too: a changed child changes us
        return f"workflow:{target.name}:{target.fingerprint()}"
    if type(target).__name__ == "Agent":
        return f"agent:{target.name}"
    if type(target).__name__ == "Team":
        return f"team:{[m.name for m in target.members]}"
    module = getattr(target, "__module__", "?")
    return f"function:{module}.{getattr(target, '__qualname__', type(target).__name__)}"


def _node_list(names: Mapping[str, Any]) -> str:
    """The sorted node names, the first few of a huge graph and a count of the rest."""
    ordered = sorted(names)
    if len(ordered) <= _SHOWN_NODES:
        return str(ordered)
    return f"{ordered[:_SHOWN_NODES]} (and {len(ordered) - _SHOWN_NODES} more)"


def _condition_name(when: Callable[..., Any] | None) -> str:
    if when is None:
        return ""
    name = getattr(when, "__qualname__", type(when).__name__)
    return "lambda" if name.endswith("<lambda>") else name


def _mermaid_id(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)
