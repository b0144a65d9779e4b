"""Where node attempts run, and how each kind is stopped (Ray-free).

:class:`LocalExecutor` runs every attempt in the engine's own process:

=====================  ===================================  ===================================
node                   runs as                              stopped by
=====================  ===================================  ===================================
async function         a task on the engine's event loop    cancellation, awaited
sync function          a thread of the engine's process     nothing: a thread cannot be
                                                            interrupted, so ``stop`` waits
                                                            until the function returns
agent / team           a task awaiting ``arun``             cancellation, which cancels the
                                                            agent's (members') calls with their
                                                            tool calls, awaited
nested workflow        a child run engine in the same loop  cancellation of the child's drive
=====================  ===================================  ===================================

The coordinator's executor (``coordinator.py``) adds killable Ray tasks for sync functions
that have a timeout or ask for CPUs/GPUs. Every attempt reports its state writes as the diff it
made to its own snapshot (``state.py``).
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import dataclasses
import inspect
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from pydantic_core import to_jsonable_python

from gecko_actors._redact import redact
from gecko_actors.checkpoint import CheckpointStore, StateWrite
from gecko_actors.core.messages import AgentOutput, Message
from gecko_actors.core.tools import ToolContext
from gecko_actors.exceptions import WorkflowError
from gecko_actors.workflow.graph import Node, NodeContext, WorkflowGraph
from gecko_actors.workflow.state import StateView, as_view, writes_of

Result = tuple[Any, tuple[StateWrite, ...]]
# Sync function nodes get threads of their own: the event loop's default pool (cores + 4
# threads) would cap a 20-way fan-out at 6 and make commits, which use it, wait behind nodes.
# Threads are made on demand, up to this many at once; more visits queue.
_NODE_THREADS = ThreadPoolExecutor(max_workers=256, thread_name_prefix="gecko-node")


@dataclasses.dataclass(frozen=True)
class NodeOutcome:
    """What a visit's last attempt produced, before it is checked and committed."""

    value: Any
    writes: tuple[StateWrite, ...]
    attempts: int
    duration: float
    snapshot: dict[str, Any]  # the state the visit started from (the node saw a copy)


class Attempt(Protocol):
    """One running attempt of a node, as an executor started it."""

    async def started(self) -> None:
        """Return once the attempt's code is running (a node's timeout counts from here)."""

    async def result(self) -> tuple[Any, tuple[StateWrite, ...]]:
        """The node's value and the state writes it made."""

    async def stop(self) -> None:
        """Cancel the attempt and return only once its code no longer runs."""


class Executor(Protocol):
    """Runs node attempts: where and how each kind of node runs is the executor's choice."""

    def start(self, node: Node, ctx: NodeContext) -> Attempt:
        """Start one attempt of ``node`` with ``ctx`` (its ``state`` is the node's snapshot)."""


def call_node(fn: Callable[[NodeContext], Any], ctx: NodeContext) -> Any:
    """Call a function node on a private copy of its snapshot; returns ``(value, writes)``
    or, for an async function, a coroutine of it."""
    snapshot = dict(ctx.state)
    ctx.state = StateView(snapshot)
    value = fn(ctx)
    if inspect.isawaitable(value):
        return _finish_async(value, snapshot, ctx)
    return value, writes_of(snapshot, as_view(ctx.state))


async def _finish_async(awaitable: Any, snapshot: dict[str, Any], ctx: NodeContext) -> Result:
    value = await awaitable
    return value, writes_of(snapshot, as_view(ctx.state))


async def wait_out(awaitable: Any) -> Any:
    """Await ``awaitable`` to its end even if we are cancelled meanwhile (a second cancel
    must not cut short the wait for an attempt to stop), then let the cancellation through."""
    future = asyncio.ensure_future(awaitable)
    cancelled = False
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            cancelled = cancelled or not future.done() or future.cancelled()
    if cancelled:
        raise asyncio.CancelledError
    return future.result()


