"""The coordinator actor: drives one workflow run and commits every finished node.

Its constructor rebuilds the run from the checkpoint (replaying committed steps through the
scheduler), so a restart by Ray is a resume: committed nodes never run again, and the visit
that was in flight runs again with the same idempotency key.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from typing import Any

import ray
from pydantic_core import to_jsonable_python

from gecko_actors.checkpoint import CheckpointStore, Manifest, StepRecord
from gecko_actors.core.messages import AgentOutput, Message
from gecko_actors.core.tools import ToolContext
from gecko_actors.exceptions import GeckoError, UserError, WorkflowError
from gecko_actors.logging import get_logger
from gecko_actors.workflow.graph import Next, Node, NodeContext, WorkflowGraph
from gecko_actors.workflow.schedule import Scheduler, Visit

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


class CoordinatorActor:
    def __init__(self, run_id: str, graph: WorkflowGraph, uri: str, input: Any) -> None:
        self.run_id = run_id
        self.graph = graph
        self.store = CheckpointStore(uri)
        self.sched = Scheduler(graph, run_id)
        self.state: dict[str, Any] = {}
        self.events: list[dict[str, Any]] = []
        self.nodes: dict[str, dict[str, Any]] = {}
        self.failure: GeckoError | None = None
        self.seq = 0
        self.done = asyncio.Event()
        self._driving = False
        self._task: asyncio.Task[Any] | None = None
        manifest = self.store.read_manifest(run_id)
        if manifest is None:
            manifest = Manifest(run_id, graph.name, graph.fingerprint(), input, time.time())
            self.store.write_manifest(manifest)
        self.manifest = manifest
        self.sched.start(manifest.input)
        self._replay()
        if manifest.status != "running":
            self.done.set()
        else:  # resume by ourselves: the first call runs once the constructor returns
            ray.get_runtime_context().current_actor.drive.remote()

    def _replay(self) -> None:
        for record in self.store.load_steps(self.run_id):
            self.sched.take_ready()
            jump = Next(record.next["node"], record.next.get("input")) if record.next else None
            self.sched.finish(record.node, record.visit, record.output, record.routes, jump)
            self.state.update(record.state)
            self.seq = record.seq + 1
            self.nodes[record.node] = {
                "state": "done",
                "visit": record.visit,
                "attempts": record.attempts,
                "duration": record.duration,
            }
        # Visits that were in flight when the last coordinator died run again, same keys.
        self.sched.requeue_running()

    # --- the public surface (called through WorkflowRun) --------------------------------

    async def drive(self) -> None:
        if self._driving or self.done.is_set():
            return
        self._driving = True
        try:
            await self._drive()
            result = self.sched.result()
            await asyncio.to_thread(
                self.store.update_status, self.run_id, "succeeded", result=result
            )
            self.manifest = self.store.read_manifest(self.run_id) or self.manifest
            self._event("run_finished", status="succeeded")
        except asyncio.CancelledError:
            await asyncio.to_thread(self.store.update_status, self.run_id, "cancelled")
            self.failure = WorkflowError(
                f"workflow run {self.run_id!r} was cancelled", run_id=self.run_id
            )
            self._event("run_finished", status="cancelled")
        except Exception as exc:
            self.failure = (
                exc
                if isinstance(exc, GeckoError)
                else WorkflowError(
                    f"workflow run {self.run_id!r} failed: {type(exc).__name__}: {exc}",
                    run_id=self.run_id,
                )
            )
            await asyncio.to_thread(
                self.store.update_status, self.run_id, "failed", error=str(self.failure)
            )
            self._event("run_finished", status="failed", error=str(self.failure))
        finally:
            self.done.set()

    async def result(self) -> Any:
        await self.done.wait()
        if self.failure is not None:
            raise self.failure
        if self.manifest.status == "failed":
            raise WorkflowError(
                f"workflow run {self.run_id!r} failed: {self.manifest.error}", run_id=self.run_id
            )
        return self.manifest.result if self.manifest.status == "succeeded" else self.sched.result()

    def status(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "workflow": self.graph.name,
            "status": "running"
            if not self.done.is_set()
            else ("failed" if self.failure else self.manifest.status),
            "steps": self.sched.steps,
            "nodes": dict(self.nodes),
        }

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
        record = StepRecord(
            seq=self.seq,
            node=visit.node,
            visit=visit.visit,
            output=outcome["output"],
            state=outcome["state"],
            attempts=outcome["attempts"],
            duration=outcome["duration"],
            next={"node": jump.node, "input": jump.input} if jump else None,
            routes=outcome["routes"],
            finished_at=time.time(),
        )
        # Data first, then the scheduler: a node counts as done only once it is committed.
        await asyncio.to_thread(self.store.commit_step, self.run_id, record)
        self.seq += 1
        self.state.update(outcome["state"])
        self.sched.finish(visit.node, visit.visit, outcome["output"], outcome["routes"], jump)
        self.nodes[visit.node] = {
            "state": "done",
            "visit": visit.visit,
            "attempts": outcome["attempts"],
            "duration": outcome["duration"],
        }
        self._event("node_finished", node=visit.node, visit=visit.visit)

    async def _execute(self, visit: Visit) -> dict[str, Any]:
        node = self.graph.nodes[visit.node]
        start = time.perf_counter()
        self.nodes[visit.node] = {"state": "running", "visit": visit.visit}
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
            self._event("node_started", node=visit.node, visit=visit.visit, attempt=attempt)
            try:
                value, state = await asyncio.wait_for(self._call(node, ctx), node.timeout)
                break
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                if attempt == node.retry.attempts:
                    self._event("node_failed", node=visit.node, attempt=attempt, error=error)
                    raise WorkflowError(
                        f"node {visit.node!r} of workflow run {self.run_id!r} failed after "
                        f"{attempt} attempt(s): {error}",
                        hint="see the node's error above",
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
                NodeContext(
                    item, ctx.outputs, ctx.state, ctx.run_id, ctx.node, ctx.visit, ctx.attempt
                )
                for item in ctx.input
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
        raise UserError(
            f"node {node.name!r}: nested workflows are not supported yet",
            hint="inline the sub-workflow's nodes for now",
        )

    async def _routes(self, node: Node, ctx: NodeContext, output: Any) -> dict[str, bool] | None:
        edges = [e for e in self.graph.successors(node.name) if e.when is not None]
        if not edges:
            return None
        seen = NodeContext(
            output,
            {**ctx.outputs, node.name: output},
            ctx.state,
            ctx.run_id,
            ctx.node,
            ctx.visit,
            ctx.attempt,
        )
        routes = {}
        for edge in edges:
            verdict = edge.when(seen)
            routes[edge.target] = bool(await verdict if inspect.isawaitable(verdict) else verdict)
        return routes

    def _event(self, kind: str, **data: Any) -> None:
        self.events.append({"type": kind, "run_id": self.run_id, "time": time.time(), **data})
        _log.info(kind, run_id=self.run_id, **{k: v for k, v in data.items() if k != "error"})
