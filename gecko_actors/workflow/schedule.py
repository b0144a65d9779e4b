"""Which node runs next: the join and pruning rules, as a pure state machine.

The coordinator feeds it each finished node (output, the outcome of its outgoing edges'
conditions, and any :class:`Next` jump) and asks what is ready. Replaying the committed steps of
a checkpoint through the same calls rebuilds the exact state after a restart, which is why the
conditions' outcomes are recorded rather than evaluated again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from gecko_actors.exceptions import WorkflowError
from gecko_actors.workflow.graph import Next, WorkflowGraph

Status = Literal["pending", "ready", "running", "done", "pruned"]
EdgeState = Literal["live", "pruned"] | None


@dataclass(frozen=True)
class Visit:
    """One execution of a node: its ``visit`` number makes the idempotency key."""

    node: str
    visit: int
    input: Any
    ancestors: int = 0  # a bit per committed step (by seq) in this visit's causal past

    def after(self, seq: int) -> bool:
        """Whether the step committed as ``seq`` is in this visit's causal past."""
        return bool(self.ancestors >> seq & 1)


class Scheduler:
    """The run state of one workflow graph."""

    def __init__(self, graph: WorkflowGraph, run_id: str = "") -> None:
        self.graph = graph
        self.run_id = run_id
        self.status: dict[str, Status] = dict.fromkeys(graph.nodes, "pending")
        self.visits: dict[str, int] = dict.fromkeys(graph.nodes, 0)
        self.edges: dict[tuple[str, str], EdgeState] = {
            (e.source, e.target): None for e in graph.edges
        }
        self.outputs: dict[str, Any] = {}
        self.inputs: dict[str, Any] = {}
        # A node's causal past once it is done (its own step included) or pruned; a visit
        # made ready inherits the union of its settled predecessors' (see state.py).
        self.past: dict[str, int] = {}
        self.ancestors: dict[str, int] = {}
        self.steps = 0
        self.last: str | None = None

    def start(self, input: Any) -> None:
        assert self.graph.entry is not None
        self._make_ready(self.graph.entry, input)

    # --- what to run --------------------------------------------------------------------

    def take_ready(self) -> list[Visit]:
        """The visits ready to run now (marked running)."""
        ready = [n for n, s in self.status.items() if s == "ready"]
        for node in ready:
            self.status[node] = "running"
        return [self.visit(n) for n in ready]

    def visit(self, node: str) -> Visit:
        """The current visit of ``node``."""
        return Visit(node, self.visits[node], self.inputs.get(node), self.ancestors.get(node, 0))

    def is_current(self, visit: Visit) -> bool:
        """Whether ``visit`` is still the node's current, running visit (a Next jump into a
        running region makes a newer one)."""
        return visit.visit == self.visits[visit.node] and self.status[visit.node] == "running"

    def check(self, node: str, jump: Next | None) -> None:
        """Raise the WorkflowError that finishing ``node`` (with ``jump``) would raise, before
        anything is committed: a jump to an unknown node, or one step past max_steps."""
        if self.steps + 1 > self.graph.max_steps:
            raise WorkflowError(
                f"workflow {self.graph.name!r} exceeded max_steps={self.graph.max_steps} "
                f"(at node {node!r})",
                hint="a Next loop does not end; raise max_steps or fix the loop's exit condition",
                run_id=self.run_id,
                node=node,
            )
        if jump is not None and jump.node not in self.graph.nodes:
            raise WorkflowError(
                f"node {node!r} jumped to unknown node {jump.node!r}",
                hint=f"Next(...) must name one of {sorted(self.graph.nodes)}",
                run_id=self.run_id,
                node=node,
            )

    def requeue_running(self) -> None:
        """Make every running visit ready again (after a replay, nothing is executing)."""
        for node, status in self.status.items():
            if status == "running":
                self.status[node] = "ready"

    @property
    def running(self) -> list[str]:
        return [n for n, s in self.status.items() if s == "running"]

    @property
    def finished(self) -> bool:
        return not any(s in ("ready", "running") for s in self.status.values())

    def result(self) -> Any:
        """The run's result: the output of its one finished sink, or ``{sink: output}`` when
        several sinks finished; the last finished node's output when no sink ran."""
        sinks = [n for n in self.graph.sinks() if self.status[n] == "done"]
        if len(sinks) == 1:
            return self.outputs[sinks[0]]
        if sinks:
            return {n: self.outputs[n] for n in sinks}
        return self.outputs.get(self.last) if self.last else None

    # --- what happened ------------------------------------------------------------------

    def finish(
        self,
        node: str,
        visit: int,
        output: Any,
        routes: dict[str, bool] | None = None,
        jump: Next | None = None,
        seq: int | None = None,
    ) -> bool:
        """Record a finished visit, committed as step ``seq``; returns False (and changes
        nothing) for a stale visit.

        ``routes`` maps each outgoing edge's target to its condition's outcome (edges without
        a condition are live). ``jump`` continues at another node instead of the edges.
        """
        if visit != self.visits[node] or self.status[node] != "running":
            return False
        self.check(node, jump)
        self.steps += 1
        self.past[node] = self.ancestors.get(node, 0) | (0 if seq is None else 1 << seq)
        self.outputs[node] = output
        self.last = node
        self.status[node] = "done"
        if jump is not None:
            self._jump(node, jump)
            return True
        for edge in self.graph.successors(node):
            live = True if routes is None else routes.get(edge.target, True)
            self.edges[(node, edge.target)] = "live" if live else "pruned"
        for edge in self.graph.successors(node):
            self._settle(edge.target)
        return True

    def _jump(self, source: str, jump: Next) -> None:
        for edge in self.graph.successors(source):  # the jump replaces the edges
            self.edges[(source, edge.target)] = "pruned"
        region = self.graph.reachable(jump.node)
        for src, dst in self.edges:
            if dst in region and src in region:
                self.edges[(src, dst)] = None
        for node in region:
            # A visit still running here is void: it ran on the previous pass's inputs. Its
            # result is never committed; the node runs again when this pass reaches it.
            self.status[node] = "pending"
        for edge in self.graph.successors(source):
            if edge.target not in region:
                self._settle(edge.target)
        self._make_ready(jump.node, jump.input, self.past[source])

    def _settle(self, node: str) -> None:
        """Ready, pruned or still waiting: the join rule."""
        if self.status[node] != "pending":
            return
        incoming = self.graph.predecessors(node)
        states = [self.edges[(e.source, node)] for e in incoming]
        if any(s is None for s in states):
            return  # a predecessor that can still reach it has not finished
        live = [e.source for e, s in zip(incoming, states, strict=True) if s == "live"]
        past = 0
        for edge in incoming:
            past |= self.past.get(edge.source, 0)
        if not live:
            self.status[node] = "pruned"
            self.past[node] = past
            for edge in self.graph.successors(node):
                self.edges[(node, edge.target)] = "pruned"
                self._settle(edge.target)
            return
        value = self.outputs[live[0]] if len(live) == 1 else {n: self.outputs[n] for n in live}
        self._make_ready(node, value, past)

    def _make_ready(self, node: str, value: Any, ancestors: int = 0) -> None:
        self.visits[node] += 1
        self.inputs[node] = value
        self.ancestors[node] = ancestors
        self.status[node] = "ready"
