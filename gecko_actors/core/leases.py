"""A gateway replica's side of the cluster-wide rate limit: permits leased in batches.

Asking the limiter actor before every request costs a round trip per request, and at
thousands of requests per second that one actor is the ceiling. A :class:`PermitPool` asks
once for every call waiting at that moment, plus as many permits as its calls used over the
last ``hold`` seconds (what it will likely need before a new permit could arrive), and
settles the calls' real usage and gives back unused permits in the same message
(``exchange``).

Why the guarantee stays exact: the limiter counts every reservation for its window plus
``hold``, and a permit leased ahead is used only within ``[start, start + hold]`` on this
process's clock, measured conservatively (from when the answer arrived to when the request
was sent, plus hold), so no window of actual starts holds more than the limits allow. A
permit that a call could only use after its hold (its answer came late, or the process was
too busy to start the call in time) is given back and asked for once more, booked from then;
a second late one is used, as a single reservation always was (the limiter's record then
holds, and actual starts lag it), so that a call never starves. A Retry-After pause revokes
the permits every pool holds (:meth:`PermitPool.revoke`), and calls that were waiting for
their start ask again.

This module does not import Ray.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gecko_actors.exceptions import UserError

__all__ = ["Exchange", "Grant", "PermitPool"]

Grant = tuple[int, float]
"""A reservation the limiter granted: its id and its delay from when it was booked."""

Exchange = Callable[
    [int, int, list[tuple[int, int]], list[int]], Awaitable[tuple[float, list[Grant]]]
]
"""One message to the limiter: lease ``count`` permits of ``tokens`` each, settle
``(id, tokens)`` pairs, release ids; answers the limiter's hold and the grants."""

MAX_LEASE = 256  # permits asked for at once
FLUSH_AFTER_S = 0.2  # settlements and releases wait at most this long for a lease to go with


@dataclass(order=True)
class _Permit:
    usable_from: float
    usable_until: float = field(compare=False)
    id: int = field(compare=False)
    tokens: int = field(compare=False)


