"""The model protocol: the one narrow interface between the engine and any LLM.

A model has two methods: :meth:`ChatModel.complete` for one completion and
:meth:`ChatModel.stream` for the same completion delivered as text chunks followed by the full
:class:`ModelResponse`. Capabilities are plain attributes a model may declare
(``supports_tools``, ``supports_stream``); the engine assumes both when they are absent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from gecko_actors.core.messages import Message, Usage

ToolSchema = dict[str, Any]
ToolChoice = str | dict[str, Any]


class ModelResponse(BaseModel):
    """One completion: the assistant message (text and/or tool calls) and its usage."""

    model_config = ConfigDict(frozen=True)

    message: Message
    usage: Usage = Field(default_factory=Usage)
    finish_reason: str | None = None
    model: str | None = None


@runtime_checkable
class ChatModel(Protocol):
    """What the engine needs from a model.

    ``stream`` yields ``str`` text chunks as they arrive and ends with exactly one
    :class:`ModelResponse` holding the whole message (including any tool calls) and usage.
    """

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSchema] | None = None,
        tool_choice: ToolChoice | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> ModelResponse: ...

    def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSchema] | None = None,
        tool_choice: ToolChoice | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> AsyncIterator[str | ModelResponse]: ...


def supports(model: object, capability: str) -> bool:
    """Read a declared capability (``tools`` or ``stream``); undeclared means supported."""
    return bool(getattr(model, f"supports_{capability}", True))
