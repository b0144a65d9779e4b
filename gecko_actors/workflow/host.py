"""The workflow host: many runs in one async actor (``workflows/host/<env>/<i>``).

Each run is a :class:`~gecko_actors.workflow.driven.DrivenRun` whose engine is an asyncio
task of the host's loop; function nodes run on the host's threads and loop (warm: no process
per node), or as killable Ray tasks when they ask for resources. Starting a run costs one
storage round trip (its manifest, created only if absent) and one write to the cluster's
key-value store (the directory, ``directory.py``); the run index is appended in batches, off
the start path.

Ray restarts a dead host (``max_restarts=-1``) under the same name, on another node if need
be; its constructor finds the runs it drove in the directory and resumes them from their
checkpoints. The store's owner epochs keep one engine per run even if an old host lives on
behind a partition.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import ray
from ray import cloudpickle

from gecko_actors import metrics
from gecko_actors._actors.budgets import open_run_budget
from gecko_actors.checkpoint import CheckpointStore
from gecko_actors.checkpoint.index import RunIndex
from gecko_actors.core import tracing
from gecko_actors.core.budget import Budget
from gecko_actors.exceptions import HostBusy, OwnershipLost, UserError, WorkflowError
from gecko_actors.logging import get_logger
from gecko_actors.settings import load_settings
from gecko_actors.workflow import directory
from gecko_actors.workflow.coordinator import RayExecutor, lent_output
from gecko_actors.workflow.driven import DrivenRun, RunHandedOver, RunNotHosted, keep_alive
from gecko_actors.workflow.engine import RunEngine, already_exists
from gecko_actors.workflow.graph import WorkflowGraph
from gecko_actors.workflow.index_writer import IndexWriter
from gecko_actors.workflow.target import load_workflow

_log = get_logger("gecko_actors.workflow")


class GraphMissing(WorkflowError):
    """The host has no graph for a run: none was sent, none is kept in the directory, and
    it has no target to import. A driver that has the graph sends it again."""

    error_code = "graph_missing"


class WorkflowHost:
    """Drives many runs; handles (``WorkflowRun``) call it with the run's id."""

    def __init__(self, name: str) -> None:
        self.name = name
        settings = load_settings()
        self.max_runs = settings.host_max_runs
        self.linger = settings.workflow_linger
        self.idle_exit = settings.host_idle_exit
        self.runs: dict[str, DrivenRun] = {}  # every run held here: driven, or ended
        self.live: set[str] = set()  # the runs of self.runs being driven now
        self.opens: dict[str, asyncio.Task[DrivenRun]] = {}  # runs being opened now
        self.graphs: dict[str, WorkflowGraph] = {}
        self.lent: dict[str, Mapping[str, Any]] = {}
        self.stores: dict[str, CheckpointStore] = {}
        self.indexes: dict[str, IndexWriter] = {}
        self.me = ray.get_runtime_context().current_actor
        self.draining = False  # drain(): no new run is taken
        self.handed: set[str] = set()  # the runs drain() let go: another host has them
        # What we drove before a restart: resumed once the constructor has returned.
        self.recorded = directory.host_runs(name)
        self.registered = asyncio.Event()  # set once the recorded runs are being opened
        if self.recorded:
            self.me.resume_recorded.remote()
        else:
            self.registered.set()
        if self.idle_exit:
            self.me.exit_when_idle.remote()

    def __repr__(self) -> str:
        # The dashboard's Repr column (Ray reads it once, after the constructor).
        return f"WorkflowHost({self.active()} runs, {len(self.recorded)} waiting)"

    # --- starting and resuming ----------------------------------------------------------

    async def start_run(
        self,
        run_id: str,
        uri: str,
        graph: GraphRef,
        input: Any,
        created_at: float,
        budget: Budget | None = None,
        traced: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Create run ``run_id`` (if absent) and drive it; returns its ``info``. A run id
        that is taken is a UserError; a full host raises HostBusy (nothing is stored). A
        start retried after a crash of this host finds its own run (by its creation time).
        ``traced``: the caller's tracing configuration, adopted if this host has none."""
        tracing.adopt(traced)
        known = run_id in self.runs or run_id in self.opens or run_id in self.recorded
        self._refuse_if_draining(known)
        if not known and self.active() + len(self.opens) >= self.max_runs:
            raise HostBusy(
                f"workflow host {self.name} already drives {self.max_runs} runs",
                hint="wait for runs to finish, add nodes, or raise GECKO_HOST_MAX_RUNS",
                host=self.name,
            )
        run = await self._held(
            run_id,
            lambda: self._open(run_id, uri, graph, input, created_at, budget, traced is not None),
        )
        manifest = run.manifest
        if (manifest.host, manifest.created_at) != (self.name, created_at):
            raise already_exists(run_id, uri)  # another start's run, held here
        return self.info(run_id)

    async def resume_run(
        self,
        run_id: str,
        uri: str,
        graph: GraphRef,
        input: Any,
        budget: Budget | None = None,
        traced: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Continue ``run_id`` from its last committed step: a live run goes on, a failed or
        cancelled one is driven again (with ``budget``, if given), a succeeded one keeps its
        result."""
        tracing.adopt(traced)
        self._refuse_if_draining(run_id in self.runs or run_id in self.opens)
        held = self.runs.get(run_id)
        # Resumed with another graph (a new version) while held here and not driven (it
        # waits, failed or was cancelled): opened again with it, if compatible (versions.py);
        # a run being driven keeps its graph.
        other = held is not None and held.entry.get("graph") != graph.key and not held.driving
        if other:
            del self.runs[run_id]
        try:
            run = await self._held(
                run_id,
                lambda: self._open(run_id, uri, graph, input, None, budget, traced is not None),
            )
        except BaseException:
            if other and run_id not in self.runs:  # refused: it stays as it was
                self.runs[run_id] = held  # type: ignore[assignment]
            raise
        if other and held is not run:  # its timers and waiting callers go with it
            await held.release(self.name)  # type: ignore[union-attr]
        await self._continue(run, budget)
        return self.info(run_id)

    async def resume_recorded(self) -> None:
        """Resume the runs the directory says we drove (after Ray restarted us)."""
        recorded, self.recorded = self.recorded, {}
        opens = {}
        for run_id, entry in recorded.items():  # registered before any await: handles wait
            if run_id not in self.runs and run_id not in self.opens:
                graph = GraphRef(entry["graph"], None, entry.get("target"))
                opens[run_id] = asyncio.ensure_future(
                    self._open(run_id, entry["uri"], graph, None, None)
                )
        self.opens.update(opens)
        self.registered.set()
        for run_id, task in opens.items():
            try:
                await task
            except UserError as exc:  # the run is gone from its store: nothing to resume
                _log.warning("a recorded run was not resumed", run_id=run_id, error=exc.message)
                await asyncio.to_thread(directory.forget_run, self.name, run_id)
            except Exception as exc:  # it stays recorded: a driver's resume supplies a graph
                _log.warning(
                    "could not resume a run after a restart", run_id=run_id, error=str(exc)
                )
            finally:
                if self.opens.get(run_id) is task:
                    del self.opens[run_id]

    def _refuse_if_draining(self, known: bool) -> None:
        if self.draining and not known:
            raise HostBusy(
                f"workflow host {self.name} is draining: it takes no new run",
                hint="another host of the pool takes it (wf.start and wf.resume try them)",
                host=self.name,
            )

    async def drain(self, timeout: float) -> dict[str, Any]:
        """Take no new run; give the runs driven here up to ``timeout`` seconds to end (or
        to wait for an answer or a timer), then let go of every run still held, recording
        nothing (``DrivenRun.release``), so that another host takes each over from its
        checkpoint. Returns the runs that ``ended`` here meanwhile, and those ``released``
        with what another host needs to resume each (store URI, graph key, target)."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        held = {r for r, run in self.runs.items() if not run.done.is_set()}
        while (self.live or self.opens) and loop.time() < deadline:
            await asyncio.sleep(0.1)
        released = {}
        for run_id, run in list(self.runs.items()):
            if await run.release(self.name):
                released[run_id] = run.entry
                self.handed.add(run_id)
                self.live.discard(run_id)
                del self.runs[run_id]
                await asyncio.to_thread(directory.forget_run, self.name, run_id)
        self._count()
        return {"ended": sorted(held - released.keys()), "released": released}

    async def _held(self, run_id: str, open: Any) -> DrivenRun:
        """The run held here, or opened now by ``open()``: one engine per run in a host,
        however many callers ask at once."""
        while run_id not in self.runs:
            pending = self.opens.get(run_id)
            if pending is None:
                task = asyncio.ensure_future(open())
                self.opens[run_id] = task
                try:
                    return await asyncio.shield(task)
                finally:
                    if task.done() and self.opens.get(run_id) is task:
                        del self.opens[run_id]
            await asyncio.wait([pending])  # its outcome is its caller's: look again
        return self.runs[run_id]

    async def _open(
        self,
        run_id: str,
        uri: str,
        graph: GraphRef,
        input: Any,
        created_at: float | None,
        budget: Budget | None = None,
        traced: bool = False,
    ) -> DrivenRun:
        """Open the run (creating it only for a start: ``created_at`` given) and drive it."""
        definition = await self._graph(graph)
        store = self._store(uri)
        executor = RayExecutor(store, self.me, self.lent)
        run = DrivenRun(run_id, self.name)
        run.entry = {"uri": uri, "graph": graph.key, "target": graph.target}

        def engine(sink: Any) -> RunEngine:
            made = RunEngine(
                definition, run_id, store, executor, on_event=sink, budgets=open_run_budget
            )
            made.traced = traced
            return made

        create = created_at is not None  # a resume never makes a run that is gone

        def open_and_record() -> None:  # one trip to a thread: the start path's two writes
            run.open(engine, input, created_at, self.name, create, budget)
            if not run.done.is_set():  # recorded, so that a restart of this host resumes it
                directory.record_run(self.name, run_id, run.entry)

        await _starting(open_and_record)
        self.runs[run_id] = run
        try:
            await self._drive(run)
        except BaseException:
            self.runs.pop(run_id, None)
            raise
        return run

    async def _drive(self, run: DrivenRun) -> None:
        """Index the run (recorded in the directory by now) and drive it; a run that is
        over is only let go."""
        run.on_end = lambda durable: self._ended(run, durable)
        run.on_wake = lambda: self._continue(run)  # a timer of the waiting run is due
        if run.done.is_set():  # ended before a restart: its index entry may be missing
            await self._index(run).add(run.index_entry(run.engine.outcome), ended=True)  # type: ignore[union-attr]
            asyncio.get_running_loop().call_later(self.linger, self._drop, run)
            return
        previous = run.manifest.host
        if previous not in (None, self.name):  # taken from another host: it must not resume it
            await asyncio.to_thread(directory.forget_run, previous, run.run_id)
        self._index(run).add(run.index_entry("running"))
        self.live.add(run.run_id)
        keep_alive(asyncio.create_task(run.drive()))
        self._count()

    async def _continue(self, run: DrivenRun, budget: Budget | None = None) -> None:
        """Drive a failed, cancelled or waiting run again (recorded again first; with
        ``budget`` instead of its own, if given)."""
        if run.engine is None or run.engine.outcome in ("running", "succeeded"):
            return  # being driven (or about to be), or done for good
        await run.settled.wait()  # the last drive's end is recorded (it forgets the run)
        if run.driving or run.engine.outcome not in ("failed", "cancelled", "waiting"):
            return
        await _starting(directory.record_run, self.name, run.run_id, run.entry)
        self._index(run).add(run.index_entry("running"))
        self.live.add(run.run_id)
        await run.reopen(budget)
        self._count()

    async def _graph(self, graph: GraphRef) -> WorkflowGraph:
        """The graph of ``graph.key``: known here, unpickled from its blob (sent, or kept in
        the directory), or imported from its target."""
        found = self.graphs.get(graph.key)
        if found is not None:
            return found
        blob = graph.blob
        if blob is None:
            blob = await asyncio.to_thread(directory.load_graph, graph.key)
        else:  # a restart of this host must find it
            await asyncio.to_thread(directory.store_graph, graph.key, blob)
        if blob is not None:
            found = await asyncio.to_thread(cloudpickle.loads, blob)
        elif graph.target is not None:
            found = await asyncio.to_thread(load_workflow, graph.target)
        else:
            raise GraphMissing(
                f"workflow host {self.name} has no graph for a run any more (the cluster that "
                "held it is gone)",
                hint="resume the run from a driver: wf.resume(run_id, checkpoint=...), or "
                "`gecko-actors resume RUN_ID TARGET`",
            )
        self.graphs[graph.key] = found
        return found

    async def _ended(self, run: DrivenRun, durable: bool) -> None:
        engine = run.engine
        assert engine is not None
        self.live.discard(run.run_id)
        if engine.outcome == "waiting" and durable:
            # Held (a respond continues it) and recorded (a restart of this host drives it
            # again, and its parked nodes park again), listed as waiting.
            self._index(run).add(run.index_entry("waiting"))
        elif isinstance(engine.failure, OwnershipLost):
            # Another engine drives the run now: its index entries and directory entry are
            # its own (a restarted host of our name writes the same key), so touch neither.
            asyncio.get_running_loop().call_later(self.linger, self._drop, run)
        elif durable:
            try:
                # Recorded until indexed: a restart of this host writes the entry then.
                await self._index(run).add(run.index_entry(engine.outcome), ended=True)
            finally:
                asyncio.get_running_loop().call_later(self.linger, self._drop, run)
        # else: the storage is down: the run stays held (and recorded) until a resume
        self._count()

    def _drop(self, run: DrivenRun) -> None:
        if self.runs.get(run.run_id) is run and run.done.is_set() and not run.driving:
            del self.runs[run.run_id]

    def _store(self, uri: str) -> CheckpointStore:
        if uri not in self.stores:
            self.stores[uri] = CheckpointStore(uri)
        return self.stores[uri]

    def _index(self, run: DrivenRun) -> IndexWriter:
        uri = run.entry["uri"]
        if uri not in self.indexes:
            self.indexes[uri] = IndexWriter(RunIndex(self._store(uri)), self.name)
        return self.indexes[uri]

    def active(self) -> int:
        """How many runs are being driven here now."""
        return len(self.live)

    def _count(self) -> None:
        metrics.runs_active(self.name, self.active())

    async def exit_when_idle(self) -> None:
        """Exit once no run has been held here for ``idle_exit`` seconds (a long-lived
        cluster keeps no idle host of a job that is gone); a later start makes it again."""
        idle_since = time.monotonic()
        while True:
            await asyncio.sleep(min(self.idle_exit, 30.0) / 2)
            if self.runs or self.opens or self.recorded:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= self.idle_exit:
                _log.info("workflow host exits: idle", host=self.name)
                # Not exit_actor(): from a call we made to ourselves, it waits for its reply.
                ray.kill(self.me, no_restart=True)
                return

    # --- what handles ask ---------------------------------------------------------------

    async def _run(self, run_id: str) -> DrivenRun:
        await self.registered.wait()
        pending = self.opens.get(run_id)
        if pending is not None:
            await asyncio.wait([pending])
        run = self.runs.get(run_id)
        if run_id in self.handed:
            raise RunHandedOver(f"run {run_id!r} was handed over by {self.name}", run_id=run_id)
        if run is None or run.engine is None:
            raise RunNotHosted(f"run {run_id!r} is not on host {self.name}", run_id=run_id)
        return run

    def info(self, run_id: str) -> dict[str, Any]:
        """Where the run is driven, and from which checkpoint."""
        run = self.runs[run_id]
        assert run.engine is not None
        return {
            "run_id": run_id,
            "host": self.name,
            "placement": "hosted",
            "checkpoint": run.engine.store.uri,
            "workflow": run.engine.graph.name,
            "node_ip": ray.util.get_node_ip_address(),
        }

    async def run_info(self, run_id: str) -> dict[str, Any]:
        await self._run(run_id)
        return self.info(run_id)

    async def result(self, run_id: str) -> Any:
        return await (await self._run(run_id)).result()

    async def status(self, run_id: str) -> dict[str, Any]:
        return (await self._run(run_id)).status()

    async def events_since(self, run_id: str, index: int) -> tuple[list[dict[str, Any]], bool]:
        return (await self._run(run_id)).events_since(index)

    async def cancel(self, run_id: str) -> None:
        await (await self._run(run_id)).cancel()

    async def respond(self, run_id: str, node: str, value: Any, by: str | None) -> None:
        """Answer ``node``'s interrupt in run ``run_id`` (see ``DrivenRun.respond``)."""
        run = await self._run(run_id)
        if not await run.respond(node, value, by):
            await self._continue(run)

    async def reopen(self, run_id: str, budget: Budget | None = None) -> None:
        await self._continue(await self._run(run_id), budget)

    async def lent_output(self, key: str, node: str) -> tuple[bool, Any]:
        """The output of ``node`` as the task attempt ``key`` sees it (see LentOutputs)."""
        return await lent_output(self.lent, key, node)

    def lent_names(self, key: str) -> list[str]:
        return sorted(self.lent.get(key, {}))

    def summary(self) -> dict[str, Any]:
        """What this host holds: runs driven now, runs it still answers for, runs waiting
        to be resumed."""
        return {
            "host": self.name,
            "active": self.active(),
            "held": len(self.runs),
            "waiting": len(self.recorded) + len(self.opens),
            "max_runs": self.max_runs,
        }


# Threads of their own for the start path (the manifest, the directory entry): in the loop's
# default pool they would queue behind the commits of every run the host drives.
_START_IO = ThreadPoolExecutor(max_workers=4, thread_name_prefix="gecko-start")


async def _starting(fn: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(_START_IO, fn, *args)


class GraphRef(NamedTuple):
    """How a host finds a run's graph: ``key`` names its exact code; ``blob`` is the graph
    pickled (sent by the driver; None when it is to be found in the directory); ``target``
    is its ``module:attr``, imported when no pickled copy is left."""

    key: str
    blob: bytes | None
    target: str | None
