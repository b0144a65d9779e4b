"""Durations people write: ``30d``, ``12h``, ``90m``, ``45s`` (a retention, a cut-off).

One parser for every place that takes one (``gecko-actors gc --older-than``,
``Workflow(retention=...)``), so they accept the same forms and refuse the same way.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Any

from gecko_actors.exceptions import UserError

__all__ = ["duration_seconds", "parse_duration"]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_FORMS = "give a number and a unit: 30d (days), 12h (hours), 90m (minutes) or 45s"


def parse_duration(text: str, what: str = "--older-than") -> float:
    """``30d``, ``12h``, ``90m`` or ``45s`` as seconds (case and surrounding blanks do not
    matter); anything else is a UserError naming ``what`` (the option or argument)."""
    match = _DURATION.fullmatch(text.strip().lower()) if isinstance(text, str) else None
    if match is None:
        raise UserError(f"{what} {text!r:.40} is not a duration", hint=_FORMS)
    return float(match[1]) * _UNITS[match[2]]


def duration_seconds(value: Any, what: str) -> float:
    """``value`` (a duration text such as ``"30d"``, a :class:`~datetime.timedelta`, or a
    number of seconds) as a positive, finite number of seconds; anything else is a
    UserError naming ``what``."""
    if isinstance(value, str):
        seconds = parse_duration(value, what)
    elif isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif type(value) in (int, float):  # not a bool: True is no duration
        seconds = float(value)
    else:
        raise UserError(
            f"{what} must be a duration, got {type(value).__name__}",
            hint=f"{_FORMS}; or a datetime.timedelta, or a number of seconds",
        )
    if not math.isfinite(seconds) or seconds <= 0:
        raise UserError(f"{what} must be a positive duration, got {value!r:.40}", hint=_FORMS)
    return seconds
