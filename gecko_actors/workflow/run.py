"""``Workflow`` (a graph you can start and resume) and ``WorkflowRun`` (the handle of a run)."""

from __future__ import annotations

import contextlib
import copy
import time
import uuid
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import ray

from gecko_actors._actors.common import lookup, unwrap
from gecko_actors.checkpoint import CheckpointStore
from gecko_actors.checkpoint.journal import Journal
from gecko_actors.checkpoint.records import validate_run_id
from gecko_actors.core.budget import Budget, checked_budget
from gecko_actors.exceptions import CheckpointError, UserError, WorkflowError
from gecko_actors.workflow import directory, hosting
from gecko_actors.workflow.coordinator import launch
from gecko_actors.workflow.driven import RunHandedOver, RunNotHosted
from gecko_actors.workflow.fork import UNSET, create_fork
from gecko_actors.workflow.graph import WorkflowGraph
from gecko_actors.workflow.history import run_history
from gecko_actors.workflow.rules import already_exists, no_such_run, normalised
from gecko_actors.workflow.schedules import ScheduleHandle, schedule_workflow
from gecko_actors.workflow.status import format_status, status_from_checkpoint
from gecko_actors.workflow.upgrading import admit, migrate_run
from gecko_actors.workflow.waiting import answer_in_checkpoint

DEFAULT_CHECKPOINT = "gecko_runs"
# A workflow's copies with another journal_models, and the shape each was made at.
_VARIANTS: weakref.WeakKeyDictionary[Workflow, dict[bool, tuple[tuple[Any, ...], Workflow]]] = (
    weakref.WeakKeyDictionary()
)


def checkpoint_uri(checkpoint: str | Path | None) -> str:
    """The store URI of ``checkpoint`` (a local folder by default), as every process sees it."""
    if checkpoint is None or isinstance(checkpoint, Path) or "://" not in str(checkpoint):
        # A local folder: resolved here, on the driver, since the actor may run elsewhere.
        return f"file://{Path(checkpoint or DEFAULT_CHECKPOINT).resolve()}"
    if str(checkpoint).strip().lower().startswith("memory://"):
        raise UserError(
            f"a workflow on Ray cannot checkpoint to {checkpoint!r}: a memory:// store lives "
            "in one process, and the run's coordinator is another one",
            hint="use a folder, file://, s3:// or gs://; to test a workflow in one process, "
            "drive gecko_actors.workflow.engine.RunEngine on a memory:// store",
        )
    return str(checkpoint)


_GONE = object()  # what a call to a coordinator that has exited returns
_MOVED = object()  # the run was handed over to another host: call that one
_FOLLOW = 4  # how many hosts a call follows a run through
_HANDOVER = 60.0  # seconds a handle waits for a drained host's run to be taken over


