"""What a function node sees: :class:`NodeContext`, with its durable effects, questions and
timers (no Ray, no I/O beyond the run's journal).

Each of ``step``, ``interrupt`` and ``sleep`` keeps what it must remember in the run's effect
journal (``checkpoint/journal.py``) under a key made of the visit's idempotency key, its kind
and how many of that kind the visit made before, so a visit run again (a retry, a restarted
host, a resume, a timer that fired) finds what its earlier runs recorded: a step's result, an
answer, a deadline. The first record of a key holds (create-if-absent), which is what makes a
timer fire once and an answer race with a timeout's default answer safely.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from gecko_actors.core.interrupt import NodeInterrupt
from gecko_actors.exceptions import UserError

__all__ = ["NodeContext"]


@dataclass
class NodeContext:
    """What a function node (and an edge condition) sees.

    ``input`` is the visit's input; ``outputs`` holds the latest output of each node in this
    visit's causal past (the nodes that, transitively, led to it). ``state`` is the node's own
    copy of the run's state as those nodes left it: what the node assigns, deletes or changes
    in it is its update, merged into the run's state when the step commits (see the README's
    state rules). ``idempotency_key`` is the same for every attempt of this visit, across
    restarts; in a map node each item (``item`` is its index) has its own. ``attempt`` counts
    from 1: a fencing token with which a side effect can refuse a stale attempt. ``step``
    (``astep`` in async code) runs a side effect once per visit, however often it runs;
    ``interrupt`` asks a human; ``sleep``/``sleep_until`` wait durably.
    """

    input: Any
    outputs: Mapping[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    run_id: str = ""
    node: str = ""
    visit: int = 0
    attempt: int = 1
    item: int | None = None
    journal: Any = field(default=None, repr=False, compare=False)  # the run's effect journal
    # Steps made so far per name (not an argument: each item of a map node counts its own).
    _steps: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def idempotency_key(self) -> str:
        key = f"{self.run_id}/{self.node}/{self.visit}"
        return key if self.item is None else f"{key}/{self.item}"

    # --- side effects once -------------------------------------------------------------

    def step(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, run once per visit: its result is journaled in the
        checkpoint, and a re-run of the visit (a retry, a restarted host, a resume) gets the
        recorded result without calling ``fn``. Steps are told apart by ``name`` and by how
        many steps of that name the visit made before (so a loop's steps are each their
        own). The result must be checkpointable. Blocking: in async code, ``await
        ctx.astep(...)``.

        Example:
            >>> receipt = ctx.step("charge", payments.charge, order_id, amount)
        """
        key, journal = self._key(f"step/{name}", f"ctx.step({name!r})")
        found = journal.get(key)
        if found is not journal.MISSING:
            return found
        return journal.put(key, fn(*args, **kwargs))

    async def astep(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """:meth:`step` in async code: ``fn`` may be async; the journal is read and written
        in a thread."""
        key, journal = self._key(f"step/{name}", f"ctx.step({name!r})")
        found = await asyncio.to_thread(journal.get, key)
        if found is not journal.MISSING:
            return found
        value = fn(*args, **kwargs)
        if inspect.isawaitable(value):
            value = await value
        return await asyncio.to_thread(journal.put, key, value)

    # --- questions ---------------------------------------------------------------------

    def interrupt(self, payload: Any, *, timeout: float | None = None, default: Any = None) -> Any:
        """Ask a human (or any outside party) and wait for the answer, parking this branch
        only: the first time, the node stops here, ``payload`` (checkpointable data: a
        question, a draft, a call to approve) shows in ``run.status()["waiting"]``, and
        every other branch keeps running. Once ``run.respond(node, answer)`` answers it,
        the node runs again from the top and this call returns the answer. Several
        interrupts in one node are answered in order. Blocking: in async code, ``await
        ctx.ainterrupt(...)``. Side effects before it run again: put them in :meth:`step`.

        With ``timeout`` (seconds, counted from the first time the node asked), ``default``
        is the answer once it passes without one: a durable timer (kept in the checkpoint,
        no process waits for it) runs the node again then, after a restart of its host or
        a resume too; an answer and the timeout never both count (the first recorded holds).

        Example:
            >>> approved = ctx.interrupt({"question": "send this mail?"}, timeout=86400,
            ...                          default=False)
        """
        key, journal = self._key("interrupt", "ctx.interrupt()")
        found = journal.get(key)
        if found is not journal.MISSING:
            return found["answer"]
        until = None
        if timeout is not None:
            until = _due(journal, f"{key}/deadline", _after(timeout, "timeout"))
            if time.time() >= until:
                return journal.put(key, _timed_out(default, payload))["answer"]
        raise NodeInterrupt(key, payload, until)

    async def ainterrupt(
        self, payload: Any, *, timeout: float | None = None, default: Any = None
    ) -> Any:
        """:meth:`interrupt` in async code (the journal is read in a thread)."""
        return await asyncio.to_thread(self.interrupt, payload, timeout=timeout, default=default)

    # --- durable timers ----------------------------------------------------------------

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` durably: the deadline is kept in the checkpoint the first time
        the node gets here, the branch parks (no thread, task or process waits; other
        branches go on; a run with nothing else to do says ``waiting``), and the node runs
        again from the top once it is due, when this call returns. It fires after a restart
        of its host, or on a resume after the whole cluster was lost: late then, never
        early and never twice. As with :meth:`interrupt`, put side effects before it in
        :meth:`step`. Blocking: in async code, ``await ctx.asleep(...)``.

        Example:
            >>> ctx.step("remind", send_reminder, user)
            >>> ctx.sleep(3 * 86400)  # then check again in three days
        """
        self.sleep_until(_after(seconds, "seconds"))

    def sleep_until(self, when: datetime | float) -> None:
        """:meth:`sleep` until ``when``: a timezone-aware ``datetime`` or epoch seconds."""
        key, journal = self._key("sleep", "ctx.sleep()")
        until = _due(journal, key, _instant(when))
        if time.time() < until:
            raise NodeInterrupt(key, {"sleep_until": _iso(until)}, until, answerable=False)

    async def asleep(self, seconds: float) -> None:
        """:meth:`sleep` in async code."""
        await self.asleep_until(_after(seconds, "seconds"))

    async def asleep_until(self, when: datetime | float) -> None:
        """:meth:`sleep_until` in async code (the journal is read in a thread)."""
        await asyncio.to_thread(self.sleep_until, when)

    def _key(self, kind: str, what: str) -> tuple[str, Any]:
        """The journal key of this visit's next ``kind`` (counted per kind), and the journal."""
        if self.journal is None:
            raise UserError(
                f"{what} was called outside a workflow run",
                hint="call it from a node of a run (wf.start): it is kept in the run's checkpoint",
                node=self.node,
            )
        count = self._steps.get(kind, 0) + 1
        self._steps[kind] = count
        return f"{self.idempotency_key}/{kind}/{count}", self.journal


def _due(journal: Any, key: str, until: float) -> float:
    """The deadline recorded under ``key``: ``until`` if this is the first time."""
    found = journal.get(key)
    if found is journal.MISSING:
        found = journal.put(key, {"until": until})  # the first deadline holds
    return float(found["until"])


def _timed_out(default: Any, payload: Any) -> dict[str, Any]:
    """The answer an interrupt gets when its timeout passes (``by`` says so)."""
    return {"answer": default, "by": "timeout", "at": time.time(), "payload": payload}


def _after(seconds: Any, what: str) -> float:
    """Now plus ``seconds`` (a finite number >= 0), else a UserError naming ``what``."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise UserError(
            f"{what} must be a number of seconds, got {type(seconds).__name__}",
            hint="give seconds as an int or a float, e.g. ctx.sleep(3600)",
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise UserError(f"{what} must be >= 0 and finite, got {seconds}")
    return time.time() + seconds


def _instant(when: Any) -> float:
    """``when`` (an aware datetime or epoch seconds) as epoch seconds."""
    if isinstance(when, datetime):
        if when.tzinfo is None:
            raise UserError(
                f"ctx.sleep_until() needs a timezone-aware datetime, got {when!r}",
                hint="e.g. datetime.now(timezone.utc) + timedelta(days=1), or epoch seconds",
            )
        return when.timestamp()
    if isinstance(when, bool) or not isinstance(when, int | float) or not math.isfinite(when):
        raise UserError(
            f"ctx.sleep_until() needs a datetime or epoch seconds, got {when!r}",
            hint="e.g. datetime.now(timezone.utc) + timedelta(days=1)",
        )
    return float(when)


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds")
