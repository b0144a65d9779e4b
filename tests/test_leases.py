"""Leased rate-limit permits: the limiter's lease, release and hold, and a replica's
PermitPool against an in-process limiter (no Ray)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from gecko_actors.core.leases import PermitPool, _Permit
from gecko_actors.core.ratelimit import RateLimits, SlidingWindowLimiter, lease_hold
from gecko_actors.exceptions import UserError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --- the limiter ------------------------------------------------------------------------------


def test_a_lease_books_consecutive_reservations_and_releasing_frees_them() -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(RateLimits(requests_per_minute=4, window_seconds=1), clock)
    lease = limiter.lease(4, 10)
    assert [r.delay for r in lease] == [0, 0, 0, 0]
    assert limiter.reserve(10).delay == pytest.approx(1.0)  # the window is full
    limiter.release([lease[0].id, lease[1].id, 999])  # an unknown id is ignored
    assert limiter.reserve(10).delay == pytest.approx(1.0)  # FIFO: never before a booked one
    assert limiter.stats()["reservations"] == 4
    assert lease[0].id not in [r.id for r in limiter.recent_reservations()]


def test_releasing_entries_that_no_longer_count_keeps_the_tokens_that_do() -> None:
    clock = Clock()
    limits = RateLimits(requests_per_minute=2, tokens_per_minute=20, window_seconds=1)
    limiter = SlidingWindowLimiter(limits, clock)
    booked = limiter.lease(5, 10)  # starts 0, 0, 1, 1, 2: only the last still counts
    assert [r.delay for r in booked] == [0, 0, 1, 1, 2]
    limiter.release([booked[2].id, booked[3].id])
    # The 10 tokens starting at 2 still count: 20 more fit only once they have aged out.
    assert limiter.reserve(20).start_at == pytest.approx(clock.now + 3)


def test_releasing_gives_back_tokens_too() -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(RateLimits(tokens_per_minute=100, window_seconds=1), clock)
    [first] = limiter.lease(1, 80)
    limiter.release([first.id])
    assert limiter.reserve(80).delay == 0  # the 80 released no longer count


def test_a_hold_widens_the_window_every_reservation_counts_for() -> None:
    clock = Clock()
    limits = RateLimits(requests_per_minute=2, window_seconds=1)
    limiter = SlidingWindowLimiter(limits, clock, hold=0.5)
    limiter.lease(2, 0)
    assert limiter.reserve(0).delay == pytest.approx(1.5)


def test_the_hold_is_a_small_share_of_the_window() -> None:
    assert lease_hold(RateLimits(window_seconds=60)) == 0.5
    assert lease_hold(RateLimits(window_seconds=30)) == 0.3
    assert lease_hold(RateLimits(window_seconds=6)) == 0.2
    assert lease_hold(RateLimits(window_seconds=1)) == pytest.approx(0.1)


# --- the pool ---------------------------------------------------------------------------------


class Limiter:
    """An in-process limiter behind the pool's exchange, recording what it was sent."""

    def __init__(self, limits: RateLimits, latency: float = 0.0) -> None:
        self.inner = SlidingWindowLimiter(limits, hold=lease_hold(limits))
        self.latency = latency
        self.settled: dict[int, int] = {}
        self.released: set[int] = set()
        self.booked: dict[int, float] = {}
        self.messages = 0

    async def exchange(
        self, count: int, tokens: int, settled: list[Any], released: list[int]
    ) -> tuple[float, list[tuple[int, float]]]:
        self.messages += 1
        await asyncio.sleep(self.latency * random.random())
        for permit_id, used in settled:
            self.inner.settle(permit_id, used)
            self.settled[permit_id] = used
        self.inner.release(released)
        self.released.update(released)
        grants = self.inner.lease(count, tokens)
        self.booked.update((r.id, r.start_at) for r in grants)
        await asyncio.sleep(self.latency * random.random())
        return self.inner.hold, [(r.id, r.delay) for r in grants]


async def test_calls_share_leases_and_every_permit_is_used_once_or_given_back() -> None:
    limiter = Limiter(RateLimits(requests_per_minute=10_000, window_seconds=30), latency=0.002)
    pool = PermitPool(limiter.exchange)
    used: dict[int, float] = {}

    async def call(i: int) -> None:
        await asyncio.sleep(random.random() * 0.3)
        permit, _ = await pool.acquire(5)
        assert permit not in used
        used[permit] = asyncio.get_running_loop().time()
        await asyncio.sleep(0.001)
        pool.settle(permit, 7)

    await asyncio.gather(*(call(i) for i in range(300)))
    pool.revoke(0)  # gives back whatever is still leased ahead
    await asyncio.sleep(0.3)  # the settlements and the releases go out together
    assert limiter.messages < 300 * 0.9  # calls shared messages (leases ahead, flushes)
    assert set(used) | limiter.released == set(limiter.booked)
    assert not set(used) & limiter.released
    assert limiter.settled == dict.fromkeys(used, 7)


