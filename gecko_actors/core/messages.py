"""Messages, tool calls, usage and agent outputs.

These cross process boundaries (Ray) and go into checkpoints, so each has an OpenAI-format
conversion both ways and an exact msgpack form (plain data, never pickle).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgpack
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import to_jsonable_python

from gecko_actors._text import clip
from gecko_actors.core.media import DEFAULT_MAX_IMAGE_BYTES, MediaResource, load_image
from gecko_actors.core.strict_json import StrictJSONError, loads_strict
from gecko_actors.exceptions import ToolArgumentsError, UserError

Role = Literal["system", "user", "assistant", "tool"]
_T = TypeVar("_T", bound="_Packable")


class _Packable(BaseModel):
    """Adds the msgpack form: the JSON-mode dump, packed. Round-trips exactly."""

    def to_msgpack(self) -> bytes:
        return msgpack.packb(self.model_dump(mode="json", exclude_none=True), use_bin_type=True)

    @classmethod
    def from_msgpack(cls: type[_T], data: bytes) -> _T:
        return cls.model_validate(msgpack.unpackb(data, raw=False))


class ContentBlock(_Packable):
    """A piece of multimodal content: text, or an image."""

    model_config = ConfigDict(frozen=True)

    type: Literal["text", "image_url"]
    text: str | None = None
    image: MediaResource | None = None

    @model_validator(mode="after")
    def _has_payload(self) -> ContentBlock:
        if self.type == "text" and self.text is None:
            raise ValueError("a text content block needs text")
        if self.type == "image_url" and self.image is None:
            raise ValueError("an image content block needs an image source")
        return self

    def to_openai(self) -> dict[str, Any]:
        if self.type == "text":
            return {"type": "text", "text": self.text}
        assert self.image is not None
        image: dict[str, Any] = {"url": self.image.to_url()}
        if self.image.detail:
            image["detail"] = self.image.detail
        return {"type": "image_url", "image_url": image}

    @classmethod
    def from_openai(cls, block: dict[str, Any]) -> ContentBlock:
        if block.get("type") == "image_url":
            image = block["image_url"]
            if isinstance(image, str):
                image = {"url": image}
            return cls(
                type="image_url", image=MediaResource.from_url(image["url"], image.get("detail"))
            )
        return cls(type="text", text=block.get("text", ""))


class ToolCall(_Packable):
    """A tool call requested by the model; ``arguments`` is the raw JSON text it produced."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    arguments: str = "{}"

    def parse_arguments(self) -> dict[str, Any]:
        """The arguments as a dict; anything else is a :class:`ToolArgumentsError`.

        The text comes from a model, so it is hostile input: besides malformed JSON and
        non-objects, it refuses what Python's ``json`` would otherwise accept or crash on —
        ``NaN``/``Infinity`` literals and numbers that overflow a float (JSON has neither), an
        integer too long for Python to read, and nesting deeper than
        :data:`MAX_ARGUMENT_DEPTH` — so a tool never receives a made-up number and the agent
        loop never sees a RecursionError. The error names the problem for the model.
        """
        problem = _argument_problem(self.arguments)
        if isinstance(problem, dict):
            return problem
        raise ToolArgumentsError(
            f"arguments for tool {_quote_name(self.name)} {problem}",
            hint="call the tool again with a JSON object of arguments",
            tool=clip(self.name, _NAME_CHARS),
            tool_call_id=self.id,
        )

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }

    @classmethod
    def from_openai(cls, call: dict[str, Any]) -> ToolCall:
        """Build from an OpenAI-format tool call. A provider may send odd shapes (a numeric
        id or name, arguments as an object): they become text here, and any problem with them
        is answered when the call is executed, instead of failing the whole reply."""
        function = call.get("function") or {}
        if not isinstance(function, dict):
            function = {}
        arguments = function.get("arguments")
        if arguments is None:
            arguments = "{}"
        elif not isinstance(arguments, str):
            # default=str: whatever it holds, it is refused later as arguments, not here.
            arguments = json.dumps(arguments, default=str)
        return cls(
            id=str(call.get("id") or ""), name=str(function.get("name") or ""), arguments=arguments
        )


MAX_ARGUMENT_DEPTH = 100
"""Deepest nesting of objects and arrays accepted in a tool call's arguments."""
_NAME_CHARS = 80  # how much of a tool name an error message quotes


def _argument_problem(arguments: str) -> dict[str, Any] | str:
    """The parsed arguments object, or the text of what is wrong with them."""
    try:
        value = loads_strict(arguments.strip() or "{}", max_depth=MAX_ARGUMENT_DEPTH)
    except StrictJSONError as exc:
        return f"are refused: {exc}"
    if not isinstance(value, dict):
        kind = type(value)
        return f"must be a JSON object, got {kind.__name__} ({_JSON_TYPES.get(kind, 'a value')})"
    return value


_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number"}
_JSON_TYPES.update({bool: "a boolean", type(None): "null"})


def _quote_name(name: str) -> str:
    """A tool name as error text: quoted, clipped (a model may send a megabyte of name)."""
    return repr(clip(name, _NAME_CHARS))


