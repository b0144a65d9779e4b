"""Forking a run: a new run whose first ``at_step`` steps are the parent's (read from the
parent's checkpoint, never copied: what a fork writes does not grow with ``at_step``),
with the state or the next visit's input changed, which then goes on from there. The parent
is never written to. Ray-free: ``Workflow.fork`` creates the fork here, then resumes it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from gecko_actors.checkpoint import CheckpointStore, Fork, Manifest
from gecko_actors.checkpoint.records import validate_run_id
from gecko_actors.checkpoint.upgrades import Upgrade, write_upgrade
from gecko_actors.exceptions import UserError
from gecko_actors.workflow.graph import WorkflowGraph
from gecko_actors.workflow.rules import already_exists, no_such_run, normalised
from gecko_actors.workflow.schedule import Scheduler
from gecko_actors.workflow.upgrading import check_version, latest
from gecko_actors.workflow.versions import renamed_steps

__all__ = ["UNSET", "create_fork"]

UNSET: Any = object()  # no input given: each pending visit keeps its own


def create_fork(
    graph: WorkflowGraph,
    store: CheckpointStore,
    parent: str,
    at_step: int,
    *,
    state: dict[str, Any] | None = None,
    input: Any = UNSET,
    node: str | None = None,
    run_id: str | None = None,
) -> Manifest:
    """Create the fork of run ``parent`` at ``at_step`` (its first ``at_step`` steps are
    the parent's) in ``store`` and return its manifest; the caller drives it (a resume).
    Everything is checked before anything is written: a UserError names what is wrong."""
    found = store.read_manifest(parent)
    if found is None:
        raise no_such_run(parent, store.uri, " to fork")
    found, renames = latest(store, found)  # its current version, and any renamed nodes
    stored = store.load_steps(parent)
    steps = renamed_steps(stored, renames)
    if type(at_step) is not int or not 0 <= at_step <= len(steps):
        raise UserError(
            f"cannot fork run {parent!r} at step {at_step!r}: it has {len(steps)} committed steps",
            hint=f"at_step is how many of its steps the fork keeps: 0 to {len(steps)} "
            "(see `gecko-actors history`)",
            run_id=parent,
        )
    # Another version of the graph forks it if compatible with the steps the fork keeps.
    check_version(graph, found, stored[:at_step], renames)
    if state is not None and (
        not isinstance(state, dict) or not all(isinstance(k, str) for k in state)
    ):
        raise UserError(
            f"a fork's state must be a dict of str keys, got {type(state).__name__}",
            hint="e.g. state={'tone': 'formal'}",
            run_id=parent,
        )
    given = input is not UNSET
    if node is not None and not given:
        raise UserError(
            f"node={node!r} names the visit that gets the fork's input, but no input is given",
            hint="pass input=... too, or leave node out",
            run_id=parent,
        )
    if given:
        node = _pending_node(graph, found.input, steps[:at_step], node, parent, at_step)
        input = normalised(input, "the fork's input", node)
    new_id = validate_run_id(run_id or f"{graph.name}-{uuid.uuid4().hex[:12]}")
    fork = Fork(parent, at_step, dict(state) if state else None, node, None if not given else input)
    made = Manifest(
        new_id,
        found.workflow,
        graph.fingerprint(),
        found.input,
        time.time(),
        journal_models=found.journal_models,
        fork=fork,
        graph=graph.describe(),
        version=graph.version,
        retention=graph.retention,
    )
    if store.create_manifest(made) is not made:
        raise already_exists(new_id, store.uri)
    if renames:  # the shared steps carry the parent's old node names: the fork maps them too
        renamed = Upgrade(1, graph.version, made.fingerprint, made.graph or {}, renames)
        write_upgrade(store, new_id, renamed)
    return made


def _pending_node(
    graph: WorkflowGraph,
    run_input: Any,
    shared: list[Any],
    node: str | None,
    parent: str,
    at_step: int,
) -> str:
    """The node whose pending visit gets the fork's input: ``node``, which must be pending
    after the shared steps, or the only pending one."""
    sched = Scheduler(graph, parent)
    sched.start(run_input)
    for record in shared:
        sched.take_ready()
        sched.finish(
            record.node, record.visit, record.output, record.routes, record.next, record.seq
        )
    pending = sorted(n for n, s in sched.status.items() if s in ("ready", "running"))
    if node is None and len(pending) == 1:
        return pending[0]
    if node is not None and node in pending:
        return node
    names = ", ".join(repr(n) for n in pending) or "none (the run had ended)"
    raise UserError(
        f"after step {at_step} of run {parent!r}, the nodes about to run are {names}"
        + ("" if node is None else f"; {node!r} is not one of them"),
        hint="give the input to one of them with node=..., or fork at another step",
        run_id=parent,
    )
