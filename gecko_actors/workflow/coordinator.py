"""What a run needs from Ray: killable tasks for function nodes that ask for them, and the
dedicated coordinator actor (one run in a process of its own, ``dedicated=True``).

Its constructor loads the run from the checkpoint, so a restart by Ray is a resume: committed
nodes never run again, and the visit that was in flight runs again with the same idempotency
key. All the semantics live in ``engine.py``; runs share a process in ``host.py``.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import inspect
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import ray

from gecko_actors._actors.budgets import open_run_budget
from gecko_actors._actors.common import create, lookup
from gecko_actors.checkpoint import CheckpointStore
from gecko_actors.checkpoint.index import RunIndex
from gecko_actors.core.budget import Budget, Spending, current_spending, spending
from gecko_actors.settings import load_settings
from gecko_actors.workflow.driven import DrivenRun
from gecko_actors.workflow.engine import RunEngine
from gecko_actors.workflow.execution import LocalExecutor, Result, TaskAttempt, call_node
from gecko_actors.workflow.graph import Node, NodeContext, WorkflowGraph


def _node_task(fn: Any, ctx: NodeContext, budget: Spending | None = None) -> Any:
    """A function node as a Ray generator task: the first yield says it is running (its
    timeout counts from there), the second is ``(value, writes)``. Its model calls spend
    from ``budget``, the run's."""
    yield None
    with spending(budget.spender if budget else None, *(budget.labels if budget else ())):
        result = call_node(fn, ctx)
        yield asyncio.run(result) if inspect.iscoroutine(result) else result


_node_task_remote = ray.remote(_node_task)


class RayTaskAttempt:
    """A function node in a Ray task of its own, which ``stop`` kills (``force=True``: Ray
    cannot interrupt a running task otherwise) and waits for."""

    def __init__(self, node: Node, ctx: NodeContext, on_over: Callable[[], None]) -> None:
        options: dict[str, Any] = {"max_retries": 0, "num_cpus": 0, **node.resources}
        budget = current_spending()  # the run's, if the governor keeps it: it travels
        budget = budget if budget is not None and budget.travels else None
        self._gen = _node_task_remote.options(**options).remote(node.target, ctx, budget)
        self._running = False
        self._over = False
        self._on_over = on_over

    async def started(self) -> None:
        await self._next()
        self._running = True

    async def result(self) -> Result:
        if not self._running:
            await self.started()
        try:
            value = await self._next()
        except asyncio.CancelledError:
            raise  # only our wait ended (a timeout, a cancel): the task runs on until stop()
        except BaseException:
            self._end()  # the task ended with an error
            raise
        self._end()
        return value

    async def stop(self) -> None:
        if self._over:
            return
        ray.cancel(self._gen, force=True)
        try:  # "stopped" is when Ray reports the task's end: cancelled, or its worker killed
            while True:
                await self._next()
        except (StopAsyncIteration, ray.exceptions.RayError):
            pass
        self._end()

    def _end(self) -> None:
        if not self._over:
            self._over = True
            self._on_over()

    async def _next(self) -> Any:
        ref = await self._gen.__anext__()
        return await ref


class LentOutputs(Mapping[str, Any]):
    """``ctx.outputs`` in a Ray task: each output the node reads is asked of the coordinator
    (then kept), so a dispatch sends the same few bytes however many outputs the run has."""

    def __init__(self, coordinator: Any, key: str) -> None:
        self._coordinator, self._key = coordinator, key
        self._cache: dict[str, Any] = {}
        self._names: list[str] | None = None

    def __getitem__(self, node: str) -> Any:
        if node not in self._cache:
            found, value = ray.get(self._coordinator.lent_output.remote(self._key, node))
            if not found:
                raise KeyError(node)
            self._cache[node] = value
        return copy.deepcopy(self._cache[node])

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def _all(self) -> list[str]:
        if self._names is None:
            self._names = ray.get(self._coordinator.lent_names.remote(self._key))
        return self._names


