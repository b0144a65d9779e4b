"""Tests for the sliding-window rate limiter (deterministic: the clock is injected)."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest

from gecko_actors.core import ratelimit
from gecko_actors.core.messages import Message, ToolCall
from gecko_actors.core.ratelimit import (
    DEFAULT_COMPLETION_TOKENS,
    RateLimits,
    Reservation,
    SlidingWindowLimiter,
    estimate_tokens,
)
from gecko_actors.exceptions import UserError


class FakeClock:
    """A clock that only moves when the test says so."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def limiter(
    rpm: int | None = None, tpm: int | None = None, window: float = 1.0, now: float = 0.0
) -> tuple[SlidingWindowLimiter, FakeClock]:
    clock = FakeClock(now)
    return SlidingWindowLimiter(RateLimits(rpm, tpm, window), clock=clock), clock


# --- brute-force checker ---------------------------------------------------------------------


class Recorder:
    """Drives a limiter and remembers, for each reservation, the token sizes known when it was
    booked — the sizes the limiter's guarantee is stated in."""

    def __init__(self, lim: SlidingWindowLimiter) -> None:
        self.lim = lim
        self.starts: list[float] = []
        self.sizes: dict[int, int] = {}  # id -> current known size
        self.ids: list[int] = []
        self.known_at: list[dict[int, int]] = []  # sizes as known when reservation k was booked

    def reserve(self, tokens: int) -> Reservation:
        self.known_at.append(dict(self.sizes))
        r = self.lim.reserve(tokens)
        self.starts.append(r.start_at)
        self.ids.append(r.id)
        self.sizes[r.id] = tokens
        self.known_at[-1][r.id] = tokens
        return r

    def settle(self, reservation_id: int, actual: int) -> None:
        self.lim.settle(reservation_id, actual)
        self.sizes[reservation_id] = actual

    def check(self, limits: RateLimits) -> None:
        """Check every window by brute force.

        The set of starts in ``(t - W, t]`` is a subset of the set in the window ending at the
        latest start ``<= t``, so windows ending at start times are the only ones to check.
        Tokens are counted as known when the latest reservation in the window was booked.
        """
        w = limits.window_seconds
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        for k, t in enumerate(self.starts):
            members = [j for j, s in enumerate(self.starts) if t - w < s <= t]
            if rpm is not None:
                assert len(members) <= rpm, (k, t, members)
            if tpm is not None:
                booked = [j for j in members if j <= k]
                tokens = sum(self.known_at[k][self.ids[j]] for j in booked)
                assert tokens <= tpm, (k, t, tokens)


def run_random(seed: int, limits: RateLimits, n: int = 300, settle_up: bool = True) -> Recorder:
    rng = random.Random(seed)
    clock = FakeClock(rng.uniform(0, 1000))
    rec = Recorder(SlidingWindowLimiter(limits, clock=clock))
    tpm = limits.tokens_per_minute or 1000
    w = limits.window_seconds
    for _ in range(n):
        clock.advance(rng.choice([0.0, 0.0, rng.uniform(0, w / 5), rng.uniform(0, 2 * w)]))
        if rng.random() < 0.03:
            rec.lim.pause(rng.uniform(0, w))
        before = rec.lim.stats()["paused_until"]
        r = rec.reserve(rng.randint(0, tpm))
        assert r.start_at >= before
        assert r.delay == pytest.approx(r.start_at - clock.now)
        if rng.random() < 0.4:
            settled = rng.choice(rec.ids)
            old = rec.sizes[settled]
            new = rng.randint(0, tpm if settle_up else old)
            rec.settle(settled, new)
    return rec


# --- property ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    "limits",
    [
        RateLimits(requests_per_minute=5, window_seconds=1.0),
        RateLimits(tokens_per_minute=1000, window_seconds=0.7),
        RateLimits(requests_per_minute=4, tokens_per_minute=900, window_seconds=0.1),
        RateLimits(requests_per_minute=1, tokens_per_minute=50, window_seconds=3.3),
    ],
    ids=["rpm", "tpm", "both", "tight"],
)
def test_no_window_ever_exceeds_the_limits(seed: int, limits: RateLimits) -> None:
    rec = run_random(seed, limits)
    assert rec.starts == sorted(rec.starts)  # FIFO
    rec.check(limits)


