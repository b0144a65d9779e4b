"""Going on with another version of a workflow: the checkpoint's side of
:mod:`gecko_actors.workflow.versions` (Ray-free).

- :func:`admit`: whether run ``run_id`` may be driven by ``graph``. The run's current graph
  is its manifest's, or its latest upgrade's (``checkpoint/upgrades.py``). The same graph
  and version go on at once (no step listing); a run made before runs recorded their graph
  keeps the strict rule (the same fingerprint); anything else is checked against the run's
  committed steps and, when compatible, recorded as an upgrade before the engine commits
  anything under it, so that the next resume compares against the new graph.
- :func:`migrate_run`: map renamed nodes (``wf.migrate``): check, then record an upgrade
  carrying the mapping. Steps committed under the old names are read under the new ones
  (``versions.renamed_steps``) and a renamed node finds what its old name journaled
  (:func:`aliased`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gecko_actors.checkpoint import CheckpointStore, Manifest, StepRecord
from gecko_actors.checkpoint.journal import MISSING
from gecko_actors.checkpoint.upgrades import Upgrade, composed, read_upgrades, write_upgrade
from gecko_actors.exceptions import UserError
from gecko_actors.workflow.graph import WorkflowGraph
from gecko_actors.workflow.rules import different_graph, no_such_run
from gecko_actors.workflow.versions import (
    changes,
    check_renames,
    incompatible,
    renamed_graph,
    renamed_steps,
    run_past,
)

__all__ = [
    "Admission",
    "AliasedJournal",
    "admit",
    "aliased",
    "check_version",
    "current",
    "latest",
    "migrate_run",
]

_TRIES = 5  # upgrades lost to a concurrent upgrade of the same run before giving up


@dataclass(frozen=True)
class Admission:
    """A run admitted to go on with a graph.

    ``manifest`` is the run's with the graph's version, structure and fingerprint;
    ``renames`` maps old node names its steps may carry to current ones; ``steps`` are its
    committed steps as stored (None when they were not needed); ``changed`` says whether
    the graph or version differs from the run's current one (recorded as an upgrade when
    admitted to drive it).
    """

    manifest: Manifest
    renames: dict[str, str] = field(default_factory=dict)
    steps: list[StepRecord] | None = None
    changed: bool = False


def current(manifest: Manifest, upgrades: list[Upgrade]) -> Manifest:
    """``manifest`` with the version, graph and fingerprint of its latest upgrade."""
    if not upgrades:
        return manifest
    last = upgrades[-1]
    return dataclasses.replace(
        manifest, version=last.label, graph=last.graph, fingerprint=last.fingerprint
    )


def latest(store: CheckpointStore, manifest: Manifest) -> tuple[Manifest, dict[str, str]]:
    """The run's manifest as of its latest upgrade, and the renames of its node names (one
    listing of its upgrades, for readers: status, history, the viewer)."""
    upgrades = read_upgrades(store, manifest.run_id)
    return current(manifest, upgrades), composed(upgrades)


def admit(
    graph: WorkflowGraph, manifest: Manifest, store: CheckpointStore, *, drive: bool = True
) -> Admission:
    """Whether run ``manifest.run_id`` may go on with ``graph``: the :class:`Admission`, or
    :class:`~gecko_actors.exceptions.IncompatibleVersion` naming each change it cannot go
    on with (``different_graph`` for a run recorded without its graph). ``drive=True`` (an
    engine about to drive the run) loads its steps in any case and records a compatible
    new graph as an upgrade (not for a run that succeeded: it is not driven again);
    ``drive=False`` (a driver's early check) only reads. Blocking."""
    run_id = manifest.run_id
    for _ in range(_TRIES):
        upgrades = read_upgrades(store, run_id)
        now, renames = current(manifest, upgrades), composed(upgrades)
        fingerprint = graph.fingerprint()
        if now.fingerprint == fingerprint and now.version == graph.version:
            steps = store.load_steps(run_id) if drive else None
            return Admission(now, renames, steps)
        if now.graph is None and now.fingerprint != fingerprint:
            raise different_graph(run_id, manifest.workflow)  # nothing to compare with
        steps = store.load_steps(run_id)
        check_version(graph, now, steps, renames)
        described = graph.describe()
        admitted = dataclasses.replace(
            now, version=graph.version, graph=described, fingerprint=fingerprint
        )
        if not drive:
            return Admission(admitted, renames, steps, changed=True)
        if now.status == "succeeded":  # not driven again: it keeps the version it ended with
            return Admission(now, renames, steps, changed=True)
        upgrade = Upgrade(len(upgrades) + 1, graph.version, fingerprint, described, {}, time.time())
        if write_upgrade(store, run_id, upgrade):
            return Admission(admitted, renames, steps, changed=True)
        # Another engine upgraded the run meanwhile: check against what it recorded.
    raise UserError(
        f"run {run_id!r} was upgraded by other processes {_TRIES} times while this one resumed it",
        hint="resume it again once the other deploys are done",
        run_id=run_id,
    )


def migrate_run(
    graph: WorkflowGraph, store: CheckpointStore, run_id: str, renames: Mapping[str, str]
) -> Manifest:
    """Map the node names of run ``run_id``'s graph to ``graph``'s (``renames``: old ->
    new), check that the run can go on with ``graph`` once mapped, and record it as the
    run's upgrade; returns the run's manifest as of then. A bad mapping or an incompatible
    graph is a UserError (IncompatibleVersion) and nothing is written. Blocking; Ray-free."""
    graph.validate()
    manifest = store.read_manifest(run_id)
    if manifest is None:
        raise no_such_run(run_id, store.uri, " to migrate")
    upgrades = read_upgrades(store, run_id)
    now = current(manifest, upgrades)
    if now.graph is None:
        raise UserError(
            f"run {run_id!r} was made before runs recorded their graph: it cannot be migrated",
            hint="resume it with the graph it was started with",
            run_id=run_id,
        )
    described = graph.describe()
    mapping = check_renames(
        renames, now.graph, described, run_id=run_id, run_version=now.version, version=graph.version
    )
    fingerprint = graph.fingerprint()
    if not mapping and (now.fingerprint, now.version) == (fingerprint, graph.version):
        return now  # nothing to map, nothing changed
    number = len(upgrades) + 1
    every = composed([*upgrades, Upgrade(number, None, fingerprint, described, mapping)])
    steps = store.load_steps(run_id)
    _check(now, renamed_graph(now.graph, mapping), described, steps, every, graph.version)
    upgrade = Upgrade(number, graph.version, fingerprint, described, mapping, time.time())
    if not write_upgrade(store, run_id, upgrade):
        raise UserError(
            f"run {run_id!r} was upgraded by another process while it was being migrated "
            "(nothing was written by this one)",
            hint="migrate it again: the mapping is checked against that upgrade",
            run_id=run_id,
        )
    return dataclasses.replace(now, version=graph.version, graph=described, fingerprint=fingerprint)


def check_version(
    graph: WorkflowGraph, now: Manifest, steps: list[StepRecord], renames: Mapping[str, str]
) -> None:
    """Raise unless a run (``now``: its manifest as of its latest upgrade; ``renames``: its
    node names' renames) whose committed steps are ``steps`` (all, or its first ones: a
    fork's) can go on with ``graph``: IncompatibleVersion naming each change, or, for a
    run recorded without its graph, ``different_graph`` unless its fingerprint is the same."""
    fingerprint = graph.fingerprint()
    if (now.fingerprint, now.version) == (fingerprint, graph.version):
        return
    if now.graph is None:
        if now.fingerprint != fingerprint:
            raise different_graph(now.run_id, now.workflow)
        return  # the same structure, another version
    _check(now, now.graph, graph.describe(), steps, renames, graph.version)


def _check(
    now: Manifest,
    old: dict[str, Any],
    new: dict[str, Any],
    steps: list[StepRecord],
    renames: Mapping[str, str],
    version: str | None,
) -> None:
    """Raise IncompatibleVersion unless the run (``now``: its manifest as of its latest
    upgrade; ``old``: its graph, renamed if migrating) can go on with ``new``."""
    past = run_past(old, now.input, renamed_steps(steps, renames))
    reasons = changes(old, new, past, version=version, renamed_away=renames)
    if reasons:
        raise incompatible(
            now.run_id, now.workflow, reasons, version=version, run_version=now.version
        )


class AliasedJournal:
    """A run's journal in which a renamed node finds what it journaled under its old names
    (steps, tool and model calls, interrupt answers, timers): a key
    ``run_id/<new>/visit/...`` missing from the journal is looked up under each old name.
    Everything else is the wrapped journal's; new entries go under the new name."""

    MISSING = MISSING

    def __init__(self, journal: Any, renames: Mapping[str, str]) -> None:
        self._journal = journal
        self._aliases: dict[str, list[str]] = {}
        for old, new in renames.items():
            self._aliases.setdefault(new, []).append(old)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # not ours (unpickling looks some up before __dict__ is set)
            raise AttributeError(name)
        return getattr(self._journal, name)

    def __repr__(self) -> str:
        return f"Aliased{self._journal!r}"

    def get(self, key: str) -> Any:
        """The value recorded under ``key``, or under the key of one of its node's old
        names; else :data:`MISSING`."""
        found = self._journal.get(key)
        if found is not MISSING:
            return found
        for older in self._older(key):
            found = self._journal.get(older)
            if found is not MISSING:
                return found
        return MISSING

    def _older(self, key: str) -> list[str]:
        prefix = f"{self._journal.run_id}/"
        if not key.startswith(prefix):
            return []
        node, sep, rest = key[len(prefix) :].partition("/")  # node names hold no "/"
        return [f"{prefix}{old}{sep}{rest}" for old in self._aliases.get(node, ())]


def aliased(journal: Any, renames: Mapping[str, str]) -> Any:
    """``journal``, through which renamed nodes find their old names' entries (itself for a
    run without renames)."""
    return AliasedJournal(journal, renames) if renames else journal
