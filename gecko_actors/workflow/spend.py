"""A workflow run's budget and what its model calls spent (Ray-free).

A run started with ``budget=`` keeps a ledger for its whole drive: every model call made by
its nodes (by their agents, teams and nested runs, in this process or, through the budget
governor, in another) reserves against it first and is tagged with the node's visit and
the agent. Each committed step records what its visit spent (every attempt), and the run's
status records the run's spend in all and per agent, so a resumed run (with a larger
budget, say) goes on from what was spent before.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

from gecko_actors.checkpoint import Manifest
from gecko_actors.core.budget import Budget, Ledger, Spend, Spender, spending
from gecko_actors.core.messages import Usage
from gecko_actors.exceptions import CheckpointError

#: Opens a run's ledger for one drive: ``(key, name, budget, spent so far, owner epoch)`` →
#: the spender its calls use. The key names the run in its store (unique in a cluster).
BudgetOpener = Callable[[str, str, Budget, Usage, int], Awaitable[Spender]]
_AGENT = "agent:"


async def local_ledger(key: str, name: str, budget: Budget, spent: Usage, owner: int) -> Ledger:
    """A ledger in this process: for runs whose calls are all made here (tests)."""
    return Ledger(budget, scope=name, spent=spent)


def visit_label(node: str, visit: int) -> str:
    """The label of one visit's calls."""
    return f"node:{node}/{visit}"


class RunSpend:
    """The budget of run ``run_id`` and what it spent, kept by its engine."""

    def __init__(self, run_id: str, where: str, opener: BudgetOpener | None = None) -> None:
        self.run_id = run_id
        self.scope = f"run {run_id!r}"
        self.key = f"run {run_id!r} in {where}"  # the same run id in two stores: two runs
        self.opener = opener or local_ledger
        self.budget: Budget | None = None
        self.ledger: Spender | None = None
        self.total = Usage()
        self.agents: dict[str, Usage] = {}
        self._before: dict[str, Usage] = {}  # per agent, before the ledger was opened

    def load(self, manifest: Manifest, budget: Budget | None, steps: Iterable[Usage]) -> None:
        """Take the budget (``budget``, or the one recorded) and what was spent from the
        run's record: its last status, or its committed steps if they say more (a drive
        that stopped before it recorded its status)."""
        recorded, spent = manifest.budget, manifest.spent or {}
        try:
            self.budget = budget or (Budget(**recorded) if recorded else None)
            total = Usage(**spent.get("total", {}))
            self._before = {a: Usage(**u) for a, u in spent.get("agents", {}).items()}
        except Exception as exc:
            raise CheckpointError(
                f"the budget or spend recorded for run {self.run_id!r} is malformed: {exc}",
                hint="the checkpoint is damaged; resume with budget=Budget(...) to set it again",
                run_id=self.run_id,
            ) from None
        committed = sum(steps, Usage())
        self.total = max(total, committed, key=lambda u: (u.total_tokens, u.requests))
        self.agents = dict(self._before)

    async def open(self, owner: int) -> None:
        """Open the run's ledger for a drive by the engine of epoch ``owner`` (nothing
        without a budget)."""
        self.ledger = None
        self._before = dict(self.agents)  # the ledger counts this drive's calls only
        if self.budget is not None:
            self.ledger = await self.opener(self.key, self.scope, self.budget, self.total, owner)

    @contextlib.contextmanager
    def attempt(self, node: str, visit: int) -> Iterator[None]:
        """Model calls started in this block (an attempt's task) spend from the run."""
        with spending(self.ledger, visit_label(node, visit)):
            yield

    async def of_visit(self, node: str, visit: int) -> Usage | None:
        """What ``visit``'s calls spent (``None`` without a budget), with the run's spend
        brought up to date."""
        if self.ledger is None:
            return None
        label = visit_label(node, visit)
        labelled = await self._report(label)
        return labelled.get(label, Usage())

    async def finish(self) -> None:
        """Bring the run's spend up to date (before its status is recorded) and let the
        ledger go, if it answers: else the committed steps still hold what their visits
        spent."""
        ledger, self.ledger = self.ledger, None
        if ledger is None:
            return
        with contextlib.suppress(Exception):
            self.total, labelled = await ledger.report(_AGENT)
            self._agents(labelled)
            close = getattr(ledger, "close", None)
            if close is not None:
                await close()

    async def _report(self, *prefixes: str) -> dict[str, Usage]:
        assert self.ledger is not None
        self.total, labelled = await self.ledger.report(_AGENT, *prefixes)
        self._agents(labelled)
        return labelled

    def _agents(self, labelled: dict[str, Usage]) -> None:
        self.agents = dict(self._before)
        for label, usage in labelled.items():
            if label.startswith(_AGENT):
                agent = label[len(_AGENT) :]
                self.agents[agent] = self.agents.get(agent, Usage()) + usage

    def record(self) -> dict[str, Any] | None:
        """The run's budget and spend as its status records them (``None``: no budget)."""
        if self.budget is None:
            return None
        return {
            "budget": dataclasses.asdict(self.budget),
            "spent": {
                "total": self.total.model_dump(),
                "agents": {a: u.model_dump() for a, u in self.agents.items()},
            },
        }

    def status(self) -> dict[str, Any] | None:
        """The run's budget and spend as ``status()["spend"]`` shows them."""
        return status_spend(self.record())


def status_spend(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """``status()["spend"]`` from a recorded budget and spend: the budget, then tokens,
    dollars and model calls in all and per agent."""
    if record is None or record.get("budget") is None:
        return None
    spent = record.get("spent") or {}
    agents = spent.get("agents", {})
    return {
        "budget": record["budget"],
        **dataclasses.asdict(Spend.of(Usage(**spent.get("total", {})))),
        "agents": {a: dataclasses.asdict(Spend.of(Usage(**u))) for a, u in agents.items()},
    }
