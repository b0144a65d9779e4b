"""EventBus: publish/subscribe for run events, with middlewares.

Handlers subscribe to one event type or to ``"*"``; they may be sync or async. A middleware sees
every event before the handlers and may return a changed event, or ``None`` to block it. A
failing handler or middleware is logged and ignored: observers never break a run.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from gecko_actors._sync import run_blocking
from gecko_actors.logging import get_logger

Handler = Callable[["Event"], Any]
Middleware = Callable[["Event"], Any]
"""Returns the (possibly changed) event, or None to block it; may be async."""
_log = get_logger("gecko_actors.events")


@dataclass(frozen=True)
class Event:
    """Something that happened: a type (``"tool_finished"``), data, and when."""

    type: str
    data: dict[str, Any] = field(default_factory=dict)
    timestamp: float = field(default_factory=time.time)

    def with_data(self, **data: Any) -> Event:
        return replace(self, data={**self.data, **data})


class EventBus:
    """Route events to subscribers. ``publish(event)`` waits for every handler;
    ``publish(event, wait=False)`` schedules them and returns at once."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = {}
        self._middlewares: list[Middleware] = []
        self._background: set[asyncio.Task[None]] = set()

    def subscribe(self, event_type: str, handler: Handler) -> None:
        self._handlers.setdefault(event_type, []).append(handler)

    def unsubscribe(self, event_type: str, handler: Handler) -> bool:
        """Remove a handler; returns whether it was subscribed."""
        handlers = self._handlers.get(event_type, [])
        if handler in handlers:
            handlers.remove(handler)
            return True
        return False

    def add_middleware(self, middleware: Middleware) -> None:
        self._middlewares.append(middleware)

    def wants(self, event_type: str) -> bool:
        """Whether an event of ``event_type`` would reach anyone (a middleware or a
        handler): a publisher may skip building one that would not."""
        return bool(self._middlewares or self._handlers.get(event_type) or self._handlers.get("*"))

    async def publish(self, event: Event, *, wait: bool = True) -> Event | None:
        """Send ``event`` through the middlewares to its handlers; returns the event as the
        handlers saw it, or ``None`` if a middleware blocked it."""
        current: Event | None = event
        for middleware in self._middlewares:
            changed = await _call(middleware, current, "middleware")
            if changed is None:
                return None
            if not isinstance(changed, Event):
                _log.warning(
                    "event middleware returned neither an Event nor None; ignored",
                    middleware=getattr(middleware, "__name__", repr(middleware)),
                )
                continue
            current = changed
        handlers = self._handlers.get(current.type, []) + self._handlers.get("*", [])
        if not handlers:
            return current
        work = asyncio.gather(*(_call(h, current, "handler") for h in handlers))
        if wait:
            await work
        else:
            task = asyncio.ensure_future(work)
            self._background.add(task)  # keep a reference until done
            task.add_done_callback(self._background.discard)
        return current

    def publish_blocking(self, event: Event) -> Event | None:
        """:meth:`publish` from synchronous code (a blocking iterator, a script): runs the
        middlewares and handlers to the end on a private event loop, in a helper thread when
        this thread already runs a loop (a notebook's cell), since a running loop cannot be
        re-entered. Async handlers therefore run on that private loop."""
        return run_blocking(lambda: self.publish(event))

    async def drain(self) -> None:
        """Wait for handlers scheduled with ``wait=False``."""
        if self._background:
            await asyncio.gather(*list(self._background))


async def _call(fn: Callable[[Event], Any], event: Event, kind: str) -> Any:
    try:
        result = fn(event)
        return await result if inspect.isawaitable(result) else result
    except Exception as exc:
        # Not ``event=``: structlog's first positional parameter is already called ``event``.
        _log.warning(
            f"event {kind} failed; ignored",
            event_type=event.type,
            error=f"{type(exc).__name__}: {exc}",
        )
        return event if kind == "middleware" else None