class RayExecutor(LocalExecutor):
    """The coordinator's executor: a function node that asks for CPUs/GPUs, or a sync one
    with a timeout, runs as a killable Ray task; everything else as in
    :class:`LocalExecutor` (no process is created on a run's critical path).

    A task's ``ctx.outputs`` is lent: the coordinator keeps the attempt's outputs in
    ``lent`` while the task runs and answers the task's reads (``lent_output``).
    """

    def __init__(
        self,
        store: CheckpointStore,
        coordinator: Any = None,
        lent: dict[str, Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(store)
        self.coordinator = coordinator
        self.lent = {} if lent is None else lent  # a host's executors share one

    def start(self, node: Node, ctx: NodeContext) -> TaskAttempt | RayTaskAttempt:  # type: ignore[override]
        if node.kind == "function" and (
            node.resources
            or (node.timeout is not None and not inspect.iscoroutinefunction(node.target))
        ):
            return RayTaskAttempt(node, *self.lend(ctx))
        return super().start(node, ctx)

    def lend(self, ctx: NodeContext) -> tuple[NodeContext, Callable[[], None]]:
        """The context to send to a task, and what to call when the task is over."""
        if self.coordinator is None:  # no actor to ask: outputs travel as checkpoint refs
            return ctx, lambda: None
        key = uuid.uuid4().hex
        self.lent[key] = ctx.outputs
        sent = dataclasses.replace(ctx, outputs=LentOutputs(self.coordinator, key))
        return sent, lambda: self.lent.pop(key, None)


def launch(
    graph: WorkflowGraph, run_id: str, uri: str, input: Any, budget: Budget | None = None
) -> Any:
    """The dedicated coordinator of ``run_id``: the live one, or a new one that starts or
    resumes the run from its checkpoint. Blocking (it may read the checkpoint)."""
    return lookup(f"workflow/{run_id}") or create(
        ray.remote(CoordinatorActor),
        f"workflow/{run_id}",
        (run_id, graph, uri, input, load_settings().workflow_linger, budget),
        get_if_exists=True,
        max_concurrency=1000,
    )


class CoordinatorActor:
    """Drives one run in a process of its own (``workflow/<run_id>``, ``dedicated=True``);
    handles reach it through ``WorkflowRun``. A finished run's process exits after
    ``linger`` seconds."""

    def __init__(
        self,
        run_id: str,
        graph: WorkflowGraph,
        uri: str,
        input: Any,
        linger: float = 60.0,
        budget: Budget | None = None,
    ) -> None:
        self.run_id = run_id
        self.linger = linger
        store = CheckpointStore(uri)
        self.executor = RayExecutor(store, ray.get_runtime_context().current_actor)
        self.run = DrivenRun(run_id, f"workflow/{run_id}")
        self.run.on_end = self._ended
        self.run.on_wake = self.reopen  # a timer of the waiting run is due
        status = self.run.open(
            lambda sink: RunEngine(
                graph, run_id, store, self.executor, on_event=sink, budgets=open_run_budget
            ),
            input,
            host=self.run.host,
            # Ray gives a restarted actor its first arguments: the budget it was launched
            # with may have been raised since (the run's record holds the latest).
            budget=None if ray.get_runtime_context().was_current_actor_reconstructed else budget,
        )
        self._exit: asyncio.Task[Any] | None = None
        self.index = RunIndex(store)
        if status == "running":
            self.index.append([self.run.index_entry("running")], "dedicated")
        # Resume by ourselves, or retire: the call runs once the constructor has returned.
        me = ray.get_runtime_context().current_actor
        (me.drive if status == "running" else me.retire).remote()

    @property
    def engine(self) -> RunEngine:
        """The run's engine (for tests and benchmarks)."""
        assert self.run.engine is not None
        return self.run.engine

    async def drive(self) -> None:
        """Drive the run to its end (nothing when it is being driven or is over)."""
        await self.run.drive()

    async def _ended(self, durable: bool) -> None:
        if durable and self.engine.outcome == "waiting":
            return  # held for its answer (a dedicated run keeps its process)
        if durable:  # handles find the outcome in the checkpoint once we are gone
            entry = self.run.index_entry(self.engine.outcome)
            await asyncio.to_thread(self.index.append, [entry], "dedicated")
            self._exit = asyncio.create_task(self.retire())

    async def retire(self) -> None:
        """Exit after ``linger`` seconds: a finished run frees its process. ``reopen``
        cancels it."""
        self._exit = asyncio.current_task()
        await asyncio.sleep(self.linger)
        if self.run.driving or not self.run.done.is_set():
            return  # a reopen that came first is driving the run again: it retires later
        # Not exit_actor(): from a call we made to ourselves, it waits for its own reply.
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    async def reopen(self, budget: Budget | None = None) -> None:
        """Continue a failed or cancelled run from its last committed step (with ``budget``,
        if given); nothing for a run that is running or succeeded."""
        if await self.run.reopen(budget) and self._exit is not None:
            self._exit.cancel()

    async def result(self) -> Any:
        return await self.run.result()

    async def respond(self, node: str, value: Any, by: str | None) -> None:
        """Answer ``node``'s interrupt (see ``DrivenRun.respond``)."""
        if not await self.run.respond(node, value, by):
            await self.reopen()

    def status(self) -> dict[str, Any]:
        return self.run.status()

    async def lent_output(self, key: str, node: str) -> tuple[bool, Any]:
        """The output of ``node`` as the task attempt ``key`` sees it (see LentOutputs)."""
        return await lent_output(self.executor.lent, key, node)

    def lent_names(self, key: str) -> list[str]:
        return sorted(self.executor.lent.get(key, {}))

    def events_since(self, index: int) -> tuple[list[dict[str, Any]], bool]:
        return self.run.events_since(index)

    async def cancel(self) -> None:
        """Stop the run; returns once its running attempts have stopped."""
        await self.run.cancel()


async def lent_output(lent: Mapping[str, Mapping[str, Any]], key: str, node: str) -> Any:
    """The output of ``node`` as the task attempt ``key`` sees it; read in a thread, since
    an older output comes from the checkpoint."""
    outputs = lent.get(key)
    if outputs is None or node not in outputs:
        return False, None
    return True, await asyncio.to_thread(outputs.__getitem__, node)
