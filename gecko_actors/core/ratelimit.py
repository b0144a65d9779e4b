"""A sliding-window rate limiter for the traffic to one model, shared cluster-wide.

One actor owns one :class:`SlidingWindowLimiter`; gateway replicas lease permits from it in
batches (:meth:`SlidingWindowLimiter.lease`, and ``core/leases.py`` on the replica's side)
instead of asking before each request. The limiter never sleeps:
:meth:`SlidingWindowLimiter.reserve` books a start time and returns the delay, and the caller
sleeps it. So one busy model never blocks the actor, and the
limiter's answers are a pure function of its clock, which tests inject.

Guarantee: for every window ``(t - window_seconds, t]`` the reservations starting in it number at
most ``requests_per_minute`` and hold at most ``tokens_per_minute`` tokens, counting each
reservation at the size known when a later one was booked (its estimate, or what
:meth:`~SlidingWindowLimiter.settle` reported). Start times are handed out in non-decreasing
order (FIFO), so a large request is never overtaken and starved by small ones. A limiter with
a ``hold`` counts every reservation for ``window_seconds + hold``, so that a permit used up to
``hold`` seconds after its start still keeps every window, on actual start times, within the
limits; and it lets no more than the request limit's share of ``hold`` start within any
``hold`` seconds, so that a window's worth of requests is spread out rather than released at
once (a gateway busy with hundreds of calls starting together would send the last of them
long after its permit, and the provider would count it in a later window).

This module does not import Ray; the actor that wraps it lives elsewhere.
"""

from __future__ import annotations

import bisect
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gecko_actors.core.messages import Message
from gecko_actors.exceptions import UserError

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4  # role and framing tokens every chat format adds per message
DEFAULT_COMPLETION_TOKENS = 256  # assumed answer length when the call sets no max_tokens
RESERVATIONS_KEPT = 1024  # how many of the latest reservations recent_reservations() reports
MAX_HOLD_S = 0.5  # the longest a leased permit may be used after its start
MIN_HOLD_S = 0.2  # ... and the shortest, unless the window is very short
HOLD_SHARE = 0.01  # ... and at most this share of the window


@dataclass(frozen=True)
class RateLimits:
    """The provider's limits for one model.

    Attributes:
        requests_per_minute: requests that may start per window; ``None`` for unlimited.
        tokens_per_minute: tokens (prompt plus completion) per window; ``None`` for unlimited.
        window_seconds: the window length. Providers count per minute; tests use short windows.
            Both limits are per this window, whatever its length.
    """

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    window_seconds: float = 60.0

    def __post_init__(self) -> None:
        _check_limit("requests_per_minute", self.requests_per_minute)
        _check_limit("tokens_per_minute", self.tokens_per_minute)
        window = self.window_seconds
        valid = isinstance(window, (int, float)) and not isinstance(window, bool)
        if not (valid and math.isfinite(window) and window > 0):
            raise UserError(
                f"RateLimits.window_seconds must be a positive number of seconds, got {window!r}",
                hint="leave it at the default 60.0, the window providers count their limits in",
                field="window_seconds",
                value=window,
            )


def _check_limit(field: str, value: int | None) -> None:
    """Raise :class:`UserError` unless ``value`` is ``None`` or a positive int."""
    if value is None:
        return
    # bool is an int subclass; True as a limit is surely a mistake.
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return
    raise UserError(
        f"RateLimits.{field} must be a positive int or None, got {value!r}",
        hint=f"set {field} to the provider's limit, or to None for no limit",
        field=field,
        value=value,
    )


@dataclass(frozen=True)
class Reservation:
    """A booked start time.

    Attributes:
        id: pass it to :meth:`SlidingWindowLimiter.settle` with the tokens actually billed.
        start_at: clock time at which the request may start.
        delay: ``start_at`` minus the clock time of the booking; the caller sleeps this long.
    """

    id: int
    start_at: float
    delay: float


@dataclass(slots=True)
class _Entry:
    """One reservation in the history; ``tokens`` is mutable so :meth:`settle` can fix it."""

    id: int
    start: float
    tokens: int


