"""One run driven in this process: its engine, its events and its outcome, as both a workflow
host (many runs) and a dedicated coordinator (one run) keep it.

A handle's calls (``result``, ``status``, ``events``, ``cancel``, ``reopen``) are answered
here; which actor holds the run, and what happens once it has ended, is the actor's business.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gecko_actors.checkpoint.index import IndexEntry
from gecko_actors.core.budget import Budget
from gecko_actors.exceptions import WorkflowError
from gecko_actors.logging import get_logger
from gecko_actors.workflow.engine import RunEngine
from gecko_actors.workflow.status import run_status

_log = get_logger("gecko_actors.workflow")
_RETRY_WAKE = 10.0  # seconds before a timer whose run could not be driven tries again


class RunNotHosted(WorkflowError):
    """The host does not hold the run (it ended and was dropped, or it never was here): the
    handle answers from the checkpoint."""

    error_code = "run_not_hosted"


class RunHandedOver(RunNotHosted):
    """The host let the run go (it drains): another host of its pool takes it over from the
    checkpoint, and the handle follows it there."""

    error_code = "run_handed_over"


class DrivenRun:
    """The live side of one run; ``open`` it (blocking), then ``drive`` it in the loop."""

    def __init__(self, run_id: str, host: str | None = None) -> None:
        self.run_id = run_id
        self.host = host
        self.events: list[dict[str, Any]] = []
        self.done = asyncio.Event()
        self.engine: RunEngine | None = None
        self._task: asyncio.Task[Any] | None = None
        self.on_end: Callable[[bool], Any] | None = None  # awaited after each drive
        # Awaited when a timer of the waiting run is due: its holder drives it again.
        self.on_wake: Callable[[], Awaitable[Any]] | None = None
        self._alarm: asyncio.TimerHandle | None = None
        self._reopened: asyncio.Task[Any] | None = None
        self.settled = asyncio.Event()  # no drive is under way (set again after on_end)
        self.settled.set()
        self.entry: dict[str, Any] = {}  # what a host needs to resume it (uri, graph, target)

    def open(
        self,
        make_engine: Callable[[Callable[..., None]], RunEngine],
        input: Any,
        created_at: float | None = None,
        host: str | None = None,
        create: bool = True,
        budget: Budget | None = None,
    ) -> str:
        """Create the engine (given our event sink) and open the run (see
        ``RunEngine.open``); returns its stored status. Blocking: it may read the checkpoint."""
        engine = make_engine(self.event)
        manifest = engine.open(
            input, created_at=created_at, host=host, create=create, budget=budget
        )
        # A waiting run is driven again (as running): its parked nodes park again, so that
        # they can be answered; until then it says running.
        status = "running" if manifest.status == "waiting" else manifest.status
        engine.outcome, engine.value = status, manifest.result
        self.engine = engine
        if status != "running":
            self.done.set()
        return status

    @property
    def manifest(self) -> Any:
        """The run's manifest, as opened."""
        assert self.engine is not None
        return self.engine.manifest

    @property
    def driving(self) -> bool:
        """True while a drive is under way."""
        return self._task is not None

    async def drive(self) -> bool:
        """Drive the run to its end (nothing when it is being driven or is over); True when
        its outcome is stored. The drive counts as under way until ``on_end`` has run."""
        if self._task is not None or self.done.is_set() or self.engine is None:
            return False
        self._task = asyncio.current_task()
        self.settled.clear()
        self._disarm()
        durable = False
        try:
            durable = await self.engine.run()
        finally:
            if self.engine.outcome != "waiting":  # a waiting run has not ended
                self.done.set()
            try:
                if self.on_end is not None:
                    await self.on_end(durable)
            finally:
                self._task = None
                self.settled.set()
                self._arm()
        return durable

    def _arm(self) -> None:
        """Have the holder drive the run again when its earliest timer is due (a waiting
        run's; a restarted holder arms it again when its drive parks the nodes again)."""
        due = self.engine.next_wake() if self.engine is not None else None
        if due is None or self.engine.outcome != "waiting" or self.on_wake is None:
            return
        self._disarm()
        delay = max(0.0, due - time.time())
        self._alarm = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self._alarm = None
        keep_alive(asyncio.ensure_future(self._wake()))

    async def _wake(self) -> None:
        assert self.on_wake is not None
        try:
            await self.on_wake()
        except Exception as exc:  # the storage is down, say: try again a little later
            _log.warning(
                "a timer could not drive its run again", run_id=self.run_id, error=str(exc)
            )
            if self._alarm is None and not self.driving:
                self._alarm = asyncio.get_running_loop().call_later(_RETRY_WAKE, self._fire)

    def _disarm(self) -> None:
        if self._alarm is not None:
            self._alarm.cancel()
            self._alarm = None

    async def reopen(self, budget: Budget | None = None) -> bool:
        """Drive a failed, cancelled or waiting run again from its last committed step (with
        ``budget`` instead of its own, if given), once the last drive's end is recorded;
        returns once the new drive has begun (``status`` says running). False for a run
        that is running or succeeded."""
        engine = self.engine
        if engine is None or engine.outcome in ("running", "succeeded"):
            return False  # being driven (never wait for that), or done for good
        await self.settled.wait()  # a drive that just failed: its end is being recorded
        if self._task is not None or engine.outcome in ("running", "succeeded"):
            return False
        if budget is not None:
            engine.spend.budget = budget
        if self._reopened is not None and not self._reopened.done():
            return False  # another reopen just began it
        self.events = []  # the stream of this drive, as a new coordinator's would be
        self.done.clear()
        self._reopened = asyncio.create_task(self.drive())  # held: the loop keeps weak refs
        while self._task is None and not self.done.is_set():
            await asyncio.sleep(0)
        return True

    async def result(self) -> Any:
        """The run's result once it ended; its error if it failed or was cancelled."""
        await self.done.wait()
        engine = self.engine
        assert engine is not None
        if engine.outcome == "succeeded":
            return engine.value
        if engine.failure is not None:
            raise engine.failure
        manifest = engine.manifest
        error = f": {manifest.error}" if manifest.error else ""
        raise WorkflowError(
            f"workflow run {self.run_id!r} {engine.outcome}{error}",
            hint="resume it with wf.resume(run_id, checkpoint=...)",
            run_id=self.run_id,
        )

    def status(self) -> dict[str, Any]:
        """What ``WorkflowRun.status`` answers while the run is here."""
        engine = self.engine
        assert engine is not None
        over = self.done.is_set() or engine.outcome == "waiting"
        status = engine.outcome if over else "running"
        error = str(engine.failure) if engine.failure else engine.manifest.error
        steps, nodes = engine.sched.steps, dict(engine.nodes)
        tokens = sum(usage.total_tokens for usage in engine.committed_usage)
        spend = engine.spend.status()
        found = run_status(engine.manifest, status, steps, nodes, error, spend, tokens)
        return {**found, "waiting": engine.waiting.status(), "timers": engine.waiting.timers()}

    def events_since(self, index: int) -> tuple[list[dict[str, Any]], bool]:
        """The events from ``index`` on, and whether the run has ended."""
        return self.events[index:], self.done.is_set()

    async def cancel(self) -> None:
        """Stop the run; returns once its running attempts have stopped."""
        engine = self.engine
        if engine is not None and engine.outcome == "waiting":
            await self.settled.wait()  # a drive that just parked is still recording its end
        if engine is not None and engine.outcome == "waiting" and not self.driving:
            self._disarm()
            await engine.give_up()  # nothing runs: only its status changes
            self.done.set()
            if self.on_end is not None:  # its holder lets it go, as after a drive
                await self.on_end(True)
        elif engine is not None:
            engine.cancel()
        await self.done.wait()

    async def release(self, host: str) -> bool:
        """Stop driving the run and let it go, recording nothing (``RunEngine.release``):
        another host takes it over from its checkpoint. Callers waiting for its result here
        are told it is not hosted here any more (a handle then finds its new host). False
        when the run ended here first."""
        engine = self.engine
        if engine is None or self.done.is_set():
            return False
        self._disarm()
        if self.driving:
            engine.release()
            await self.settled.wait()
        if engine.outcome not in ("released", "running", "waiting"):
            return False  # it ended here just before it was stopped
        engine.outcome = "released"
        engine.failure = RunHandedOver(
            f"run {self.run_id!r} was handed over by host {host}", run_id=self.run_id
        )
        self.done.set()
        return True

    async def respond(self, node: str, value: Any, by: str | None = None) -> bool:
        """Answer ``node``'s interrupt; True when the drive under way takes the answer,
        False when the run must be driven again (``reopen``) for it."""
        assert self.engine is not None
        return await self.engine.respond(node, value, by)

    def index_entry(self, status: str) -> IndexEntry:
        """The run's entry in its store's run index, now."""
        m = self.manifest
        return IndexEntry(self.run_id, m.workflow, status, m.created_at, time.time(), self.host)

    def event(self, kind: str, **data: Any) -> None:
        """The engine's event sink: kept for handles, and logged."""
        self.events.append({"type": kind, "run_id": self.run_id, "time": time.time(), **data})
        _log.info(kind, run_id=self.run_id, **{k: v for k, v in data.items() if k != "error"})


_BACKGROUND: set[asyncio.Future[Any]] = set()


def keep_alive(future: asyncio.Future[Any]) -> None:
    """Hold a reference to a background task until it ends (the loop holds only a weak
    one): a run's drive, a timer's wake, an index flush."""
    _BACKGROUND.add(future)
    future.add_done_callback(_BACKGROUND.discard)
