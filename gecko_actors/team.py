"""``Team``: several agent actors working in parallel."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import ray
from tqdm import tqdm

from gecko_actors._actors.budgets import RemoteLedger, open_budget_blocking
from gecko_actors._actors.common import (
    CANCEL_GRACE,
    cancel_and_wait,
    cancel_and_wait_blocking,
    unwrap,
)
from gecko_actors.agents import batch
from gecko_actors.agents.batch import Job
from gecko_actors.agents.handle import Agent, unpacked
from gecko_actors.core.budget import (
    Budget,
    Spend,
    checked_budget,
    current_spending,
    spending,
    stopped,
)
from gecko_actors.core.messages import AgentOutput, MessageInput, Usage
from gecko_actors.exceptions import BudgetExceededError, TeamError, UserError

Strategy = Literal["all", "first"]


@dataclass
class TeamResult:
    """One slot per member, in member order: its output, or the error it raised.

    With ``strategy="first"``, ``winner`` is the first acceptable output and the members
    still running were cancelled (their slots stay empty).
    """

    members: list[str]
    outputs: list[AgentOutput | None]
    errors: list[BaseException | None]
    winner: AgentOutput | None = None

    @property
    def ok(self) -> bool:
        return all(e is None for e in self.errors)

    @property
    def contents(self) -> list[str | None]:
        return [o.content if o is not None else None for o in self.outputs]

    @property
    def usage(self) -> Usage:
        return sum((o.usage for o in self.outputs if o is not None), Usage())


@dataclass
class _MapState:
    results: list[Any]
    # ref → (input, member, whether the run went as a packed call: see Agent._start)
    pending: dict[Any, tuple[int, int, bool]] = field(default_factory=dict)
    load: list[int] = field(default_factory=list)
    # (load, member) entries, the least loaded (then the first) member on top; an entry whose
    # load is no longer the member's is stale and skipped. A scan per input would cost
    # members x inputs (10^8 for 10,000 of each).
    heap: list[tuple[int, int]] = field(default_factory=list)

    def least_loaded(self) -> int:
        while True:
            load, member = heapq.heappop(self.heap)
            if load == self.load[member]:
                return member

    def change(self, member: int, by: int) -> None:
        self.load[member] += by
        heapq.heappush(self.heap, (self.load[member], member))


class Team:
    """Agents that work in parallel, each in its own actor.

    Args:
        members: agent handles (``Agent.spawn`` / ``Agent.get``).
        name: a label for errors and progress bars.
        budget: a :class:`Budget` for every model call the team's runs make, over all of
            them (nested in the budget of the workflow run that runs the team, if any): a
            call that would go over it is refused before it is sent, and the team's run
            raises ``BudgetExceededError`` with the members that answered in ``.partial``.

    Example:
        >>> team = Team([Agent.get("a"), Agent.get("b")])
        >>> team.run("Summarise the report").contents
        >>> team.map([f"Grade answer {i}" for i in range(200)])
    """

    def __init__(
        self, members: Sequence[Agent], *, name: str = "team", budget: Budget | None = None
    ) -> None:
        members = list(members)
        checked_budget(budget, f"team {name!r}")
        if not members:
            raise UserError("a Team needs at least one member", hint="pass a list of Agent handles")
        bad = [m for m in members if not isinstance(m, Agent)]
        if bad:
            raise UserError(
                f"team members must be Agent handles, got {bad[0]!r}",
                hint="create members with Agent.spawn(...) or Agent.get(name)",
            )
        self.members = members
        self.name = name
        self.budget = budget
        self._scope = f"team {name!r} ({uuid.uuid4().hex[:8]})"

    def __repr__(self) -> str:
        return f"Team({self.name!r}, members={[m.name for m in self.members]})"

    def __reduce__(self) -> Any:  # a copy in another process spends from the same budget
        return (_rebuilt, (self.members, self.name, self.budget, self._scope))

    @property
    def spent(self) -> Spend | None:
        """What the team's runs spent (``None`` without a budget)."""
        if self.budget is None:
            return None
        ledger = self._open()
        assert ledger is not None
        total, _ = ledger.report_blocking()
        return Spend.of(total)

    def _open(self) -> RemoteLedger | None:
        """The team's ledger, kept by the governor from the first use on (opened again at
        each use: a restarted governor forgot it); ``None`` without a budget. Blocking."""
        if self.budget is None:
            return None
        return open_budget_blocking(self._scope, self.budget, f"team {self.name!r}")

    @contextlib.contextmanager
    def _spending(self, ledger: RemoteLedger | None) -> Iterator[None]:
        """Every model call of the block spends from ``ledger``, the team's (and from the
        budget the caller spends from, if the governor keeps it)."""
        if ledger is None:
            yield
            return
        outer = current_spending()
        ledger = ledger.within(outer.spender if outer else None)
        labels = (*(outer.labels if outer else ()), f"team:{self.name}")
        with spending(ledger, *labels):
            yield

    # --- everyone on one input ----------------------------------------------------------

    def run(
        self,
        input: MessageInput,
        *,
        strategy: Strategy = "all",
        accept: Callable[[AgentOutput], bool] | None = None,
        raise_on_error: bool = False,
        session_id: str | None = None,
        timeout: float | None = None,
    ) -> TeamResult:
        """Run every member on ``input`` at once.

        ``strategy="all"`` waits for everyone; ``"first"`` returns as soon as one member's
        output passes ``accept`` (default: any output) and cancels the others. A failed member
        leaves its error in its slot; ``raise_on_error=True`` raises :class:`TeamError`
        (carrying the result) instead.
        """
        with self._spending(self._open()):
            result, jobs = self._start(input, strategy, session_id, timeout)
        by_ref = {job.ref: job for job in jobs}
        pending = list(by_ref)
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending:
            # "all" waits for every call in one ray.wait: a wait per call would scan the
            # pending list each time (quadratic in the team's size).
            wanted = 1 if strategy == "first" else len(pending)
            done, pending = ray.wait(pending, num_returns=wanted, timeout=_left(deadline))
            late = False
            for ref in done:
                settled, cut = self._settle(
                    result, by_ref[ref], partial(ray.get, ref), strategy, accept
                )
                late = late or cut
                if settled:
                    cancel_and_wait_blocking(pending)
                    return result
            if late or not done or (pending and strategy == "all"):
                self._harvest(result, [by_ref[ref] for ref in pending])
                raise self._timed_out(pending, timeout, result)
        return self._finish(result, strategy, raise_on_error)

    async def arun(
        self,
        input: MessageInput,
        *,
        strategy: Strategy = "all",
        accept: Callable[[AgentOutput], bool] | None = None,
        raise_on_error: bool = False,
        session_id: str | None = None,
        timeout: float | None = None,
        cancel_grace: float = CANCEL_GRACE,
    ) -> TeamResult:
        """Awaitable :meth:`run`; it never blocks the event loop (workflow team nodes).

        Cancelling the awaiting coroutine cancels every member's run and waits until all of
        them have stopped (at most ``cancel_grace`` seconds) before CancelledError reaches
        the caller; members cancelled by ``"first"`` or by ``timeout`` are waited for too.
        """
        # A call to the governor (only with a budget): not in the event loop.
        ledger = None if self.budget is None else await asyncio.to_thread(self._open)
        with self._spending(ledger):
            result, jobs = self._start(input, strategy, session_id, timeout)
        refs = [job.ref for job in jobs]
        slots = {asyncio.ensure_future(_resolve(job.ref)): job for job in jobs}
        try:
            await self._collect_async(result, slots, strategy, accept, timeout, cancel_grace)
        except asyncio.CancelledError:
            for future in slots:
                future.cancel()
            await cancel_and_wait(refs, grace=cancel_grace)
            raise
        if result.winner is not None:
            return result
        return self._finish(result, strategy, raise_on_error)

    async def _collect_async(
        self,
        result: TeamResult,
        slots: dict[asyncio.Future[Any], Job],
        strategy: Strategy,
        accept: Callable[[AgentOutput], bool] | None,
        timeout: float | None,
        grace: float,
    ) -> None:
        """Fill ``result`` as members finish, until all did or a ``"first"`` team settled;
        the members still running then are cancelled and waited for."""
        pending = set(slots)
        deadline = None if timeout is None else time.monotonic() + timeout
        until = asyncio.FIRST_COMPLETED if strategy == "first" else asyncio.ALL_COMPLETED
        while pending:
            done, pending = await asyncio.wait(pending, timeout=_left(deadline), return_when=until)
            late = False
            for future in done:
                settled, cut = self._settle(result, slots[future], future.result, strategy, accept)
                late = late or cut
                if settled:
                    await cancel_and_wait([slots[f].ref for f in pending], grace=grace)
                    return
            if late or not done or (pending and strategy == "all"):
                batches = [f for f in pending if slots[f].batch]
                if batches:  # hosts' partial results, on their way (see _harvest)
                    arrived, _ = await asyncio.wait(batches, timeout=10)
                    for future in arrived:
                        self._settle(result, slots[future], future.result, "all", None)
                await cancel_and_wait([slots[f].ref for f in pending], grace=grace)
                raise self._timed_out([], timeout, result)

    def _start(
        self, input: MessageInput, strategy: Strategy, session_id: str | None, timeout: float | None
    ) -> tuple[TeamResult, list[Job]]:
        if strategy not in ("all", "first"):
            raise UserError(f"unknown team strategy {strategy!r}", hint="use 'all' or 'first'")
        # "first" cancels the other members as soon as one answers: one call each.
        jobs = batch.start(self.members, input, session_id, timeout, strategy == "all")
        size = len(self.members)
        return TeamResult([m.name for m in self.members], [None] * size, [None] * size), jobs

    @staticmethod
    def _settle(
        result: TeamResult,
        job: Job,
        get: Callable[[], Any],
        strategy: Strategy,
        accept: Callable[[AgentOutput], bool] | None,
    ) -> tuple[bool, bool]:
        """Fill the slots of one call: whether it settles a ``"first"`` team, and whether a
        host's batch cut runs at the team's timeout."""
        try:
            value = get()
        except Exception as exc:  # the whole call failed: each of its members did
            value = [exc] * len(job.slots) if job.batch else exc
        outcomes = value if job.batch else [value]
        cut = False
        for slot, outcome in zip(job.slots, outcomes, strict=True):
            if outcome is None:
                cut = True
            elif isinstance(outcome, BaseException):
                result.errors[slot] = unwrap(outcome)
            else:
                result.outputs[slot] = outcome
                if strategy == "first" and (accept is None or accept(outcome)):
                    result.winner = outcome
                    return True, cut
        return False, cut

    def _harvest(self, result: TeamResult, jobs: list[Job]) -> None:
        """At a timeout, the partial results of hosts' batches still on their way (each
        cancels its own unfinished runs at the same timeout)."""
        batches = [job for job in jobs if job.batch]
        if not batches:
            return
        done, _ = ray.wait([job.ref for job in batches], num_returns=len(batches), timeout=10)
        for job in batches:
            if job.ref in done:
                self._settle(result, job, partial(ray.get, job.ref), "all", None)

    def _timed_out(
        self, pending: list[Any], timeout: float | None, result: TeamResult
    ) -> TeamError:
        """The error for a team past its ``timeout``, once ``pending`` runs have stopped."""
        cancel_and_wait_blocking(pending)
        return TeamError(
            f"team {self.name!r} timed out after {timeout}s",
            hint="raise timeout=",
            team=self.name,
            result=result,
        )

    def _finish(self, result: TeamResult, strategy: Strategy, raise_on_error: bool) -> TeamResult:
        failed = [(n, e) for n, e in zip(result.members, result.errors, strict=True) if e]
        over = next((e for _, e in failed if isinstance(e, BudgetExceededError)), None)
        if over is not None:
            answered = {
                n: o for n, o in zip(result.members, result.outputs, strict=True) if o is not None
            }
            raise stopped(over, answered, team=self.name)
        if strategy == "first" and result.winner is None:
            raise TeamError(
                f"no member of team {self.name!r} gave an acceptable answer",
                hint="check the members' errors in err.result",
                team=self.name,
                result=result,
            )
        if failed and raise_on_error:
            names = ", ".join(n for n, _ in failed)
            raise TeamError(
                f"{len(failed)} member(s) of team {self.name!r} failed: {names}; "
                f"first error: {failed[0][1]}",
                hint="see err.result for every slot",
                team=self.name,
                result=result,
            )
        return result

    # --- many inputs over the members ---------------------------------------------------

    def map(
        self,
        inputs: Sequence[MessageInput],
        *,
        max_in_flight: int | None = None,
        progress: bool | None = None,
        raise_on_error: bool = False,
        session_id: str | None = None,
    ) -> list[AgentOutput | BaseException]:
        """Spread ``inputs`` over the members; results (or errors) in input order.

        At most ``max_in_flight`` runs are outstanding (default: 4 per member), each new input
        going to the least-loaded member. A progress bar shows on a terminal (``progress``
        forces it on or off).
        """
        inputs = list(inputs)
        limit = 4 * len(self.members) if max_in_flight is None else max_in_flight
        if limit < 1:
            raise UserError(f"max_in_flight must be >= 1, got {max_in_flight}")
        members = len(self.members)
        state = _MapState(
            [None] * len(inputs), load=[0] * members, heap=[(0, m) for m in range(members)]
        )
        show = sys.stderr.isatty() if progress is None else progress
        over: BudgetExceededError | None = None
        with (
            self._spending(self._open()),
            tqdm(total=len(inputs), desc=self.name, disable=not show, unit="run") as bar,
        ):
            next_input = 0
            while next_input < len(inputs) or state.pending:
                while over is None and next_input < len(inputs) and len(state.pending) < limit:
                    self._dispatch(state, next_input, inputs[next_input], session_id)
                    next_input += 1
                pending = list(state.pending)
                done, _ = ray.wait(pending, num_returns=1)
                if len(pending) > 1:  # and every other one ready now: a wait per batch
                    done, _ = ray.wait(pending, num_returns=len(pending), timeout=0)
                for ref in done:
                    error = self._collect(state, ref)
                    if isinstance(error, BudgetExceededError):
                        over = over or error  # no new runs: those in flight finish
                bar.update(len(done))
                if over is not None and not state.pending:
                    break
        if over is not None:
            raise stopped(over, state.results, team=self.name)
        errors = [r for r in state.results if isinstance(r, BaseException)]
        if errors and raise_on_error:
            raise TeamError(
                f"{len(errors)} of {len(inputs)} runs of team {self.name!r} failed; "
                f"first error: {errors[0]}",
                team=self.name,
                result=state.results,
            )
        return state.results

    async def amap(self, inputs: Sequence[MessageInput], **kwargs: Any):
        """Awaitable :meth:`map`."""
        return await asyncio.to_thread(self.map, inputs, **kwargs)

    def _dispatch(self, state: _MapState, i: int, item: MessageInput, session_id: str | None):
        member = state.least_loaded()
        state.change(member, +1)
        ref, packed = self.members[member]._start(item, session_id, None, None, None)
        state.pending[ref] = (i, member, packed)

    def _collect(self, state: _MapState, ref: Any) -> BaseException | None:
        """Put one run's output in its slot; its error, if it failed."""
        i, member, packed = state.pending.pop(ref)
        state.change(member, -1)
        try:
            state.results[i] = unpacked(ray.get(ref), packed)
        except Exception as exc:
            state.results[i] = unwrap(exc)
            return state.results[i]
        return None


def _rebuilt(members: list[Agent], name: str, budget: Budget | None, scope: str) -> Team:
    team = Team(members, name=name, budget=budget)
    team._scope = scope
    return team


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


async def _resolve(ref: Any) -> Any:
    return await ref