@pytest.mark.parametrize("seed", range(4))
def test_settling_down_keeps_every_window_within_limits_with_final_sizes(seed: int) -> None:
    limits = RateLimits(requests_per_minute=6, tokens_per_minute=700, window_seconds=0.5)
    rec = run_random(seed, limits, settle_up=False)
    w = limits.window_seconds
    for t in rec.starts:
        members = [j for j, s in enumerate(rec.starts) if t - w < s <= t]
        assert sum(rec.sizes[rec.ids[j]] for j in members) <= 700


# --- basic behaviour -----------------------------------------------------------------------


def test_unlimited_never_waits() -> None:
    lim, clock = limiter()
    for _ in range(1000):
        r = lim.reserve(10**9)
        assert r.delay == 0.0
        assert r.start_at == clock.now
    assert lim.stats()["total_waited"] == 0.0


def test_fourth_request_waits_for_the_first_to_age_out() -> None:
    lim, clock = limiter(rpm=3, window=1.0, now=10.0)
    first = lim.reserve()
    clock.advance(0.25)
    lim.reserve()
    lim.reserve()
    fourth = lim.reserve()
    assert first.delay == 0.0
    assert fourth.start_at == pytest.approx(first.start_at + 1.0)
    assert fourth.delay == pytest.approx(0.75)


def test_recent_reservations_are_the_grants_in_order_and_bounded(monkeypatch) -> None:
    monkeypatch.setattr(ratelimit, "RESERVATIONS_KEPT", 5)
    lim, _ = limiter(rpm=2, window=1.0, now=0.0)
    granted = [lim.reserve() for _ in range(7)]
    recent = lim.recent_reservations()
    assert recent == granted[-5:]  # the latest 5, oldest first
    assert [r.id for r in recent] == list(range(granted[2].id, granted[2].id + 5))
    starts = [r.start_at for r in recent]
    assert starts == sorted(starts) and starts[2] - starts[0] >= 1.0  # 2 per window


def test_token_limit_waits_until_enough_tokens_age_out() -> None:
    lim, clock = limiter(tpm=1000, window=1.0)
    first = lim.reserve(500)
    clock.advance(0.5)
    assert lim.reserve(400).delay == 0.0  # 900 of 1000
    big = lim.reserve(600)  # 1500 > 1000 until the first (500) ages out: 1000 exactly
    assert big.start_at == pytest.approx(first.start_at + 1.0)
    assert big.delay == pytest.approx(0.5)


def test_request_after_half_the_tokens_waits_for_the_first() -> None:
    lim, _ = limiter(tpm=1000, window=1.0)
    lim.reserve(500)
    assert lim.reserve(600).delay == pytest.approx(1.0)


def test_request_that_fits_does_not_wait() -> None:
    lim, _ = limiter(tpm=1000, window=1.0)
    lim.reserve(500)
    assert lim.reserve(500).delay == 0.0


def test_fifo_small_requests_do_not_overtake_a_big_one() -> None:
    lim, _ = limiter(tpm=1000, window=1.0)
    lim.reserve(900)
    big = lim.reserve(1000)
    small = lim.reserve(1)  # would fit now, but must not start before the big one
    assert small.start_at >= big.start_at
    starts = [lim.reserve(50).start_at for _ in range(50)]
    assert starts == sorted(starts)


# --- pause ----------------------------------------------------------------------------------


def test_pause_delays_the_next_reservation() -> None:
    lim, _ = limiter(rpm=100, window=1.0, now=5.0)
    lim.pause(2.5)
    r = lim.reserve()
    assert r.delay >= 2.5
    assert r.start_at == pytest.approx(7.5)
    assert lim.stats()["pause_remaining"] == pytest.approx(2.5)


