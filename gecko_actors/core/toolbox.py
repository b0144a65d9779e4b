"""ToolBox: a set of tools with timeouts, a concurrency limit and per-tool statistics."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from gecko_actors.core import tracing
from gecko_actors.core.messages import ToolCall
from gecko_actors.core.tools import Tool, ToolContext, ToolResult, error_text, tool
from gecko_actors.exceptions import (
    ToolArgumentsError,
    ToolNotFoundError,
    ToolTimeoutError,
    UserError,
)

T = TypeVar("T")
_NAME_CHARS = 80  # how much of an unknown tool name an error message quotes


@dataclass
class ToolStats:
    """How one tool has fared in this toolbox."""

    executions: int = 0
    errors: int = 0
    timeouts: int = 0
    total_time: float = 0.0

    @property
    def avg_time(self) -> float:
        return self.total_time / self.executions if self.executions else 0.0

    @property
    def success_rate(self) -> float:
        return (self.executions - self.errors) / self.executions if self.executions else 1.0

    def as_dict(self) -> dict[str, float]:
        return {
            "executions": self.executions,
            "errors": self.errors,
            "timeouts": self.timeouts,
            "total_time": self.total_time,
            "avg_time": self.avg_time,
            "success_rate": self.success_rate,
        }


class ToolBox:
    """Tools by name, executed with a timeout and at most ``max_concurrency`` at once.

    Registering a tool whose name is taken replaces the old one (last wins). Sync tools run in
    worker threads; a sync tool that overruns its timeout is abandoned, not killed (a thread
    cannot be), so CPU-heavy or hang-prone tools belong in a toolbox actor.

    Cancelling a call (the task awaiting :meth:`execute` or :meth:`execute_many`) cancels an
    async tool at its next ``await``. A sync tool cannot be interrupted: the cancellation
    waits for its thread to finish, at most until the call's timeout, so that when
    CancelledError comes out the tool has stopped, or has overrun its timeout and is abandoned
    exactly as a timed-out call is.

    Args:
        tools: tools, or plain functions (wrapped with :func:`tool`).
        timeout: default seconds per call (a tool's own ``timeout`` wins).
        max_concurrency: calls running at once across :meth:`execute_many` and others.
    """

    def __init__(
        self,
        tools: Iterable[Tool | Callable[..., Any]] = (),
        *,
        timeout: float = 30.0,
        max_concurrency: int = 5,
    ) -> None:
        if timeout <= 0 or max_concurrency <= 0:
            raise UserError(
                "ToolBox timeout and max_concurrency must be positive",
                hint=f"got timeout={timeout}, max_concurrency={max_concurrency}",
            )
        self.timeout = timeout
        self.max_concurrency = max_concurrency
        self._tools: dict[str, Tool] = {}
        self._stats: dict[str, ToolStats] = {}
        self._semaphore: asyncio.Semaphore | None = None
        self._semaphore_loop: asyncio.AbstractEventLoop | None = None
        for item in tools:
            self.register(item)

    def __repr__(self) -> str:
        return f"ToolBox({self.names()!r}, timeout={self.timeout})"

    def __getstate__(self) -> dict[str, Any]:
        # Loop-bound primitives stay behind when a toolbox is shipped to another process.
        return {**self.__dict__, "_semaphore": None, "_semaphore_loop": None}

    def __len__(self) -> int:
        return len(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    # --- registry -----------------------------------------------------------------------

    def register(self, item: Tool | Callable[..., Any]) -> Tool:
        if not isinstance(item, Tool):
            if not callable(item):
                raise UserError(
                    f"{item!r} is not a tool or a function",
                    hint="decorate functions with @tool or pass Tool objects",
                )
            item = tool(item)
        self._tools[item.name] = item
        self._stats.setdefault(item.name, ToolStats())
        return item

    def unregister(self, name: str) -> Tool:
        try:
            return self._tools.pop(name)
        except KeyError:
            raise self._not_found(name) from None

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            raise self._not_found(name) from None

    def has(self, name: str) -> bool:
        return name in self._tools

    def names(self) -> list[str]:
        return list(self._tools)

    def tools(self) -> list[Tool]:
        return list(self._tools.values())

    def schemas(self) -> list[dict[str, Any]]:
        """The tools in OpenAI's function-calling format."""
        return [t.openai_schema() for t in self._tools.values()]

    def stats(self) -> dict[str, dict[str, float]]:
        return {name: s.as_dict() for name, s in self._stats.items()}

    def _not_found(self, name: str) -> ToolNotFoundError:
        # Clipped: the name may come from a model, and be a megabyte long.
        shown = name if len(name) <= _NAME_CHARS else name[: _NAME_CHARS - 3] + "..."
        return ToolNotFoundError(
            f"tool {shown!r} is not registered; available: {self.names()}",
            hint="call one of the available tools",
            tool=shown,
        )

    # --- execution ----------------------------------------------------------------------

    async def execute(
        self,
        name: str,
        arguments: dict[str, Any],
        *,
        timeout: float | None = None,
        context: ToolContext | None = None,
    ) -> ToolResult:
        """Run one tool. Raises :class:`ToolNotFoundError` and :class:`ToolTimeoutError`; bad
        arguments and exceptions inside the tool come back as an error result."""
        found = self.get(name)
        limit = next(t for t in (timeout, found.timeout, self.timeout) if t is not None)
        stats = self._stats.setdefault(name, ToolStats())
        start = time.perf_counter()
        try:
            async with self._limit():
                # The deadline bounds how long a cancelled sync tool's thread is waited for.
                deadline = asyncio.get_running_loop().time() + limit
                result = await asyncio.wait_for(
                    found.execute(arguments, context, deadline=deadline), limit
                )
        except asyncio.TimeoutError:
            stats.executions += 1
            stats.errors += 1
            stats.timeouts += 1
            stats.total_time += time.perf_counter() - start
            raise ToolTimeoutError(
                f"tool {name!r} did not finish within {limit}s",
                hint="make the tool faster or raise its timeout",
                tool=name,
                timeout=limit,
            ) from None
        stats.executions += 1
        stats.errors += int(result.is_error)
        stats.total_time += time.perf_counter() - start
        return result

    async def execute_call(self, call: ToolCall, context: ToolContext | None = None) -> ToolResult:
        """Run a model's tool call; every failure (unknown tool, malformed JSON, bad
        arguments, timeout, exception) becomes an error result for the model, and the tool is
        never run with arguments it did not validly receive.

        The name is checked first: a call to an unknown tool is counted nowhere, so a model
        inventing names cannot grow :meth:`stats` without bound.
        """
        context = _with_call_id(context, call.id)
        with tracing.span(f"execute_tool {call.name}", _attributes(call, context), context.trace):
            result = await self._execute_call(call, context)
            tracing.tool_result(result)
            return result

    async def _execute_call(self, call: ToolCall, context: ToolContext) -> ToolResult:
        try:
            if not self.has(call.name):
                raise self._not_found(call.name)
            arguments = call.parse_arguments()
            return await self.execute(call.name, arguments, context=context)
        except (ToolArgumentsError, ToolNotFoundError, ToolTimeoutError) as exc:
            if isinstance(exc, ToolArgumentsError):
                stats = self._stats.setdefault(call.name, ToolStats())
                stats.executions += 1
                stats.errors += 1
            return ToolResult(
                content=error_text(f"Error: {exc}"),
                is_error=True,
                tool=call.name,
                tool_call_id=call.id,
                metadata={"error": exc.error_code},
            )

    async def execute_many(
        self, calls: Sequence[ToolCall], context: ToolContext | Sequence[ToolContext] | None = None
    ) -> list[ToolResult]:
        """Run tool calls concurrently (bounded by ``max_concurrency``); results in call order.

        ``context`` is one context for every call, or one per call (each with its own
        idempotency key). Cancelling the caller cancels every call and returns once all of
        them have stopped.
        """
        contexts = per_call(context, len(calls))
        return await gather_all(
            self.execute_call(c, x) for c, x in zip(calls, contexts, strict=True)
        )

    def _limit(self) -> asyncio.Semaphore:
        # A semaphore belongs to one event loop; sync callers get a new loop per run.
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._semaphore_loop is not loop:
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
            self._semaphore_loop = loop
        return self._semaphore


async def gather_all(awaitables: Iterable[Awaitable[T]]) -> list[T]:
    """``asyncio.gather``, except that when it is cancelled (or one awaitable fails) it
    cancels the others and waits until every one has finished before raising.

    Plain ``gather`` raises as soon as its first child is cancelled, while a sibling may still
    be running (a sync tool waiting for its thread): "cancelled" would not mean "stopped".
    """
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:  # re-raised below, once every sibling has stopped
        for task in tasks:
            # Once is enough: a second cancel would interrupt a sibling's own cleanup.
            if not task.done() and not task.cancelling():
                task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for task in tasks:  # their outcomes are superseded by the error being raised
            if not task.cancelled():
                task.exception()
        raise


def per_call(
    context: ToolContext | Sequence[ToolContext] | None, count: int
) -> list[ToolContext | None]:
    """``execute_many``'s context argument as one context per call."""
    if context is None or isinstance(context, ToolContext):
        return [context] * count
    contexts = list(context)
    if len(contexts) != count:
        raise UserError(
            f"got {len(contexts)} tool contexts for {count} tool calls",
            hint="pass one ToolContext for all calls, or exactly one per call",
        )
    return contexts


def _attributes(call: ToolCall, context: ToolContext) -> dict[str, Any]:
    return {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": call.name,
        "gen_ai.tool.call.id": call.id,
        "gen_ai.tool.type": "function",
        "gen_ai.tool.call.arguments": tracing.content(call.arguments),
        "gecko.agent": context.agent,
        "gecko.run_id": context.run_id,
    }


def _with_call_id(context: ToolContext | None, call_id: str) -> ToolContext:
    return dataclasses.replace(context or ToolContext(), tool_call_id=call_id)
