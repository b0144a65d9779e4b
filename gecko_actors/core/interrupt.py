"""How a node parks its branch until someone answers (``ctx.interrupt``, approval tools).

Not an error: the run engine catches it and parks the visit (``workflow/waiting.py``). It
lives in the core because an agent's approval tools raise it too. No Ray.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NodeInterrupt"]


class NodeInterrupt(Exception):
    """Raised by ``ctx.interrupt`` to park its node until it is answered; the engine catches
    it (do not catch it in a node). ``key`` names the interrupt in the run's journal."""

    def __init__(self, key: str, payload: Any) -> None:
        super().__init__(key, payload)
        self.key, self.payload = key, payload
