"""Tool calls against a run's effect journal (no Ray, no storage code: the journal is any
object with ``get(key)``, ``put(key, value)`` and ``MISSING``, as
``gecko_actors.checkpoint.journal.Journal`` is).

Inside a workflow node, each tool call has an idempotency key (``run/node/visit/call-k``).
A call whose key, tool and arguments match a journaled one returns the recorded result
without running the tool; any other call runs, and its result is journaled before it goes
back to the model. Only results are journaled, not errors: a call that failed runs again.

A run that journals model calls too (``Workflow(..., journal_models=True)``) records each
response under the call's number in the agent run and a hash of the conversation sent: a
re-run that sends the same conversation gets the recorded response, with no provider call
and no spend.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from gecko_actors.core.messages import Message, ToolCall
from gecko_actors.core.models import ModelResponse
from gecko_actors.core.toolbox import ToolBox
from gecko_actors.core.tools import ToolContext, ToolResult


def journal_key(call: ToolCall, context: ToolContext) -> str | None:
    """The journal key of ``call`` (``None``: a call without an idempotency key)."""
    if context.idempotency_key is None:
        return None
    arguments = hashlib.sha256(call.arguments.encode()).hexdigest()[:32]
    return f"{context.idempotency_key}/tool/{call.name}/{arguments}"


async def execute_journaled(
    toolbox: ToolBox, calls: Sequence[ToolCall], contexts: Sequence[ToolContext], journal: Any
) -> list[ToolResult]:
    """``toolbox.execute_many(calls, contexts)``, with each call's result taken from
    ``journal`` when it is recorded there, and recorded there when it is not."""
    keys = [journal_key(call, context) for call, context in zip(calls, contexts, strict=True)]
    found = await asyncio.to_thread(
        lambda: [journal.MISSING if key is None else journal.get(key) for key in keys]
    )
    results: list[ToolResult | None] = [
        None if entry is journal.MISSING else _replayed(call, entry)
        for call, entry in zip(calls, found, strict=True)
    ]
    todo = [i for i, result in enumerate(results) if result is None]
    if todo:
        ran = await toolbox.execute_many([calls[i] for i in todo], [contexts[i] for i in todo])
        records = [(keys[i], result) for i, result in zip(todo, ran, strict=True)]
        await asyncio.to_thread(_record, journal, records)
        for i, result in zip(todo, ran, strict=True):
            results[i] = result
    return [result for result in results if result is not None]


def _replayed(call: ToolCall, entry: Any) -> ToolResult:
    return ToolResult(
        content=entry["content"],
        tool=call.name,
        tool_call_id=call.id,
        metadata={"journaled": True},
    )


def _record(journal: Any, records: list[tuple[str | None, ToolResult]]) -> None:
    for key, result in records:
        if key is not None and not result.is_error:
            journal.put(key, {"content": result.content})


def model_key(context: ToolContext, count: int, messages: Sequence[Message]) -> str | None:
    """The journal key of a run's ``count``-th model call on ``messages`` (``None``: a run
    without an idempotency key). Another conversation is another call."""
    if context.idempotency_key is None:
        return None
    sent = json.dumps([m.model_dump(mode="json") for m in messages], sort_keys=True)
    digest = hashlib.sha256(sent.encode()).hexdigest()[:32]
    return f"{context.idempotency_key}/model/{count}/{digest}"


async def through_journal(
    journal: Any, key: str | None, streaming: bool, live: AsyncIterator[Any]
) -> AsyncIterator[Any]:
    """``live`` (a model call's text chunks, then its response), or the response recorded
    under ``key`` without making the call; a response made is recorded."""
    if key is None:
        async for item in live:
            yield item
        return
    found = await asyncio.to_thread(journal.get, key)
    if found is not journal.MISSING:
        response = ModelResponse.model_validate(found)
        if streaming and response.message.text:
            yield response.message.text
        yield response
        return
    async for item in live:
        if isinstance(item, ModelResponse):
            await asyncio.to_thread(journal.put, key, item.model_dump(mode="json"))
        yield item
