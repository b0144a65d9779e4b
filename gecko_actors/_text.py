"""Small checks and cuts for text from outside (URLs, tool names, settings) shown in errors."""

from __future__ import annotations

import re

__all__ = ["CONTROL_CHARACTER", "clip", "is_plain_number"]

CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")
"""A control character (NUL, newline, escape...): never part of a name, URL or pattern."""


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ending in ``...`` when cut (a model or a user may
    send a megabyte where a name belongs)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_plain_number(text: str, max_digits: int) -> bool:
    """Whether ``text`` is ASCII digits only, at most ``max_digits`` of them. ``isdigit()``
    alone accepts '²' (which ``int()`` refuses) and digits of other scripts, and a
    5,000-digit number is refused by ``int()`` itself."""
    return text.isascii() and text.isdigit() and len(text) <= max_digits
