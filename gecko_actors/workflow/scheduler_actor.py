"""The scheduler: one small detached actor per cluster (``gecko/scheduler``) that starts the
runs of every schedule of the stores it watches, at their ticks; the shell of a
:class:`~gecko_actors.workflow.firing.Firer`.

It costs one process for all schedules, and sleeps until the earliest tick (an asyncio timer
that a ``watch`` or ``poke`` cuts short), reading its stores again every
``REFRESH_EVERY`` seconds to see the schedules other drivers made. The stores it watches
are kept in the cluster's key-value store, so Ray's restart of it (``max_restarts=-1``) finds
them; every ``wf.schedule(...)`` registers its store again, which brings the scheduler back
after the whole cluster was lost (it then fires the missed ticks by their catch-up policy).

A run starts through the hosted start path, from a graph key (the pickled graph that the
scheduling driver kept in the directory) or the schedule's ``module:attr`` target: the
scheduler never unpickles nor imports a workflow itself. Its runs go to the workflow hosts of
the scheduler's own code environment (that of the job that made it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from typing import Any

import msgpack
import ray
from ray.experimental import internal_kv

from gecko_actors._actors.common import lookup, singleton
from gecko_actors.checkpoint.schedules import Schedule
from gecko_actors.exceptions import WorkflowError
from gecko_actors.logging import get_logger
from gecko_actors.workflow import hosting
from gecko_actors.workflow.firing import Firer
from gecko_actors.workflow.host import GraphRef

__all__ = [
    "REFRESH_EVERY",
    "SCHEDULER",
    "SchedulerActor",
    "forget_graph",
    "keep_graph",
    "poke",
    "scheduler",
    "watch",
]

_log = get_logger("gecko_actors.workflow")
#: The scheduler's actor name (in the gecko_actors namespace).
SCHEDULER = "gecko/scheduler"
#: Seconds between two readings of the watched stores (schedules made by other drivers).
REFRESH_EVERY = 60.0
_IDLE = 0.05  # the shortest sleep between rounds: a round that finds work sleeps no less


class SchedulerActor:
    """The scheduler's actor: a firer, and the timer it sleeps on."""

    def __init__(self) -> None:
        # Its blocking calls (a start waits for the host) run in threads, never in the event
        # loop: Ray's warning about ray.get in an async actor does not apply.
        os.environ.setdefault("RAY_WARN_BLOCKING_GET_INSIDE_ASYNC", "0")
        self.firer = Firer(_start_tick, refresh_every=REFRESH_EVERY)
        for uri in _watched():  # what we watched before Ray restarted us
            self.firer.watch(uri)
        self.wake = asyncio.Event()
        self.looping = False
        ray.get_runtime_context().current_actor.loop.remote()

    def __repr__(self) -> str:
        # The dashboard's Repr column (Ray reads it once, after the constructor).
        return f"Scheduler({len(self.firer.uris)} stores)"

    async def loop(self) -> None:
        """Fire due ticks, then sleep until the next one (or a poke); forever. Called once
        by the constructor (a retried call after a restart finds it running)."""
        if self.looping:
            return
        self.looping = True
        while True:
            self.wake.clear()  # before the round: a poke during it makes another one
            try:
                delay = await asyncio.to_thread(self.firer.step)
            except Exception as exc:  # a round that fails must not stop the schedules
                _log.warning("a scheduler round failed", error=str(exc))
                delay = 10.0
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wake.wait(), max(delay, _IDLE))

    async def watch(self, uri: str) -> None:
        """Fire the schedules of store ``uri`` too (recorded for a restart), reading it now
        and retrying failed starts (a driver may just have supplied a missing graph)."""
        await asyncio.to_thread(_remember, uri)
        self.firer.watch(uri)
        self.firer.poke()
        self.wake.set()

    def poke(self) -> None:
        """Read the stores again now (a schedule changed), and retry failed starts."""
        self.firer.poke()
        self.wake.set()

    async def summary(self) -> dict[str, Any]:
        """What the scheduler knows: the stores, each schedule's cursor and next tick, and the
        last runs it started."""
        known = await asyncio.to_thread(self.firer.schedules)
        return {
            "stores": self.firer.uris,
            "schedules": {
                f"{uri} {name}": {"cursor": cursor, "next_tick": next_tick, "paused": s.paused}
                for (uri, name), (s, cursor, next_tick) in known.items()
            },
            "started": self.firer.started[-20:],
        }


