"""Cron expressions, their ticks in an IANA time zone, and which ticks are due (Ray-free).

cronsim evaluates the expressions: a small, dependency-free evaluator that follows Debian
cron across daylight-saving changes (a time that a spring-forward skips fires at the first
valid minute after it; a time that a fall-back repeats fires once, at its first occurrence).
Ticks are whole seconds since the epoch (UTC); every function takes the current time as an
argument, so a test drives it with a fake clock.

Five fields (``minute hour day-of-month month day-of-week``), or six with a leading
``second`` field, or one of the aliases ``@hourly``, ``@daily``, ``@weekly``, ``@monthly``,
``@yearly``.
"""

from __future__ import annotations

import time as _time
import zoneinfo
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

from cronsim import CronSim, CronSimError

from gecko_actors.exceptions import UserError

__all__ = [
    "CATCH_UP",
    "MAX_CATCH_UP",
    "ON_TIME",
    "CatchUp",
    "Due",
    "check_catch_up",
    "check_cron",
    "check_timezone",
    "due",
    "next_ticks",
    "tick_label",
]

CatchUp = Literal["latest", "all", "skip"]
#: The catch-up policies: after downtime, fire the newest missed tick, every missed tick
#: (oldest first, at most :data:`MAX_CATCH_UP`), or none of them.
CATCH_UP: tuple[str, ...] = ("latest", "all", "skip")
#: The most missed ticks that ``catch_up="all"`` fires at once (the newest ones): a schedule
#: every minute that was down for a week must not start 10,000 runs in one go.
MAX_CATCH_UP = 100
#: Seconds a tick may be late and still count as on time (a busy or restarting firer): it
#: fires under every policy. Older ones are *missed*, and the policy decides.
ON_TIME = 60.0

_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_CRON_HINT = (
    "write five fields, minute hour day-of-month month day-of-week (e.g. '0 6 * * *' for "
    "06:00 every day, '*/15 * * * *' every quarter hour, '0 9 * * MON-FRI' on weekdays), "
    "six with a leading seconds field, or @hourly, @daily, @weekly, @monthly, @yearly"
)


@dataclass(frozen=True)
class Due:
    """What a firer does now: ``fire``, the ticks to start (oldest first); ``handled``, the
    newest tick this decision covers (fired or passed over by the policy: the schedule's new
    cursor), None when no tick is pending; ``capped``: more ticks were missed than
    :data:`MAX_CATCH_UP`, and the oldest were left out."""

    fire: tuple[int, ...] = ()
    handled: int | None = None
    capped: bool = False


def check_cron(cron: object) -> str:
    """``cron`` (stripped) if it is a cron expression that fires at all, else a UserError
    naming the bad field and how to write one."""
    if not isinstance(cron, str) or not cron.strip():
        raise UserError(f"invalid cron expression {cron!r:.80}: expected text", hint=_CRON_HINT)
    text = " ".join(cron.split())
    fields = len(text.split())
    if fields not in (5, 6) and text.lower() not in _ALIASES:
        raise UserError(
            f"invalid cron expression {text!r:.80}: it has {fields} field(s), not 5 (or 6 "
            "with a leading seconds field)",
            hint=_CRON_HINT,
        )
    try:
        ticks = CronSim(_expanded(text), datetime.now(timezone.utc))
        next(ticks)
    except CronSimError as exc:
        raise UserError(f"invalid cron expression {text!r:.80}: {exc}", hint=_CRON_HINT) from None
    except StopIteration:  # e.g. '0 0 30 2 *' (February 30th)
        raise UserError(
            f"cron expression {text!r:.80} never fires (no date in the next 50 years matches)",
            hint=_CRON_HINT,
        ) from None
    return text


def check_timezone(name: object) -> zoneinfo.ZoneInfo:
    """The IANA time zone ``name`` (``"UTC"``, ``"Europe/Paris"``), else a UserError."""
    hint = (
        "use an IANA time zone name such as 'UTC', 'Europe/Paris' or 'America/New_York' "
        "(a system without a time zone database needs `pip install tzdata`)"
    )
    if not isinstance(name, str) or not name:
        raise UserError(f"invalid time zone {name!r:.80}: expected a name", hint=hint)
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise UserError(f"unknown time zone {name!r:.80}", hint=hint) from None


def check_catch_up(policy: object) -> CatchUp:
    """``policy`` if it is one of :data:`CATCH_UP`, else a UserError."""
    if policy not in CATCH_UP:
        raise UserError(
            f"invalid catch_up {policy!r:.40}",
            hint="use 'latest' (after downtime, fire the newest missed tick once), 'all' "
            f"(every missed tick, oldest first, at most {MAX_CATCH_UP}) or 'skip' (none)",
        )
    return policy  # type: ignore[return-value]


def next_ticks(cron: str, tz: str, after: float, n: int) -> list[int]:
    """The first ``n`` ticks strictly after ``after`` (seconds since the epoch)."""
    zone = check_timezone(tz)
    found: list[int] = []
    ticks = CronSim(_expanded(cron), datetime.fromtimestamp(after, zone))
    for moment in ticks:
        tick = int(moment.timestamp())
        # Iterating in local wall time, a start inside a repeated (fall-back) hour can give
        # back a tick before it: never return one that is not after ``after``.
        if tick > after:
            found.append(tick)
            if len(found) >= n:
                break
    return found


def due(cron: str, tz: str, policy: str, since: float, now: float) -> Due:
    """The ticks to fire at ``now`` of a schedule whose ticks up to ``since`` are handled
    (the later of its cursor and the last change of its timing), by catch-up ``policy``.

    Pending ticks are those in ``(since, now]``. One at most :data:`ON_TIME` seconds old is
    on time and fires under every policy. Of the older (missed) ones, ``latest`` fires the
    newest if no tick is on time, ``all`` fires every one (the newest
    :data:`MAX_CATCH_UP` of them, oldest first), and ``skip`` none."""
    pending, capped = _pending(cron, tz, since, now, MAX_CATCH_UP)
    if not pending:
        return Due()
    on_time = tuple(t for t in pending if now - t <= ON_TIME)
    if policy == "all":
        fire = tuple(pending)
    elif policy == "latest":
        fire = on_time or (pending[-1],)
    else:
        fire, capped = on_time, False
    return Due(fire, pending[-1], capped and policy == "all")


def tick_label(tick: int) -> str:
    """A tick as UTC ``YYYYMMDDTHHMMSSZ`` (the suffix of its run id: sorts by time)."""
    return _time.strftime("%Y%m%dT%H%M%SZ", _time.gmtime(tick))


def _pending(cron: str, tz: str, since: float, now: float, limit: int) -> tuple[list[int], bool]:
    """The newest ``limit`` ticks in ``(since, now]``, oldest first, and whether there were
    more. Walked backwards from ``now``: a schedule every second that was down for days
    costs ``limit`` steps, not one per missed second."""
    if now <= since:
        return [], False
    moment = datetime.fromtimestamp(now, check_timezone(tz))
    # cronsim's reverse walk counts a start with microseconds as its own first tick: so a
    # tick at exactly ``now`` is included.
    moment = moment.replace(microsecond=max(moment.microsecond, 1))
    found: list[int] = []
    for earlier in CronSim(_expanded(cron), moment, reverse=True):
        tick = int(earlier.timestamp())
        if tick > now:
            continue
        if tick <= since:
            break
        if len(found) == limit:
            return found[::-1], True
        found.append(tick)
    return found[::-1], False


def _expanded(cron: str) -> str:
    return _ALIASES.get(cron.lower(), cron)
