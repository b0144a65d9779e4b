"""A run's committed past, as its engine knows it: the scheduler, state, writers and outputs
its steps left, rebuilt from the checkpoint (``replay``) and moved on by each commit
(``_apply``), and what each visit sees of them (``snapshot``, ``outputs``). Ray-free: the
base of :class:`~gecko_actors.workflow.engine.RunEngine`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

from gecko_actors.checkpoint import CheckpointStore, Fork, Manifest, StateWrite, StepRecord
from gecko_actors.core.messages import Usage
from gecko_actors.exceptions import CheckpointError
from gecko_actors.workflow.execution import Outputs
from gecko_actors.workflow.graph import WorkflowGraph
from gecko_actors.workflow.schedule import Scheduler, Visit
from gecko_actors.workflow.state import apply, fold
from gecko_actors.workflow.status import entry_of
from gecko_actors.workflow.versions import renamed_steps
from gecko_actors.workflow.waiting import Waiting

__all__ = ["Replayed"]


class Replayed:
    """The committed past of run ``run_id`` of ``graph`` (``manifest`` says where it
    started, and what a fork changed)."""

    graph: WorkflowGraph
    run_id: str
    store: CheckpointStore
    manifest: Manifest
    waiting: Waiting
    nodes: dict[str, dict[str, Any]]
    # Old node names -> current ones, for a run migrated to renamed nodes (upgrading.py):
    # its steps are replayed under the names of the graph that drives it now.
    renames: Mapping[str, str] = MappingProxyType({})

    def replay(self, records: list[StepRecord]) -> None:
        """Rebuild the run's progress from its committed steps, as they were decided."""
        self.sched = Scheduler(self.graph, self.run_id)
        self.history: list[tuple[StateWrite, ...]] = []
        self._state: dict[str, Any] = {}  # every committed write, merged in commit order
        self.writers: dict[str, list[tuple[int, str]]] = {}  # key -> (seq, node) that wrote it
        self.output_seqs: dict[str, list[int]] = {}  # node -> the seq of each of its steps
        self.committed_usage: list[Usage] = []  # of each committed step that used a model
        self.nodes = {}
        self.waiting.reset()
        self.sched.start(self.manifest.input)
        fork = self.manifest.fork
        self.fork_writes: tuple[StateWrite, ...] = ()  # what a fork wrote to the state
        for record in renamed_steps(records, self.renames):
            if fork is not None and record.seq == fork.at_step:
                self._fork(fork)
            self.sched.take_ready()
            self._fits(record)
            self._apply(record)
        if fork is not None and self.seq == fork.at_step:  # nothing of its own yet
            self._fork(fork)
        self.sched.requeue_running()  # visits in flight when the last engine stopped run again

    def _fork(self, fork: Fork) -> None:
        """What a forked run changed at its fork point: its state writes (through the
        reducers, after the parent's steps and before its own), and one visit's input."""
        self.fork_writes = tuple(StateWrite(k, v) for k, v in (fork.state or {}).items())
        apply(self._state, self.fork_writes, self.graph.reducers)
        if fork.node is not None:
            self.sched.inputs[self.renames.get(fork.node, fork.node)] = fork.input

    def _fits(self, record: StepRecord) -> None:
        """Refuse a committed step that does not replay as it was decided (its node running
        at its visit): the graph is not one it was committed under (a version changed while
        an older engine still drove the run), or the checkpoint is damaged. Replayed anyway,
        it would be silently dropped and the run would diverge."""
        status, visits = self.sched.status, self.sched.visits
        if status.get(record.node) == "running" and visits[record.node] == record.visit:
            return
        raise CheckpointError(
            f"step {record.seq} of run {self.run_id!r} (node {record.node!r}, visit "
            f"{record.visit}) does not fit workflow {self.graph.name!r} as it is now",
            hint="resume the run with the version of its workflow that committed the step "
            "(an older engine may have gone on with it meanwhile), or restore the checkpoint",
            run_id=self.run_id,
            seq=record.seq,
            node=record.node,
        )

    @property
    def seq(self) -> int:
        """The seq of the next step to commit."""
        return len(self.history)

    def result(self) -> Any:
        """The run's result as its committed steps decide it (see ``Scheduler.result``)."""
        return self.sched.result()

    @property
    def state(self) -> dict[str, Any]:
        """The run's state: every committed write, merged in commit order (a copy)."""
        return copy.deepcopy(self._state)

    def snapshot(self, visit: Visit) -> dict[str, Any]:
        """The state left by ``visit``'s causal ancestors, in commit order."""
        if self._sees_all(visit):
            return self.state
        return fold(self._writes_seen(visit), self.graph.reducers)

    def _writes_seen(self, visit: Visit) -> Iterator[tuple[StateWrite, ...]]:
        """The writes of ``visit``'s causal past in commit order (a fork's own at its fork
        point, seen by every visit of the fork)."""
        at = self.manifest.fork.at_step if self.manifest.fork is not None else -1
        for seq, writes in enumerate(self.history):
            if seq == at:
                yield self.fork_writes
            if visit.after(seq):
                yield writes
        if len(self.history) <= at:
            yield self.fork_writes

    def _sees_all(self, visit: Visit) -> bool:
        """Whether every committed step is in ``visit``'s causal past (always, in a chain)."""
        return visit.ancestors == (1 << self.seq) - 1

    def outputs(self, visit: Visit, extra: Mapping[str, Any] | None = None) -> Outputs:
        """The latest output of each node in ``visit``'s causal past (what ``ctx.outputs``
        holds: the same whenever the visit runs, whatever ran beside it). An older output of
        a node that has run again since is read from the checkpoint when accessed."""
        if self._sees_all(visit):  # the latest output of every node, without a search
            seqs = {node: node_seqs[-1] for node, node_seqs in self.output_seqs.items()}
        else:
            seqs = {}
            for node, node_seqs in self.output_seqs.items():
                seq = next((s for s in reversed(node_seqs) if visit.after(s)), None)
                if seq is not None:
                    seqs[node] = seq
        values = {n: self.sched.outputs[n] for n, s in seqs.items() if s == self.output_seqs[n][-1]}
        return Outputs({**values, **(extra or {})}, seqs, self.store, self.run_id)

    def _apply(self, record: StepRecord) -> None:
        """Let a committed step move the run on (live, and when replaying the checkpoint)."""
        if record.seq != self.seq:
            raise CheckpointError(
                f"step {record.seq} of run {self.run_id!r} follows step {self.seq - 1}",
                hint="the checkpoint is damaged: restore the missing step or delete the run",
                run_id=self.run_id,
            )
        self.history.append(record.writes)
        if record.usage is not None:
            self.committed_usage.append(record.usage)
        apply(self._state, record.writes, self.graph.reducers)
        for write in record.writes:
            self.writers.setdefault(write.key, []).append((record.seq, record.node))
        self.output_seqs.setdefault(record.node, []).append(record.seq)
        self.sched.finish(
            record.node, record.visit, record.output, record.routes, record.next, record.seq
        )
        self.nodes[record.node] = entry_of(record)
