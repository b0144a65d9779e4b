"""Toolbox actors: tools run in their own processes, shared by many agents.

A replica wraps a core :class:`ToolBox`. A sync tool that overruns its timeout cannot be
stopped inside its thread, so the replica recycles itself: it stops taking work and exits as
soon as its other calls are done, and Ray starts a fresh process (``max_restarts=-1``).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from gecko_actors import metrics
from gecko_actors.core.messages import ToolCall
from gecko_actors.core.toolbox import ToolBox
from gecko_actors.core.tools import Tool, ToolContext, ToolResult
from gecko_actors.logging import get_logger

_log = get_logger("gecko_actors.toolbox")


class ToolboxActor:
    def __init__(self, name: str, tools: list[Tool], timeout: float, max_concurrency: int) -> None:
        self.name = name
        self.box = ToolBox(tools, timeout=timeout, max_concurrency=max_concurrency)
        self._in_flight = 0
        self._recycle = False

    def describe(self) -> dict[str, Any]:
        """Schemas and descriptions, fetched once by the proxies."""
        return {
            "schemas": self.box.schemas(),
            "tools": [(t.name, t.description) for t in self.box.tools()],
            "timeout": self.box.timeout,
        }

    def stats(self) -> dict[str, dict[str, float]]:
        return self.box.stats()

    def pid(self) -> int:
        return os.getpid()

    async def execute_call(self, call: ToolCall, context: ToolContext | None) -> ToolResult:
        self._in_flight += 1
        try:
            result = await self.box.execute_call(call, context)
        finally:
            self._in_flight -= 1
        metrics.tool_call(call.name, "error" if result.is_error else "ok")
        if result.is_error and "did not finish within" in result.content:
            self._note_timeout(call.name)
        if self._recycle and self._in_flight == 0:
            # Exit after this reply is sent: Ray restarts the process without the hung thread.
            asyncio.get_running_loop().call_later(0.2, self._exit_if_idle)
        return result

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
