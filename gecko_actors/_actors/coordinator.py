"""The coordinator actor: drives one workflow run and commits every finished node.

Its constructor rebuilds the run from the checkpoint (replaying committed steps through the
scheduler), so a restart by Ray is a resume: committed nodes never run again, and the visit
that was in flight runs again with the same idempotency key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import re
import time
from typing import Any

import ray
from pydantic_core import to_jsonable_python

from gecko_actors._actors.common import create, lookup, unwrap
from gecko_actors.checkpoint import CheckpointStore, Manifest, StepRecord
from gecko_actors.core.messages import AgentOutput, Message
from gecko_actors.core.tools import ToolContext
from gecko_actors.exceptions import GeckoError, UserError, WorkflowError
from gecko_actors.logging import get_logger
from gecko_actors.settings import load_settings
from gecko_actors.workflow.graph import Next, Node, NodeContext, WorkflowGraph
from gecko_actors.workflow.schedule import Scheduler, Visit
from gecko_actors.workflow.status import entry_of, node_entry, run_status, usage_of

_log = get_logger("gecko_actors.workflow")


def _run_function(fn: Any, ctx: NodeContext) -> tuple[Any, dict[str, Any]]:
    """A function node, in its own Ray task: returns its value and the state it leaves."""
    value = fn(ctx)
    if inspect.isawaitable(value):
        value = asyncio.run(_await(value))
    return value, ctx.state


async def _await(awaitable: Any) -> Any:
    return await awaitable


_function_task = ray.remote(_run_function)


def _agent_input(value: Any) -> Any:
    """What an agent node receives: text for outputs of other nodes."""
    if isinstance(value, AgentOutput):
        return value.content
    if isinstance(value, str | Message):
        return value
    return json.dumps(to_jsonable_python(value, fallback=str), ensure_ascii=False)


def launch(graph: WorkflowGraph, run_id: str, uri: str, input: Any) -> Any:
    """The coordinator of ``run_id``: the live one, or a new one that starts or resumes the
    run from its checkpoint. Blocking (it may read the checkpoint)."""
    return lookup(f"workflow/{run_id}") or create(
        ray.remote(CoordinatorActor),
        f"workflow/{run_id}",
        (run_id, graph, uri, input, load_settings().workflow_linger),
        get_if_exists=True,
        max_concurrency=1000,
    )


def child_run_id(run_id: str, node: str, visit: int, item: int | None = None) -> str:
    """The run id of a nested workflow: the same for every attempt and restart of a visit, so
    a retried or resumed parent continues its child instead of starting it again."""
    child = f"{run_id}.{re.sub(r'[^A-Za-z0-9_.-]', '-', node)}.{visit}"
    return child if item is None else f"{child}.{item}"


def _describe(exc: BaseException) -> str:
    """``Type: message`` of the error a node raised (not the Ray task error around it)."""
    if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause is not None:
        exc = exc.cause
    return f"{type(exc).__name__}: {exc}"


class CoordinatorActor:
    def __init__(
        self, run_id: str, graph: WorkflowGraph, uri: str, input: Any, linger: float = 60.0
    ) -> None:
        self.run_id = run_id
        self.graph = graph
        self.store = CheckpointStore(uri)
        self.linger = linger
        self.events: list[dict[str, Any]] = []
        self.done = asyncio.Event()
        self._driving = False
        self._task: asyncio.Task[Any] | None = None
        self._driver: asyncio.Task[Any] | None = None
        self._exit: asyncio.Task[Any] | None = None
        manifest = self.store.read_manifest(run_id)
        if manifest is None:
            manifest = Manifest(run_id, graph.name, graph.fingerprint(), input, time.time())
            self.store.write_manifest(manifest)
        self._load(manifest, self.store.load_steps(run_id))
        # Resume by ourselves, or retire: the call runs once the constructor has returned.
        me = ray.get_runtime_context().current_actor
        (me.drive if manifest.status == "running" else me.retire).remote()

    def _load(self, manifest: Manifest, records: list[StepRecord]) -> None:
        """Rebuild the run from its checkpoint by replaying the committed steps."""
        self.manifest = manifest
        self.outcome = manifest.status
        self.failure: GeckoError | None = None
        self.sched = Scheduler(self.graph, self.run_id)
        self.state: dict[str, Any] = {}
        self.nodes: dict[str, dict[str, Any]] = {}
        self.seq = 0
        self.sched.start(manifest.input)
        for record in records:
            self.sched.take_ready()
            jump = Next(record.next["node"], record.next.get("input")) if record.next else None
            self.sched.finish(record.node, record.visit, record.output, record.routes, jump)
            self.state.update(record.state)
            self.seq = record.seq + 1
            self.nodes[record.node] = entry_of(record)
        # Visits that were in flight when the last coordinator died run again, same keys.
        self.sched.requeue_running()
        if manifest.status == "running":
            self.done.clear()
        else:
            self.done.set()

    # --- the public surface (called through WorkflowRun) --------------------------------

    async def drive(self) -> None:
        if self._driving or self.done.is_set():
            return
        self._driving = True
        self._event("workflow_started", workflow=self.graph.name, resumed=self.seq > 0)
        result: Any = None
        try:
            await self._drive()
            result, self.outcome = self.sched.result(), "succeeded"
        except asyncio.CancelledError:
            self.outcome = "cancelled"
            self.failure = WorkflowError(
                f"workflow run {self.run_id!r} was cancelled",
                hint="resume it with wf.resume(run_id, checkpoint=...)",
                run_id=self.run_id,
            )
        except Exception as exc:
            self.outcome = "failed"
            self.failure = (
                exc
                if isinstance(exc, GeckoError)
                else WorkflowError(
                    f"workflow run {self.run_id!r} failed: {_describe(exc)}", run_id=self.run_id
                )
            )
        try:
            durable = await self._record_outcome(result)
        finally:
            self._driving = False
            self.done.set()
        if durable:  # handles find the outcome in the checkpoint once we are gone
            self._exit = asyncio.create_task(self.retire())

    async def retire(self) -> None:
        """Exit after ``linger`` seconds: a finished run frees its process and its workers.
        ``reopen`` cancels it."""
        self._exit = asyncio.current_task()
        await asyncio.sleep(self.linger)
        # Not exit_actor(): from a call we made to ourselves, it waits for its own reply.
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    async def _record_outcome(self, result: Any) -> bool:
        """Write the run's outcome; False when it could not be made durable."""
        error = None if self.failure is None else str(self.failure)
        durable = True
        try:
            await asyncio.to_thread(
                self.store.update_status, self.run_id, self.outcome, result=result, error=error
            )
            self.manifest = await asyncio.to_thread(self.store.read_manifest, self.run_id)
        except GeckoError as exc:
            # The outcome is not durable (storage is down): the run counts as failed, and a
            # resume finishes it from the committed steps. The first error says most.
            self.failure = self.failure or exc
            self.outcome, error, durable = "failed", str(self.failure), False
        kind = {"succeeded": "workflow_completed", "cancelled": "workflow_cancelled"}
        self._event(kind.get(self.outcome, "workflow_error"), status=self.outcome, error=error)
        return durable

    async def reopen(self) -> None:
        """Continue a failed or cancelled run from its last committed step; nothing for a run
        that is running or succeeded."""
        if self._driving or (self.failure is None and self.outcome in ("running", "succeeded")):
            return
        if self._exit is not None:
            self._exit.cancel()
        await asyncio.to_thread(self.store.update_status, self.run_id, "running")
        manifest = await asyncio.to_thread(self.store.read_manifest, self.run_id)
        records = await asyncio.to_thread(self.store.load_steps, self.run_id)
        assert manifest is not None
        self._load(manifest, records)
        self.events = []  # the stream of this drive, as a new coordinator's would be
        self._driver = asyncio.create_task(self.drive())

    async def result(self) -> Any:
        await self.done.wait()
        if self.failure is not None:
            raise self.failure
        if self.outcome != "succeeded":
            error = f": {self.manifest.error}" if self.manifest.error else ""
            raise WorkflowError(
                f"workflow run {self.run_id!r} {self.outcome}{error}",
                hint="resume it with wf.resume(run_id, checkpoint=...)",
                run_id=self.run_id,
            )
        return self.manifest.result

    def status(self) -> dict[str, Any]:
        status = "running" if not self.done.is_set() else self.outcome
        error = str(self.failure) if self.failure else self.manifest.error
        return run_status(self.manifest, status, self.sched.steps, dict(self.nodes), error)

    def events_since(self, index: int) -> tuple[list[dict[str, Any]], bool]:
        return self.events[index:], self.done.is_set()

    async def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    # --- running nodes ------------------------------------------------------------------

    async def _drive(self) -> None:
        self._task = asyncio.current_task()
        running: dict[asyncio.Task[Any], Visit] = {}
        try:
            while True:
                for visit in self.sched.take_ready():
                    running[asyncio.create_task(self._execute(visit))] = visit
                if not running:
                    return
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    await self._commit(running.pop(task), task.result())
        finally:
            for task in running:
                task.cancel()

    async def _commit(self, visit: Visit, outcome: dict[str, Any]) -> None:
        jump: Next | None = outcome["jump"]
        usage = usage_of(outcome["output"])
        record = StepRecord(
            seq=self.seq,
            node=visit.node,
            visit=visit.visit,
            output=outcome["output"],
            state=outcome["state"],
            attempts=outcome["attempts"],
            duration=outcome["duration"],
            usage=None if usage is None else usage.model_dump(mode="json", exclude_none=True),
            next={"node": jump.node, "input": jump.input} if jump else None,
            routes=outcome["routes"],
            finished_at=time.time(),
        )
        # Data first, then the scheduler: a node counts as done only once it is committed.
        await asyncio.to_thread(self.store.commit_step, self.run_id, record)
        self.seq += 1
        self.state.update(outcome["state"])
        self.sched.finish(visit.node, visit.visit, outcome["output"], outcome["routes"], jump)
        entry = self.nodes[visit.node] = entry_of(record)
        self._event(
            "node_completed",
            node=visit.node,
            visit=visit.visit,
            attempts=record.attempts,
            duration=record.duration,
            tokens=entry["tokens"],
        )

    async def _execute(self, visit: Visit) -> dict[str, Any]:
        node = self.graph.nodes[visit.node]
        start = time.perf_counter()
        self.nodes[visit.node] = node_entry("running", visit.visit)
        for attempt in range(1, node.retry.attempts + 1):
            ctx = NodeContext(
                visit.input,
                dict(self.sched.outputs),
                dict(self.state),
                self.run_id,
                visit.node,
                visit.visit,
                attempt,
            )
            self.nodes[visit.node]["attempts"] = attempt
            self._event("node_started", node=visit.node, visit=visit.visit, attempt=attempt)
            try:
                value, state = await asyncio.wait_for(self._call(node, ctx), node.timeout)
                break
            except Exception as exc:
                error = (
                    f"timed out after {node.timeout}s"
                    if isinstance(exc, asyncio.TimeoutError)
                    else _describe(exc)
                )
                if attempt == node.retry.attempts:
                    self.nodes[visit.node].update(
                        state="failed", error=error, duration=time.perf_counter() - start
                    )
                    self._event("node_error", node=visit.node, attempt=attempt, error=error)
                    raise WorkflowError(
                        f"node {visit.node!r} of workflow run {self.run_id!r} failed after "
                        f"{attempt} attempt(s): {error}",
                        hint="fix the node (or raise its retry attempts), then resume the run "
                        "with wf.resume(run_id, checkpoint=...)",
                        run_id=self.run_id,
                        node=visit.node,
                        attempt=attempt,
                    ) from None
                self._event("node_retried", node=visit.node, attempt=attempt, error=error)
                await asyncio.sleep(node.retry.delay(attempt))
        jump = value if isinstance(value, Next) else None
        output = None if jump else value
        changes = {k: v for k, v in state.items() if self.state.get(k, object()) != v}
        routes = None if jump else await self._routes(node, ctx, output)
        return {
            "output": output,
            "jump": jump,
            "state": changes,
            "routes": routes,
            "attempts": attempt,
            "duration": time.perf_counter() - start,
        }

    async def _call(self, node: Node, ctx: NodeContext) -> tuple[Any, dict[str, Any]]:
        if node.fan_out:
            if not isinstance(ctx.input, list):
                raise UserError(
                    f"map node {node.name!r} needs a list input, got {type(ctx.input).__name__}"
                )
            items = [
                dataclasses.replace(ctx, input=item, item=i) for i, item in enumerate(ctx.input)
            ]
            results = await asyncio.gather(*(self._call_one(node, c) for c in items))
            return [value for value, _ in results], ctx.state
        return await self._call_one(node, ctx)

    async def _call_one(self, node: Node, ctx: NodeContext) -> tuple[Any, dict[str, Any]]:
        if node.kind == "function":
            task = _function_task.options(max_retries=0, **node.resources)
            return await task.remote(node.target, ctx)
        if node.kind == "agent":
            context = ToolContext(
                run_id=self.run_id, idempotency_key=ctx.idempotency_key, attempt=ctx.attempt
            )
            output = await node.target.arun(_agent_input(ctx.input), tool_context=context)
            return output, ctx.state
        if node.kind == "team":
            result = await node.target.arun(_agent_input(ctx.input))
            # Checkpointable form: errors as text (exceptions are not data).
            errors = [None if e is None else f"{type(e).__name__}: {e}" for e in result.errors]
            if all(errors):
                raise WorkflowError(
                    f"every member of team node {node.name!r} failed: {errors}",
                    run_id=self.run_id,
                    node=node.name,
                )
            return {
                "members": result.members,
                "outputs": result.outputs,
                "errors": errors,
            }, ctx.state
        return await self._child(node.target, ctx), ctx.state

    async def _child(self, graph: WorkflowGraph, ctx: NodeContext) -> Any:
        """A nested workflow: a run of its own (``<run_id>.<node>.<visit>``), checkpointed
        beside this one. A retried or resumed visit continues the same child run."""
        run_id = child_run_id(self.run_id, ctx.node, ctx.visit, ctx.item)
        handle = await asyncio.to_thread(launch, graph, run_id, self.store.uri, ctx.input)
        await handle.reopen.remote()
        try:
            return await handle.result.remote()
        except asyncio.CancelledError:
            handle.cancel.remote()
            raise
        except ray.exceptions.RayTaskError as exc:
            raise unwrap(exc) from None

    async def _routes(self, node: Node, ctx: NodeContext, output: Any) -> dict[str, bool] | None:
        edges = [e for e in self.graph.successors(node.name) if e.when is not None]
        if not edges:
            return None
        seen = dataclasses.replace(ctx, input=output, outputs={**ctx.outputs, node.name: output})
        routes = {}
        for edge in edges:
            verdict = edge.when(seen)
            routes[edge.target] = bool(await verdict if inspect.isawaitable(verdict) else verdict)
        return routes

    def _event(self, kind: str, **data: Any) -> None:
        self.events.append({"type": kind, "run_id": self.run_id, "time": time.time(), **data})
        _log.info(kind, run_id=self.run_id, **{k: v for k, v in data.items() if k != "error"})
