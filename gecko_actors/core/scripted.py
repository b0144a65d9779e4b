"""ScriptedModel: a deterministic, offline model for tests, demos and replay."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Union

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from gecko_actors.core.messages import Message, ToolCall, Usage
from gecko_actors.core.models import ModelResponse, ToolChoice, ToolSchema
from gecko_actors.exceptions import ScriptExhaustedError, UserError

Reply = Union[str, Message, ToolCall, "list[ToolCall]", dict, BaseModel, BaseException]
"""A scripted reply: text, an assistant Message, one or more tool calls, structured data
(a dict or pydantic object, sent as JSON text), or an exception to raise."""
ReplyFunction = Callable[[list[Message], list[ToolSchema]], Any]


@dataclass(frozen=True)
class ScriptedCall:
    """What the model was asked, recorded for assertions."""

    messages: list[Message]
    tools: list[ToolSchema]
    tool_choice: ToolChoice | None
    response_format: dict[str, Any] | None


class ScriptedModel:
    """A model that answers from a script instead of a provider.

    Args:
        replies: replies used in order, one per call; or a function of the conversation and
            the offered tool schemas (sync or async) that returns a reply. A sync function
            runs in a worker thread, so it may block (``time.sleep`` standing for a slow
            model) without stalling the other agents of its process.
        name: a label for logs and usage.
        stream_chunk_words: words per chunk when streaming.
        price: dollars per prompt token and per completion token, e.g. ``(0.15e-6, 0.6e-6)``:
            each reply's usage then has a cost, so dollar budgets can be tested offline
            (``None``: no cost, as for a model without a known price).

    Example:
        >>> model = ScriptedModel([ScriptedModel.call("calculator", expression="6*7"), "42"])
    """

    supports_tools = True
    supports_stream = True

    def __init__(
        self,
        replies: Iterable[Reply] | ReplyFunction,
        *,
        name: str = "scripted",
        stream_chunk_words: int = 1,
        price: tuple[float, float] | None = None,
    ) -> None:
        if callable(replies) and not isinstance(replies, (list, tuple)):
            self._function: ReplyFunction | None = replies
            self._replies: list[Reply] = []
        else:
            self._function = None
            self._replies = list(replies)
        self.name = name
        self.stream_chunk_words = max(1, stream_chunk_words)
        self.price = None if price is None else (float(price[0]), float(price[1]))
        self.calls: list[ScriptedCall] = []
        self._position = 0
        self._call_ids = 0

    def __repr__(self) -> str:
        source = "function" if self._function else f"{len(self._replies)} replies"
        return f"ScriptedModel(name={self.name!r}, {source}, calls={len(self.calls)})"

    @staticmethod
    def call(_tool_name: str, /, **arguments: Any) -> ToolCall:
        """A scripted tool call (its id is assigned when it is sent)."""
        return ToolCall(id="", name=_tool_name, arguments=json.dumps(arguments))

    @staticmethod
    def raw_call(tool_name: str, arguments: str) -> ToolCall:
        """A tool call whose arguments text is sent verbatim (e.g. malformed JSON)."""
        return ToolCall(id="", name=tool_name, arguments=arguments)

    def config(self) -> dict[str, Any]:
        """The constructor arguments: the replies (or the function) and the options."""
        return {
            "replies": self._function or list(self._replies),
            "name": self.name,
            "stream_chunk_words": self.stream_chunk_words,
            "price": None if self.price is None else list(self.price),
        }

    @property
    def remaining(self) -> int | None:
        """Replies left in the script (``None`` for a function)."""
        return None if self._function else len(self._replies) - self._position

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSchema] | None = None,
        tool_choice: ToolChoice | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> ModelResponse:
        call = ScriptedCall(list(messages), list(tools or []), tool_choice, response_format)
        self.calls.append(call)
        reply = await self._next_reply(call)
        message = self._to_message(reply)
        return ModelResponse(
            message=message,
            usage=_estimate_usage(call.messages, message, self.price),
            finish_reason="tool_calls" if message.tool_calls else "stop",
            model=self.name,
        )

    async def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSchema] | None = None,
        tool_choice: ToolChoice | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> AsyncIterator[str | ModelResponse]:
        response = await self.complete(
            messages, tools=tools, tool_choice=tool_choice, response_format=response_format
        )
        words = re.findall(r"\S+\s*|\s+", response.message.text)
        step = self.stream_chunk_words
        for i in range(0, len(words), step):
            yield "".join(words[i : i + step])
        yield response

    async def _next_reply(self, call: ScriptedCall) -> Reply:
        if self._function is not None:
            if inspect.iscoroutinefunction(self._function):
                return await self._function(call.messages, call.tools)
            # In a thread: a function that blocks (a sleep standing for a slow model) must not
            # stall the other agents of its process (an agent host holds many).
            reply = await asyncio.to_thread(self._function, call.messages, call.tools)
            return await reply if inspect.isawaitable(reply) else reply
        if self._position >= len(self._replies):
            raise ScriptExhaustedError(
                f"ScriptedModel {self.name!r} ran out of replies: it had "
                f"{len(self._replies)} and was called {len(self.calls)} times",
                hint="add a reply for every model call the run makes, or pass a function",
                model=self.name,
            )
        reply = self._replies[self._position]
        self._position += 1
        return reply

    def _to_message(self, reply: Reply) -> Message:
        if isinstance(reply, BaseException):
            raise reply
        if isinstance(reply, str):
            return Message.assistant(reply)
        if isinstance(reply, ToolCall):
            reply = [reply]
        if isinstance(reply, list) and all(isinstance(c, ToolCall) for c in reply):
            return Message.assistant(None, [self._with_id(c) for c in reply])
        if isinstance(reply, Message):
            if reply.role != "assistant":
                raise UserError(
                    f"a scripted reply must be an assistant message, not {reply.role!r}"
                )
            return reply
        if isinstance(reply, (dict, BaseModel)):
            return Message.assistant(json.dumps(to_jsonable_python(reply)))
        raise UserError(
            f"ScriptedModel cannot reply with a {type(reply).__name__}",
            hint="reply with a str, Message, ToolCall, list of ToolCalls, dict, "
            "pydantic object or exception",
        )

    def _with_id(self, call: ToolCall) -> ToolCall:
        if call.id:
            return call
        self._call_ids += 1
        return call.model_copy(update={"id": f"call_{self._call_ids}"})


def _estimate_usage(
    messages: list[Message], reply: Message, price: tuple[float, float] | None = None
) -> Usage:
    # Deterministic and cheap: about four characters per token, as providers roughly bill.
    prompt = sum(len(m.text) for m in messages) // 4 + 4 * len(messages)
    completion = len(reply.text) // 4 + sum(len(c.arguments) // 4 for c in reply.tool_calls) + 1
    return Usage(
        requests=1,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cost=None if price is None else prompt * price[0] + completion * price[1],
    )
