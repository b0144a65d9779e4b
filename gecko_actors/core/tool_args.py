"""Checking a tool's arguments, and the error text a tool call sends back to the model.

Arguments come from a model, so validation refuses what would call the tool with a value the
model never sent: NaN and infinite numbers anywhere in the arguments (:func:`non_finite_path`),
and ``true``/``false`` for a number (:func:`no_bool_numbers`; numeric strings such as ``"3"``
are still read as numbers). Error text sent back to the model is redacted like the logs and
cut to :data:`MAX_ERROR_CHARS` (:func:`error_text`).

Ray-free and pydantic-only, so that :mod:`gecko_actors.core.tools` keeps :class:`Tool`,
``@tool`` and execution.
"""

from __future__ import annotations

import collections
import collections.abc
import functools
import math
import operator
import types
import typing
from decimal import Decimal
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ValidationError
from pydantic_core import PydanticCustomError

from gecko_actors._redact import redact
from gecko_actors._text import clip

__all__ = [
    "MAX_ERROR_CHARS",
    "describe_exception",
    "error_text",
    "no_bool_numbers",
    "non_finite_path",
    "validation_text",
]

MAX_ERROR_CHARS = 2000
"""The longest error text a tool call sends back to the model (the rest is cut)."""
_MAX_ERRORS_LISTED = 5  # validation errors quoted in one result; the rest are counted
_CUT = " ... (truncated)"
_LOC_CHARS = 64  # how much of one field name (a model may invent a megabyte-long key) is quoted


# --- error text ------------------------------------------------------------------------------


