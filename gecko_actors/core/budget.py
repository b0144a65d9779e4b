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

A budget can also hold for a stretch of work rather than one agent: a workflow run, a team.
:func:`spending` makes a :class:`Spender` (a ledger here, or one kept by the cluster's budget
governor) the one every model call in the current task (and the tasks it starts) spends
from, each call tagged with labels (the node, the agent) so the spend can be told apart.

This module does not import Ray.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import threading
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from gecko_actors.core.messages import Message, Usage
from gecko_actors.core.models import ModelResponse
from gecko_actors.core.ratelimit import estimate_tokens
from gecko_actors.exceptions import BudgetExceededError, UserError

__all__ = [
    "Budget",
    "BudgetedModel",
    "Ledger",
    "Spend",
    "Spender",
    "Spending",
    "checked_budget",
    "current_spending",
    "spending",
    "stopped",
]

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


def checked_budget(budget: Any, owner: str) -> Budget | None:
    """``budget`` if it is a :class:`Budget` or ``None``, else a UserError naming ``owner``
    (what the budget was given to)."""
    if budget is not None and not isinstance(budget, Budget):
        raise UserError(
            f"budget of {owner} must be a Budget, not {type(budget).__name__}",
            hint="pass budget=Budget(tokens=..., usd=..., model_calls=...)",
        )
    return budget


@dataclass(frozen=True)
class Spend:
    """What settled calls spent (a failed call counts as a call, with no tokens)."""

    tokens: int = 0
    usd: float = 0.0
    model_calls: int = 0

    @classmethod
    def of(cls, usage: Usage) -> Spend:
        """The spend ``usage`` records (its ``requests`` are its calls)."""
        return cls(usage.total_tokens, usage.cost or 0.0, usage.requests)


def _as_call(usage: Usage) -> Usage:
    """One call's usage, counted as one request whatever the provider said (a failed call
    reports ``Usage()``, and still counts)."""
    return usage.model_copy(update={"requests": 1})


@dataclass
class _Hold:
    ledgers: tuple[Ledger, ...]
    tokens: int
    labels: tuple[str, ...] = ()


class Ledger:
    """The spend against ``budget``, and against ``parent``'s (budgets nest).

    Thread-safe: a ledger may be shared by the calls of many runs (one lock for every
    ledger of the process: a check spans a chain of them, and it is short).
    """

    def __init__(
        self,
        budget: Budget,
        *,
        scope: str,
        parent: Ledger | None = None,
        spent: Usage | None = None,
    ) -> None:
        self.budget = budget
        self.scope = scope
        self.parent = parent
        self._usage = spent or Usage()  # what settled calls used (``spent``: before this ledger)
        self._spent = Spend.of(self._usage)
        self._labels: dict[str, Usage] = {}
        self._reserved_tokens = 0
        self._in_flight = 0

    def __repr__(self) -> str:
        return f"Ledger({self.scope!r}, {self.budget}, spent={self._spent})"

    @property
    def spent(self) -> Spend:
        """What settled calls spent."""
        return self._spent

    @property
    def usage(self) -> Usage:
        """What settled calls used, as one :class:`Usage` (``requests`` are the calls)."""
        return self._usage

    def labelled(self, *prefixes: str) -> dict[str, Usage]:
        """What settled calls used, per label they were reserved with (those starting with
        one of ``prefixes``, if given)."""
        with _LOCK:
            if not prefixes:
                return dict(self._labels)
            return {k: u for k, u in self._labels.items() if k.startswith(prefixes)}

    def reserve(self, tokens: int, labels: Sequence[str] = ()) -> _Hold:
        """Count one call of an estimated ``tokens`` against this ledger and its parents, or
        raise :class:`BudgetExceededError` (naming the budget) and count nothing."""
        return reserve_all([self], tokens, labels)

    def settle(self, hold: _Hold, usage: Usage) -> None:
        """Replace a reservation with what the call really used (a failed call: ``Usage()``,
        which still counts the call), under each of its labels too."""
        call = _as_call(usage)
        with _LOCK:
            for ledger in hold.ledgers:
                ledger._reserved_tokens -= hold.tokens
                ledger._in_flight -= 1
                ledger._usage += call
                ledger._spent = Spend.of(ledger._usage)
                for label in hold.labels:
                    ledger._labels[label] = ledger._labels.get(label, Usage()) + call

    def cancel(self, hold: _Hold) -> None:
        """Take back a reservation whose call was never sent: nothing is counted."""
        with _LOCK:
            for ledger in hold.ledgers:
                ledger._reserved_tokens -= hold.tokens
                ledger._in_flight -= 1

    async def acquire(self, tokens: int, labels: Sequence[str] = ()) -> _Hold:
        """:meth:`reserve`, as a :class:`Spender`."""
        return self.reserve(tokens, labels)

    async def release(self, hold: _Hold, usage: Usage) -> None:
        """:meth:`settle`, as a :class:`Spender`."""
        self.settle(hold, usage)

    async def report(self, *prefixes: str) -> tuple[Usage, dict[str, Usage]]:
        """What settled calls used, in all and per label (see :meth:`labelled`), as a
        :class:`Spender`."""
        return self.usage, self.labelled(*prefixes)

    def chain(self) -> tuple[Ledger, ...]:
        """This ledger and its parents, innermost first."""
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


