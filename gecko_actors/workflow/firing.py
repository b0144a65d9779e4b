"""The firer: starts the run of each due tick of the schedules in some checkpoint stores.
Ray-free: the scheduler actor (``workflow/scheduler_actor.py``) is its shell, and tests drive
it with a fake clock and a fake start.

:meth:`Firer.step` does one round: re-reads the stores when it is time (every
``refresh_every`` seconds, or when poked), fires what is due, and returns how long to sleep
until the next tick (or the next re-read). Its owner sleeps that long, on a timer that a
poke cuts short: no polling faster than the schedules need.

**Never twice.** A tick's run id is ``<schedule>-<tick>``, the same in every firer, and a
workflow host creates a run's manifest only if absent. So a firer that finds the run of a
tick counts the tick as fired; one whose start fails and then finds the run (another firer
won the race) counts it too. Two firers, a retried fire or a restarted firer start each tick
at most once. Before firing, the schedule is read again, so a pause, an update or a deletion
made anywhere holds from then on.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gecko_actors.checkpoint import CheckpointStore
from gecko_actors.checkpoint.schedules import Fired, Schedule, ScheduleBook
from gecko_actors.exceptions import GeckoError
from gecko_actors.logging import get_logger

__all__ = ["RETRY_MAX", "RETRY_MIN", "Firer", "StartRun"]

_log = get_logger("gecko_actors.workflow")
#: ``start(uri, schedule, run_id)``: start the run (a manifest created only if absent); any
#: exception means it did not (unless the run exists: see the module's docstring).
StartRun = Callable[[str, Schedule, str], Any]
#: Seconds before a tick whose start failed is tried again (doubled up to RETRY_MAX).
RETRY_MIN = 5.0
RETRY_MAX = 600.0


@dataclass
class _Known:
    """What the firer knows of one schedule: as last read, and when it is due."""

    schedule: Schedule
    cursor: int | None
    next_tick: int | None  # the first tick not handled (in the past: due); None: never/paused
    retry_at: float = 0.0  # a failed start: not before then
    failures: int = 0


class Firer:
    """Fires the schedules of the stores it watches.

    Args:
        start: starts one run (see :data:`StartRun`); called from :meth:`step`'s thread.
        clock: the time, in seconds since the epoch (``time.time``; a fake one in tests).
        refresh_every: seconds between two readings of the stores (to see the schedules
            that other drivers added, changed or deleted).
        stores: makes the store of a URI (``CheckpointStore``).
    """

    def __init__(
        self,
        start: StartRun,
        *,
        clock: Callable[[], float] = time.time,
        refresh_every: float = 60.0,
        stores: Callable[[str], CheckpointStore] = CheckpointStore,
    ) -> None:
        self.start = start
        self.clock = clock
        self.refresh_every = refresh_every
        self._stores = stores
        # watch and poke come from the actor's loop while a round runs in a thread: they only
        # leave word (under _lock), which the next round reads; _round guards what it owns.
        self._lock = threading.Lock()
        self._round = threading.Lock()
        self._uris: list[str] = []
        self._stale = True
        self._retry_now = False
        self._books: dict[str, ScheduleBook] = {}
        self._known: dict[tuple[str, str], _Known] = {}
        self._read_at = -math.inf
        self.started: list[str] = []  # the run ids this firer started (most recent last)

    def __repr__(self) -> str:
        return f"Firer({len(self._uris)} stores, {len(self._known)} schedules)"

    def watch(self, uri: str) -> bool:
        """Fire the schedules of store ``uri`` too; True if it was not watched yet. The stores
        are read again at the next step either way."""
        with self._lock:
            new = uri not in self._uris
            if new:
                self._uris.append(uri)
            self._stale = True
        return new

    def poke(self) -> None:
        """Read the stores again at the next step, and try failed starts again then."""
        with self._lock:
            self._stale = self._retry_now = True

    @property
    def uris(self) -> list[str]:
        """The stores watched."""
        with self._lock:
            return list(self._uris)

    def schedules(self) -> dict[tuple[str, str], tuple[Schedule, int | None, int | None]]:
        """What the firer knows: (store, name) -> (schedule, cursor, next tick)."""
        with self._round:
            return {key: (k.schedule, k.cursor, k.next_tick) for key, k in self._known.items()}

    # --- a round ------------------------------------------------------------------------

    def step(self) -> float:
        """One round: re-read the stores if it is time, fire what is due; returns the seconds
        until the next round is needed."""
        with self._round:
            now = self.clock()
            with self._lock:
                stale, self._stale = self._stale, False
                retry_now, self._retry_now = self._retry_now, False
            if stale or now - self._read_at >= self.refresh_every:
                self._refresh(now)
            for key in sorted(self._known, key=lambda key: self._known[key].next_tick or 0):
                known = self._known.get(key)
                if known is not None and retry_now:
                    known.retry_at = 0.0
                if known is not None and self._is_due(known, now):
                    try:
                        self._fire(*key, self.clock())
                    except Exception as exc:  # one broken schedule must not stall the others
                        self._failed(*key, None, self.clock(), exc)
            return self._delay(self.clock())

    def _delay(self, now: float) -> float:
        """Seconds from ``now`` until the earliest tick to fire (or failed start to retry),
        at most until the next reading of the stores."""
        wake = self._read_at + self.refresh_every
        for known in self._known.values():
            if known.next_tick is not None and not known.schedule.paused:
                wake = min(wake, max(known.next_tick, known.retry_at))
        return max(0.0, wake - now)

    def _refresh(self, now: float) -> None:
        """Read every watched store's schedules (a store that cannot be read keeps what was
        known of it)."""
        self._read_at = now
        for uri in self.uris:
            try:
                found = self._book(uri).load_all()
            except GeckoError as exc:
                _log.warning("could not read the schedules of a store", uri=uri, error=str(exc))
                continue
            for key in [key for key in self._known if key[0] == uri and key[1] not in found]:
                del self._known[key]  # deleted
            for schedule, fired in found.values():
                self._learn(uri, schedule, fired)

    # --- firing -------------------------------------------------------------------------

    def _is_due(self, known: _Known, now: float) -> bool:
        if known.schedule.paused or known.next_tick is None:
            return False
        return known.next_tick <= now and known.retry_at <= now

    def _learn(self, uri: str, schedule: Schedule, fired: Fired | None) -> _Known:
        cursor = None if fired is None else fired.tick
        old = self._known.get((uri, schedule.name))
        known = _Known(schedule, cursor, None if schedule.paused else schedule.next_tick(cursor))
        if old is not None:  # a failing start keeps its back-off across readings
            known.retry_at, known.failures = old.retry_at, old.failures
        self._known[(uri, schedule.name)] = known
        return known

    def _fire(self, uri: str, name: str, now: float) -> None:
        """Fire schedule ``name``'s due ticks, read afresh (a pause or a deletion made
        anywhere holds); a failed start is tried again after a back-off."""
        book = self._book(uri)
        try:
            schedule, fired = book.load(name)
        except GeckoError as exc:
            self._failed(uri, name, None, now, exc)
            return
        if schedule is None:
            self._known.pop((uri, name), None)
            return
        known = self._learn(uri, schedule, fired)
        due = schedule.due(known.cursor, now)
        if due.capped:
            _log.warning(
                "schedule missed more ticks than catch_up='all' fires: the oldest are skipped",
                schedule=name,
                uri=uri,
            )
        last: tuple[int, str] | None = None
        for tick in due.fire:
            run_id = schedule.run_id(tick)
            try:
                self._start_once(book.store, uri, schedule, run_id)
            except Exception as exc:
                if last is not None:  # what did start stays handled
                    self._advance(book, known, *last)
                self._failed(uri, name, run_id, now, exc)
                return
            last = (tick, run_id)
        if due.handled is not None:
            self._advance(book, known, due.handled, None if last is None else last[1])
        known.failures, known.retry_at = 0, 0.0
        if known.next_tick is not None and known.next_tick <= now:
            # Nothing could be handled (a clock behind the one that changed the schedule):
            # look again a little later rather than at once, forever.
            known.retry_at = now + RETRY_MIN

    def _start_once(
        self, store: CheckpointStore, uri: str, schedule: Schedule, run_id: str
    ) -> None:
        """Start ``run_id`` unless it exists (fired before, here or by another firer)."""
        if store.read_manifest(run_id) is not None:
            return
        try:
            self.start(uri, schedule, run_id)
        except Exception:
            if store.read_manifest(run_id) is not None:
                return  # another firer created it first: the tick is fired, once
            raise
        self.started.append(run_id)
        del self.started[:-1000]
        _log.info("schedule fired", schedule=schedule.name, run_id=run_id, uri=uri)

    def _advance(self, book: ScheduleBook, known: _Known, tick: int, run_id: str | None) -> None:
        try:
            stored = book.record_fired(known.schedule.name, tick, run_id)
        except Exception as exc:  # the runs exist: a later round finds them and moves on
            _log.warning("could not record a schedule's cursor", schedule=known.schedule.name,
                         error=str(exc))  # fmt: skip
            stored = Fired(tick, run_id, self.clock())
        known.cursor = max(stored.tick, tick)
        known.next_tick = known.schedule.next_tick(known.cursor)

    def _failed(
        self, uri: str, name: str, run_id: str | None, now: float, exc: BaseException
    ) -> None:
        known = self._known.get((uri, name))
        delay = RETRY_MIN
        if known is not None:
            known.failures += 1
            delay = min(RETRY_MAX, RETRY_MIN * 2 ** (known.failures - 1))
            known.retry_at = now + delay
        _log.warning(
            "a scheduled run did not start: it is tried again",
            schedule=name,
            run_id=run_id,
            uri=uri,
            retry_in=delay,
            error=str(exc),
        )

    def _book(self, uri: str) -> ScheduleBook:
        if uri not in self._books:
            self._books[uri] = ScheduleBook(self._stores(uri))
        return self._books[uri]
