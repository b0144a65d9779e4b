"""Tool calls that wait for a human (``@tool(approval=True)``), and the way a turn's tool
calls are run: approved ones first asked, each result taken from (or put in) the run's
effect journal inside a workflow node (``journaled.py``). No Ray, no storage code.

A call to an approval tool in a workflow node parks the node's branch
(:class:`~gecko_actors.exceptions.NodeInterrupt`) with ``{"tool", "arguments"}``. The
answer, given with ``run.respond(node, answer)``, is one of:

- ``True`` or ``"approve"``: the call runs as the model made it;
- ``False``, ``"reject"`` or ``{"reject": "why"}``: it does not run, and the model is told
  (with the reason);
- ``{"arguments": {...}}``: it runs with these arguments instead.

Outside a workflow node nobody can be asked: the call is refused, and the model is told.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from gecko_actors.core.interrupt import NodeInterrupt
from gecko_actors.core.journaled import execute_journaled
from gecko_actors.core.messages import ToolCall
from gecko_actors.core.toolbox import ToolBox
from gecko_actors.core.tools import ToolContext, ToolResult
from gecko_actors.exceptions import UserError

__all__ = ["run_calls"]


async def run_calls(
    toolbox: Any, calls: Sequence[ToolCall], contexts: Sequence[ToolContext], journal: Any
) -> list[ToolResult]:
    """The results of one turn's ``calls`` (one context each), in order: approval tools
    asked first, then every call that may run, journaled when ``journal`` is given."""
    results: list[ToolResult | None] = [None] * len(calls)
    todo = list(range(len(calls)))
    if any(_asks(toolbox, call) for call in calls):
        todo, calls = await _decide(toolbox, calls, contexts, journal, results)
    chosen, their = [calls[i] for i in todo], [contexts[i] for i in todo]
    if chosen and journal is None:
        ran = await toolbox.execute_many(chosen, their)
    elif chosen:
        ran = await execute_journaled(toolbox, chosen, their, journal)
    else:
        ran = []
    for i, result in zip(todo, ran, strict=True):
        results[i] = result
    return [result for result in results if result is not None]


def _asks(toolbox: Any, call: ToolCall) -> bool:
    if not isinstance(toolbox, ToolBox):  # a RemoteToolBox's tools live elsewhere: none ask
        return False
    found = toolbox._tools.get(call.name)
    return bool(getattr(found, "approval", False))


async def _decide(
    toolbox: Any,
    calls: Sequence[ToolCall],
    contexts: Sequence[ToolContext],
    journal: Any,
    results: list[ToolResult | None],
) -> tuple[list[int], list[ToolCall]]:
    """Which calls may run (with their arguments as approved); refused ones get a result in
    ``results``. Raises NodeInterrupt for the first call still waiting for its answer."""
    todo, calls = [], list(calls)
    for i, (call, context) in enumerate(zip(calls, contexts, strict=True)):
        if not _asks(toolbox, call):
            todo.append(i)
            continue
        if journal is None or context.idempotency_key is None:
            results[i] = _refused(call, "it needs a human's approval, asked only in a workflow")
            continue
        key = f"{context.idempotency_key}/approval"
        found = await asyncio.to_thread(journal.get, key)
        if found is journal.MISSING:
            raise NodeInterrupt(key, {"tool": call.name, "arguments": _arguments(call)})
        verdict = _verdict(found["answer"], call)
        if isinstance(verdict, str):
            results[i] = _refused(call, verdict)
        else:
            calls[i] = verdict
            todo.append(i)
    return todo, calls


def _verdict(answer: Any, call: ToolCall) -> ToolCall | str:
    """The call to run, or why it was refused."""
    if answer is True or answer == "approve":
        return call
    if answer is False or answer == "reject":
        return "a human rejected it"
    if isinstance(answer, dict) and "reject" in answer:
        return f"a human rejected it: {answer['reject']}"
    if isinstance(answer, dict) and isinstance(answer.get("arguments"), dict):
        return call.model_copy(update={"arguments": json.dumps(answer["arguments"])})
    raise UserError(
        f"the answer to the call of tool {call.name!r} is {answer!r:.80}, not a verdict",
        hint='answer True / "approve", False / "reject" / {"reject": "why"}, or '
        '{"arguments": {...}} to run it with other arguments',
    )


def _arguments(call: ToolCall) -> Any:
    try:
        return json.loads(call.arguments)
    except ValueError:
        return call.arguments


def _refused(call: ToolCall, why: str) -> ToolResult:
    return ToolResult(
        content=f"Error: the call of {call.name!r} was not run: {why}.",
        is_error=True,
        tool=call.name,
        tool_call_id=call.id,
    )