def error_text(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` made safe to send to a model: redacted like the logs, cut to ``limit``
    characters, and with lone surrogates escaped (they cannot be encoded as UTF-8)."""
    # Redact before cutting, so that a secret cut in half cannot slip through; the first cut
    # only bounds the cost of redacting a huge exception message.
    text = redact(text[: limit * 10])
    if len(text) > limit:
        text = text[: limit - len(_CUT)] + _CUT
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def describe_exception(exc: BaseException) -> str:
    """``"TypeName: message"`` for an exception, even one whose ``__str__`` itself fails."""
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not turn an error result into a crash
        message = "<its message could not be rendered>"
    return f"{type(exc).__name__}: {message[: MAX_ERROR_CHARS * 10]}"


def validation_text(exc: ValidationError) -> str:
    """A pydantic error as ``"where: what; ..."``, at most a few errors quoted (the rest
    counted), with odd or huge field names quoted and clipped."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    parts = []
    for err in errors[:_MAX_ERRORS_LISTED]:
        where = ".".join(_loc_part(p) for p in err["loc"]) or "arguments"
        parts.append(f"{where}: {err['msg']}")
    if len(errors) > _MAX_ERRORS_LISTED:
        parts.append(f"and {len(errors) - _MAX_ERRORS_LISTED} more errors")
    return "; ".join(parts)


def _loc_part(part: str | int) -> str:
    """One step of an error's location: a field name as is, an odd key (empty, spaces,
    punctuation: a model may invent any) quoted so that the model can tell which it was."""
    if isinstance(part, int) or part.isidentifier():
        return clip(str(part), _LOC_CHARS)
    return repr(clip(part, _LOC_CHARS))


# --- NaN and Infinity ------------------------------------------------------------------------


def non_finite_path(kwargs: dict[str, Any]) -> str | None:
    """Where a NaN or infinite number sits in validated arguments (``"a.b.0"``), if anywhere.

    Iterative, so that deep values cannot exhaust the stack, and each container is visited
    once, so that a self-referencing one (passed from Python) cannot loop forever.
    """
    stack: list[tuple[Any, str]] = [
        (value, clip(name, _LOC_CHARS)) for name, value in kwargs.items()
    ]
    seen: set[int] = set()
    while stack:
        value, where = stack.pop()
        if isinstance(value, (dict, list, tuple, set, frozenset, BaseModel)):
            if id(value) in seen:
                continue
            seen.add(id(value))
        if isinstance(value, (float, Decimal)):
            if not (math.isfinite(value) if isinstance(value, float) else value.is_finite()):
                return where
        elif isinstance(value, dict):
            for key, item in value.items():
                stack.append((key, where))
                stack.append((item, f"{where}.{clip(str(key), _LOC_CHARS)}"))
        elif isinstance(value, (list, tuple, set, frozenset)):
            stack.extend((item, f"{where}.{i}") for i, item in enumerate(value))
        elif isinstance(value, BaseModel):
            fields = type(value).model_fields
            stack.extend((getattr(value, f), f"{where}.{f}") for f in fields)
    return None


# --- no booleans as numbers ------------------------------------------------------------------


def _refuse_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise PydanticCustomError(
            "bool_not_number", "Input should be a number, not a boolean (true/false)"
        )
    return value


_NO_BOOL = BeforeValidator(_refuse_bool)


def no_bool_numbers(annotation: Any) -> Any:
    """``annotation`` with every ``int``/``float`` in it refusing ``true``/``false``.

    Pydantic's lax mode (kept: numeric strings such as ``"3"`` are fine) reads a boolean as
    1 or 0, which would call the tool with a number the model never sent. Plain types, a
    ``NewType`` of one, numeric ``Literal`` types, unions, and containers (built-in,
    ``collections`` and ``collections.abc`` ones: ``Sequence[int]``, ``Mapping[str, float]``,
    ``Iterable[int]``...) are rewritten; anything else is left as declared (so are the values
    of a ``defaultdict`` or a ``Counter``). An ``Iterable[X]`` becomes ``list[X]``: the same
    JSON schema (an array), validated whole before the call and handed to the tool as a list.
    """
    if annotation is int or annotation is float:
        return Annotated[annotation, _NO_BOOL]
    if isinstance(annotation, typing.NewType):
        # A NewType is its supertype at runtime; pydantic validates it as such.
        return no_bool_numbers(annotation.__supertype__)
    origin, args = get_origin(annotation), get_args(annotation)
    if not args:
        return annotation
    if origin is Annotated:
        return Annotated[(no_bool_numbers(args[0]), *annotation.__metadata__)]
    if origin is Literal:
        return _literal_without_bools(annotation, args)
    if origin in (Union, types.UnionType):
        # A union that names bool means a boolean is a valid answer: leave it alone.
        if bool in args:
            return annotation
        return functools.reduce(operator.or_, [no_bool_numbers(a) for a in args])
    if _is_container(origin):
        return _container_without_bools(origin, args)
    return annotation


def _literal_without_bools(annotation: Any, values: tuple[Any, ...]) -> Any:
    """``Literal[1, 2]`` refusing ``true`` (pydantic reads it as 1, since ``True == 1``),
    unless a boolean is one of the values."""
    if any(isinstance(v, bool) for v in values):
        return annotation
    if any(isinstance(v, (int, float)) for v in values):
        return Annotated[annotation, _NO_BOOL]
    return annotation


def _is_container(origin: Any) -> bool:
    """Whether a generic's origin holds items that can be rewritten: a built-in,
    ``collections`` or ``collections.abc`` class that is iterable (``Callable[[int], str]``
    and ``type[int]`` are not)."""
    # A defaultdict's default factory is inferred from its declared value type, which pydantic
    # cannot do for a rewritten one: it is left as declared.
    if origin is collections.defaultdict:
        return False
    return isinstance(origin, type) and issubclass(origin, collections.abc.Iterable)


def _container_without_bools(origin: Any, args: tuple[Any, ...]) -> Any:
    """``origin[args]`` with the items refusing booleans."""
    items = tuple(no_bool_numbers(a) for a in args)
    if origin is collections.abc.Iterable:
        # Pydantic checks an Iterable's items lazily, as the tool iterates: a bad item would
        # fail inside the tool, after it started, and escape the NaN check. A list is checked
        # whole, before the call, and is an Iterable.
        return list[items[0]]  # type: ignore[valid-type]
    return origin[items]
