"""Recurring runs: ``Workflow.schedule(cron, input)`` stores a schedule in the checkpoint
store and has the cluster's scheduler start a run of the workflow at each tick; the
:class:`ScheduleHandle` reads, pauses, resumes and deletes it.

A schedule is data in the store (``.schedules/<name>/``, see
:mod:`gecko_actors.checkpoint.schedules`): it outlives every process and the cluster itself,
and costs no process of its own while it waits. Each tick's run id is
``<name>-<tick as UTC YYYYMMDDTHHMMSSZ>`` and a run's manifest is created only if absent, so
no tick ever starts twice (see :mod:`gecko_actors.workflow.firing`).
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from gecko_actors.checkpoint import CheckpointStore
from gecko_actors.checkpoint.index import RunIndex
from gecko_actors.checkpoint.schedules import (
    Fired,
    Schedule,
    ScheduleBook,
    check_schedule,
    check_schedule_name,
    tick_of,
)
from gecko_actors.exceptions import UserError
from gecko_actors.runtime import ensure_initialized
from gecko_actors.workflow import hosting, scheduler_actor
from gecko_actors.workflow.graph import WorkflowGraph
from gecko_actors.workflow.rules import normalised

__all__ = ["Schedule", "ScheduleHandle", "describe_schedule", "list_schedules", "schedule_workflow"]


def schedule_workflow(
    graph: WorkflowGraph,
    cron: str,
    input: Any,
    *,
    name: str | None,
    uri: str,
    timezone: str,
    catch_up: str,
) -> ScheduleHandle:
    """Store schedule ``name`` (default: the workflow's name) of ``graph`` in store ``uri``
    and have the scheduler fire it (see ``Workflow.schedule``). Every argument is checked
    before anything is stored or started."""
    if name is None and not _named(graph.name):
        raise UserError(
            f"workflow {graph.name!r} cannot name its schedule",
            hint="pass name= (1-100 letters, digits, '_', '.' or '-')",
        )
    name = check_schedule_name(graph.name if name is None else name)
    value = normalised(input, f"the input of schedule {name!r}", graph.entry or graph.name)
    now = time.time()
    wanted = check_schedule(
        Schedule(name, cron, graph.name, value, timezone, graph.target, catch_up, now, now)
    )
    code = hosting.packed(graph)  # a graph that cannot be pickled fails before any write
    ensure_initialized()
    book = ScheduleBook(CheckpointStore(uri))
    existing, _ = book.load(name)
    if existing is not None:
        if existing.workflow != graph.name:
            raise UserError(
                f"schedule {name!r} in {uri} starts workflow {existing.workflow!r}, not "
                f"{graph.name!r}",
                hint="pick another name=, or delete that schedule first "
                f"(`gecko-actors schedules --checkpoint URI --delete {name}`)",
            )
        # The same call again (a driver that starts anew, after a cluster loss) changes
        # nothing: its missed ticks still fire. A new cron or time zone counts from now.
        same_timing = (existing.cron, existing.timezone) == (wanted.cron, wanted.timezone)
        wanted = dataclasses.replace(
            wanted,
            created_at=existing.created_at,
            updated_at=existing.updated_at if same_timing else now,
            paused=existing.paused,  # a pause is an operator's: only resume() lifts it
        )
    if wanted != existing:
        book.save(wanted)
    scheduler_actor.keep_graph(uri, name, code)
    scheduler_actor.watch(uri)
    return ScheduleHandle(name, uri)


class ScheduleHandle:
    """A schedule in a checkpoint store: ``next_fire_times``, ``runs``, ``pause``,
    ``resume``, ``delete``, ``info``. Any process can make one (``ScheduleHandle(name,
    checkpoint)``); reading needs no Ray.

    Example:
        >>> daily = wf.schedule("0 6 * * *", {"report": "daily"}, name="daily-report")
        >>> daily.next_fire_times(3)
        >>> daily.runs()          # ['daily-report-20261201T060000Z', ...]
        >>> daily.pause(); daily.resume(); daily.delete()
    """

    def __init__(self, name: str, checkpoint: str | Path | None = None) -> None:
        from gecko_actors.workflow.run import checkpoint_uri  # run.py imports this module

        self.name = check_schedule_name(name)
        self.checkpoint = checkpoint_uri(checkpoint)

    def __repr__(self) -> str:
        return f"ScheduleHandle({self.name!r}, {self.checkpoint!r})"

    @property
    def schedule(self) -> Schedule:
        """The schedule as stored now (a UserError if it was deleted)."""
        return self._load()[0]

    def info(self) -> dict[str, Any]:
        """``name``, ``workflow``, ``cron``, ``timezone``, ``catch_up``, ``paused``,
        ``target``, ``input``, ``created_at``, ``next_fire`` (a datetime in its time zone;
        None if paused), ``last_tick`` (the newest tick handled) and ``last_run``."""
        return describe_schedule(*self._load())

    def next_fire_times(self, n: int = 5) -> list[datetime]:
        """The next ``n`` times it fires, as datetimes in its time zone ([] while paused)."""
        if type(n) is not int or n < 0:
            raise UserError(f"n must be an int >= 0, got {n!r:.40}")
        return self.schedule.next_fire_times(n)

    def runs(self) -> list[str]:
        """The ids of the runs it started, oldest first: read from the store's run index
        (which hosts write in batches, a moment after a run starts), or from its run folders
        when the store has no index."""
        store = CheckpointStore(self.checkpoint)
        schedule, _ = ScheduleBook(store).load(self.name)
        entries = RunIndex(store).read()
        if entries:
            found = [
                run_id
                for run_id, entry in entries.items()
                if schedule is None or entry.workflow == schedule.workflow
            ]
        else:
            found = store.list_runs()
        return sorted(run_id for run_id in found if tick_of(self.name, run_id) is not None)

    def pause(self) -> None:
        """Start no run until :meth:`resume` (a run already started goes on)."""
        schedule, _ = self._load()
        if not schedule.paused:
            self._book().save(dataclasses.replace(schedule, paused=True))
            scheduler_actor.poke()

    def resume(self) -> None:
        """Fire again, from the next tick on: the ticks that passed while it was paused are
        not caught up. With Ray connected, the scheduler is made if it is gone."""
        schedule, _ = self._load()
        if schedule.paused:
            resumed = dataclasses.replace(schedule, paused=False, updated_at=time.time())
            self._book().save(resumed)
        self._wake()

    def delete(self) -> bool:
        """Delete the schedule (its runs stay); False if there was none."""
        existed = self._book().delete(self.name)
        scheduler_actor.forget_graph(self.checkpoint, self.name)
        scheduler_actor.poke()
        return existed

    def _wake(self) -> None:
        import ray

        if ray.is_initialized():  # (re)start the scheduler on this store
            scheduler_actor.watch(self.checkpoint)

    def _book(self) -> ScheduleBook:
        return ScheduleBook(CheckpointStore(self.checkpoint))

    def _load(self) -> tuple[Schedule, Fired | None]:
        schedule, fired = self._book().load(self.name)
        if schedule is None:
            raise UserError(
                f"no schedule {self.name!r} in {self.checkpoint}",
                hint="list them with `gecko-actors schedules --checkpoint URI`",
            )
        return schedule, fired


def describe_schedule(
    schedule: Schedule, fired: Fired | None, now: float | None = None
) -> dict[str, Any]:
    """A schedule as plain fields, with its next fire time and its cursor (see
    :meth:`ScheduleHandle.info`)."""
    upcoming = schedule.next_fire_times(1, now)
    return {
        "name": schedule.name,
        "workflow": schedule.workflow,
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "catch_up": schedule.catch_up,
        "paused": schedule.paused,
        "target": schedule.target,
        "input": schedule.input,
        "created_at": schedule.created_at,
        "next_fire": upcoming[0] if upcoming else None,
        "last_tick": None if fired is None else fired.tick,
        "last_run": None if fired is None else fired.run_id,
    }


def list_schedules(checkpoint: str) -> list[dict[str, Any]]:
    """Every schedule of store ``checkpoint`` (a URI), described, by name."""
    found = ScheduleBook(CheckpointStore(checkpoint).marking()).load_all()  # no key needed
    now = time.time()
    return [describe_schedule(schedule, fired, now) for schedule, fired in found.values()]


def _named(name: str) -> bool:
    try:
        check_schedule_name(name)
    except UserError:
        return False
    return True
