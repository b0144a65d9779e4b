"""The run engine: drives one workflow run to its end, Ray-free.

It schedules ready visits (``schedule.py``), runs their attempts through an
:class:`Executor`, validates each outcome, commits it to a
:class:`~gecko_actors.checkpoint.CheckpointStore`, and only then lets the run go on. The
coordinator actor is a thin shell around it, and tests drive it in plain asyncio.

The rules it keeps (the README's durable-workflow section says them to users):

- **Only good steps are committed.** A step is checked before its commit: its output, state
  writes and jump input must be checkpointable, a jump must name a node, ``max_steps`` must not
  be exceeded and no write may conflict (see ``state.py``). A step that fails a check fails the
  node; nothing of it is stored, so a resume after the fix runs the node again.
- **The same values after a restart.** Every output, state write and jump input is normalised
  at the commit to what the checkpoint holds (plain data; gecko_actors' own messages keep
  their type), in a fresh run as in a resumed one.
- **Confirmed cancellation.** A timed-out attempt is stopped (and the engine waits until it
  has) before the retry starts; the timeout counts from the moment the attempt runs.
- **One writer per run.** The engine takes an owner epoch when it opens the run and commits
  with it; when the store says another engine took over
  (:class:`~gecko_actors.exceptions.OwnershipLost`), it stops driving the run.
- **A budget stops the run, resumably.** With a budget (``spend.py``), a model call that would
  go over it is refused before it is sent; the node fails without a retry and the run fails
  with :class:`~gecko_actors.exceptions.BudgetExceededError`, the committed nodes' outputs in
  its ``partial``. A resume with a larger budget runs the node again.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

from gecko_actors.checkpoint import (
    CheckpointStore,
    Manifest,
    StateWrite,
    StepRecord,
)
from gecko_actors.checkpoint.journal import Journal
from gecko_actors.checkpoint.store import CREATOR_EPOCH
from gecko_actors.core import tracing
from gecko_actors.core.budget import Budget, stopped
from gecko_actors.core.interrupt import NodeInterrupt
from gecko_actors.core.messages import Usage
from gecko_actors.exceptions import (
    BudgetExceededError,
    GeckoError,
    OwnershipLost,
    UserError,
    WorkflowError,
)
from gecko_actors.workflow.execution import (
    Executor,
    NodeOutcome,
    describe,
    stop_all,
    uncancel,
)
from gecko_actors.workflow.graph import Next, Node, NodeContext, WorkflowGraph
from gecko_actors.workflow.history import summary
from gecko_actors.workflow.replayed import Replayed
from gecko_actors.workflow.rules import (
    already_exists,
    as_gecko,
    checkpointable,
    merged,
    no_such_run,
    normalised,
    routes,
)
from gecko_actors.workflow.schedule import Visit
from gecko_actors.workflow.spend import BudgetOpener, RunSpend
from gecko_actors.workflow.state import check_conflicts
from gecko_actors.workflow.status import node_entry, usage_of
from gecko_actors.workflow.upgrading import admit, aliased
from gecko_actors.workflow.waiting import WAITING, Parked, Waiting

EventSink = Callable[..., None]


class RunEngine(Replayed):
    """Drives run ``run_id`` of ``graph`` over ``store`` with ``executor``.

    Example (a workflow tested in one process, no Ray):
        >>> store = CheckpointStore("memory://tests")
        >>> engine = RunEngine(graph, "run-1", store, LocalExecutor(store))
        >>> engine.open("input")  # creates the run, or loads it to resume
        >>> await engine.run()  # drives it to its end and records the outcome
        >>> engine.outcome, engine.value, engine.failure, engine.state
    """

    def __init__(
        self,
        graph: WorkflowGraph,
        run_id: str,
        store: CheckpointStore,
        executor: Executor,
        *,
        on_event: EventSink | None = None,
        budgets: BudgetOpener | None = None,
    ) -> None:
        self.graph = graph
        self.run_id = run_id
        self.store = store
        self.executor = executor
        self.on_event = on_event or (lambda kind, **data: None)
        # Whether the run's start asked for a trace: what a host that only adopted a
        # caller's tracing configuration goes by (see core/tracing.py).
        self.traced = True
        self.epoch = 0
        self.created = False  # whether open() created the run
        self.nodes: dict[str, dict[str, Any]] = {}
        self.outcome = "running"  # then succeeded | failed | cancelled
        self.failure: GeckoError | None = None
        self.value: Any = None  # the run's result once it succeeded
        self._driver: asyncio.Task[Any] | None = None
        self._cancelled = False  # a cancel() that came before the drive began
        self._released = False  # release(): stop without recording an outcome
        self.spend = RunSpend(run_id, store.uri, budgets)  # a local ledger unless ``budgets``
        self.waiting = Waiting(run_id)

    # --- opening: load the checkpoint and replay it -------------------------------------

    def open(
        self,
        input: Any,
        *,
        created_at: float | None = None,
        host: str | None = None,
        create: bool = True,
        budget: Budget | None = None,
    ) -> Manifest:
        """Create the run if absent (or, with ``create=False``, only find it) and replay its
        committed steps, so that ``status`` answers before the run is driven. ``created``
        says afterwards whether this call created it. Given ``created_at``, a run that
        exists with another creation time or host is another start's: ``already_exists``.
        ``budget`` replaces the run's recorded budget (a resume may raise it).
        Blocking: call it from a thread in an event loop."""
        if create:
            entry = self.graph.entry or "input"
            input = normalised(input, "the run's input", entry)  # as a resumed run will see it
            at = time.time() if created_at is None else created_at
            made = Manifest(
                self.run_id,
                self.graph.name,
                self.graph.fingerprint(),
                input,
                at,
                host=host,
                budget=None if budget is None else dataclasses.asdict(budget),
                journal_models=self.graph.models_journaled(),
                graph=self.graph.describe(),
                version=self.graph.version,
                retention=self.graph.retention,
            )
            self.manifest = self.store.create_manifest(made)
            self.created = self.manifest is made
            mine = (self.manifest.host, self.manifest.created_at) == (host, created_at)
            if not self.created and created_at is not None and not mine:
                raise already_exists(self.run_id, self.store.uri)
        else:
            found = self.store.read_manifest(self.run_id)
            if found is None:
                raise no_such_run(self.run_id, self.store.uri)
            self.manifest, self.created = found, False
        if self.created:  # a new run has no steps: no need to list them
            self.replay([])
        else:  # another version of its graph goes on only if compatible (see versions.py)
            admitted = admit(self.graph, self.manifest, self.store)
            self.manifest, self.renames = admitted.manifest, admitted.renames
            self.replay(admitted.steps or [])
        self.spend.load(self.manifest, budget, self.committed_usage)
        return self.manifest

    def take_over(self) -> None:
        """Take an owner epoch, then reload the committed steps: everything committed before
        our claim is seen, and any later commit by an older owner is refused by the store."""
        self.epoch = self.store.claim(self.run_id)
        self.store.update_status(
            self.run_id, "running", epoch=self.epoch, extra=self.spend.record()
        )
        self._reload()

    def _reload(self) -> None:
        self.replay(self.store.load_steps(self.run_id))

    # --- driving --------------------------------------------------------------------------

    async def run(self) -> bool:
        """Drive the run to its end, then record its outcome (``outcome``, ``failure``,
        ``value``) in the store. Returns False when the outcome could not be stored (the
        store is down, or another engine owns the run): a resume finishes it."""
        self.outcome, self.failure = "running", None
        try:
            if self.created and self.epoch == 0:
                # A run this engine just created is its creator's (epoch 1) without a claim:
                # it says running, and no engine ever committed to it.
                self.epoch = CREATOR_EPOCH
            else:
                await asyncio.to_thread(self.take_over)
            await self.spend.open(self.epoch)
        except Exception as exc:
            self.outcome, self.failure = "failed", as_gecko(exc, self.run_id)
            self._cancelled = False
            return await self._record_outcome()
        self.on_event("workflow_started", workflow=self.graph.name, resumed=self.seq > 0)
        try:
            value = await self._traced_drive()
            self.outcome = "waiting" if value is WAITING else "succeeded"
            self.value = None if value is WAITING else value
        except asyncio.CancelledError:
            uncancel()
            if self._released:  # nothing recorded: the next engine goes on from the steps
                self.outcome = "released"
                return False
            self.outcome = "cancelled"
            self.failure = WorkflowError(
                f"workflow run {self.run_id!r} was cancelled",
                hint="resume it with wf.resume(run_id, checkpoint=...)",
                run_id=self.run_id,
            )
        except BudgetExceededError as exc:  # with what was committed (nothing is, now)
            partial = {n: copy.deepcopy(v) for n, v in self.sched.outputs.items()}
            self.outcome, self.failure = "failed", stopped(exc, partial)
        except Exception as exc:
            self.outcome, self.failure = "failed", as_gecko(exc, self.run_id)
        finally:
            self._driver, self._cancelled = None, False
        return await self._record_outcome()

    async def _record_outcome(self) -> bool:
        error = None if self.failure is None else str(self.failure)
        durable = not isinstance(self.failure, OwnershipLost)  # the status is the new owner's
        if durable:
            await self.spend.finish()
            try:
                await asyncio.to_thread(
                    self.store.update_status,
                    self.run_id,
                    self.outcome,
                    result=self.value,
                    error=error,
                    epoch=self.epoch,
                    extra={**(self.spend.record() or {}), "waiting": self._parked()},
                )
            except Exception as exc:
                # Not durable (storage down, or taken over): the run counts as failed here, and
                # a resume finishes it from the committed steps. The first error says most.
                self.failure = self.failure or as_gecko(exc, self.run_id)
                self.outcome, error, durable = "failed", str(self.failure), False
        kind = {
            "succeeded": "workflow_completed",
            "cancelled": "workflow_cancelled",
            "waiting": "workflow_waiting",
        }
        self.on_event(kind.get(self.outcome, "workflow_error"), status=self.outcome, error=error)
        return durable

    async def _traced_drive(self) -> Any:
        """``drive``, in a span of the run's trace (whose id is derived from the run id)."""
        attributes = {"gecko.run_id": self.run_id, "gecko.workflow": self.graph.name}
        parent = tracing.run_context(self.run_id, self.traced)
        with tracing.span(f"workflow {self.graph.name}", attributes, parent):
            return await self.drive()

    async def drive(self) -> Any:
        """Run ready visits until none is left; returns the run's result, or ``WAITING``
        when only parked branches are left. Raises the node's WorkflowError when a node
        fails, and OwnershipLost when another engine took over."""
        self._driver = asyncio.current_task()
        if self._cancelled:
            raise asyncio.CancelledError
        running: dict[asyncio.Task[NodeOutcome | Parked], Visit] = {}
        self.waiting.listening = True
        try:
            while True:
                for visit in [*self.sched.take_ready(), *self.waiting.take_answered()]:
                    running[asyncio.create_task(self._attempts(visit))] = visit
                if not running:
                    self.waiting.listening = False  # an answer from now on drives it again
                    return WAITING if self.waiting.parked else self.sched.result()
                done = await self.waiting.wait(set(running))
                try:
                    for task in sorted(done, key=lambda t: running[t].node):
                        visit, outcome = running.pop(task), task.result()
                        if not self.sched.is_current(visit):
                            pass  # void: see _stop_void
                        elif isinstance(outcome, Parked):
                            self._park(visit, outcome)
                        else:
                            await self._commit(visit, outcome)
                        await self._stop_void(running, task)
                except _Behind:
                    # The engine we replaced committed a step just before it saw our claim:
                    # that step is valid. Start again from what is committed.
                    await stop_all(running)
                    running.clear()
                    await asyncio.to_thread(self._reload)
        finally:
            self.waiting.listening = False
            await stop_all(running)

    def _park(self, visit: Visit, parked: Parked) -> None:
        self.waiting.park(visit, parked)
        entry = self.nodes[visit.node]
        state = "waiting" if parked.answerable else "sleeping"
        self.nodes[visit.node] = {**entry, "state": state, "until": parked.until}
        kind = "node_waiting" if parked.answerable else "node_sleeping"
        self.on_event(kind, node=visit.node, visit=visit.visit, payload=parked.payload)

    def next_wake(self) -> float | None:
        """When a timer of a parked visit is due (epoch seconds): a run that ended as
        ``waiting`` must be driven again then (``run()``), and its node goes on."""
        return self.waiting.next_due()

    def _parked(self) -> dict[str, Any] | None:
        return self.waiting.record() if self.outcome == "waiting" else None

    async def respond(self, node: str, value: Any, by: str | None = None) -> bool:
        """Answer the interrupt ``node`` is parked on (see ``waiting.py``); True when the
        drive under way runs it again, False when the run must be driven again."""
        value = normalised(value, "the answer", node)
        return await self.waiting.answer(node, value, by, self.journal())

    async def give_up(self) -> None:
        """Cancel a run that waits (no drive is under way): its status says cancelled."""
        self.outcome = "cancelled"
        self.failure = WorkflowError(
            f"workflow run {self.run_id!r} was cancelled while it waited for an answer",
            hint="resume it with wf.resume(run_id, checkpoint=...)",
            run_id=self.run_id,
        )
        await self._record_outcome()

    async def _stop_void(
        self, running: dict[asyncio.Task[NodeOutcome], Visit], *finished: asyncio.Task[Any]
    ) -> None:
        """Stop the visits a Next jump made void (their region was reset), before the new pass
        starts the node again; ``finished`` tasks are collected with them."""
        void = [t for t, v in running.items() if not self.sched.is_current(v)]
        for task in void:
            running.pop(task)
        await stop_all([*void, *finished])

    def cancel(self) -> None:
        """Stop driving: running attempts are stopped; committed steps stay. Nothing happens
        to a run that is over, and asking twice is asking once."""
        if self.outcome != "running" or self._cancelled:
            return
        self._cancelled = True
        if self._driver is not None:
            self._driver.cancel()

    def release(self) -> None:
        """Stop driving, as ``cancel`` does, but record nothing: the run stays as its
        checkpoint says (running, or waiting), for another engine to take over (a host
        that drains hands its runs over this way)."""
        self._released = True
        self.cancel()

    async def _attempts(self, visit: Visit) -> NodeOutcome | Parked:
        node = self.graph.nodes[visit.node]
        start = time.perf_counter()
        self.nodes[visit.node] = node_entry("running", visit.visit)
        try:
            snapshot = self.snapshot(visit)
        except Exception as exc:  # a reducer that cannot merge what was committed
            raise self._failed(visit, 0, describe(exc), start) from None
        for attempt in range(1, node.retry.attempts + 1):
            ctx = self.context(visit, attempt, snapshot)
            self.nodes[visit.node]["attempts"] = attempt
            self.on_event("node_started", node=visit.node, visit=visit.visit, attempt=attempt)
            try:
                value, writes = await self._attempt(node, ctx)
                duration = time.perf_counter() - start
                return NodeOutcome(value, writes, attempt, duration, snapshot)
            except NodeInterrupt as exc:  # no retry: the branch waits for its answer
                exc = getattr(exc, "cause", None) or exc  # inside a Ray task's error
                try:
                    payload = normalised(exc.payload, "interrupt payload", node.name)
                    return Parked(exc.key, payload, exc.until, exc.answerable)
                except GeckoError as bad:
                    raise self._failed(visit, attempt, describe(bad), start) from None
            except BudgetExceededError as exc:  # no retry: it would be refused again
                self._failed(visit, attempt, describe(exc), start)
                raise stopped(exc, None, run_id=self.run_id, node=visit.node) from None
            except Exception as exc:
                error = describe(exc)
                if attempt == node.retry.attempts:
                    raise self._failed(visit, attempt, error, start) from None
                self.on_event("node_retried", node=visit.node, attempt=attempt, error=error)
                await asyncio.sleep(node.retry.delay(attempt))
        raise AssertionError("unreachable: a node has at least one attempt")

    async def _attempt(self, node: Node, ctx: NodeContext) -> tuple[Any, tuple[StateWrite, ...]]:
        """One attempt: of the node, or of each item of a map node (in parallel, on the same
        snapshot; their writes merge in item order)."""
        if not node.fan_out:
            return await self._one(node, ctx)
        if not isinstance(ctx.input, list):
            raise UserError(
                f"map node {node.name!r} needs a list input, got {type(ctx.input).__name__}",
                node=node.name,
            )
        items = [
            asyncio.create_task(self._one(node, dataclasses.replace(ctx, input=x, item=i)))
            for i, x in enumerate(ctx.input)
        ]
        try:
            results = await asyncio.gather(*items)
        finally:  # one item failed (or we are cancelled): stop the others before retrying
            await stop_all(dict.fromkeys(items))
        return [value for value, _ in results], tuple(w for _, ws in results for w in ws)

    async def _one(self, node: Node, ctx: NodeContext) -> tuple[Any, tuple[StateWrite, ...]]:
        """One attempt, stopped (and waited for) when it times out or is cancelled."""
        # The attempt's tasks and threads start in the node's span: their agents' spans and
        # the actor calls they make join it.
        with tracing.span(f"node {node.name}", _node_attributes(node, ctx)):
            with self.spend.attempt(ctx.node, ctx.visit):  # its tasks spend from the run
                attempt = self.executor.start(node, ctx)
            try:
                await attempt.started()
                return await asyncio.wait_for(attempt.result(), node.timeout)
            except asyncio.TimeoutError:
                raise TimeoutError(f"timed out after {node.timeout}s") from None
            finally:
                await attempt.stop()  # a no-op once it has finished

    def _failed(self, visit: Visit, attempt: int, error: str, start: float) -> WorkflowError:
        self.nodes[visit.node].update(
            state="failed", error=error, duration=time.perf_counter() - start
        )
        self.on_event("node_error", node=visit.node, attempt=attempt, error=error)
        return WorkflowError(
            f"node {visit.node!r} of workflow run {self.run_id!r} failed after {attempt} "
            f"attempt(s): {error}",
            hint="fix the node (or raise its retry attempts), then resume the run with "
            "wf.resume(run_id, checkpoint=...)",
            run_id=self.run_id,
            node=visit.node,
            attempt=attempt,
        )

    # --- what a node sees -------------------------------------------------------------------

    def context(self, visit: Visit, attempt: int, snapshot: Mapping[str, Any]) -> NodeContext:
        """The context of one attempt; the executor copies ``snapshot`` into its state."""
        return NodeContext(
            copy.deepcopy(visit.input),
            self.outputs(visit),
            dict(snapshot),
            self.run_id,
            visit.node,
            visit.visit,
            attempt,
            journal=self.journal(),
        )

    def journal(self) -> Any:
        """The run's journal, as this engine writes it (a renamed node finds its old
        name's entries in it, see ``upgrading.aliased``)."""
        journal = Journal(self.store, self.run_id, self.epoch, models=self.manifest.journal_models)
        return aliased(journal, self.renames)

    # --- committing -------------------------------------------------------------------------

    async def _commit(self, visit: Visit, outcome: NodeOutcome) -> None:
        if not self.sched.is_current(visit):
            return  # a Next jump re-readied this node while it ran: this visit's result is void
        try:
            record = await self._checked(visit, outcome)
        except GeckoError as exc:
            started = time.perf_counter() - outcome.duration
            raise self._failed(visit, outcome.attempts, describe(exc), started) from exc
        try:
            await asyncio.to_thread(self.store.commit_step, self.run_id, record)
        except OwnershipLost as exc:
            winner = getattr(exc, "owner_epoch", None)
            if winner is not None and winner < self.epoch:
                raise _Behind from exc
            self.on_event("run_taken_over", node=visit.node, epoch=self.epoch)
            raise
        self._apply(record)
        self.on_event(
            "node_completed",
            node=visit.node,
            visit=visit.visit,
            attempts=record.attempts,
            duration=record.duration,
            tokens=self.nodes[visit.node]["tokens"],
        )

    async def _checked(self, visit: Visit, outcome: NodeOutcome) -> StepRecord:
        """The step record of ``outcome`` once it passed every check, with its values
        normalised to what the checkpoint holds."""
        output, jump = outcome.value, None
        if isinstance(output, Next):
            # A node may return any target (a list, None, a typo): checked before the input.
            target = self.graph.jump_target(visit.node, output.node, self.run_id)
            output, jump = None, Next(target, output.input)
        output, jump, writes = checkpointable(output, jump, outcome.writes, visit.node)
        self.sched.check(visit.node, jump)
        reducers = self.graph.reducers
        check_conflicts(writes, reducers, self.writers, visit.after, visit.node, self.run_id)
        after = merged(outcome.snapshot, writes, reducers, visit.node, self.run_id)  # for edges
        # The run's state must take the update too (only the keys it writes can fail).
        written = {w.key for w in writes}
        merged(
            {k: copy.deepcopy(v) for k, v in self._state.items() if k in written},
            writes,
            reducers,
            visit.node,
            self.run_id,
        )
        routes = None if jump else await self._routes(visit, output, after)
        spent = await self.spend.of_visit(visit.node, visit.visit)  # every attempt's calls
        usage = usage_of(output) if spent is None else spent
        return StepRecord(
            seq=self.seq,
            node=visit.node,
            visit=visit.visit,
            output=output,
            writes=writes,
            attempts=outcome.attempts,
            duration=outcome.duration,
            usage=usage if isinstance(usage, Usage) else None,
            next=jump,
            routes=routes,
            epoch=self.epoch,
            finished_at=time.time(),
            input_summary=summary(visit.input),
        )

    async def _routes(
        self, visit: Visit, output: Any, state: dict[str, Any]
    ) -> dict[str, bool] | None:
        """The outcome of each condition on the node's outgoing edges (see ``routes``)."""
        edges = [e for e in self.graph.successors(visit.node) if e.when is not None]
        if not edges:
            return None
        outputs = self.outputs(visit, {visit.node: output})
        seen = NodeContext(output, outputs, state, self.run_id, visit.node, visit.visit)
        return await routes(edges, seen)


class _Behind(Exception):
    """A step this engine meant to commit was committed by the engine it replaced."""


def _node_attributes(node: Node, ctx: NodeContext) -> dict[str, Any]:
    return {
        "gecko.run_id": ctx.run_id,
        "gecko.node": node.name,
        "gecko.node.kind": node.kind,
        "gecko.visit": ctx.visit,
        "gecko.attempt": ctx.attempt,
        "gecko.item": ctx.item,
    }
