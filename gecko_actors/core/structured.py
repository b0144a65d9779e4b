"""Structured output: a response_model offered as a tool, and parsing of the model's answer."""

from __future__ import annotations

import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from gecko_actors.core.messages import MAX_ARGUMENT_DEPTH, Message
from gecko_actors.core.strict_json import StrictJSONError, loads_strict

OUTPUT_TOOL = "final_result"
_M = TypeVar("_M", bound=BaseModel)
_FENCE = re.compile(r"```(?:json|JSON)?\s*\n(.*?)```", re.S)


class ParseFailure(ValueError):
    """The answer did not parse; the message is written for the model to correct itself."""


def output_tool_schema(response_model: type[BaseModel]) -> dict[str, Any]:
    """The extraction tool the model calls to deliver its final, structured answer."""
    schema = response_model.model_json_schema()
    schema.pop("title", None)
    doc = (response_model.__doc__ or "").strip()
    description = "Give the final answer in this structure." + (f" {doc}" if doc else "")
    return {
        "type": "function",
        "function": {"name": OUTPUT_TOOL, "description": description, "parameters": schema},
    }


def parse_reply(message: Message, response_model: type[_M]) -> _M:
    """Parse an assistant message into ``response_model``.

    Order: the output tool's arguments, then the text as raw JSON, then a fenced ```json
    block, then the first balanced ``{...}``. Raises :class:`ParseFailure` naming what failed.
    """
    for call in message.tool_calls:
        if call.name == OUTPUT_TOOL:
            return _validate(call.arguments, response_model)
    text = message.text.strip()
    if not text:
        raise ParseFailure(f"the reply is empty; call {OUTPUT_TOOL!r} with the answer")
    errors: list[str] = []
    for candidate in _candidates(text):
        try:
            return _validate(candidate, response_model)
        except ParseFailure as exc:
            errors.append(str(exc))
    raise ParseFailure(errors[0] if errors else "the reply holds no JSON object")


def _candidates(text: str) -> list[str]:
    found = [text]
    found += [m.group(1).strip() for m in _FENCE.finditer(text)]
    balanced = _first_object(text)
    if balanced:
        found.append(balanced)
    return list(dict.fromkeys(found))


def _first_object(text: str) -> str | None:
    """The first balanced ``{...}`` in ``text``, skipping braces inside JSON strings.

    Each scan is one pass with a stack of open braces (a reply can be a megabyte of ``{``:
    rescanning from every brace would be quadratic). A quote in prose before the object (``I
    used "{" here``) can make a scan read the rest as a string; only then is it worth scanning
    again from the next brace, and that is done a bounded number of times.
    """
    start = text.find("{")
    for _ in range(_RESCANS):
        if start == -1:
            return None
        found, saw_string = _scan_object(text, start)
        if found is not None or not saw_string:
            return found
        start = text.find("{", start + 1)
    return None


_RESCANS = 8


def _scan_object(text: str, start: int) -> tuple[str | None, bool]:
    """The first balanced object found scanning from ``start`` (the outermost one that closes
    first, else the earliest-opened one that closed), and whether a string was entered."""
    opened: list[int] = []
    best: tuple[int, int] | None = None
    in_string = escaped = saw_string = False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = saw_string = True
        elif ch == "{":
            opened.append(i)
        elif ch == "}" and opened:
            begin = opened.pop()
            if not opened:
                return text[begin : i + 1], saw_string
            if best is None or begin < best[0]:
                best = (begin, i)
    return (text[best[0] : best[1] + 1] if best else None), saw_string


def _validate(raw: str, response_model: type[_M]) -> _M:
    try:
        data = loads_strict(raw, max_depth=MAX_ARGUMENT_DEPTH)
    except StrictJSONError as exc:
        raise ParseFailure(str(exc)) from None
    try:
        return response_model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise ParseFailure(f"does not match {response_model.__name__}: {problems}") from None
