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
from typing import Any

import ray
from ray import cloudpickle

from gecko_actors import metrics
from gecko_actors.checkpoint import CheckpointStore
from gecko_actors.checkpoint.index import IndexEntry, RunIndex
from gecko_actors.exceptions import HostBusy, OwnershipLost, UserError, WorkflowError
from gecko_actors.logging import get_logger
from gecko_actors.settings import load_settings
from gecko_actors.workflow import directory
from gecko_actors.workflow.coordinator import RayExecutor, lent_output
from gecko_actors.workflow.driven import DrivenRun
from gecko_actors.workflow.engine import RunEngine
from gecko_actors.workflow.graph import WorkflowGraph
from gecko_actors.workflow.target import load_workflow

_log = get_logger("gecko_actors.workflow")


class RunNotHosted(WorkflowError):
    """The host does not hold the run (it ended and was dropped, or it never was here): the
    handle answers from the checkpoint."""

    error_code = "run_not_hosted"


class WorkflowHost:
    """Drives many runs; handles (``WorkflowRun``) call it with the run's id."""

    def __init__(self, name: str) -> None:
        self.name = name
        settings = load_settings()
        self.max_runs = settings.host_max_runs
        self.linger = settings.workflow_linger
        self.runs: dict[str, DrivenRun] = {}
        self.graphs: dict[str, WorkflowGraph] = {}
        self.lent: dict[str, Mapping[str, Any]] = {}
        self.stores: dict[str, CheckpointStore] = {}
        self.indexes: dict[str, _IndexWriter] = {}
        self.locks: dict[str, asyncio.Lock] = {}  # run id -> held while it is being opened
        self.resumed = False
        self.me = ray.get_runtime_context().current_actor
        # What we drove before a restart: resumed once the constructor has returned.
        self.recorded = directory.host_runs(name)
        self.opening: dict[str, asyncio.Event] = {r: asyncio.Event() for r in self.recorded}
        if self.recorded:
            self.me.resume_recorded.remote()

    def __repr__(self) -> str:
        # The dashboard's Repr column (Ray reads it once, after the constructor).
        active = sum(not r.done.is_set() for r in self.runs.values())
        return f"WorkflowHost({active} runs, {len(self.opening)} waiting)"

    # --- starting and resuming ----------------------------------------------------------

    async def start_run(
        self,
        run_id: str,
        uri: str,
        graph: tuple[str, bytes, str | None],
        input: Any,
        created_at: float,
    ) -> dict[str, Any]:
        """Create run ``run_id`` (if absent) and drive it; returns its ``info``. A run id
        that is taken is a UserError; a full host raises HostBusy (nothing is stored). A
        start retried after a crash of this host finds its own run (by its creation time)."""
        if run_id not in self.runs and self.active() >= self.max_runs:
            raise HostBusy(
                f"workflow host {self.name} already drives {self.max_runs} runs",
                hint="wait for runs to finish, add nodes, or raise GECKO_HOST_MAX_RUNS",
                host=self.name,
            )
        run, fresh = await self._open(run_id, uri, graph, input, created_at)
        engine = run.engine
        assert engine is not None
        ours = (engine.manifest.host, engine.manifest.created_at) == (self.name, created_at)
        if not ours:
            if fresh:  # opened only to find another start's run
                self.runs.pop(run_id, None)
            raise _exists(run_id, uri)
        if fresh:
            await self._adopt(run, uri, graph)
        return self.info(run_id)

    async def resume_run(
        self, run_id: str, uri: str, graph: tuple[str, bytes, str | None], input: Any
    ) -> dict[str, Any]:
        """Continue ``run_id`` from its last committed step: a live run goes on, a failed or
        cancelled one is driven again, a succeeded one keeps its result."""
        run, fresh = await self._open(run_id, uri, graph, input, None)
        if fresh:
            await self._adopt(run, uri, graph)
        task = run.reopen()
        if task is not None:
            self._count()
        await run.begun(task)
        return self.info(run_id)

    async def resume_recorded(self) -> None:
        """Resume the runs the directory says we drove (after Ray restarted us); once."""
        if self.resumed:
            return
        self.resumed = True
        await asyncio.gather(*(self._resume_one(r, e) for r, e in self.recorded.items()))

    async def _resume_one(self, run_id: str, entry: dict[str, Any]) -> None:
        try:
            blob = (
                None
                if entry.get("target")
                else await asyncio.to_thread(directory.load_graph, entry["graph"])
            )
            graph = (entry["graph"], blob, entry.get("target"))
            run, fresh = await self._open(run_id, entry["uri"], graph, None, None)
            if fresh:
                await self._adopt(run, entry["uri"], graph, record=False)
        except Exception as exc:  # the run stays recorded: a driver's resume supplies a graph
            _log.warning("could not resume a run after a restart", run_id=run_id, error=str(exc))
        finally:
            self.opening.pop(run_id, asyncio.Event()).set()

    async def _open(
        self,
        run_id: str,
        uri: str,
        graph: tuple[str, bytes | None, str | None],
        input: Any,
        created_at: float | None,
    ) -> tuple[DrivenRun, bool]:
        """The run as held here, or opened now (creating it if absent): one engine per run
        in a host, however many callers ask at once. True when opened now."""
        lock = self.locks.setdefault(run_id, asyncio.Lock())
        async with lock:
            if run_id in self.runs:
                return self.runs[run_id], False
            return await self._open_new(run_id, uri, graph, input, created_at), True

    async def _open_new(
        self,
        run_id: str,
        uri: str,
        graph: tuple[str, bytes | None, str | None],
        input: Any,
        created_at: float | None,
    ) -> DrivenRun:
        ready = self.opening.setdefault(run_id, asyncio.Event())  # handles' calls wait
        try:
            definition = await self._graph(*graph)
            store = self.stores.setdefault(uri, CheckpointStore(uri))
            executor = RayExecutor(store, self.me, self.lent)
            run = DrivenRun(run_id, self.name)

            def engine(sink: Any) -> RunEngine:
                return RunEngine(definition, run_id, store, executor, on_event=sink)

            await _starting(run.open, engine, input, created_at, self.name)
            self.runs[run_id] = run
            return run
        finally:
            if self.opening.get(run_id) is ready:
                del self.opening[run_id]
            ready.set()

    async def _adopt(
        self, run: DrivenRun, uri: str, graph: tuple[str, Any, str | None], record: bool = True
    ) -> None:
        """Record the run in the directory (so a restart resumes it), index it, drive it."""
        engine = run.engine
        assert engine is not None
        manifest = engine.manifest
        if record and manifest.status == "running":
            entry = {"uri": uri, "graph": graph[0], "target": graph[2]}
            await _starting(directory.record_run, self.name, run.run_id, entry)
            if manifest.host not in (None, self.name):  # taken from another host's pool
                await asyncio.to_thread(directory.forget_run, manifest.host, run.run_id)
        run.on_end = lambda durable: self._ended(run, uri, durable)
        self._index(uri).add(_entry(run, "running" if not run.done.is_set() else engine.outcome))
        if not run.done.is_set():
            _keep(asyncio.create_task(run.drive()))
        self._count()

    async def _graph(self, key: str, blob: bytes | None, target: str | None) -> WorkflowGraph:
        """The graph of ``key``: known here, unpickled from ``blob``, or imported."""
        graph = self.graphs.get(key)
        if graph is not None:
            return graph
        if blob is not None:
            graph = await asyncio.to_thread(cloudpickle.loads, blob)
            if target is None:  # a restart of this host must find it
                await asyncio.to_thread(directory.store_graph, key, blob)
        elif target is not None:
            graph = await asyncio.to_thread(load_workflow, target)
        else:
            raise UserError(
                f"workflow host {self.name} has no graph for a run any more (the cluster that "
                "held it is gone)",
                hint="resume the run from a driver: wf.resume(run_id, checkpoint=...), or "
                "`gecko-actors resume RUN_ID TARGET`",
            )
        self.graphs[key] = graph
        return graph

    async def _ended(self, run: DrivenRun, uri: str, durable: bool) -> None:
        engine = run.engine
        assert engine is not None
        taken = isinstance(engine.failure, OwnershipLost)
        if durable or taken:  # else (storage down) a restart of this host finishes it
            await self._index(uri).add(_entry(run, engine.outcome))
            await asyncio.to_thread(directory.forget_run, self.name, run.run_id)
        self._count()
        asyncio.get_running_loop().call_later(self.linger, self._drop, run)

    def _drop(self, run: DrivenRun) -> None:
        if self.runs.get(run.run_id) is run and run.done.is_set() and not run.driving:
            del self.runs[run.run_id]
            self.locks.pop(run.run_id, None)

    def _index(self, uri: str) -> _IndexWriter:
        if uri not in self.indexes:
            store = self.stores.setdefault(uri, CheckpointStore(uri))
            self.indexes[uri] = _IndexWriter(RunIndex(store), self.name.replace("/", "."))
        return self.indexes[uri]

    def active(self) -> int:
        """How many runs are being driven here now."""
        return sum(not r.done.is_set() for r in self.runs.values())

    def _count(self) -> None:
        metrics.runs_active(self.name, self.active())

    # --- what handles ask ---------------------------------------------------------------

    async def _run(self, run_id: str) -> DrivenRun:
        if run_id in self.opening:
            await self.opening[run_id].wait()
        run = self.runs.get(run_id)
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

    async def reopen(self, run_id: str) -> None:
        run = await self._run(run_id)
        await run.begun(run.reopen())
        self._count()

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
            "waiting": len(self.opening),
            "max_runs": self.max_runs,
        }