def test_pause_never_shortens() -> None:
    lim, clock = limiter(now=0.0)
    lim.pause(10.0)
    clock.advance(1.0)
    lim.pause(2.0)  # would end at 3.0: ignored
    assert lim.stats()["paused_until"] == pytest.approx(10.0)
    lim.pause(20.0)  # ends at 21.0: extends
    assert lim.stats()["paused_until"] == pytest.approx(21.0)
    assert lim.reserve().delay == pytest.approx(20.0)


def test_pause_that_has_passed_no_longer_delays() -> None:
    lim, clock = limiter(now=0.0)
    lim.pause(1.0)
    clock.advance(2.0)
    assert lim.reserve().delay == 0.0


@pytest.mark.parametrize("seconds", [-1.0, float("nan"), float("inf")])
def test_pause_rejects_bad_seconds(seconds: float) -> None:
    lim, _ = limiter()
    with pytest.raises(UserError, match="pause"):
        lim.pause(seconds)


# --- settle ---------------------------------------------------------------------------------


def test_settling_lower_lets_the_next_request_in_sooner() -> None:
    lim, _ = limiter(tpm=1000, window=1.0)
    first = lim.reserve(800)
    lim.settle(first.id, 100)
    assert lim.reserve(800).delay == 0.0


def test_settling_higher_delays_the_next_request() -> None:
    lim, _ = limiter(tpm=1000, window=1.0)
    first = lim.reserve(100)
    lim.settle(first.id, 900)
    assert lim.reserve(200).delay == pytest.approx(1.0)


def test_settling_an_unknown_id_is_ignored() -> None:
    lim, clock = limiter(tpm=1000, window=1.0)
    old = lim.reserve(500)
    clock.advance(5.0)
    lim.reserve(10)  # prunes `old`
    lim.settle(old.id, 999)
    lim.settle(12345, 999)
    assert lim.reserve(990).delay == 0.0


def test_settle_rejects_negative_tokens() -> None:
    lim, _ = limiter(tpm=1000)
    r = lim.reserve(10)
    with pytest.raises(UserError, match="actual_tokens"):
        lim.settle(r.id, -1)


# --- errors ---------------------------------------------------------------------------------


def test_oversize_request_is_a_user_error_naming_both_numbers() -> None:
    lim, _ = limiter(tpm=1000)
    with pytest.raises(UserError) as info:
        lim.reserve(1001)
    text = str(info.value)
    assert "1001" in text and "1000" in text
    assert "max_tokens" in text
    assert info.value.context["tokens_per_minute"] == 1000


