"""How a node parks its branch until someone answers (``ctx.interrupt``, approval tools) or a
durable timer fires (``ctx.sleep``, an interrupt's ``timeout``).

Not an error: the run engine catches it and parks the visit (``workflow/waiting.py``). It
lives in the core because an agent's approval tools raise it too. No Ray.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NodeInterrupt"]


class NodeInterrupt(Exception):
    """Raised by ``ctx.interrupt`` (and ``ctx.sleep``) to park its node until it is answered
    or its timer is due; the engine catches it (do not catch it in a node). ``key`` names
    the interrupt in the run's journal; ``until`` (epoch seconds) is when the node runs
    again by itself; ``answerable`` is False for a sleep, which no answer ends."""

    def __init__(
        self, key: str, payload: Any, until: float | None = None, answerable: bool = True
    ) -> None:
        super().__init__(key, payload, until, answerable)  # the args rebuild it when pickled
        self.key, self.payload = key, payload
        self.until, self.answerable = until, answerable
