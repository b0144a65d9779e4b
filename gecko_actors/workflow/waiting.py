"""Parked branches: the visits of a run that wait for an answer to ``ctx.interrupt``, and
the answers that wake them (Ray-free).

A node that calls ``ctx.interrupt(payload)`` with no answer recorded parks: nothing of it is
committed, its branch stops there, and every other branch goes on. ``respond`` records the
answer in the run's journal (create-if-absent: the first answer holds) and hands the visit
back to the drive that is under way; when no drive is (the run ended as ``waiting``), the
run is driven again, and each parked node runs from the top, finding its answers.
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
    """A visit's interrupt: its key in the journal and its payload (checkpointable)."""

    key: str
    payload: Any


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
        """The visits answered since the last call, to run again."""
        answered, self._answered = self._answered, []
        return answered

    async def wait(self, running: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
        """The tasks of ``running`` that are done, once one is or an answer came."""
        wake = asyncio.ensure_future(self._wake.wait())
        try:
            done, _ = await asyncio.wait([*running, wake], return_when=asyncio.FIRST_COMPLETED)
        finally:
            wake.cancel()
        self._wake.clear()
        done.discard(wake)
        return done

    async def answer(self, node: str, value: Any, by: str | None, journal: Any) -> bool:
        """Record ``value`` (given ``by`` whom) as the answer to ``node``'s interrupt; True
        when the drive under way runs the node again, False when the run must be driven
        again for that. A node that is not waiting is a UserError naming those that are."""
        if node not in self.parked:
            waiting = ", ".join(repr(n) for n in sorted(self.parked)) or "none"
            raise UserError(
                f"node {node!r} of run {self.run_id!r} is not waiting for an answer "
                f"(waiting: {waiting})",
                hint="answer a node that run.status()['waiting'] lists",
                run_id=self.run_id,
                node=node,
            )
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
        """``status()["waiting"]``: each parked node's payload."""
        return {node: parked.payload for node, (_, parked) in self.parked.items()}

    def record(self) -> dict[str, Any]:
        """The parked nodes as the run's status records them."""
        return {node: {"key": p.key, "payload": p.payload} for node, (_, p) in self.parked.items()}


def answer_in_checkpoint(store: Any, run_id: str, node: str, value: Any, by: str | None) -> None:
    """Answer ``node`` of a waiting run that no live host holds (its cluster is gone): the
    answer is recorded in the run's journal, under the interrupt its status recorded, and
    the run continues with it once resumed. A node that is not waiting is a UserError."""
    from gecko_actors.checkpoint.journal import Journal  # checkpoint imports workflow.graph
    from gecko_actors.workflow.rules import no_such_run, normalised

    manifest = store.read_manifest(run_id)
    if manifest is None:
        raise no_such_run(run_id, store.uri)
    parked = (manifest.waiting or {}) if manifest.status == "waiting" else {}
    if node not in parked:
        waiting = ", ".join(repr(n) for n in sorted(parked)) or "none"
        raise UserError(
            f"node {node!r} of run {run_id!r} is not waiting for an answer (waiting: {waiting})",
            hint="answer a node that `gecko-actors status RUN_ID --checkpoint URI` lists",
            run_id=run_id,
            node=node,
        )
    value = normalised(value, "the answer", node)
    answer = {"answer": value, "by": by, "at": time.time(), "payload": parked[node]["payload"]}
    Journal(store, run_id, store.current_epoch(run_id)).put(parked[node]["key"], answer)
