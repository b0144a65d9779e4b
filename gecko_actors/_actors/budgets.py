"""The budget governor: one named actor (``gecko/budgets``) that keeps the budgets a stretch
of work spends from across processes (a workflow run's, a team's), and the
:class:`RemoteLedger` every process reserves and settles with.

Each model call made under such a budget costs two small calls to the governor (reserve
before, settle after), so the budget is exact across processes: the overshoot is at most
what the calls in flight use beyond their estimate. A governor that restarts forgets its
budgets: calls then fail with ``BudgetExceededError`` until the run is resumed (the run's
spend so far is in its checkpoint).
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Sequence
from typing import Any

import ray

from gecko_actors._actors.common import known_singleton, singleton, unwrap
from gecko_actors.core.budget import Budget, BudgetBook
from gecko_actors.core.messages import Usage

GOVERNOR = "gecko/budgets"


class BudgetActor:
    """The actor shell of a :class:`BudgetBook` (budgets and usage travel as plain data)."""

    def __init__(self) -> None:
        self.book = BudgetBook()

    def open(self, key: str, budget: dict[str, Any], options: dict[str, Any]) -> None:
        spent = options.pop("spent", None)
        used = None if spent is None else Usage(**spent)
        self.book.open(key, Budget(**budget), spent=used, **options)

    def reserve(self, keys: Sequence[str], tokens: int, labels: Sequence[str], hold: str) -> None:
        self.book.reserve(keys, tokens, labels, hold)

    def settle(self, hold: str, usage: dict[str, Any]) -> None:
        self.book.settle(hold, Usage(**usage))

    def cancel(self, hold: str) -> None:
        self.book.cancel(hold)

    def usage(self, scope: str, *prefixes: str) -> tuple[dict[str, Any], dict[str, Any]]:
        total, labelled = self.book.usage(scope, *prefixes)
        return total.model_dump(), {label: u.model_dump() for label, u in labelled.items()}

    def close(self, key: str, owner: Any) -> None:
        self.book.close(key, owner)


def governor() -> Any:
    """The governor's handle, made if it does not exist."""
    return singleton(BudgetActor, GOVERNOR)


async def open_budget(key: str, budget: Budget, **options: Any) -> RemoteLedger:
    """Have the governor keep ``budget`` under ``key`` (``options``: see
    ``BudgetBook.open``); the ledger to spend from it."""
    spent = options.get("spent")
    options["spent"] = None if spent is None else spent.model_dump()
    await _call("open", key, dataclasses.asdict(budget), options)
    return RemoteLedger((key,), owner=options.get("owner"))


async def open_run_budget(
    key: str, name: str, budget: Budget, spent: Usage, owner: int
) -> RemoteLedger:
    """A workflow run's ledger for a drive by the engine of epoch ``owner`` (a
    ``workflow.spend.BudgetOpener``): a fresh one, from what the run spent so far."""
    return await open_budget(key, budget, name=name, spent=spent, fresh=True, owner=owner)


def open_budget_blocking(key: str, budget: Budget, name: str) -> RemoteLedger:
    """Keep ``budget`` under ``key`` unless it is kept (a team's, from synchronous code)."""
    _call_blocking("open", key, dataclasses.asdict(budget), {"name": name})
    return RemoteLedger((key,))


async def _call(method: str, *args: Any) -> Any:
    handle = known_singleton(GOVERNOR)
    if handle is None:  # made (or looked up) once per process: not in the event loop
        handle = await asyncio.to_thread(governor)
    try:
        return await getattr(handle, method).remote(*args)
    except ray.exceptions.RayTaskError as exc:
        raise unwrap(exc) from None


def _call_blocking(method: str, *args: Any) -> Any:
    try:
        return ray.get(getattr(governor(), method).remote(*args))
    except ray.exceptions.RayTaskError as exc:
        raise unwrap(exc) from None


def _usages(total: dict[str, Any], labelled: dict[str, Any]) -> tuple[Usage, dict[str, Usage]]:
    return Usage(**total), {label: Usage(**u) for label, u in labelled.items()}


class RemoteLedger:
    """A :class:`~gecko_actors.core.budget.Spender` whose ledgers the governor keeps: a
    call reserves against every scope of ``scopes`` (and their parents) at once. It travels
    to other processes by its scopes, so an agent host spends from the run that called it."""

    travels = True  # see ``core/budget.Spending``: may be sent with a call to another process

    def __init__(self, scopes: tuple[str, ...], owner: Any = None) -> None:
        self.scopes = scopes
        self.scope = scopes[0]
        self.owner = owner  # who opened the first scope (a run's engine: its epoch)

    def __repr__(self) -> str:
        return f"RemoteLedger({self.scopes!r})"

    def __reduce__(self) -> Any:  # travels by its scopes alone
        return (RemoteLedger, (self.scopes,))

    def within(self, outer: Any) -> RemoteLedger:
        """This ledger, spending from ``outer``'s scopes too when it is a remote one."""
        if isinstance(outer, RemoteLedger):
            return RemoteLedger(tuple(dict.fromkeys((*self.scopes, *outer.scopes))))
        return self

    async def acquire(self, tokens: int, labels: Sequence[str] = ()) -> str:
        hold = uuid.uuid4().hex
        try:
            await _call("reserve", self.scopes, tokens, tuple(labels), hold)
        except asyncio.CancelledError:
            # The reservation may be made already: take it back (after it, in call order).
            governor().cancel.remote(hold)
            raise
        return hold

    async def release(self, hold: str, usage: Usage) -> None:
        await _call("settle", hold, usage.model_dump())

    async def report(self, *prefixes: str) -> tuple[Usage, dict[str, Usage]]:
        """What the first scope's settled calls used, in all and per label (those starting
        with one of ``prefixes``, if given)."""
        return _usages(*await _call("usage", self.scope, *prefixes))

    def report_blocking(self, *prefixes: str) -> tuple[Usage, dict[str, Usage]]:
        """:meth:`report` from synchronous code."""
        return _usages(*_call_blocking("usage", self.scope, *prefixes))

    async def close(self) -> None:
        """Let the governor forget the first scope, if we opened it last."""
        await _call("close", self.scope, self.owner)