class PermitPool:
    """Hands a replica's calls their permits, leasing them from the limiter in batches.

    Args:
        exchange: sends one message to the limiter (see :data:`Exchange`).
        clock: seconds, non-decreasing (tests inject one).
    """

    def __init__(self, exchange: Exchange, clock: Callable[[], float] = time.monotonic) -> None:
        self._exchange = exchange
        self._clock = clock
        self.hold = 0.0  # the limiter's, learned from each answer
        self._permits: list[_Permit] = []  # leased ahead, by start
        self._waiters: deque[tuple[int, asyncio.Future[_Permit]]] = deque()
        self._fetcher: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._janitor: asyncio.Task[None] | None = None
        self._settled: list[tuple[int, int]] = []
        self._released: list[int] = []
        self._paused_until = -math.inf
        self._used: deque[float] = deque()  # when recent permits were used

    async def acquire(self, tokens: int) -> tuple[int, float]:
        """A permit for a call of ``tokens`` tokens once its start has come: its id (settle
        it after the call) and the seconds the call waited."""
        began = self._clock()
        late_once = False
        while True:
            permit = self._take(tokens) or await self._wait(tokens)
            delay = permit.usable_from - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
            now = self._clock()
            if now < self._paused_until:  # revoked while it waited
                self._give_back([permit.id])
                await asyncio.sleep(self._paused_until - now)
                continue
            if now > permit.usable_until and not late_once:
                # Its answer (or this task) came later than the hold: a start this late could
                # crowd a later window. Ask once more for a start booked from now; a second
                # late one is used, as a single reservation always was, so a call never starves.
                late_once = True
                self._give_back([permit.id])
                continue
            self._used.append(now)
            return permit.id, now - began

    def settle(self, permit_id: int, tokens: int) -> None:
        """The tokens a call really used; sent with the next message to the limiter."""
        self._settled.append((permit_id, tokens))
        self._flush_soon()

    def revoke(self, seconds: float) -> None:
        """A Retry-After pause: use no permit for ``seconds``, and give back those held."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)
        self._give_back([permit.id for permit in self._permits])
        self._permits.clear()

    # --- internals ------------------------------------------------------------------------

    def _take(self, tokens: int) -> _Permit | None:
        """The earliest permit held that is big enough and still usable."""
        self._expire()
        for index, permit in enumerate(self._permits):
            if permit.tokens >= tokens:
                return self._permits.pop(index)
        return None

    async def _wait(self, tokens: int) -> _Permit:
        future: asyncio.Future[_Permit] = asyncio.get_running_loop().create_future()
        self._waiters.append((tokens, future))
        if self._fetcher is None or self._fetcher.done():
            self._fetcher = asyncio.ensure_future(self._fetch())
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # granted as it was cancelled
                self._give_back([future.result().id])
            raise

    async def _fetch(self) -> None:
        """Lease permits for every waiting call (and the expected next ones) until none waits."""
        while self._waiters:
            batch = min(len(self._waiters), MAX_LEASE)
            waiting = [self._waiters.popleft() for _ in range(batch)]
            tokens = max(t for t, _ in waiting)
            count = min(MAX_LEASE, len(waiting) + self._expected())
            try:
                permits = await self._lease(count, tokens)
            except UserError as exc:
                if len(waiting) == 1:
                    _fail(waiting, exc)
                else:  # one call too big for the limit: ask for each alone, so only it fails
                    for alone in waiting:
                        await self._fetch_for(*alone)
                continue
            except Exception as exc:
                _fail(waiting, exc)
                continue
            for (_, future), permit in zip(waiting, permits, strict=False):
                self._hand(future, permit)
            for permit in permits[len(waiting) :]:
                self._keep(permit)

    def _hand(self, future: asyncio.Future[_Permit], permit: _Permit) -> None:
        """Give ``permit`` to the call waiting on ``future``, or keep it if that call left."""
        if future.done():
            self._keep(permit)
        else:
            future.set_result(permit)

    def _keep(self, permit: _Permit) -> None:
        """Hold ``permit`` for a later call, and give it back once its hold has passed."""
        bisect.insort(self._permits, permit)
        if self._janitor is None or self._janitor.done():
            self._janitor = asyncio.ensure_future(self._expire_held())

    def _expire(self) -> None:
        """Give back the permits held whose hold has passed."""
        now = self._clock()
        kept: list[_Permit] = []
        expired: list[int] = []
        for permit in self._permits:  # (permits compare by start only: split by identity)
            if permit.usable_until < max(now, permit.usable_from):
                expired.append(permit.id)
            else:
                kept.append(permit)
        if expired:
            self._give_back(expired)
            self._permits = kept

    async def _expire_held(self) -> None:
        """Until no permit is held: give each back as soon as it can no longer be used, so
        that the limiter does not count it for longer than it must."""
        while self._permits:
            soonest = min(p.usable_until for p in self._permits)
            await asyncio.sleep(max(0.0, soonest - self._clock()) + 0.001)
            self._expire()

    async def _fetch_for(self, tokens: int, future: asyncio.Future[_Permit]) -> None:
        try:
            [permit] = await self._lease(1, tokens)
        except Exception as exc:
            _fail([(tokens, future)], exc)
            return
        self._hand(future, permit)

    async def _lease(self, count: int, tokens: int) -> list[_Permit]:
        settled, released = self._drain()
        sent = self._clock()
        self.hold, grants = await self._exchange(count, tokens, settled, released)
        received = self._clock()
        return [
            _Permit(received + delay, sent + delay + self.hold, permit_id, tokens)
            for permit_id, delay in grants
        ]

    def _expected(self) -> int:
        """How many permits this pool's calls used over the last ``hold`` seconds."""
        horizon = self._clock() - self.hold
        while self._used and self._used[0] < horizon:
            self._used.popleft()
        return len(self._used) if self.hold > 0 else 0

    def _give_back(self, permit_ids: list[int]) -> None:
        if permit_ids:
            self._released.extend(permit_ids)
            self._flush_soon()

    def _drain(self) -> tuple[list[tuple[int, int]], list[int]]:
        settled, released = self._settled, self._released
        self._settled, self._released = [], []
        return settled, released

    def _flush_soon(self) -> None:
        if self._flusher is None or self._flusher.done():
            with contextlib.suppress(RuntimeError):  # no running loop: the next lease sends it
                self._flusher = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        await asyncio.sleep(FLUSH_AFTER_S)
        if self._settled or self._released:
            with contextlib.suppress(Exception):  # best effort: a lost settlement is the estimate
                await self._lease(0, 0)


def _fail(waiting: list[tuple[int, asyncio.Future[_Permit]]], exc: BaseException) -> None:
    for _, future in waiting:
        if not future.done():
            future.set_exception(exc)
