"""Parked branches: the visits of a run that wait for an answer to ``ctx.interrupt`` or for
a durable timer (``ctx.sleep``, an interrupt's ``timeout``), and the answers and timers that
wake them (Ray-free).

A node that calls ``ctx.interrupt(payload)`` with no answer recorded parks: nothing of it is
committed, its branch stops there, and every other branch goes on. ``respond`` records the
answer in the run's journal (create-if-absent: the first answer holds) and hands the visit
back to the drive that is under way; when no drive is (the run ended as ``waiting``), the
run is driven again, and each parked node runs from the top, finding its answers.

A timer's deadline is in the journal and in the parked visit (``until``): a drive under way
runs the visit again once it is due; a run whose drive ended as ``waiting`` is driven again
then by whatever holds it (``DrivenRun.next_wake``), or by a resume after its cluster was
lost, and the node finds its deadline passed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from gecko_actors.exceptions import UserError
from gecko_actors.workflow.schedule import Visit

#: What ``drive`` returns when only parked branches are left.
WAITING: Any = object()


@dataclasses.dataclass(frozen=True)
class Parked:
    """A visit's interrupt: its key in the journal and its payload (checkpointable); when
    it runs again by itself (``until``, epoch seconds) and whether an answer wakes it."""

    key: str
    payload: Any
    until: float | None = None
    answerable: bool = True


class Waiting:
    """The parked visits of run ``run_id`` (by node) and the answered ones to run again."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.parked: dict[str, tuple[Visit, Parked]] = {}
        self._answered: list[Visit] = []
        self._wake = asyncio.Event()
        self.listening = False  # a drive is under way and takes answered visits

    def reset(self) -> None:
        """Forget the parked visits: a new drive runs them again (and they park again)."""
        self.parked.clear()
        self._answered.clear()

    def park(self, visit: Visit, parked: Parked) -> None:
        self.parked[visit.node] = (visit, parked)

    def take_answered(self) -> list[Visit]:
        """The visits answered, or whose timer is due, since the last call, to run again."""
        now = time.time()
        due = [n for n, (_, p) in self.parked.items() if p.until is not None and p.until <= now]
        answered, self._answered = self._answered, []
        return answered + [self.parked.pop(node)[0] for node in sorted(due)]

    def next_due(self) -> float | None:
        """When the earliest timer of a parked visit is due (epoch seconds), if any."""
        return min((p.until for _, p in self.parked.values() if p.until is not None), default=None)

    async def wait(self, running: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
        """The tasks of ``running`` that are done, once one is, an answer came or a timer
        is due."""
        wake = asyncio.ensure_future(self._wake.wait())
        due = self.next_due()
        timeout = None if due is None else max(0.0, due - time.time())
        try:
            done, _ = await asyncio.wait(
                [*running, wake], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            wake.cancel()
        self._wake.clear()
        done.discard(wake)
        return done

    async def answer(self, node: str, value: Any, by: str | None, journal: Any) -> bool:
        """Record ``value`` (given ``by`` whom) as the answer to ``node``'s interrupt; True
        when the drive under way runs the node again, False when the run must be driven
        again for that. A node that is not waiting is a UserError naming those that are."""
        if node not in self.status():
            raise not_waiting(self.run_id, node, self.status(), "run.status()['waiting']")
        visit, parked = self.parked[node]
        answer = {"answer": value, "by": by, "at": time.time(), "payload": parked.payload}
        await asyncio.to_thread(journal.put, parked.key, answer)  # the first answer holds
        del self.parked[node]
        if not self.listening:
            return False
        self._answered.append(visit)
        self._wake.set()
        return True

    def status(self) -> dict[str, Any]:
        """``status()["waiting"]``: the payload of each node parked for an answer."""
        return {node: p.payload for node, (_, p) in self.parked.items() if p.answerable}

    def timers(self) -> dict[str, float]:
        """``status()["timers"]``: when each parked node with a timer runs again."""
        return {node: p.until for node, (_, p) in self.parked.items() if p.until is not None}

    def record(self) -> dict[str, Any]:
        """The parked nodes as the run's status records them."""
        return {node: _entry(p) for node, (_, p) in self.parked.items()}


def _entry(parked: Parked) -> dict[str, Any]:
    entry = {"key": parked.key, "payload": parked.payload}
    if parked.until is not None:
        entry["until"] = parked.until
    if not parked.answerable:
        entry["answerable"] = False
    return entry


def answerable(parked: dict[str, Any]) -> dict[str, Any]:
    """The recorded parked nodes (``Manifest.waiting``) that wait for an answer."""
    return {node: e for node, e in parked.items() if e.get("answerable", True)}


def next_due(parked: dict[str, Any] | None) -> float | None:
    """When the earliest timer of the recorded parked nodes is due, if any."""
    return min((e["until"] for e in (parked or {}).values() if "until" in e), default=None)


def not_waiting(run_id: str, node: str, waiting: dict[str, Any], where: str) -> UserError:
    """The error for an answer to ``node``, which is not among ``waiting``."""
    listed = ", ".join(repr(n) for n in sorted(waiting)) or "none"
    return UserError(
        f"node {node!r} of run {run_id!r} is not waiting for an answer (waiting: {listed})",
        hint=f"answer a node that {where} lists",
        run_id=run_id,
        node=node,
    )


def answer_in_checkpoint(store: Any, run_id: str, node: str, value: Any, by: str | None) -> None:
    """Answer ``node`` of a waiting run that no live host holds (its cluster is gone): the
    answer is recorded in the run's journal, under the interrupt its status recorded, and
    the run continues with it once resumed. A node that is not waiting is a UserError."""
    from gecko_actors.checkpoint.journal import Journal  # checkpoint imports workflow.graph
    from gecko_actors.workflow.rules import no_such_run, normalised

    manifest = store.read_manifest(run_id)
    if manifest is None:
        raise no_such_run(run_id, store.uri)
    parked = answerable(manifest.waiting or {}) if manifest.status == "waiting" else {}
    if node not in parked:
        raise not_waiting(run_id, node, parked, "`gecko-actors status RUN_ID --checkpoint URI`")
    value = normalised(value, "the answer", node)
    answer = {"answer": value, "by": by, "at": time.time(), "payload": parked[node]["payload"]}
    Journal(store, run_id, store.current_epoch(run_id)).put(parked[node]["key"], answer)