async def stop_all(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until each has stopped (their results are collected)."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    if tasks:
        await wait_out(asyncio.gather(*tasks, return_exceptions=True))


def uncancel() -> None:
    """Let the current task go on after it caught its own cancellation (to record it)."""
    task = asyncio.current_task()
    if task is not None and hasattr(task, "uncancel"):  # Python >= 3.11
        task.uncancel()


class TaskAttempt:
    """An attempt running as an asyncio task: cancelled, then awaited, to stop it."""

    def __init__(self, coro: Any) -> None:
        self.task: asyncio.Task[Any] = asyncio.ensure_future(coro)

    async def started(self) -> None:
        return None

    async def result(self) -> Result:
        return await asyncio.shield(self.task)

    async def stop(self) -> None:
        if not self.task.done():
            self.task.cancel()
        await wait_out(asyncio.gather(self.task, return_exceptions=True))


class ThreadAttempt(TaskAttempt):
    """A sync function in a thread: it cannot be interrupted, so stopping it means waiting
    until it returns (its result is then thrown away)."""

    def __init__(self, fn: Callable[[NodeContext], Any], ctx: NodeContext) -> None:
        # In a copy of our context: the node's model calls spend from the run's budget.
        self.job = _NODE_THREADS.submit(contextvars.copy_context().run, call_node, fn, ctx)
        super().__init__(self._run())

    async def _run(self) -> Result:
        value = await asyncio.shield(asyncio.wrap_future(self.job))
        if inspect.isawaitable(value):  # a sync function that returned a coroutine
            value = await value
        return value

    async def stop(self) -> None:
        if not self.job.cancel():  # one still queued for a thread never starts
            await wait_out(asyncio.gather(asyncio.wrap_future(self.job), return_exceptions=True))
        await super().stop()


class LocalExecutor:
    """Runs every node in this process (see the module's table).

    Args:
        store: where nested workflows checkpoint their child runs.
    """

    def __init__(self, store: CheckpointStore) -> None:
        self.store = store

    def start(self, node: Node, ctx: NodeContext) -> TaskAttempt:
        if node.kind == "function":
            if inspect.iscoroutinefunction(node.target):
                return TaskAttempt(_await_node(node.target, ctx))
            return ThreadAttempt(node.target, ctx)
        if node.kind == "agent":
            return TaskAttempt(self._agent(node, ctx))
        if node.kind == "team":
            return TaskAttempt(self._team(node, ctx))
        return TaskAttempt(self._child(node.target, ctx))

    async def _agent(self, node: Node, ctx: NodeContext) -> Result:
        context = ToolContext(
            run_id=ctx.run_id,
            idempotency_key=ctx.idempotency_key,
            attempt=ctx.attempt,
            journal=ctx.journal,
        )
        return await node.target.arun(agent_input(ctx.input), tool_context=context), ()

    async def _team(self, node: Node, ctx: NodeContext) -> Result:
        result = await node.target.arun(agent_input(ctx.input))
        # Checkpointable form: errors as text (exceptions are not data).
        errors = [None if e is None else redact(describe(e)) for e in result.errors]
        if all(errors):
            raise WorkflowError(
                f"every member of team node {node.name!r} failed: {errors}",
                run_id=ctx.run_id,
                node=node.name,
            )
        return {"members": result.members, "outputs": result.outputs, "errors": errors}, ()

    async def _child(self, graph: WorkflowGraph, ctx: NodeContext) -> Result:
        """A nested workflow: a run of its own (``<run_id>.<node>.<visit>``), checkpointed
        beside its parent and driven in this process. A retried or resumed visit continues
        the same child run."""
        from gecko_actors.workflow.engine import RunEngine

        run_id = child_run_id(ctx.run_id, ctx.node, ctx.visit, ctx.item)
        child = RunEngine(graph, run_id, self.store, self)
        manifest = await asyncio.to_thread(child.open, ctx.input)
        if manifest.status == "succeeded":
            return manifest.result, ()
        await child.run()
        while child.outcome == "waiting" and not child.waiting.status():  # timers alone
            await asyncio.sleep(max(0.0, (child.next_wake() or 0.0) - time.time()))
            await child.run()
        if child.outcome != "succeeded":
            raise child.failure or WorkflowError(f"child run {run_id!r} {child.outcome}")
        return child.value, ()


async def _await_node(fn: Callable[[NodeContext], Any], ctx: NodeContext) -> Result:
    return await call_node(fn, ctx)


def describe(exc: BaseException) -> str:
    """``Type: message`` of the error a node raised (not the Ray task error around it)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and type(exc).__name__.startswith("RayTaskError"):
        exc = cause
    return str(exc) if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"


def agent_input(value: Any) -> Any:
    """What an agent node receives: text for outputs of other nodes."""
    if isinstance(value, AgentOutput):
        return value.content
    if isinstance(value, str | Message):
        return value
    return json.dumps(to_jsonable_python(value, fallback=str), ensure_ascii=False)


def child_run_id(run_id: str, node: str, visit: int, item: int | None = None) -> str:
    """The run id of a nested workflow: the same for every attempt and restart of a visit, so
    a retried or resumed parent continues its child instead of starting it again."""
    child = f"{run_id}.{re.sub(r'[^A-Za-z0-9_.-]', '-', node)}.{visit}"
    return child if item is None else f"{child}.{item}"


class Outputs(Mapping[str, Any]):
    """``ctx.outputs``: the latest output of each node in the visit's causal past.

    In the engine's process it holds the values themselves (copied on access, so a node never
    changes the run's own copy); an older output, of a node that has run again since, is read
    from the checkpoint on access. Sent to another process (a Ray task), it travels as a
    :class:`StoredOutputs`: the step number of each output, read from the checkpoint on
    access, so a dispatch costs the same bytes at step 10 as at step 10,000.
    """

    def __init__(
        self, values: dict[str, Any], seqs: dict[str, int], store: CheckpointStore, run_id: str
    ) -> None:
        self._values, self._seqs = values, seqs
        self._stored = StoredOutputs(store, run_id, seqs)

    def __getitem__(self, node: str) -> Any:
        if node in self._values:
            return copy.deepcopy(self._values[node])
        return self._stored[node]

    def __iter__(self) -> Any:
        return iter(self._values.keys() | self._seqs.keys())

    def __len__(self) -> int:
        return len(self._values.keys() | self._seqs.keys())

    def __repr__(self) -> str:
        return f"Outputs({sorted(self)})"

    def __reduce__(self) -> Any:
        return (StoredOutputs, (self._stored.store, self._stored.run_id, self._seqs))


class StoredOutputs(Mapping[str, Any]):
    """Outputs read from the checkpoint on first access (then kept)."""

    def __init__(self, store: CheckpointStore, run_id: str, seqs: dict[str, int]) -> None:
        self.store, self.run_id, self._seqs = store, run_id, seqs
        self._cache: dict[str, Any] = {}

    def __getitem__(self, node: str) -> Any:
        if node not in self._cache:
            self._cache[node] = self.store.read_step(self.run_id, self._seqs[node]).output
        return copy.deepcopy(self._cache[node])

    def __iter__(self) -> Any:
        return iter(self._seqs)

    def __len__(self) -> int:
        return len(self._seqs)