_TASKS: set[asyncio.Task[Any]] = set()
# Threads of their own for the start path (the manifest, the directory entry): in the loop's
# default pool they would queue behind the commits of every run the host drives.
_START_IO = ThreadPoolExecutor(max_workers=4, thread_name_prefix="gecko-start")


async def _starting(fn: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(_START_IO, fn, *args)


def _keep(task: asyncio.Task[Any]) -> None:
    """Hold a reference to a background task until it ends (the loop holds only a weak one)."""
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)


def _exists(run_id: str, uri: str) -> UserError:
    return UserError(
        f"run {run_id!r} already exists in {uri}",
        hint="resume it with wf.resume(run_id, checkpoint=...) or pick a new run_id",
        run_id=run_id,
    )


def _entry(run: DrivenRun, status: str) -> IndexEntry:
    engine = run.engine
    assert engine is not None
    manifest = engine.manifest
    return IndexEntry(
        run.run_id, manifest.workflow, status, manifest.created_at, time.time(), run.host
    )


class _IndexWriter:
    """Appends index entries in batches: one object per flush, whatever came meanwhile."""

    def __init__(self, index: RunIndex, partition: str) -> None:
        self.index, self.partition = index, partition
        self.queue: list[IndexEntry] = []
        self.next: asyncio.Future[None] | None = None
        self.lock = asyncio.Lock()
        self.flushes = 0

    def add(self, entry: IndexEntry) -> asyncio.Future[None]:
        """Queue ``entry``; the future is done once it is written (or the write failed)."""
        self.queue.append(entry)
        if self.next is None:
            self.next = asyncio.get_running_loop().create_future()
            _keep(asyncio.create_task(self._flush(self.next)))
        return self.next

    async def _flush(self, done: asyncio.Future[None]) -> None:
        async with self.lock:  # one write at a time: what queues meanwhile is the next batch
            batch, self.queue, self.next = self.queue, [], None
            try:
                await asyncio.to_thread(self.index.append, batch, self.partition)
                self.flushes += 1
                if self.flushes % 200 == 1:  # at the first flush, then now and then
                    await asyncio.to_thread(self.index.compact, self.partition)
            except Exception as exc:  # the index is a view: the runs themselves are stored
                _log.warning("could not write the run index", error=str(exc))
            finally:
                done.set_result(None)
