"""Streaming a run of an agent actor back to the caller: its text chunks, its events (to a
bus in the caller's process) and its final output, with cancellation when the caller leaves
early."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import ray

from gecko_actors._actors.common import (
    cancel_and_wait,
    cancel_and_wait_blocking,
    unwrap,
    wait_settled,
    wait_settled_blocking,
)
from gecko_actors.core.events import Event, EventBus
from gecko_actors.core.messages import AgentOutput
from gecko_actors.exceptions import RunError


class RemoteAgentStream:
    """The text chunks of one run of an agent actor, as a blocking iterator; what
    :meth:`Agent.stream` returns. Like :class:`~gecko_actors.core.engine.AgentStream`,
    ``output`` is the run's :class:`AgentOutput` once the stream has ended. ``close()`` (or
    leaving a ``with`` block) before the end cancels the run and waits until it has stopped.
    """

    def __init__(self, items: Iterator[str | AgentOutput]) -> None:
        self._items = items
        self.output: AgentOutput | None = None

    def __iter__(self) -> RemoteAgentStream:
        return self

    def __next__(self) -> str:
        # A for loop over a generator it did not create never closes it: returning here
        # keeps the run going until the next call.
        for item in self._items:
            if isinstance(item, AgentOutput):
                self.output = item
                continue
            return item
        raise StopIteration

    def __enter__(self) -> RemoteAgentStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def text(self) -> str:
        """Consume the stream and return the whole answer."""
        return "".join(self)

    def close(self) -> None:
        """Stop the run if it is still going, and wait until it has stopped."""
        self._items.close()  # type: ignore[attr-defined]  # a generator


class AsyncRemoteAgentStream:
    """The async twin of :class:`RemoteAgentStream`, returned by :meth:`Agent.astream`."""

    def __init__(self, items: AsyncIterator[str | AgentOutput]) -> None:
        self._items = items
        self.output: AgentOutput | None = None

    def __aiter__(self) -> AsyncRemoteAgentStream:
        return self

    async def __anext__(self) -> str:
        async for item in self._items:
            if isinstance(item, AgentOutput):
                self.output = item
                continue
            return item
        raise StopAsyncIteration

    async def __aenter__(self) -> AsyncRemoteAgentStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def text(self) -> str:
        """Consume the stream and return the whole answer."""
        return "".join([chunk async for chunk in self])

    async def aclose(self) -> None:
        """Stop the run if it is still going, and wait until it has stopped."""
        await self._items.aclose()  # type: ignore[attr-defined]  # an async generator


def relay_blocking(
    start: Callable[[], Any],
    stop: Callable[[], Any],
    bus: EventBus | None,
    *,
    grace: float,
    timeout: float | None = None,
) -> Iterator[str | AgentOutput]:
    """The items of the actor generator ``start()`` begins: events go to ``bus``, errors
    come out as the library's own, and leaving before the end (a close, ``timeout``, an
    interrupt) stops the run (``stop()`` asks the actor, and the generator is cancelled) and
    waits until it has stopped."""
    deadline = None if timeout is None else time.monotonic() + timeout
    refs = start()
    ended = False
    try:
        while True:
            _wait_next(refs, deadline)
            try:
                ref = next(refs)
            except StopIteration:
                ended = True
                return
            try:
                item = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                ended = True  # the actor's generator raised: it is over
                raise unwrap(exc) from None
            if isinstance(item, Event):
                if bus is not None:
                    bus.publish_blocking(item)
                continue
            yield item
    finally:
        if not ended:
            stopping = _asked_to_stop(stop)
            cancel_and_wait_blocking([refs.completed()], grace=grace)
            wait_settled_blocking(stopping, grace=grace)


async def relay_async(
    start: Callable[[], Any], stop: Callable[[], Any], bus: EventBus | None, *, grace: float
) -> AsyncIterator[str | AgentOutput]:
    """The async twin of :func:`relay_blocking`; cancelling the iterating task cancels the
    run too, and CancelledError goes on once it has stopped."""
    refs = start()
    ended = False
    try:
        async for ref in refs:
            try:
                item = await ref
            except ray.exceptions.RayTaskError as exc:
                ended = True  # the actor's generator raised: it is over
                raise unwrap(exc) from None
            if isinstance(item, Event):
                if bus is not None:
                    await bus.publish(item)
                continue
            yield item
        ended = True
    finally:
        if not ended:
            stopping = _asked_to_stop(stop)
            await cancel_and_wait([refs.completed()], grace=grace)
            await wait_settled(stopping, grace=grace)


def _asked_to_stop(stop: Callable[[], Any]) -> list[Any]:
    """The ref of the actor's stop call, or nothing if it could not be sent (Ray shut down,
    the actor gone): the generator's cancellation still goes ahead."""
    try:
        return [stop()]
    except Exception:
        return []


def _wait_next(refs: Any, deadline: float | None) -> None:
    """Block until the stream's next item is ready; GetTimeoutError past ``deadline``."""
    if deadline is None:
        return  # next() itself waits
    left = max(0.0, deadline - time.monotonic())
    ready, _ = ray.wait([refs], timeout=left)
    if not ready:
        raise ray.exceptions.GetTimeoutError("the agent's run did not end within its timeout")


def final_output(items: Iterator[str | AgentOutput]) -> AgentOutput:
    """Drain a relayed run and return its output (closing it on any way out)."""
    output = None
    try:
        for item in items:
            output = item
    finally:
        items.close()  # type: ignore[attr-defined]  # a generator
    return _checked_output(output)


async def afinal_output(items: AsyncIterator[str | AgentOutput]) -> AgentOutput:
    """The async twin of :func:`final_output`."""
    output = None
    try:
        async for item in items:
            output = item
    finally:
        await items.aclose()  # type: ignore[attr-defined]  # an async generator
    return _checked_output(output)


def _checked_output(output: object) -> AgentOutput:
    """The last item of a relayed run, which the actor always sends as its output."""
    if not isinstance(output, AgentOutput):
        raise RunError(
            f"the agent's run ended without its output (last item: {type(output).__name__})",
            hint="the agent actor and this driver may run different gecko_actors versions",
        )
    return output
