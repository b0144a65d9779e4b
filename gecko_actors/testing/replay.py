"""Offline replay: run a recorded run again, in this process, with every model call, tool
result, ``ctx.step`` value and interrupt answer served from its effect journal (no provider,
no network, no side effect), and report the first step whose output differs from the
record: a regression test for a prompt or graph change, made from one production run.

    report = replay("report-3f2a9c1e0b7d", checkpoint="s3://bucket/runs", workflow=wf)
    assert report.ok, report

The run must have journaled its model calls (``wf.start(..., journal_models=True)``, on by
default under the pytest plugin); an effect the journal does not hold (a model call with
another conversation, a tool call with other arguments, a tool call that failed in the
recorded run, which is not journaled) stops the replayed node with :class:`ReplayMiss`,
reported as its difference. The recorded run is only read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from pathlib import Path
from typing import Any

from gecko_actors._sync import run_blocking
from gecko_actors.checkpoint import CheckpointStore, StepRecord
from gecko_actors.checkpoint.codec import encode_value
from gecko_actors.checkpoint.journal import MISSING, Journal
from gecko_actors.exceptions import GeckoError, UserError
from gecko_actors.workflow.engine import RunEngine
from gecko_actors.workflow.execution import LocalExecutor
from gecko_actors.workflow.graph import WorkflowGraph
from gecko_actors.workflow.history import summary
from gecko_actors.workflow.rules import no_such_run
from gecko_actors.workflow.upgrading import check_version, latest

__all__ = ["Difference", "ReplayMiss", "ReplayReport", "replay"]


class ReplayMiss(GeckoError):
    """A replayed node made an effect its recorded run's journal does not hold."""

    error_code = "replay_miss"


class _Recorded(Journal):
    """The recorded run's journal, read-only: a key it does not hold is a ReplayMiss."""

    def __init__(self, store: CheckpointStore, run_id: str) -> None:
        super().__init__(store, run_id, 0, models=True)

    def get(self, key: str) -> Any:
        found = super().get(key)
        if found is MISSING:
            kind = key.split("/")[3] if key.count("/") >= 3 else "effect"
            raise ReplayMiss(
                f"the recording of run {self.run_id!r} holds no {kind} {key!r}",
                hint="the replayed node asked for another effect than the recorded run did "
                "(another prompt, other tool arguments), or the run did not journal it "
                "(start it with journal_models=True)",
                run_id=self.run_id,
            )
        return found

    def put(self, key: str, value: Any) -> Any:
        return value  # never reached for a recorded key; the recording is never written


class _ReplayEngine(RunEngine):
    def __init__(self, *args: Any, recorded: _Recorded, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recorded = recorded

    def journal(self) -> Journal:
        return self.recorded


@dataclasses.dataclass(frozen=True)
class Difference:
    """The first recorded step the replay did not reproduce: its ``seq``, ``node`` and
    ``visit``, the recorded and replayed outputs (summaries; ``replayed`` is None when the
    replay made no such step) and why."""

    seq: int
    node: str
    visit: int
    recorded: str | None
    replayed: str | None
    reason: str


@dataclasses.dataclass(frozen=True)
class ReplayReport:
    """What a replay found: ``ok`` when every recorded step came out the same."""

    run_id: str
    recorded_steps: int
    replayed_steps: int
    outcome: str  # the replay's: succeeded | failed | waiting
    difference: Difference | None = None

    @property
    def ok(self) -> bool:
        return self.difference is None

    def __str__(self) -> str:
        head = (
            f"replay of run {self.run_id}: {self.replayed_steps} of {self.recorded_steps} "
            f"recorded steps replayed ({self.outcome})"
        )
        d = self.difference
        if d is None:
            return f"{head}; every output is the same"
        return (
            f"{head}; first difference at step {d.seq}, {d.node} (visit {d.visit}): {d.reason}"
            f"\n  recorded: {d.recorded}\n  replayed: {d.replayed}"
        )


def replay(
    run_id: str, *, checkpoint: str | Path, workflow: WorkflowGraph, timeout: float = 300.0
) -> ReplayReport:
    """Replay run ``run_id`` of ``checkpoint`` with ``workflow`` (the same graph, whose node
    functions or prompts may have changed) and report the first differing step."""
    from gecko_actors.workflow.run import checkpoint_uri

    store = CheckpointStore(checkpoint_uri(checkpoint))
    manifest = store.read_manifest(run_id)
    if manifest is None:
        raise no_such_run(run_id, store.uri)
    recorded = store.load_steps(run_id)
    _check_replayable(workflow, manifest, run_id, store, recorded)
    scratch = CheckpointStore(f"memory://replay-{uuid.uuid4().hex}")
    engine = _ReplayEngine(
        workflow, run_id, scratch, LocalExecutor(scratch), recorded=_Recorded(store, run_id)
    )
    engine.open(manifest.input)
    _drive(engine, timeout)
    replayed = scratch.load_steps(run_id)
    return ReplayReport(
        run_id,
        len(recorded),
        len(replayed),
        engine.outcome,
        _first_difference(recorded, replayed, engine),
    )


def _check_replayable(
    workflow: WorkflowGraph,
    manifest: Any,
    run_id: str,
    store: CheckpointStore,
    recorded: list[StepRecord],
) -> None:
    workflow.validate()
    manifest, renames = latest(store, manifest)  # the run's current version
    if renames:
        raise UserError(
            f"run {run_id!r} was migrated to renamed nodes: a replay matches its steps by "
            "node name",
            hint="replay a run that was not migrated",
            run_id=run_id,
        )
    check_version(workflow, manifest, recorded, renames)  # another version, if compatible
    if manifest.fork is not None:
        raise UserError(
            f"run {run_id!r} is a fork of {manifest.fork.parent!r}: its first steps' effects "
            "are in its parent's journal",
            hint="replay the parent run",
            run_id=run_id,
        )
    unjournaled = sorted(n.name for n in workflow.nodes.values() if n.kind in ("team", "workflow"))
    if unjournaled:
        raise UserError(
            f"workflow {workflow.name!r} has team or nested-workflow nodes ({unjournaled}), "
            "whose model calls are not journaled: a replay would call the provider",
            hint="replay a workflow of function and agent nodes",
            run_id=run_id,
        )


def _drive(engine: RunEngine, timeout: float) -> None:
    async def run() -> None:
        await asyncio.wait_for(engine.run(), timeout)

    run_blocking(run)  # from async code (a test) too: on a loop of its own


def _first_difference(
    recorded: list[StepRecord], replayed: list[StepRecord], engine: RunEngine
) -> Difference | None:
    """The first recorded step (in commit order) that the replay did not reproduce; steps
    are matched by node and visit, since parallel branches may commit in another order."""
    made = {(r.node, r.visit): r for r in replayed}
    for record in recorded:
        again = made.pop((record.node, record.visit), None)
        if again is None:
            failure = engine.failure
            reason = "not replayed" + (f": {failure}" if failure is not None else "")
            return _difference(record, None, reason)
        if encode_value(again.output) != encode_value(record.output):
            return _difference(record, again, "its output differs")
    if made:  # steps the recorded run never made
        extra = min(made.values(), key=lambda r: r.seq)
        return Difference(
            extra.seq, extra.node, extra.visit, None, summary(extra.output), "not recorded"
        )
    return None


def _difference(record: StepRecord, again: StepRecord | None, reason: str) -> Difference:
    replayed = None if again is None else summary(again.output)
    return Difference(
        record.seq, record.node, record.visit, summary(record.output), replayed, reason
    )
