"""The agent actor: a LocalAgent in its own process, reached by name (a dedicated agent);
an agent host keeps one such object per hosted agent."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import replace
from typing import Any

import msgpack
from pydantic import BaseModel

from gecko_actors import metrics
from gecko_actors._redact import redact
from gecko_actors.agents.spec import AgentSpec
from gecko_actors.core.agent import LocalAgent
from gecko_actors.core.events import Event, EventBus
from gecko_actors.core.messages import AgentOutput, MessageInput
from gecko_actors.core.tools import ToolContext

StreamItem = str | Event | AgentOutput
"""What the actor's generators send: text chunks and events in the order they happened, then
the run's AgentOutput."""

_relay: ContextVar[asyncio.Queue[Any] | None] = ContextVar("gecko_event_relay", default=None)
"""The queue of the call that asked for its run's events. The engine publishes from the task
running that call's run, and the bus runs handlers in tasks that copy its context, so the
queue is found without matching run ids (a caller may reuse one)."""
_END = object()  # the run's producer has stopped: read its result
_STOPPED_KEPT = 1024  # tokens of streams stopped before they began, remembered


class AgentActor:
    """Runs many conversations at once (an async actor); one session's runs are serialised
    by the engine.

    The spec's hooks run here, in the actor's process. The engine's events go to a bus of the
    actor's own that forwards each to the call that asked for them (``events=True``), which
    sends them along its stream: subscribers live with the caller, not here.
    """

    def __init__(self, spec: AgentSpec, host: str = "dedicated") -> None:
        self.spec = spec
        self.host = host  # the metrics' label: the agent host's name, or "dedicated"
        # The runs streamed back, by the caller's stream token: a caller that leaves early
        # stops its run through stop_stream, which Ray's cancellation of a generator cannot
        # promise (it may land while Ray, not the generator, is running, and leave the
        # generator to be closed later). Tokens stopped before their stream began are kept
        # (the most recent ones), so that a late start does not run.
        self._streamed: dict[str, asyncio.Future[Any]] = {}
        self._stopped: OrderedDict[str, None] = OrderedDict()
        relay = EventBus()
        relay.subscribe("*", _forward)
        self.agent = LocalAgent(
            spec.model,
            spec.tools,
            name=spec.name,
            system_prompt=spec.system_prompt,
            prompt_vars=spec.prompt_vars,
            memory=spec.memory,
            session_store=spec.session_store,
            event_bus=relay,
            hooks=spec.hooks,
            budget=spec.budget,
            **spec.engine_options,
        )

    async def run(
        self,
        input: MessageInput,
        session_id: str | None,
        response_model: type[BaseModel] | None,
        run_id: str | None,
        tool_context: ToolContext | None,
    ) -> AgentOutput:
        """Run to the final answer; a ``ray.cancel`` of this task cancels the run and its
        tool calls, and the task ends only once they have stopped."""
        run = self.agent.arun(
            input,
            session_id=session_id,
            response_model=response_model,
            run_id=run_id,
            tool_context=tool_context,
        )
        return await self._counted(run)

    async def run_packed(self, call: bytes) -> bytes:
        """:meth:`run` of a plain call (text input, no response model, no tool context),
        as msgpack both ways: Ray passes one bytes argument and one bytes result for much
        less than five arguments and a pydantic object (see ``handle.packed_call``)."""
        input, session_id, run_id = msgpack.unpackb(call)
        output = await self.run(input, session_id, None, run_id, None)
        return output.to_msgpack()

    async def stream(
        self,
        input: MessageInput,
        session_id: str | None,
        run_id: str | None,
        events: bool = False,
        token: str | None = None,
    ) -> AsyncIterator[StreamItem]:
        """Stream a run (call with ``num_returns="streaming"``): its text chunks, with its
        events between them when ``events``, then its :class:`AgentOutput`. A ``ray.cancel``
        cancels the run; the generator ends once it has stopped."""

        async def produce(queue: asyncio.Queue[Any]) -> AgentOutput | None:
            chunks = self.agent.stream(input, session_id=session_id, run_id=run_id)
            async for chunk in chunks:
                queue.put_nowait(chunk)
            return chunks.output

        # aclosing: leaving this generator early must close the inner one (and so stop the
        # run) now, not whenever the garbage collector finalizes it.
        async with contextlib.aclosing(self._relayed(produce, events, token)) as items:
            async for item in items:
                yield item

    async def run_relayed(
        self,
        input: MessageInput,
        session_id: str | None,
        response_model: type[BaseModel] | None,
        run_id: str | None,
        tool_context: ToolContext | None,
        token: str | None = None,
    ) -> AsyncIterator[Event | AgentOutput]:
        """:meth:`run`, streaming the run's events as they happen, then its output: what a
        handle with an event bus calls."""

        async def produce(queue: asyncio.Queue[Any]) -> AgentOutput:
            return await self.agent.arun(
                input,
                session_id=session_id,
                response_model=response_model,
                run_id=run_id,
                tool_context=tool_context,
            )

        async with contextlib.aclosing(self._relayed(produce, True, token)) as items:
            async for item in items:
                yield item

    async def stop_stream(self, token: str) -> None:
        """Stop the run of the stream ``token`` (the caller's, one per call) and return once
        it has stopped; a stream that has not begun yet will not run."""
        task = self._streamed.get(token)
        if task is None:
            self._stopped[token] = None
            while len(self._stopped) > _STOPPED_KEPT:
                self._stopped.popitem(last=False)
            return
        await _stop(task)

    async def _relayed(
        self,
        produce: Callable[[asyncio.Queue[Any]], Awaitable[Any]],
        events: bool,
        token: str | None,
    ) -> AsyncIterator[StreamItem]:
        """Run ``produce`` in a task of its own that puts chunks (and, with ``events``, the
        run's events) on one queue, so both leave in the order they happened and an event
        is sent while the run waits on a tool, not with the next chunk."""
        if token is not None and token in self._stopped:
            del self._stopped[token]
            return  # its caller left before it began
        queue: asyncio.Queue[Any] = asyncio.Queue()
        task = asyncio.ensure_future(self._counted(_producing(queue, produce, events)))
        if token is not None:
            self._streamed[token] = task
        try:
            while (item := await queue.get()) is not _END:
                yield item
            yield await task
        finally:
            # Cancelled by Ray, or the consumer left: the run stops before this call ends.
            await _stop(task)
            if token is not None:
                self._streamed.pop(token, None)

    async def _counted(self, run: Awaitable[AgentOutput]) -> AgentOutput:
        """Await a run and count it in the metrics by how it ended."""
        try:
            output = await run
        except asyncio.CancelledError:
            # ray.cancel(): the engine has cancelled the run's tool calls and waited for them;
            # CancelledError must leave this coroutine for Ray to report TaskCancelledError.
            metrics.agent_run(self.host, "cancelled")
            raise
        except Exception:
            metrics.agent_run(self.host, "error")
            raise
        metrics.agent_run(self.host, "ok")
        return output

    def info(self) -> dict[str, Any]:
        """Name, process, node, model and tools of this actor."""
        import ray

        return {
            "name": self.spec.name,
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "model": repr(self.spec.model),
            "tools": list(self.agent.toolbox.names()),
            "owned_toolbox": getattr(self.spec.tools, "name", None)
            if self.spec.owns_tools
            else None,
        }

    def modules(self, names: list[str]) -> dict[str, bool]:
        """Which of these modules this process has imported (tests check litellm is not)."""
        import sys

        return {name: name in sys.modules for name in names}


async def _producing(
    queue: asyncio.Queue[Any],
    produce: Callable[[asyncio.Queue[Any]], Awaitable[Any]],
    events: bool,
) -> Any:
    """``produce(queue)`` with this task's events routed to ``queue``; ``_END`` follows
    whatever it put there, however it ends."""
    if events:
        _relay.set(queue)  # this task's context only: other runs are not affected
    try:
        return await produce(queue)
    finally:
        queue.put_nowait(_END)


def _forward(event: Event) -> None:
    """The relay bus's handler: the event goes to the call that asked for it, if any. It
    leaves this process (an error's text, the input's start): its text is redacted as
    logs are."""
    queue = _relay.get()
    if queue is not None:
        data = {k: redact(v) if isinstance(v, str) else v for k, v in event.data.items()}
        queue.put_nowait(replace(event, data=data))


async def _stop(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait until it has stopped (a run waits for its tool calls)."""
    task.cancel()
    while not task.done():
        # asyncio.wait never cancels the task it waits for; a second cancellation of this
        # call is held back until the run has stopped, as the first one asked.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved: an error was raised already, or no longer matters