def _start(entry: _Entry) -> float:
    return entry.start


class SlidingWindowLimiter:
    """Books start times so that no sliding window exceeds the limits.

    Not thread-safe: it is meant to be owned by one (single-threaded) actor.

    Args:
        limits: the limits to enforce.
        clock: seconds, non-decreasing; :func:`time.monotonic` unless a test injects one.
    """

    def __init__(
        self,
        limits: RateLimits,
        clock: Callable[[], float] = time.monotonic,
        hold: float = 0.0,
    ) -> None:
        self.limits = limits
        # How long after its start a leased permit may still be used (see lease()): every
        # reservation counts for ``window + hold``, so a permit used late stays in bounds.
        self.hold = hold
        self._clock = clock
        # Sorted by start (reservations are FIFO, so appending keeps it sorted). Entries from
        # index _live on can still share a window with a future booking; those before it are
        # kept only while they are in the window ending now, for stats().
        self._history: list[_Entry] = []
        self._by_id: dict[int, _Entry] = {}
        self._live = 0
        self._live_tokens = 0  # sum of tokens over _history[_live:], kept in step with it
        self._ids = itertools.count(1)
        self._last_start = -math.inf
        self._paused_until = clock()
        self._total_waited = 0.0
        self._reservations = 0
        self._recent: deque[Reservation] = deque(maxlen=RESERVATIONS_KEPT)

    # --- public API ---------------------------------------------------------------------

    def reserve(self, tokens: int = 0) -> Reservation:
        """Book the earliest start time that keeps every window within the limits.

        Args:
            tokens: the estimated tokens of the request (see :func:`estimate_tokens`).

        Returns:
            The reservation: its id, start time and the delay to sleep before starting.

        Raises:
            UserError: ``tokens`` is negative or larger than ``tokens_per_minute``, so the
                request could never fit in a window.
        """
        self._check_tokens(tokens)
        now = self._clock()
        # FIFO: never start before an earlier reservation, nor during a pause.
        earliest = max(now, self._paused_until, self._last_start, self._paced())
        start = self._earliest_fit(earliest, tokens)
        entry = _Entry(id=next(self._ids), start=start, tokens=tokens)
        self._history.append(entry)
        self._by_id[entry.id] = entry
        self._live_tokens += tokens
        self._last_start = start
        self._prune(now)
        delay = max(0.0, start - now)
        self._total_waited += delay
        self._reservations += 1
        reservation = Reservation(id=entry.id, start_at=start, delay=delay)
        self._recent.append(reservation)
        return reservation

    def lease(self, count: int, tokens: int) -> list[Reservation]:
        """Book ``count`` reservations of ``tokens`` each at once, in FIFO order: permits a
        replica hands to its calls without asking again. Each may be used from its start until
        ``hold`` seconds after it; one left unused is given back with :meth:`release`."""
        return [self.reserve(tokens) for _ in range(count)]

    def release(self, reservation_ids: Sequence[int]) -> None:
        """Forget reservations that were never used (a lease's leftovers): they no longer
        count against the limits. Unknown ids are ignored."""
        gone = {i for i in reservation_ids if i in self._by_id}
        if not gone:
            return
        kept: list[_Entry] = []
        live = self._live  # entries before this index no longer count; after it, they do
        for index, entry in enumerate(self._history):
            if entry.id not in gone:
                kept.append(entry)
                continue
            del self._by_id[entry.id]
            if index < live:
                self._live -= 1
            else:
                self._live_tokens -= entry.tokens
        self._history = kept
        self._reservations -= len(gone)
        self._recent = deque(
            (r for r in self._recent if r.id not in gone), maxlen=RESERVATIONS_KEPT
        )

    def settle(self, reservation_id: int, actual_tokens: int) -> None:
        """Replace a reservation's estimate with the tokens the provider actually billed.

        Later reservations count the new size. An unknown id is ignored: the reservation may
        already have aged out of the window, where its size no longer matters.

        Args:
            reservation_id: :attr:`Reservation.id`.
            actual_tokens: the tokens billed (prompt plus completion).

        Raises:
            UserError: ``actual_tokens`` is negative.
        """
        if actual_tokens < 0:
            raise UserError(
                f"actual_tokens must be >= 0, got {actual_tokens}",
                hint="pass the usage the provider reported (prompt plus completion tokens)",
                reservation_id=reservation_id,
            )
        entry = self._by_id.get(reservation_id)
        if entry is None:
            return
        if self._is_live(entry):
            self._live_tokens += actual_tokens - entry.tokens
        entry.tokens = actual_tokens

    def pause(self, seconds: float) -> None:
        """Start no reservation before ``seconds`` from now (the provider's ``Retry-After``).

        Extends an existing pause, never shortens it.

        Args:
            seconds: how long to pause, ``>= 0``.

        Raises:
            UserError: ``seconds`` is negative or not finite.
        """
        if not (math.isfinite(seconds) and seconds >= 0):
            raise UserError(
                f"pause needs a finite number of seconds >= 0, got {seconds!r}",
                hint="pass the provider's Retry-After in seconds",
                seconds=seconds,
            )
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    def stats(self) -> dict[str, float]:
        """A snapshot for metrics.

        Returns:
            ``requests_in_window`` and ``tokens_in_window``: reservations that started in the
            window ending now; ``requests_scheduled``: reservations booked to start later;
            ``paused_until`` (clock time) and ``pause_remaining`` (seconds); ``total_waited``:
            the sum of every delay handed out; ``reservations``: how many were booked.
        """
        now = self._clock()
        cutoff = now - self.limits.window_seconds
        started = [e for e in self._history if cutoff < e.start <= now]
        return {
            "requests_in_window": float(len(started)),
            "tokens_in_window": float(sum(e.tokens for e in started)),
            "requests_scheduled": float(sum(1 for e in self._history if e.start > now)),
            "paused_until": self._paused_until,
            "pause_remaining": max(0.0, self._paused_until - now),
            "total_waited": self._total_waited,
            "reservations": float(self._reservations),
        }

    def recent_reservations(self) -> list[Reservation]:
        """The latest reservations booked, oldest first: what the limiter granted, on its clock.

        Lets a caller check the guarantee from the limiter's own record (every window of
        ``start_at`` values within the limits) rather than from when requests were seen
        elsewhere. Ids are consecutive, so ``id > n`` selects those booked after the ``n``-th.

        Returns:
            At most :data:`RESERVATIONS_KEPT` reservations, in booking order (which is also
            ``start_at`` order).
        """
        return list(self._recent)

    # --- internals ----------------------------------------------------------------------

    def _check_tokens(self, tokens: int) -> None:
        """Refuse sizes that are negative or could never fit in one window."""
        if tokens < 0:
            raise UserError(
                f"a reservation needs tokens >= 0, got {tokens}",
                hint="pass the estimate from estimate_tokens()",
                tokens=tokens,
            )
        tpm = self.limits.tokens_per_minute
        if tpm is not None and tokens > tpm:
            raise UserError(
                f"a request of {tokens} tokens can never fit the limit of {tpm} tokens_per_minute",
                hint="raise tokens_per_minute or lower max_tokens (or shorten the prompt)",
                tokens=tokens,
                tokens_per_minute=tpm,
            )

    def _earliest_fit(self, earliest: float, tokens: int) -> float:
        """The first ``t >= earliest`` at which one more request of ``tokens`` fits.

        Every booked start is ``<= earliest``, so the window ending at ``t`` holds exactly the
        entries with ``start > t - window``, and checking that window suffices: any later window
        holding the new request holds a subset of it. Walk the sorted history from the oldest
        entry in the window, letting entries age out until the new request fits.
        """
        window = self._span
        max_requests = self.limits.requests_per_minute or math.inf
        max_tokens = self.limits.tokens_per_minute
        token_budget = math.inf if max_tokens is None else max_tokens - tokens
        history = self._history
        first = bisect.bisect_right(history, earliest - window, lo=self._live, key=_start)
        # Live entries before `first` are already out of the window; each is summed here at
        # most once in its life, since it stops being live after this booking.
        count = len(history) - first
        used = self._live_tokens - sum(e.tokens for e in history[self._live : first])
        start = earliest
        index = first
        while count > max_requests - 1 or used > token_budget:
            entry = history[index]
            start = max(start, _ages_out_at(entry.start, window))
            count -= 1
            used -= entry.tokens
            index += 1
        return start

    @property
    def _span(self) -> float:
        """How long a reservation counts: its window, and the hold in which it may be used."""
        return self.limits.window_seconds + self.hold

    def _paced(self) -> float:
        """With a hold, the earliest start that keeps a span of ``hold`` seconds to at most
        its share of the request limit: a gateway that keeps up with the limit then sends
        each request within the hold of its permit, instead of a window's worth at once."""
        rpm = self.limits.requests_per_minute
        if self.hold <= 0 or rpm is None:
            return -math.inf
        burst = max(1, int(rpm * self.hold / self.limits.window_seconds))
        if len(self._history) < burst:
            return -math.inf
        return _ages_out_at(self._history[-burst].start, self.hold)

    def _is_live(self, entry: _Entry) -> bool:
        """Whether ``entry`` can still share a window with a future booking."""
        return entry.start > self._last_start - self._span

    def _prune(self, now: float) -> None:
        """Retire entries no future window can hold; forget those out of the current window too.

        Every future booking starts at or after the newest start, so an entry at or before
        ``newest - window`` no longer counts against the limits. It is kept while it is in the
        window ending ``now`` (stats report it) and dropped after, which bounds memory to one
        window of started requests plus those still scheduled.
        """
        window = self.limits.window_seconds
        history = self._history
        live = bisect.bisect_right(
            history, self._last_start - self._span, lo=self._live, key=_start
        )
        self._live_tokens -= sum(e.tokens for e in history[self._live : live])
        cut = bisect.bisect_right(history, now - window, hi=live, key=_start)
        for entry in history[:cut]:
            del self._by_id[entry.id]
        del history[:cut]
        self._live = live - cut


