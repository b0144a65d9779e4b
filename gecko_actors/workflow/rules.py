"""What a run's values and runs must be, and the errors that say they are not (Ray-free)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from gecko_actors.checkpoint import StateWrite, decode_value, encode_value
from gecko_actors.exceptions import GeckoError, UserError, WorkflowError
from gecko_actors.workflow.execution import describe
from gecko_actors.workflow.graph import Edge, Next, NodeContext
from gecko_actors.workflow.state import apply


def as_gecko(exc: Exception, run_id: str) -> GeckoError:
    """``exc`` if it is ours, else a WorkflowError that says what it was."""
    if isinstance(exc, GeckoError):
        return exc
    return WorkflowError(f"workflow run {run_id!r} failed: {describe(exc)}", run_id=run_id)


def checkpointable(
    output: Any, jump: Next | None, writes: Sequence[StateWrite], node: str
) -> tuple[Any, Next | None, tuple[StateWrite, ...]]:
    """A step's output, jump and state writes normalised to what the checkpoint holds (a
    UserError naming the value that cannot be)."""
    if jump is not None:
        jump = Next(jump.node, normalised(jump.input, "Next input", node))
    return (
        None if jump else normalised(output, "output", node),
        jump,
        tuple(
            w if w.deleted else StateWrite(w.key, normalised(w.value, f"state[{w.key!r}]", node))
            for w in writes
        ),
    )


async def routes(edges: Sequence[Edge], seen: NodeContext) -> dict[str, bool]:
    """The outcome of each condition of ``edges`` (a node's outgoing edges): they see its
    output as ``input`` and the state as the node left it. One that raises fails the node."""
    found = {}
    for edge in edges:
        try:
            verdict = edge.when(seen)  # type: ignore[misc]
            if inspect.isawaitable(verdict):
                verdict = await verdict
        except Exception as exc:
            raise WorkflowError(
                f"the condition {callable_name(edge.when)} of edge {edge.source!r} → "
                f"{edge.target!r} raised {describe(exc)}",
                hint="fix the condition, then resume the run",
                run_id=seen.run_id,
                node=seen.node,
            ) from None
        found[edge.target] = bool(verdict)
    return found


def callable_name(fn: Any) -> str:
    """How an error names a node's condition or reducer."""
    return getattr(fn, "__qualname__", type(fn).__name__)


def already_exists(run_id: str, uri: str) -> UserError:
    """The error of a start whose run id is taken."""
    return UserError(
        f"run {run_id!r} already exists in {uri}",
        hint="resume it with wf.resume(run_id, checkpoint=...) or pick a new run_id",
        run_id=run_id,
    )


def no_such_run(run_id: str, uri: str, doing: str = "") -> UserError:
    """The error of asking for a run that ``uri`` does not hold (``doing``: to do what)."""
    return UserError(
        f"no run {run_id!r} in {uri}{doing}",
        hint="check the run id and checkpoint (`gecko-actors list --checkpoint URI`)",
        run_id=run_id,
    )


def different_graph(run_id: str, workflow: str) -> UserError:
    """The error of a resume with a graph that is not the run's, for a run recorded before
    runs kept their graph: with nothing to compare against, only the same graph resumes it
    (runs that kept theirs are checked for compatibility, see ``versions.py``)."""
    return UserError(
        f"run {run_id!r} was made by a different graph of workflow {workflow!r}: its nodes, "
        "edges, conditions, entry or max_steps changed, and the run was recorded before runs "
        "kept their graph, so no compatible change can be told apart",
        hint="resume with the graph the run started with",
        run_id=run_id,
    )


def normalised(value: Any, what: str, node: str) -> Any:
    """``value`` as the checkpoint will give it back (a UserError naming ``what`` and the node
    when it cannot be stored)."""
    try:
        return decode_value(encode_value(value))
    except GeckoError as exc:
        raise UserError(f"node {node!r}: {what}: {exc.message}", hint=exc.hint, node=node) from None


def merged(
    state: dict[str, Any],
    writes: tuple[StateWrite, ...],
    reducers: Mapping[str, Any],
    node: str,
    run_id: str,
) -> dict[str, Any]:
    """``state`` with ``writes`` merged in; a reducer that fails is the node's error (a
    step whose update cannot be merged is never committed)."""
    for write in writes:
        try:
            apply(state, (write,), reducers)
        except Exception as exc:
            raise WorkflowError(
                f"node {node!r}: the reducer {callable_name(reducers.get(write.key))} of state "
                f"key {write.key!r} cannot merge its update: {describe(exc)}",
                hint="make the node write what the reducer expects (with a reducer, assign "
                "the update itself), or fix the reducer",
                run_id=run_id,
                node=node,
                key=write.key,
            ) from None
    return state
