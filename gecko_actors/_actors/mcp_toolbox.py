"""Toolbox actors over an MCP server: each replica owns one MCP session (a stdio server's
process, or an HTTP connection), started when the replica starts, lists the server's tools
into its toolbox, and runs calls through it with the toolbox's timeouts, concurrency bound
and stats. The session is kept alive with a ping every ``keepalive`` seconds: a server found
dead while idle is started again before the next call needs it. A call that finds the
session broken goes back to the model as a tool error, and the next call starts a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from gecko_actors._actors.toolbox import MeteredToolBox, ToolboxActor
from gecko_actors.core.mcp_tools import mcp_tools
from gecko_actors.core.messages import ToolCall
from gecko_actors.core.tools import ToolContext, ToolResult
from gecko_actors.logging import get_logger

_log = get_logger("gecko_actors.toolbox")
_RESTART_BACKOFF = 0.5  # seconds between two starts of a session that keeps failing


class MCPToolboxActor(ToolboxActor):
    """One replica over MCP server ``server`` (``mcp_tools``' keyword arguments: names of
    secrets only, their values are read from this process's environment)."""

    def __init__(
        self,
        name: str,
        server: dict[str, Any],
        timeout: float,
        max_concurrency: int,
        keepalive: float = 30.0,
    ) -> None:
        super().__init__(name, [], timeout, max_concurrency)
        self.server, self.timeout, self.max_concurrency = server, timeout, max_concurrency
        self.keepalive = keepalive
        self.sessions = 0  # how many sessions this replica started
        self._ready: asyncio.Future[None] | None = None
        self._broken: asyncio.Event | None = None
        self._holder: asyncio.Task[None] | None = None

    async def _started(self) -> None:
        """Wait until a session is up (starting one if none is): its error if it fails."""
        if self._holder is None or self._holder.done():
            loop = asyncio.get_running_loop()
            self._ready, self._broken = loop.create_future(), asyncio.Event()
            self._holder = asyncio.create_task(self._hold(self._ready, self._broken))
        assert self._ready is not None
        await asyncio.shield(self._ready)

    async def _hold(self, ready: asyncio.Future[None], broken: asyncio.Event) -> None:
        """Keep one session open until it breaks (one task: the SDK's session lives in it)."""
        try:
            async with mcp_tools(**self.server, timeout=self.timeout) as tools:
                self.box = MeteredToolBox(
                    tools, timeout=self.timeout, max_concurrency=self.max_concurrency
                )
                self.sessions += 1
                ready.set_result(None)
                await self._watch(tools[0].session if tools else None, broken)
        except Exception as exc:
            if not ready.done():
                ready.set_exception(exc)
            else:
                _log.warning("mcp_session_ended", toolbox=self.name, error=str(exc)[:200])

    async def _watch(self, session: Any, broken: asyncio.Event) -> None:
        """Until the session breaks: ping the server every ``keepalive`` seconds; one that
        does not answer is gone, and the next call starts a new session."""
        while session is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(broken.wait(), self.keepalive)
                return
            try:
                await asyncio.wait_for(session.client.send_ping(), self.timeout)
            except Exception:
                session.broken = True
                _log.warning("mcp_server_gone", toolbox=self.name)
                return
        await broken.wait()

    async def describe(self) -> dict[str, Any]:  # type: ignore[override]
        await self._started()
        return {**super().describe(), "sessions": self.sessions}

    async def execute_call(self, call: ToolCall, context: ToolContext | None) -> ToolResult:
        try:
            await self._started()
        except Exception as exc:  # the server cannot start now: this call fails, the next retries
            await asyncio.sleep(_RESTART_BACKOFF)
            return ToolResult(
                content=f"tool {call.name!r} is unavailable: {exc}",
                tool=call.name,
                tool_call_id=call.id,
                is_error=True,
                metadata={"error": "tool_error"},
            )
        result = await super().execute_call(call, context)
        if result.is_error and self._session_broken():
            assert self._broken is not None
            self._broken.set()  # the holder closes it; the next call starts a new one
            self._holder = None
        return result

    def _session_broken(self) -> bool:
        """Whether a call found the session's connection gone (the server's process died)."""
        holder, tools = self._holder, self.box.tools()
        return holder is None or holder.done() or bool(tools and tools[0].session.broken)