class Message(_Packable):
    """One chat message. Build with :meth:`system`, :meth:`user`, :meth:`assistant`,
    :meth:`tool_result`."""

    model_config = ConfigDict(frozen=True)

    role: Role
    content: str | list[ContentBlock] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Message:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id it answers")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages may carry tool calls")
        return self

    # --- constructors -------------------------------------------------------------------

    @classmethod
    def system(cls, text: str) -> Message:
        return cls(role="system", content=text)

    @classmethod
    def user(
        cls,
        text: str,
        images: Iterable[str | Path | bytes | MediaResource] = (),
        *,
        name: str | None = None,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        detail: Literal["auto", "low", "high"] | None = None,
    ) -> Message:
        """A user message; ``images`` are URLs, data URLs, local paths or bytes."""
        blocks = [load_image(i, max_bytes=max_image_bytes, detail=detail) for i in images]
        if not blocks:
            return cls(role="user", content=text, name=name)
        content = [ContentBlock(type="text", text=text)]
        content += [ContentBlock(type="image_url", image=image) for image in blocks]
        return cls(role="user", content=content, name=name)

    @classmethod
    def assistant(cls, text: str | None = None, tool_calls: Sequence[ToolCall] = ()) -> Message:
        return cls(role="assistant", content=text, tool_calls=list(tool_calls))

    @classmethod
    def tool_result(cls, tool_call_id: str, content: Any, tool_name: str | None = None) -> Message:
        """A tool's result; dicts and lists are sent as JSON."""
        if not isinstance(content, str):
            content = json.dumps(to_jsonable_python(content), ensure_ascii=False)
        return cls(role="tool", content=content, tool_call_id=tool_call_id, name=tool_name)

    # --- views --------------------------------------------------------------------------

    @property
    def text(self) -> str:
        """The text of the message (text blocks joined), ``""`` if none."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(b.text or "" for b in self.content if b.type == "text")

    @property
    def images(self) -> list[MediaResource]:
        if not isinstance(self.content, list):
            return []
        return [b.image for b in self.content if b.image is not None]

    # --- OpenAI format ------------------------------------------------------------------

    def to_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role}
        if isinstance(self.content, list):
            out["content"] = [block.to_openai() for block in self.content]
        else:
            out["content"] = self.content
        if self.name is not None:
            out["name"] = self.name
        if self.tool_calls:
            out["tool_calls"] = [call.to_openai() for call in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out

    @classmethod
    def from_openai(cls, data: dict[str, Any] | Any) -> Message:
        """Build from an OpenAI-format dict (or a litellm/openai response message object)."""
        if not isinstance(data, dict):
            data = data.model_dump() if hasattr(data, "model_dump") else dict(data)
        content = data.get("content")
        if isinstance(content, list):
            content = [ContentBlock.from_openai(block) for block in content]
        calls = [ToolCall.from_openai(c) for c in data.get("tool_calls") or []]
        return cls(
            role=data["role"],
            content=content,
            name=data.get("name"),
            tool_calls=calls,
            tool_call_id=data.get("tool_call_id"),
        )


class Usage(_Packable):
    """Token usage (and cost, where the provider's price is known) of one or more requests."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost: float | None = None

    def __add__(self, other: Usage) -> Usage:
        costs = [c for c in (self.cost, other.cost) if c is not None]
        return Usage(
            requests=self.requests + other.requests,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
            cost=sum(costs) if costs else None,
        )


class AgentOutput(_Packable):
    """The result of an agent run.

    ``structured`` holds the parsed ``response_model`` instance when one was requested; its
    msgpack form keeps the data (as plain JSON data), not the class.
    """

    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    structured: Any = None
    messages: list[Message] = Field(default_factory=list)
    finish_reason: Literal["stop", "max_turns"] = "stop"

    def to_msgpack(self) -> bytes:
        data = self.model_dump(mode="json", exclude_none=True, exclude={"structured"})
        if self.structured is not None:
            data["structured"] = to_jsonable_python(self.structured)
        return msgpack.packb(data, use_bin_type=True)


MessageInput = str | Message | dict[str, Any] | Sequence[Message | dict[str, Any]]


def answerable(message: Message) -> Message:
    """``message`` with tool calls that can be answered and stored.

    Each call needs a tool result message naming its id (providers reject the next request
    otherwise, and a tool message without one is invalid), but a provider or proxy may send a
    call with an empty id: it gets one. A name or arguments text holding a lone surrogate
    (``"\\ud800"`` decoded from JSON) cannot be encoded as UTF-8, so no session could store
    the turn: such characters are escaped. Without this the run would crash instead of
    answering the call with an error.
    """
    if all(call.id and _encodable(call.name + call.arguments) for call in message.tool_calls):
        return message
    calls = [
        call.model_copy(
            update={
                "id": call.id or f"call_{uuid.uuid4().hex[:24]}",
                "name": _escape_surrogates(call.name),
                "arguments": _escape_surrogates(call.arguments),
            }
        )
        for call in message.tool_calls
    ]
    return message.model_copy(update={"tool_calls": calls})


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _escape_surrogates(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def to_messages(value: MessageInput) -> list[Message]:
    """Normalise what users pass to ``run``: a str, a Message, a role/content dict,
    ``{"input": ...}``, or a list of Messages/dicts."""
    if isinstance(value, str):
        return [Message.user(value)]
    if isinstance(value, Message):
        return [value]
    if isinstance(value, dict):
        if "role" not in value and "input" in value:
            return to_messages(value["input"])
        return [_message_from_dict(value)]
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        if not value:
            raise UserError(
                "the input is an empty list",
                hint="pass a string, a Message, or a non-empty list of messages",
            )
        return [m if isinstance(m, Message) else _message_from_dict(m) for m in value]
    raise UserError(
        f"cannot use a {type(value).__name__} as agent input",
        hint="pass a string, a Message, a {'role': ..., 'content': ...} dict, "
        "{'input': ...}, or a list of those",
    )


def _message_from_dict(value: Any) -> Message:
    if not isinstance(value, dict) or "role" not in value:
        raise UserError(
            f"cannot turn {value!r:.80} into a message",
            hint="use Message objects or dicts with 'role' and 'content'",
        )
    try:
        return Message.from_openai(value)
    except (ValidationError, KeyError, TypeError) as exc:
        raise UserError(f"invalid message {value!r:.80}: {exc}") from None
