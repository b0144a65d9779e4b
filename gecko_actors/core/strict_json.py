"""Strict JSON for text from outside: a model's tool arguments and answers, a user's input file.

Python's ``json`` accepts what JSON lacks (``NaN``, ``Infinity``; ``1e400`` read as infinity)
and crashes on what it cannot hold (``RecursionError`` on deep nesting, ``ValueError`` on an
integer of more than 4,300 digits). Here each is a :class:`StrictJSONError` whose message says
what is wrong, so that nothing downstream receives a made-up number or an untyped crash.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from gecko_actors._redact import redact

_SNIPPET_CHARS = 200  # how much of malformed text an error message quotes


class StrictJSONError(ValueError):
    """The text is not acceptable JSON; the message says why (and quotes it redacted)."""


class _NonFinite(ValueError):
    """Internal: the JSON held a number that is not finite (``args[0]`` is its text)."""


def _refuse_constant(text: str) -> Any:
    raise _NonFinite(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # "1e400" reads as inf: a number nobody wrote
        raise _NonFinite(text)
    return value


def loads_strict(text: str, *, max_depth: int) -> Any:
    """Parse ``text`` as JSON with finite numbers, readable integers and at most ``max_depth``
    levels of nested objects and arrays; anything else is a :class:`StrictJSONError`."""
    too_deep = f"the JSON is nested too deeply; the limit is {max_depth} levels"
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        # Redacted before it is clipped, so that a clipped secret cannot slip through.
        snippet = redact(text[: _SNIPPET_CHARS * 5])[:_SNIPPET_CHARS]
        raise StrictJSONError(
            f"the text is not valid JSON ({exc.msg} at position {exc.pos}): {snippet!r}"
        ) from None
    except _NonFinite as exc:
        number = exc.args[0][:40]
        raise StrictJSONError(
            f"the JSON holds the number {number!r}, which is not finite: NaN, Infinity and "
            "numbers beyond ±1.8e308 are not JSON; send a finite number"
        ) from None
    except RecursionError:
        raise StrictJSONError(too_deep) from None
    except ValueError:  # an integer literal longer than Python's int_max_str_digits
        raise StrictJSONError(
            "the JSON holds an integer too long to read (more than "
            f"{sys.get_int_max_str_digits()} digits); send a smaller number"
        ) from None
    if _nested_deeper_than(value, max_depth):
        raise StrictJSONError(too_deep)
    return value


def _nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether objects/arrays in ``value`` nest deeper than ``limit`` (iteratively: no stack)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, (dict, list)):
            continue
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children)
    return False
