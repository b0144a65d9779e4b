"""Running a coroutine to its end from synchronous code, in or out of an event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["run_blocking"]

_T = TypeVar("_T")


def run_blocking(make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run ``make()`` to its end on a private event loop: in a helper thread when this thread
    already runs a loop (async code, a notebook's cell), since a running loop cannot be
    re-entered. ``make`` builds the coroutine on the thread that runs it."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()