def test_negative_tokens_is_a_user_error() -> None:
    lim, _ = limiter()
    with pytest.raises(UserError, match="tokens >= 0"):
        lim.reserve(-5)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"requests_per_minute": 0}, "requests_per_minute"),
        ({"requests_per_minute": -3}, "requests_per_minute"),
        ({"requests_per_minute": 2.5}, "requests_per_minute"),
        ({"requests_per_minute": True}, "requests_per_minute"),
        ({"tokens_per_minute": 0}, "tokens_per_minute"),
        ({"tokens_per_minute": "1000"}, "tokens_per_minute"),
        ({"window_seconds": 0}, "window_seconds"),
        ({"window_seconds": -1.0}, "window_seconds"),
        ({"window_seconds": float("inf")}, "window_seconds"),
        ({"window_seconds": float("nan")}, "window_seconds"),
    ],
)
def test_invalid_limits_are_user_errors(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(UserError) as info:
        RateLimits(**kwargs)  # type: ignore[arg-type]
    assert field in str(info.value)
    assert info.value.hint
    assert info.value.context["field"] == field


def test_valid_limits() -> None:
    limits = RateLimits(requests_per_minute=1, tokens_per_minute=1, window_seconds=1)
    assert limits.window_seconds == 1
    assert RateLimits() == RateLimits(None, None, 60.0)


# --- memory and stats ---------------------------------------------------------------------


def test_history_stays_bounded_with_a_moving_clock() -> None:
    lim, clock = limiter(rpm=50, tpm=5000, window=1.0)
    rng = random.Random(7)
    for _ in range(10_000):
        clock.advance(rng.uniform(0, 0.05))
        r = lim.reserve(rng.randint(0, 200))
        if rng.random() < 0.5:
            lim.settle(r.id, rng.randint(0, 200))
    # One window of started requests plus the scheduled ones (also at most one window).
    assert len(lim._history) <= 2 * 50
    assert all(e.start > clock.now - 1.0 for e in lim._history)
    assert sorted(lim._by_id) == [e.id for e in lim._history]
    live = lim._history[lim._live :]
    assert all(e.start > lim._last_start - 1.0 for e in live)
    assert lim._live_tokens == sum(e.tokens for e in live)


def test_unlimited_history_only_holds_one_window() -> None:
    lim, clock = limiter(window=1.0)
    for _ in range(10_000):
        clock.advance(0.01)
        lim.reserve(1)
    assert len(lim._history) <= 101


def test_stats() -> None:
    lim, clock = limiter(rpm=2, window=1.0)
    lim.reserve(10)
    lim.reserve(20)
    lim.reserve(30)  # scheduled at 1.0
    stats = lim.stats()
    assert stats["requests_in_window"] == 2
    assert stats["tokens_in_window"] == 30
    assert stats["requests_scheduled"] == 1
    assert stats["total_waited"] == pytest.approx(1.0)
    assert stats["reservations"] == 3
    assert stats["pause_remaining"] == 0.0
    clock.advance(1.5)
    stats = lim.stats()
    assert stats["requests_in_window"] == 1
    assert stats["tokens_in_window"] == 30
    assert stats["requests_scheduled"] == 0
    assert all(isinstance(v, float) for v in stats.values())


def test_float_rounding_never_lets_an_aged_entry_count_twice() -> None:
    # 0.1 + 0.7 - 0.7 != 0.1 in floats; the limiter must still leave the window clean.
    lim, _ = limiter(rpm=1, window=0.7, now=0.1)
    starts = [lim.reserve().start_at for _ in range(200)]
    for i in range(1, len(starts)):
        assert starts[i] - 0.7 >= starts[i - 1]


def test_does_not_import_ray() -> None:
    tree = ast.parse(Path(ratelimit.__file__).read_text(encoding="utf-8"))
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(name == "ray" or name.startswith("ray.") for name in imported)


# --- estimate_tokens ------------------------------------------------------------------------


def test_estimate_tokens_counts_text_tool_arguments_and_completion() -> None:
    messages = [
        Message.system("x" * 8),  # 2 tokens
        Message.user("y" * 9),  # 3 tokens (rounded up)
        Message.assistant(None, [ToolCall(id="1", name="f", arguments='{"a": 1}')]),  # 8 chars
    ]
    # ceil((8 + 9 + 8) / 4) = 7 prompt tokens + 4 per message + completion.
    assert estimate_tokens(messages, 100) == 7 + 12 + 100
    assert estimate_tokens(messages, None) == 7 + 12 + DEFAULT_COMPLETION_TOKENS


def test_estimate_tokens_of_nothing_is_the_completion_budget() -> None:
    assert estimate_tokens([], None) == DEFAULT_COMPLETION_TOKENS
    assert estimate_tokens([], 0) == 0


def test_settling_an_entry_kept_only_for_stats_updates_stats_not_limits() -> None:
    lim, _ = limiter(tpm=1000, window=1.0)
    first = lim.reserve(600)
    lim.reserve(600)  # starts at 1.0, so `first` can no longer share a window with new bookings
    lim.settle(first.id, 50)
    assert lim.stats()["tokens_in_window"] == 50
    assert lim._live_tokens == 600
    assert lim.reserve(400).start_at == pytest.approx(1.0)
