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

    One pass with a stack of open braces (a reply can be a megabyte of ``{``: rescanning from
    every brace would be quadratic). The first time the stack empties closes the outermost
    object that started first; if it never does, the earliest-opened object that closed wins.
    """
    opened: list[int] = []
    best: tuple[int, int] | None = None
    in_string = escaped = False
    first = text.find("{")
    for i in range(first, len(text) if first != -1 else first):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "{":
            opened.append(i)
        elif ch == "}" and opened:
            start = opened.pop()
            if not opened:
                return text[start : i + 1]
            if best is None or start < best[0]:
                best = (start, i)
    return text[best[0] : best[1] + 1] if best else None


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
