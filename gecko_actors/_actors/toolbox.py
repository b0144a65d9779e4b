"""Toolbox actors: tools run in their own processes, shared by many agents.

A replica wraps a core :class:`ToolBox`. A sync tool that overruns its timeout cannot be
stopped inside its thread, so the replica recycles itself: it stops taking work and exits as
soon as its other calls are done, and Ray starts a fresh process (``max_restarts=-1``).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from gecko_actors import metrics
from gecko_actors.core.messages import ToolCall
from gecko_actors.core.toolbox import ToolBox
from gecko_actors.core.tools import Tool, ToolContext, ToolResult
from gecko_actors.exceptions import ToolTimeoutError
from gecko_actors.logging import get_logger

_log = get_logger("gecko_actors.toolbox")


class MeteredToolBox(ToolBox):
    """A :class:`ToolBox` whose calls count in the tool metrics: a toolbox actor's, and the
    tools of a hosted agent (run inside its host)."""

    @classmethod
    def of(cls, box: ToolBox) -> MeteredToolBox:
        """A metered copy of ``box``: its tools and limits."""
        metered = cls(timeout=box.timeout, max_concurrency=box.max_concurrency)
        for found in box.tools():
            metered.register(found)
        return metered

    async def execute_call(self, call: ToolCall, context: ToolContext | None = None) -> ToolResult:
        # A name the model made up is not a metric label: each would be a new time series.
        label = call.name if self.has(call.name) else "<unknown>"
        try:
            result = await super().execute_call(call, context)
        except asyncio.CancelledError:
            metrics.tool_call(label, "cancelled")
            raise
        metrics.tool_call(label, "error" if result.is_error else "ok")
        return result


class ToolboxActor:
    """One replica: a core ToolBox served to many agents at once (an async actor)."""

    def __init__(self, name: str, tools: list[Tool], timeout: float, max_concurrency: int) -> None:
        self.name = name
        self.box = MeteredToolBox(tools, timeout=timeout, max_concurrency=max_concurrency)
        self._in_flight = 0
        self._recycle = False

    def describe(self) -> dict[str, Any]:
        """Schemas and descriptions, fetched once by the proxies."""
        return {
            "schemas": self.box.schemas(),
            "tools": [(t.name, t.description) for t in self.box.tools()],
            "timeout": self.box.timeout,
            # A tool's own timeout wins over the box's: the proxies' deadlines follow it.
            "tool_timeouts": {t.name: t.timeout for t in self.box.tools() if t.timeout},
        }

    def stats(self) -> dict[str, dict[str, float]]:
        return self.box.stats()

    def pid(self) -> int:
        return os.getpid()

    async def execute_call(self, call: ToolCall, context: ToolContext | None) -> ToolResult:
        """Run one tool call. A ``ray.cancel`` of this task cancels the call; the task ends
        once the tool has stopped (a sync tool: once its thread is done, or at its timeout,
        when the thread is abandoned and this process recycled)."""
        self._in_flight += 1
        started = time.monotonic()
        try:
            result = await self.box.execute_call(call, context)  # counted in the metrics
        except asyncio.CancelledError:
            if time.monotonic() - started >= self._limit(call.name):
                self._note_timeout(call.name)  # it waited up to the deadline: maybe abandoned
            raise
        finally:
            self._in_flight -= 1
            self._exit_soon_if_recycling()
        if result.metadata.get("error") == ToolTimeoutError.error_code:
            self._note_timeout(call.name)
            self._exit_soon_if_recycling()
        return result

    def _limit(self, tool_name: str) -> float:
        found = self.box.get(tool_name) if self.box.has(tool_name) else None
        return found.timeout if found is not None and found.timeout else self.box.timeout

    def _exit_soon_if_recycling(self) -> None:
        if self._recycle and self._in_flight == 0:
            # Exit after this reply is sent: Ray restarts the process without the hung thread.
            asyncio.get_running_loop().call_later(0.2, self._exit_if_idle)

    def _exit_if_idle(self) -> None:
        # A call that arrived meanwhile finishes first; the last one to finish exits.
        if self._in_flight == 0:
            os._exit(1)

    def _note_timeout(self, tool_name: str) -> None:
        found = self.box.get(tool_name) if self.box.has(tool_name) else None
        if found is not None and not found.is_async:
            _log.warning(
                "sync tool overran its timeout; recycling the toolbox process",
                toolbox=self.name,
                tool=tool_name,
            )
            self._recycle = True