class WorkflowRun:
    """The handle of one run: ``result``, ``status``, ``summary``, ``events``, ``cancel``,
    ``info``. Picklable; any driver can build one with :meth:`Workflow.resume` or
    :meth:`attach`.

    The run is driven by a workflow host (``workflows/host/<env>/<i>``, many runs per
    process) or, with ``dedicated=True``, by a coordinator of its own (``workflow/<run_id>``).
    A finished run is held for ``GECKO_WORKFLOW_LINGER`` seconds (a dedicated coordinator then
    exits); the handle then answers ``result``, ``status`` and ``summary`` from the checkpoint.
    """

    def __init__(
        self, run_id: str, handle: Any, checkpoint: str | None = None, host: str | None = None
    ) -> None:
        self.run_id = run_id
        self._handle = handle  # a dedicated coordinator's (a host's is looked up by name)
        self._checkpoint = checkpoint
        self._host = host  # the host's name; None for a dedicated coordinator

    def __repr__(self) -> str:
        return f"WorkflowRun({self.run_id!r})"

    @classmethod
    def attach(cls, run_id: str) -> WorkflowRun:
        """The handle of a run that a live host or coordinator of the cluster drives."""
        handle = lookup(f"workflow/{run_id}")
        if handle is not None:
            return cls(run_id, handle)
        host = directory.find_host(run_id)
        handle = None if host is None else lookup(host)
        if handle is None:
            raise UserError(
                f"no live host or coordinator drives run {run_id!r}",
                hint="check the run id and --address; a finished run is read with "
                "`gecko-actors status RUN_ID --checkpoint URI`, and a run whose cluster is "
                "gone is resumed with wf.resume(run_id, checkpoint=...) (or `gecko-actors "
                "resume RUN_ID TARGET`)",
                run_id=run_id,
            )
        return cls(run_id, None, host=host)

    @property
    def actor(self) -> Any:
        """The Ray actor handle of the run's host (or dedicated coordinator), for advanced
        use (``ray.kill`` to simulate a crash, say)."""
        return self._handle if self._host is None else hosting.handle(self._host)

    def info(self) -> dict[str, Any]:
        """Where the run is driven: ``placement`` (hosted or dedicated), ``host`` (the actor's
        name), ``checkpoint``, ``workflow`` and ``node_ip`` while it is held there."""
        if self._host is not None:
            found = self._ask("run_info")
            if found is not _GONE:
                return found
        manifest = None if self._checkpoint is None else self._store().read_manifest(self.run_id)
        host = self._host or (manifest.host if manifest else None) or f"workflow/{self.run_id}"
        return {
            "run_id": self.run_id,
            "host": host,
            "placement": "dedicated" if host.startswith("workflow/") else "hosted",
            "checkpoint": self._checkpoint,
            "workflow": manifest.workflow if manifest else None,
            "node_ip": None,
        }

    def result(self, timeout: float | None = None) -> Any:
        """The run's result, once it finished (a ``WorkflowError`` if it failed)."""
        value = self._ask("result", timeout=timeout)
        if value is not _GONE:
            return value
        manifest = self._store().read_manifest(self.run_id)
        if manifest is not None and manifest.status == "succeeded":
            return manifest.result
        state = "is not running" if manifest is None else f"{manifest.status}"
        raise WorkflowError(
            f"workflow run {self.run_id!r} {state}"
            + (f": {manifest.error}" if manifest and manifest.error else ""),
            hint="resume it with wf.resume(run_id, checkpoint=...)",
            run_id=self.run_id,
        )

    def status(self) -> dict[str, Any]:
        """The run's state, steps, tokens and error, and per node: state, visit, attempts,
        duration, tokens and error; ``journal``: how many effects its journal records."""
        status = self._ask("status")
        if status is _GONE:
            return status_from_checkpoint(self._store(), self.run_id)
        if self._checkpoint is not None:  # counted here: killable nodes journal elsewhere
            with contextlib.suppress(CheckpointError):  # storage down: the rest still holds
                status["journal"] = Journal(self._store(), self.run_id, 0).count()
        return status

    def history(self) -> dict[str, Any]:
        """Every committed step in order, read from the checkpoint (so also after the cluster
        is gone): per step ``seq``, ``node``, ``visit``, ``input`` and ``output`` (short
        summaries), ``state`` (the keys it wrote, ``None`` for a deletion), ``tokens``,
        ``usd``, ``duration``, ``attempts``, ``finished_at``, ``effects`` (its journal's
        entries by kind) and ``answers`` (each interrupt's question, answer, who gave it and
        when); and the run's ``workflow``, ``status``, ``input`` and ``waiting`` nodes.
        :func:`~gecko_actors.workflow.history.format_history` prints it."""
        found = run_history(self._store(), self.run_id)
        if found is None:
            raise no_such_run(self.run_id, str(self._checkpoint))
        return found

    def summary(self) -> str:
        """Gecko's execution summary: a table of the nodes, then the run's outcome."""
        return format_status(self.status())

    def events(self, poll: float = 0.2) -> Iterator[dict[str, Any]]:
        """Events as they happen (Gecko's names: workflow_started, node_started, node_retried,
        node_completed, node_error, node_waiting, workflow_completed / workflow_error /
        workflow_cancelled / workflow_waiting), until the run ends or waits for answers."""
        seen = 0
        while True:
            answer = self._ask("events_since", seen)
            if answer is _GONE:
                return
            batch, finished = answer
            yield from batch
            seen += len(batch)
            waits = any(event["type"] == "workflow_waiting" for event in batch)
            if waits or (finished and not batch):
                return
            time.sleep(0 if batch else poll)

    def cancel(self, timeout: float | None = None) -> None:
        """Stop the run and return once its running attempts have stopped (a sync function
        node in a thread is waited for until it returns); its committed steps stay, and
        ``resume`` continues it. After ``timeout`` seconds a ``WorkflowError`` says the run
        is still stopping (the cancel goes on)."""
        try:
            self._ask("cancel", timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise WorkflowError(
                f"workflow run {self.run_id!r} is still stopping after {timeout}s: a node "
                "that cannot be interrupted (a sync function in a thread) is still running",
                hint="wait for it (run.result() raises once it is cancelled), or give such "
                "nodes a timeout so that they run as killable Ray tasks",
                run_id=self.run_id,
            ) from None

    def respond(self, node: str, value: Any, *, by: str | None = None) -> None:
        """Answer the interrupt ``node`` waits on (``status()["waiting"]`` lists them) with
        ``value`` (checkpointable data), given ``by`` whom (kept with the answer). The node
        runs again from the top and its ``ctx.interrupt`` returns ``value``. A node that is
        not waiting is a UserError naming those that are; the first answer holds. A run that
        no live host holds (its cluster is gone) gets the answer in its checkpoint, and goes
        on with it once resumed (``wf.resume``)."""
        if self._ask("respond", node, value, by) is _GONE:
            answer_in_checkpoint(self._store(), self.run_id, node, value, by)

    def reopen(self, budget: Budget | None = None) -> bool:
        """Continue a failed or cancelled run from its last committed step (with ``budget``
        instead of its own, if given); False when the coordinator has exited."""
        return self._ask("reopen", budget) is not _GONE

    def _ask(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        """Call the run's host (or coordinator); a run handed over to another host (a
        drained one's) is followed there."""
        for _ in range(_FOLLOW):
            found = self._ask_once(method, *args, timeout=timeout)
            if found is not _MOVED:
                return found
        return _GONE

    def _ask_once(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        handle = self._handle
        if self._host is not None:  # a host holds many runs: say which
            handle, args = hosting.handle(self._host), (self.run_id, *args)
        ref = getattr(handle, method).remote(*args)
        try:
            return ray.get(ref, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            if method == "result":  # the call would wait on in the host, holding a slot
                ray.cancel(ref)
            raise
        except ray.exceptions.ActorDiedError:
            if self._host is None:
                return _GONE
            hosting.forget(self._host)  # killed for good: a later call makes it again
            # The host that holds the run now, maybe a new one of the same name (a drained
            # host's successor; or one made again, which resumes the runs recorded for it).
            return _MOVED if self._moved(wait=0.0, same=True) else _GONE
        except ray.exceptions.RayTaskError as exc:
            error = unwrap(exc)
            if isinstance(error, RunNotHosted):
                if isinstance(error, RunHandedOver):  # its successor is being recorded
                    return _MOVED if self._moved(wait=_HANDOVER, same=True) else _GONE
                return _MOVED if self._moved(wait=0.0, same=False) else _GONE
            raise error from None

    def _moved(self, wait: float, same: bool) -> bool:
        """Whether a host drives the run now, looked up for up to ``wait`` seconds (while
        a drained host's successor takes it over): another one, or with ``same`` maybe a
        new actor of the same name. The handle then calls that one."""
        deadline = time.monotonic() + wait
        while True:
            host = directory.find_host(self.run_id)  # only hosted handles ask
            if host is not None and (same or host != self._host):
                hosting.forget(host)  # not the handle of an actor of that name that is gone
                self._host = host
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)

    def _store(self) -> CheckpointStore:
        if self._checkpoint is None:
            raise UserError(
                f"the coordinator of run {self.run_id!r} has exited, and this handle does not "
                "know the run's checkpoint",
                hint="use the handle from wf.start / wf.resume, or `gecko-actors status RUN_ID "
                "--checkpoint URI`",
                run_id=self.run_id,
            )
        return CheckpointStore(self._checkpoint)


class Workflow(WorkflowGraph):
    """A workflow graph that runs durably on Ray.

    Example:
        >>> wf = Workflow("report").add_node("plan", planner).add_node("write", writer)
        >>> wf.add_edge("plan", "write")
        >>> run = wf.start("Ray in 2026", checkpoint="s3://bucket/runs")
        >>> run.result(timeout=600)
    """

    def start(
        self,
        input: Any,
        *,
        run_id: str | None = None,
        checkpoint: str | Path | None = None,
        dedicated: bool = False,
        budget: Budget | None = None,
        journal_models: bool | None = None,
    ) -> WorkflowRun:
        """Validate, create the run and return its handle once its host has it.

        The run is driven by a workflow host of this job (many runs per process: no process
        is started for it) unless ``dedicated=True``, which gives it a coordinator actor of
        its own (``workflow/<run_id>``). A run id that exists is a UserError, and of two
        starts of one run id only one makes the run. An input that cannot be checkpointed is
        a UserError before anything is stored.

        With ``budget``, every model call of the run (its agents', teams', nested runs', in
        any process) is reserved against it first: one that would go over it is refused
        before it is sent, and the run fails with ``BudgetExceededError`` (the finished
        nodes' outputs in ``.partial``), resumable with a larger budget. Its spend is in
        ``status()["spend"]`` and in the checkpoint.

        ``journal_models=True`` journals the run's model calls as well as its tool calls and
        steps (a visit run again gets the recorded responses, and the run can be replayed
        offline); by default, as the workflow says (``Workflow(..., journal_models=)``), else
        as the ``GECKO_JOURNAL_MODELS`` setting. The run keeps it when resumed.
        """
        self.validate()
        budget = checked_budget(budget, f"workflow run of {self.name!r}")
        normalised(input, "the run's input", self.entry or self.name)
        run_id = validate_run_id(run_id or f"{self.name}-{uuid.uuid4().hex[:12]}")
        uri = checkpoint_uri(checkpoint)
        graph = self._journaling(self.models_journaled(journal_models))
        if not dedicated:
            host = hosting.start(graph, run_id, uri, input, budget)
            return WorkflowRun(run_id, None, uri, host=host)
        if CheckpointStore(uri).read_manifest(run_id) is not None:
            raise already_exists(run_id, uri)
        return graph._coordinator(run_id, uri, input, budget)

    def _journaling(self, models: bool) -> Workflow:
        """This workflow with ``journal_models`` set to ``models``: the graph a host creates
        a run from records it in the run's manifest (a copy made once per shape, so that it
        is pickled once, like the workflow itself)."""
        if self.journal_models is models:
            return self
        shape = self.shape()
        found = _VARIANTS.setdefault(self, {}).get(models)
        if found is None or found[0] != shape:
            variant = copy.copy(self)  # shares its nodes and edges: one graph, two defaults
            variant.journal_models = models
            found = _VARIANTS[self][models] = (shape, variant)
        return found[1]

    def resume(
        self,
        run_id: str,
        *,
        checkpoint: str | Path | None = None,
        dedicated: bool | None = None,
        budget: Budget | None = None,
    ) -> WorkflowRun:
        """Continue a run from its last committed step (after its host, a node or the whole
        Ray instance was lost, or it failed or was cancelled); a finished run returns its
        stored result. ``dedicated`` defaults to how the run was started. ``budget``
        replaces the run's own (a run stopped by its budget goes on with a larger one; what
        it spent so far still counts).

        This workflow may be another version of the run's (``Workflow(name, version=...)``,
        or just a changed graph): the run goes on with it if it keeps what the run already
        did, and records it (see ``workflow/versions.py``); otherwise
        :class:`~gecko_actors.exceptions.IncompatibleVersion` names each change and nothing
        of the run is changed. Renamed nodes need :meth:`migrate` first."""
        self.validate()
        budget = checked_budget(budget, f"run {run_id!r}")
        uri = checkpoint_uri(checkpoint)
        store = CheckpointStore(uri)
        manifest = store.read_manifest(run_id)
        if manifest is None:
            raise no_such_run(run_id, uri)
        # Checked here, early, with a clear error (the engine that drives the run checks
        # again, and records the upgrade); the same graph and version cost one listing.
        admitted = admit(self, manifest, store, drive=False)
        if dedicated is None:
            dedicated = (manifest.host or "").startswith("workflow/")
        if not dedicated:
            host = hosting.resume(self, manifest, uri, budget)
            return WorkflowRun(run_id, None, uri, host=host)
        if admitted.changed and lookup(f"workflow/{run_id}") is not None:
            raise UserError(
                f"run {run_id!r} is held by its dedicated coordinator, with the graph it was "
                "opened with: it cannot take another version while it lives",
                hint="resume it hosted (dedicated=False), whose host takes it over, or once "
                "its coordinator has exited (GECKO_WORKFLOW_LINGER after the run ends)",
                run_id=run_id,
            )
        return self._coordinator(run_id, uri, manifest.input, budget)

    def migrate(
        self,
        run_id: str,
        renames: Mapping[str, str],
        *,
        checkpoint: str | Path | None = None,
    ) -> None:
        """Let run ``run_id`` go on with this version of the workflow although nodes it
        already ran were renamed: ``renames`` maps each old node name to its new one
        (``{"review": "check"}``). The run's steps of ``review`` then count as ``check``'s
        (not run again), and ``check`` finds what ``review`` journaled (``ctx.step``
        results, tool calls, interrupt answers). Then call :meth:`resume`: migrate does not
        drive the run, and needs no Ray (a deploy script can run it against the store).

        The mapped run must be compatible with this version like any resume. A bad mapping
        (an old name the run's graph lacks, a new name this graph lacks, two old names to
        one, an old name this graph still has) or an incompatible graph is a UserError
        (:class:`~gecko_actors.exceptions.IncompatibleVersion` for the latter) and nothing
        is written. Migrate a run that is not being driven (waiting, failed, cancelled, or
        whose cluster is gone). Blocking.

        Example:
            >>> wf_v3.migrate("report-1c9a2e", {"review": "check"}, checkpoint="s3://b/runs")
            >>> wf_v3.resume("report-1c9a2e", checkpoint="s3://b/runs")
        """
        self.validate()
        migrate_run(self, CheckpointStore(checkpoint_uri(checkpoint)), run_id, renames)

    def fork(
        self,
        parent: str,
        /,
        *,
        at_step: int,
        state: dict[str, Any] | None = None,
        input: Any = UNSET,
        node: str | None = None,
        run_id: str | None = None,
        checkpoint: str | Path | None = None,
        dedicated: bool = False,
        budget: Budget | None = None,
    ) -> WorkflowRun:
        """Start a new run (``run_id``, else ``<workflow>-<random>``) whose first ``at_step``
        steps are run ``parent``'s, and which goes on from there with this workflow (whose
        node functions may have changed, or another version compatible with the parent's
        first ``at_step`` steps: see :meth:`resume`). The parent's steps are
        read from its checkpoint, never copied, and the parent is never written to; a fork
        may be forked in turn.

        ``state`` is written to the run's state at the fork point (through the reducers);
        ``input`` replaces the input of the visit about to run there (``node`` names it when
        several are). ``history()`` shows the fork's lineage. The fork lives in the parent's
        checkpoint; a bad argument is a UserError before anything is stored.
        """
        self.validate()
        budget = checked_budget(budget, f"fork of run {parent!r}")
        uri = checkpoint_uri(checkpoint)
        store = CheckpointStore(uri)
        made = create_fork(
            self, store, parent, at_step, state=state, input=input, node=node, run_id=run_id
        )
        return self.resume(made.run_id, checkpoint=uri, dedicated=dedicated, budget=budget)

    def schedule(
        self,
        cron: str,
        input: Any = None,
        *,
        name: str | None = None,
        checkpoint: str | Path | None = None,
        timezone: str = "UTC",
        catch_up: str = "latest",
    ) -> ScheduleHandle:
        """Start a run with ``input`` at each tick of ``cron`` (five fields, or six with a
        leading seconds field, in IANA time zone ``timezone``), durably: the schedule is
        stored in the checkpoint store, and the cluster's scheduler actor (``gecko/scheduler``,
        one for all schedules) starts each run on a workflow host.

        Each tick's run id is ``<name>-<tick as UTC YYYYMMDDTHHMMSSZ>``, created only if
        absent: no tick starts twice, whatever restarts or races. ``catch_up`` says what
        fires after downtime: ``"latest"`` (the newest missed tick, once), ``"all"`` (every
        missed tick, oldest first, at most 100) or ``"skip"`` (none). ``name`` defaults to
        the workflow's; calling again with the same name updates the schedule (the same
        arguments change nothing, and its missed ticks still fire), and brings the scheduler
        back after the cluster was lost. A bad expression, time zone, name or input is a
        UserError before anything is stored. Returns its :class:`ScheduleHandle`.
        """
        self.validate()
        return schedule_workflow(
            self._journaling(self.models_journaled()),
            cron,
            input,
            name=name,
            uri=checkpoint_uri(checkpoint),
            timezone=timezone,
            catch_up=catch_up,
        )

    def _coordinator(
        self, run_id: str, uri: str, input: Any, budget: Budget | None = None
    ) -> WorkflowRun:
        for _ in range(2):  # twice: a finished run's coordinator may be exiting just then
            run = WorkflowRun(run_id, launch(self, run_id, uri, input, budget), uri)
            if run.reopen(budget):  # a failed or cancelled run continues
                return run
        return run