def reserve_all(ledgers: Iterable[Ledger], tokens: int, labels: Sequence[str] = ()) -> _Hold:
    """Count one call of an estimated ``tokens`` against every ledger of ``ledgers`` and
    their parents (each once) at once, or raise :class:`BudgetExceededError` naming the
    first that refuses it, and count nothing."""
    chain = tuple(dict.fromkeys(ledger for first in ledgers for ledger in first.chain()))
    with _LOCK:
        for ledger in chain:
            ledger._check(tokens)
        for ledger in chain:
            ledger._reserved_tokens += tokens
            ledger._in_flight += 1
    return _Hold(chain, tokens, tuple(labels))


def stopped(error: BudgetExceededError, partial: Any, **context: Any) -> BudgetExceededError:
    """``error`` again, carrying ``partial`` (what finished before the stop) and ``context``
    (the run or team it stopped)."""
    return BudgetExceededError(
        error.message, hint=error.hint, **{**error.context, **context, "partial": partial}
    )


class Spender(Protocol):
    """Where a stretch of work's model calls reserve and settle: a :class:`Ledger` in this
    process, or a budget the cluster's governor keeps (``_actors/budgets.py``)."""

    scope: str

    async def acquire(self, tokens: int, labels: Sequence[str] = ()) -> Any:
        """Reserve one call of ~``tokens`` (raises ``BudgetExceededError``); returns a hold."""

    async def release(self, hold: Any, usage: Usage) -> None:
        """Settle ``hold`` with what the call used."""

    async def report(self, *prefixes: str) -> tuple[Usage, dict[str, Usage]]:
        """What settled calls used, in all and per label (those starting with one of
        ``prefixes``, if given)."""


@dataclass(frozen=True)
class Spending:
    """What the current task's model calls spend from, and the labels they carry. One whose
    spender ``travels`` (a budget the governor keeps) goes with a call to an agent in
    another process, which then spends from it too."""

    spender: Spender
    labels: tuple[str, ...] = ()

    @property
    def travels(self) -> bool:
        return bool(getattr(self.spender, "travels", False))


_SPENDING: contextvars.ContextVar[Spending | None] = contextvars.ContextVar(
    "gecko_spending", default=None
)


def current_spending() -> Spending | None:
    """What model calls made now spend from (``None``: no budget but their agent's)."""
    return _SPENDING.get()


@contextlib.contextmanager
def spending(spender: Spender | None, *labels: str) -> Iterator[None]:
    """Make every model call in this block (and in the tasks it starts) spend from
    ``spender``, tagged with ``labels`` (``None``: leave things as they are)."""
    if spender is None:
        yield
        return
    token = _SPENDING.set(Spending(spender, labels))
    try:
        yield
    finally:
        _SPENDING.reset(token)


