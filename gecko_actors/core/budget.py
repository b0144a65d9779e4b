"""Budgets with a hard stop: what an agent (or whatever holds a :class:`Ledger`) may spend on
model calls, checked before each call.

A :class:`Ledger` keeps the spend against a :class:`Budget`. Before a call it reserves the
call's estimated tokens (:func:`~gecko_actors.core.ratelimit.estimate_tokens`) and counts
the call; a call that would go over a limit is refused with :class:`BudgetExceededError`
before it is made. After the call, the reservation is settled with the usage the provider
reported. Ledgers nest: a child's spending is its parent's too, and a call must fit both.
Dollars are known only after a call (the provider's price of its usage), so a dollar limit
stops the calls that would start once it is reached: the overshoot is at most what the calls
already in flight spend. :class:`BudgetedModel` puts a ledger in front of any chat model.

This module does not import Ray.
"""

from __future__ import annotations

import math
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from gecko_actors.core.messages import Message, Usage
from gecko_actors.core.models import ModelResponse
from gecko_actors.core.ratelimit import estimate_tokens
from gecko_actors.exceptions import BudgetExceededError, UserError

__all__ = ["Budget", "BudgetedModel", "Ledger", "Spend"]

_LOCK = threading.Lock()


@dataclass(frozen=True)
class Budget:
    """Limits on model calls; ``None`` leaves a measure unlimited.

    Attributes:
        tokens: prompt plus completion tokens.
        usd: dollars, as the provider's price of the usage (unknown prices count as 0).
        model_calls: calls to the model.
    """

    tokens: int | None = None
    usd: float | None = None
    model_calls: int | None = None

    def __post_init__(self) -> None:
        for name in ("tokens", "model_calls"):
            value = getattr(self, name)
            whole = isinstance(value, int) and not isinstance(value, bool)
            if value is not None and not (whole and value > 0):
                raise UserError(
                    f"Budget.{name} must be a positive int or None, got {value!r}",
                    hint=f"pass {name}=1000, say, or leave it out for no limit",
                    field=name,
                )
        usd = self.usd
        number = isinstance(usd, (int, float)) and not isinstance(usd, bool)
        if usd is not None and not (number and math.isfinite(usd) and usd > 0):
            raise UserError(
                f"Budget.usd must be a positive number of dollars or None, got {usd!r}",
                hint="pass usd=0.50, say, or leave it out for no limit",
                field="usd",
            )


@dataclass(frozen=True)
class Spend:
    """What settled calls spent (a failed call counts as a call, with no tokens)."""

    tokens: int = 0
    usd: float = 0.0
    model_calls: int = 0


@dataclass
class _Hold:
    ledgers: tuple[Ledger, ...]
    tokens: int


class Ledger:
    """The spend against ``budget``, and against ``parent``'s (budgets nest).

    Thread-safe: a ledger may be shared by the calls of many runs (one lock for every
    ledger of the process: a check spans a chain of them, and it is short).
    """

    def __init__(self, budget: Budget, *, scope: str, parent: Ledger | None = None) -> None:
        self.budget = budget
        self.scope = scope
        self.parent = parent
        self._spent = Spend()
        self._reserved_tokens = 0
        self._in_flight = 0

    def __repr__(self) -> str:
        return f"Ledger({self.scope!r}, {self.budget}, spent={self._spent})"

    @property
    def spent(self) -> Spend:
        """What settled calls spent."""
        return self._spent

    def reserve(self, tokens: int) -> _Hold:
        """Count one call of an estimated ``tokens`` against this ledger and its parents, or
        raise :class:`BudgetExceededError` (naming the budget) and count nothing."""
        chain = self._chain()
        with _LOCK:
            for ledger in chain:
                ledger._check(tokens)
            for ledger in chain:
                ledger._reserved_tokens += tokens
                ledger._in_flight += 1
        return _Hold(chain, tokens)

    def settle(self, hold: _Hold, usage: Usage) -> None:
        """Replace a reservation with what the call really used (a failed call: ``Usage()``,
        which still counts the call)."""
        with _LOCK:
            for ledger in hold.ledgers:
                ledger._reserved_tokens -= hold.tokens
                ledger._in_flight -= 1
                spent = ledger._spent
                ledger._spent = Spend(
                    tokens=spent.tokens + usage.total_tokens,
                    usd=spent.usd + (usage.cost or 0.0),
                    model_calls=spent.model_calls + 1,
                )

    def _chain(self) -> tuple[Ledger, ...]:
        chain: list[Ledger] = []
        ledger: Ledger | None = self
        while ledger is not None:
            chain.append(ledger)
            ledger = ledger.parent
        return tuple(chain)

    def _check(self, tokens: int) -> None:
        budget, spent = self.budget, self._spent
        over: str | None = None
        calls = spent.model_calls + self._in_flight
        reserved = spent.tokens + self._reserved_tokens
        if budget.model_calls is not None and calls >= budget.model_calls:
            over = f"{budget.model_calls} model calls"
        elif budget.tokens is not None and reserved + tokens > budget.tokens:
            over = f"{budget.tokens} tokens (this call may use ~{tokens})"
        elif budget.usd is not None and spent.usd >= budget.usd:
            over = f"${budget.usd:g}"
        if over is not None:
            raise BudgetExceededError(
                f"the budget of {self.scope} ({over}) does not allow another model call: "
                f"spent {spent.tokens} tokens, ${spent.usd:.4f}, {spent.model_calls} calls",
                hint="give it a larger budget (budget=Budget(...)) and run again",
                scope=self.scope,
                budget=asdict(budget),
                spent=asdict(spent),
                partial=None,
            )


class BudgetedModel:
    """``model``, with every call reserved against ``ledger`` first and settled after."""

    def __init__(self, model: Any, ledger: Ledger) -> None:
        self.model = model
        self.ledger = ledger

    def __getattr__(self, name: str) -> Any:  # supports_tools, supports_stream, max_tokens...
        return getattr(self.model, name)

    def __repr__(self) -> str:
        return f"BudgetedModel({self.model!r}, {self.ledger!r})"

    def _reserve(self, messages: Sequence[Message]) -> _Hold:
        max_tokens = getattr(self.model, "max_tokens", None)
        return self.ledger.reserve(estimate_tokens(messages, max_tokens))

    async def complete(self, messages: Sequence[Message], **options: Any) -> ModelResponse:
        hold = self._reserve(messages)
        usage = Usage()
        try:
            response = await self.model.complete(messages, **options)
            usage = response.usage
            return response
        finally:
            self.ledger.settle(hold, usage)

    async def stream(
        self, messages: Sequence[Message], **options: Any
    ) -> AsyncIterator[str | ModelResponse]:
        hold = self._reserve(messages)
        usage = Usage()
        try:
            async for item in self.model.stream(messages, **options):
                if isinstance(item, ModelResponse):
                    usage = item.usage
                yield item
        finally:
            self.ledger.settle(hold, usage)
