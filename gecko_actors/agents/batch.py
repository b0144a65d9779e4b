"""A team's round as few Ray calls: its hosted members on one agent host run from one call
(in chunks), the others from one call each.

Ray's own cost is about a millisecond per actor call on two cores, so a round of a team of
10,000 hosted agents made of one call per member spends ten seconds in Ray alone; grouped by
host it is a handful of calls. Each member keeps its own run id (fixed here: a batch Ray
retries after its host died stores each exchange once), its own outcome (an output or its
error) and its own activation in the host.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gecko_actors._actors import pools
from gecko_actors.agents.handle import Agent, with_budget
from gecko_actors.agents.host import AgentHost
from gecko_actors.core.messages import MessageInput

__all__ = ["CHUNK", "Job", "start"]

CHUNK = 1000
"""Members of one host per call: results travel back together, so not too many at once."""


@dataclass(frozen=True)
class Job:
    """One Ray call of a round: the member slots it answers for, and whether it is a host's
    batch (its result is a list of outcomes, ``None`` for a run its timeout cancelled)."""

    ref: Any
    slots: list[int]
    batch: bool


def start(
    members: Sequence[Agent],
    input: MessageInput,
    session_id: str | None,
    timeout: float | None,
    grouped: bool,
) -> list[Job]:
    """Start every member's run on ``input``; ``grouped``: hosted members from one call per
    host (and chunk), which cancels its unfinished runs after ``timeout`` seconds itself."""
    jobs: list[Job] = []
    hosts: dict[str, list[int]] = {}
    budget = with_budget(None)  # what the round spends from, if it can travel
    for slot, member in enumerate(members):
        host = member.host if grouped else None
        if host is None:
            jobs.append(Job(member.submit(input, session_id=session_id), [slot], False))
        else:
            hosts.setdefault(host, []).append(slot)
    for host, slots in hosts.items():
        actor = pools.handle(host, AgentHost)
        for first in range(0, len(slots), CHUNK):
            chunk = slots[first : first + CHUNK]
            names = [members[slot].name for slot in chunk]
            run_ids = [uuid.uuid4().hex for _ in chunk]
            ref = actor.run_batch.remote(names, run_ids, input, session_id, timeout, budget)
            jobs.append(Job(ref, chunk, True))
    return jobs