async def test_no_permit_is_used_before_its_start() -> None:
    limiter = Limiter(RateLimits(requests_per_minute=5, window_seconds=0.5))
    pool = PermitPool(limiter.exchange)
    starts: list[tuple[int, float]] = []

    async def call() -> None:
        permit, _ = await pool.acquire(1)
        starts.append((permit, limiter.inner._clock()))

    await asyncio.gather(*(call() for _ in range(12)))
    assert all(at >= limiter.booked[permit] for permit, at in starts)
    assert sorted(at for _, at in starts)[-1] - sorted(at for _, at in starts)[0] >= 1.0


async def test_a_permit_held_past_its_hold_is_given_back_not_used() -> None:
    clock = Clock()
    exchanged: list[tuple[int, list[int]]] = []

    async def exchange(count: int, tokens: int, settled: Any, released: list[int]) -> Any:
        exchanged.append((count, list(released)))
        return 0.5, [(100 + len(exchanged), 0.0)] * count

    pool = PermitPool(exchange, clock)
    pool._permits = [_Permit(usable_from=100.0, usable_until=100.5, id=7, tokens=10)]
    clock.now = 100.6  # past its hold
    permit, _ = await pool.acquire(5)
    assert permit != 7
    assert exchanged == [(1, [7])]  # given back in the message that leased a fresh one


async def test_a_call_too_big_for_the_limit_fails_alone() -> None:
    limiter = Limiter(RateLimits(tokens_per_minute=100, window_seconds=10))
    pool = PermitPool(limiter.exchange)
    small, big = await asyncio.gather(pool.acquire(50), pool.acquire(500), return_exceptions=True)
    assert isinstance(small, tuple)
    assert isinstance(big, UserError) and "can never fit" in str(big)


async def test_a_revoke_gives_back_what_is_held_and_holds_calls_until_the_pause_ends() -> None:
    limiter = Limiter(RateLimits(requests_per_minute=1000, window_seconds=60))
    pool = PermitPool(limiter.exchange)
    loop = asyncio.get_running_loop()
    for _ in range(20):  # enough use that the pool leases ahead
        await pool.acquire(1)
    held = [permit.id for permit in pool._permits]
    pool.revoke(0.3)
    revoked_at = loop.time()
    _, waited = await pool.acquire(1)
    assert loop.time() - revoked_at >= 0.3 and waited >= 0.3
    await asyncio.sleep(0.3)
    assert set(held) <= limiter.released


async def test_a_cancelled_call_leaves_its_permit_to_the_next() -> None:
    gate = asyncio.Event()
    sent: list[int] = []

    async def exchange(count: int, tokens: int, settled: Any, released: Any) -> Any:
        sent.append(count)
        await gate.wait()
        return 0.5, [(len(sent) * 100 + i, 0.0) for i in range(count)]

    pool = PermitPool(exchange)
    first = asyncio.ensure_future(pool.acquire(1))
    await asyncio.sleep(0.01)
    first.cancel()
    gate.set()
    await asyncio.gather(first, return_exceptions=True)
    permit, _ = await pool.acquire(1)
    assert permit == 100 and sent == [1]  # the cancelled call's permit, with no new message


def test_with_a_hold_a_burst_is_spread_at_the_limit_s_rate() -> None:
    clock = Clock()
    limits = RateLimits(requests_per_minute=100, window_seconds=10)  # 10 per second
    limiter = SlidingWindowLimiter(limits, clock, hold=0.5)  # so 5 per half second
    delays = [round(r.delay, 6) for r in limiter.lease(12, 0)]
    assert delays == [0.0] * 5 + [0.5] * 5 + [1.0] * 2


async def test_more_calls_waiting_than_one_lease_holds_all_get_permits(monkeypatch) -> None:
    import gecko_actors.core.leases as leases

    monkeypatch.setattr(leases, "MAX_LEASE", 4)
    limiter = Limiter(RateLimits(requests_per_minute=10_000, window_seconds=30))
    pool = PermitPool(limiter.exchange)
    permits = await asyncio.wait_for(asyncio.gather(*(pool.acquire(1) for _ in range(10))), 60)
    assert len({permit for permit, _ in permits}) == 10


async def test_a_permit_that_arrives_after_its_hold_is_asked_for_once_more() -> None:
    clock = Clock()
    sent: list[tuple[int, list[int]]] = []

    async def slow_exchange(count: int, tokens: int, settled: Any, released: list[int]) -> Any:
        sent.append((count, list(released)))
        clock.now += 1.0  # the answer takes longer than the hold
        return 0.5, [(len(sent), 0.0)] * count

    pool = PermitPool(slow_exchange, clock)
    permit, _ = await pool.acquire(1)
    # The first permit came too late to use: given back with the second request, and the
    # second one, late too, is used rather than asking forever.
    assert sent == [(1, []), (1, [1])] and permit == 2


async def test_a_permit_still_usable_is_kept_beside_one_that_expired_at_the_same_start() -> None:
    clock = Clock()

    async def exchange(count: int, tokens: int, settled: Any, released: list[int]) -> Any:
        return 0.5, [(99, 0.0)] * count

    pool = PermitPool(exchange, clock)
    pool._permits = [  # one start, two holds (leased in different messages)
        _Permit(usable_from=100.0, usable_until=100.1, id=7, tokens=10),
        _Permit(usable_from=100.0, usable_until=101.0, id=8, tokens=10),
    ]
    clock.now = 100.5
    permit, _ = await pool.acquire(5)
    assert permit == 8 and pool._released == [7]