# --- the driver's side ---------------------------------------------------------------------


def scheduler() -> Any:
    """The scheduler's handle, made if it does not exist."""
    return singleton(SchedulerActor, SCHEDULER)


def watch(uri: str) -> None:
    """Have the scheduler (made if need be) fire the schedules of store ``uri``."""
    ray.get(scheduler().watch.remote(uri))


def poke() -> None:
    """Tell a live scheduler that schedules changed; nothing without Ray or a scheduler."""
    if not ray.is_initialized():
        return
    with contextlib.suppress(Exception):  # best effort: it reads its stores every minute
        found = lookup(SCHEDULER)
        if found is not None:
            found.poke.remote()


def keep_graph(uri: str, name: str, code: GraphRef) -> None:
    """Keep ``code``'s pickled graph in the cluster for schedule ``name`` of store ``uri``:
    its runs start from it (the schedule's target is the fallback once the cluster is gone)."""
    from gecko_actors.workflow import directory

    if code.blob is not None:
        directory.store_graph(code.key, code.blob)
    internal_kv._internal_kv_put(
        _graph_key(uri, name), msgpack.packb({"key": code.key}), overwrite=True, namespace=_space()
    )


def forget_graph(uri: str, name: str) -> None:
    """Schedule ``name`` of store ``uri`` is gone: drop its graph key."""
    if ray.is_initialized():
        internal_kv._internal_kv_del(_graph_key(uri, name), namespace=_space())


# --- the cluster's key-value store ---------------------------------------------------------


def _space() -> str:
    # Per Ray namespace, as the actor's name is (no colon: Ray splits keys at the first).
    return f"gecko_schedules-{ray.get_runtime_context().namespace}"


def _digest(uri: str) -> str:
    return hashlib.sha256(uri.encode()).hexdigest()[:32]


def _graph_key(uri: str, name: str) -> str:
    return f"graphs/{_digest(uri)}/{name}"


def _remember(uri: str) -> None:
    internal_kv._internal_kv_put(
        f"stores/{_digest(uri)}", uri.encode(), overwrite=True, namespace=_space()
    )


def _watched() -> list[str]:
    keys = internal_kv._internal_kv_list("stores/", namespace=_space())
    found = (internal_kv._internal_kv_get(key, namespace=_space()) for key in keys)
    return sorted(raw.decode() for raw in found if raw is not None)


def _start_tick(uri: str, schedule: Schedule, run_id: str) -> None:
    """Start the run of one tick on a workflow host: from the graph the scheduling driver
    kept in the cluster, else from the schedule's target."""
    raw = internal_kv._internal_kv_get(_graph_key(uri, schedule.name), namespace=_space())
    key = None if raw is None else msgpack.unpackb(raw)["key"]
    if key is None and schedule.target is None:
        raise WorkflowError(
            f"schedule {schedule.name!r} has no workflow to start: the cluster that kept it "
            "is gone, and it has no target",
            hint="call wf.schedule(...) again from a driver, or load the workflow from a "
            "module:attr target (gecko_actors.workflow.target.load_workflow) before "
            "scheduling it",
            run_id=run_id,
        )
    if key is None:  # a key naming the target's code, as hosts cache graphs by key
        key = "target-" + hashlib.sha256(str(schedule.target).encode()).hexdigest()[:32]
    hosting.start_code(GraphRef(key, None, schedule.target), run_id, uri, schedule.input)