def _ages_out_at(start: float, window: float) -> float:
    """The first time ``t`` whose window ``(t - window, t]`` no longer holds ``start``.

    ``start + window`` in exact arithmetic; float rounding can leave ``t - window`` a hair
    below ``start``, so step up until the window test everyone uses agrees.
    """
    t = start + window
    while t - window < start:
        t = math.nextafter(t, math.inf)
    return t


def lease_hold(limits: RateLimits) -> float:
    """How long after its start a permit may be used: 1% of the window (the share of
    throughput it costs), and at least 0.2 s (what a busy gateway may take between a permit
    and its request leaving) but at most 0.5 s; never more than a tenth of the window."""
    share = HOLD_SHARE * limits.window_seconds
    return min(MAX_HOLD_S, max(MIN_HOLD_S, share), limits.window_seconds / 10)


def estimate_tokens(messages: Sequence[Message], max_tokens: int | None) -> int:
    """A cheap upper-ish estimate of a call's tokens, to reserve before the call.

    About four characters per token over each message's text and its tool calls' arguments,
    four tokens of framing per message, plus the completion budget. Images are not counted.
    :meth:`SlidingWindowLimiter.settle` corrects the estimate with the billed usage afterwards.

    Args:
        messages: the conversation to send.
        max_tokens: the call's completion limit; ``None`` assumes
            :data:`DEFAULT_COMPLETION_TOKENS`.

    Returns:
        The estimated prompt plus completion tokens.
    """
    chars = 0
    for message in messages:
        chars += len(message.text)
        chars += sum(len(call.arguments) for call in message.tool_calls)
    prompt = -(-chars // CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * len(messages)  # ceil division
    completion = DEFAULT_COMPLETION_TOKENS if max_tokens is None else max_tokens
    return prompt + completion