@contextlib.asynccontextmanager
async def charged(
    context: Spending, messages: Sequence[Message], max_tokens: int | None, label: str
) -> AsyncIterator[list[Usage]]:
    """Reserve one model call of ``messages`` from ``context``, tagged ``label`` too; the
    block appends the call's usage to the list it is given, which is settled when the block
    ends (nothing appended: a failed call)."""
    used: list[Usage] = []
    tokens = estimate_tokens(messages, max_tokens)
    hold = await context.spender.acquire(tokens, (*context.labels, label))
    try:
        yield used
    finally:
        await context.spender.release(hold, used[-1] if used else Usage())


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


class BudgetBook:
    """The ledgers of many scopes (a run's, a team's), by key, with the holds of the calls in
    flight: what the cluster's budget governor keeps (Ray-free).

    A hold is named by its caller (a random id), so a caller cancelled while its
    reservation was on its way can still take it back (:meth:`cancel`)."""

    def __init__(self) -> None:
        self.ledgers: dict[str, Ledger] = {}
        self._owners: dict[str, Any] = {}
        self._holds: dict[str, _Hold] = {}

    def open(
        self,
        key: str,
        budget: Budget,
        *,
        name: str | None = None,
        parent: str | None = None,
        spent: Usage | None = None,
        fresh: bool = False,
        owner: Any = None,
    ) -> None:
        """Keep a ledger for ``key`` (errors call it ``name``; nested in ``parent``'s),
        unless one is kept. With ``fresh``, start a new one whatever is kept, for ``owner``
        (a run's engine taking it over, by its epoch): its spend so far is ``spent``, or
        what the kept ledger counted if that is more (calls of the last engine that were
        not committed), and holds of calls lost with the last engine no longer count."""
        kept = self.ledgers.get(key)
        if kept is not None and not fresh:
            return
        if kept is not None and spent is not None and _more(kept.usage, spent):
            spent = kept.usage
        above = None if parent is None else self._ledger(parent)
        self.ledgers[key] = Ledger(budget, scope=name or key, parent=above, spent=spent)
        self._owners[key] = owner

    def reserve(self, keys: Sequence[str], tokens: int, labels: Sequence[str], hold: str) -> None:
        """Reserve one call against every ledger of ``keys`` (and their parents), as hold
        ``hold``."""
        self._holds[hold] = reserve_all([self._ledger(key) for key in keys], tokens, labels)

    def settle(self, hold: str, usage: Usage) -> None:
        """Settle hold ``hold`` with what its call used (a hold settled twice: once)."""
        found = self._holds.pop(hold, None)
        if found is not None:
            found.ledgers[0].settle(found, usage)

    def cancel(self, hold: str) -> None:
        """Take back hold ``hold`` of a call that was never sent (nothing is counted)."""
        found = self._holds.pop(hold, None)
        if found is not None:
            found.ledgers[0].cancel(found)

    def usage(self, key: str, *prefixes: str) -> tuple[Usage, dict[str, Usage]]:
        """What ``key``'s settled calls used, in all and per label (see
        ``Ledger.labelled``)."""
        ledger = self._ledger(key)
        return ledger.usage, ledger.labelled(*prefixes)

    def close(self, key: str, owner: Any = None) -> None:
        """Forget ``key`` (its work is over), if ``owner`` opened it last."""
        if key in self.ledgers and self._owners.get(key) == owner:
            del self.ledgers[key], self._owners[key]

    def _ledger(self, key: str) -> Ledger:
        ledger = self.ledgers.get(key)
        if ledger is None:
            raise BudgetExceededError(
                f"the budget {key} is not kept any more (the budget governor restarted, "
                "or the work it was for has ended), so no model call may spend from it",
                hint="resume the run (or run the team again): its budget is opened again",
                scope=key,
                budget={},
                spent={},
                partial=None,
            )
        return ledger


def _more(first: Usage, second: Usage) -> bool:
    return (first.total_tokens, first.requests) > (second.total_tokens, second.requests)
