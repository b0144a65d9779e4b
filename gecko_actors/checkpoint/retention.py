"""Retention: delete finished runs older than a cut-off (``gecko-actors gc``). Ray-free.

:func:`collect_garbage` deletes the runs that are finished (by default ``succeeded``,
``failed`` or ``cancelled``; never ``running`` or ``waiting``) and whose finish time is older
than ``older_than`` seconds (or than their own retention): their manifest, status, owner
claims, steps, journal and answers, everything under the run's folder. It reports the runs
deleted and the bytes freed (the sum of the deleted objects' sizes, from the storage's
listings: ``file://``, ``memory://``, ``s3://`` and ``gs://`` listings all give sizes; an
object listed without one is read to size it).

Per-workflow retention. A run records the retention of the workflow that created it
(``Workflow(name, retention="30d")``, ``Manifest.retention``): how long it is kept once
finished. Without ``older_than`` a pass deletes the finished runs whose own retention has
passed, and keeps every run that has none. With ``older_than``, a run is deleted once it is
older than ``older_than`` or than its own retention, whichever is shorter: a workflow's
retention shortens how long its runs are kept, never lengthens it past the cut-off.

Forks. A fork's first steps are read from its parent run, never copied, so a parent is kept
while a fork that is not deleted in the same pass references it (a fork of a fork keeps its
own parent, which keeps its own). By default every parent that any fork references is kept,
and listed in the report: once its forks are gone, a later pass deletes it. With
``forked_parents=True`` a parent is deleted in the same pass as its forks, if every fork that
references it is deleted too (still never orphaning a fork); forks are deleted before their
parents.

Deleting is safe to interrupt. First the pass appends a tombstone for every run it deletes to
the run index (:meth:`RunIndex.forget`), so ``gecko-actors list`` stops listing them; then,
run by run, it deletes the manifest (from then on the run is no run: ``read_manifest`` finds
nothing and no listing shows it), then everything else. A pass that stops midway leaves
tombstoned runs with objects behind; the next pass finds them (:meth:`RunIndex.deleted`) and
finishes them first (``GcReport.finished``).

Races it does not close: a run resumed or forked from while the pass runs. Each run's
manifest is read again just before it is deleted (a run resumed since is left alone), but a
fork created after the pass listed the store can lose its parent: run ``gc`` when nobody forks
the old runs it deletes (its cut-off is normally days or weeks).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from gecko_actors.checkpoint.index import GC_PARTITION, IndexEntry, RunIndex
from gecko_actors.checkpoint.records import TERMINAL, Manifest
from gecko_actors.checkpoint.store import CheckpointStore
from gecko_actors.core.files import size_text
from gecko_actors.exceptions import GeckoError, UserError
from gecko_actors.logging import get_logger

__all__ = ["DEFAULT_STATUSES", "GcReport", "collect_garbage"]

_log = get_logger("gecko_actors.checkpoint")
_MANIFEST = "manifest.msgpack"
#: The statuses whose runs ``gc`` deletes unless told otherwise: every finished one.
DEFAULT_STATUSES = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class GcReport:
    """What a :func:`collect_garbage` pass deleted (or, with ``dry_run``, would delete).

    Attributes:
        deleted: the runs deleted, in the order they were (forks before their parents).
        kept: each run that was old enough but kept because forks still reference it ->
            those forks' ids.
        finished: runs whose deletion an earlier, interrupted pass had started, finished now.
        skipped: runs whose manifest could not be read (damaged): not deleted, and what they
            reference is unknown.
        bytes_freed: the sizes of every object deleted (of ``deleted`` and ``finished``).
        dry_run: nothing was deleted; the report says what a real pass would do.
    """

    deleted: tuple[str, ...] = ()
    kept: dict[str, tuple[str, ...]] = field(default_factory=dict)
    finished: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    bytes_freed: int = 0
    dry_run: bool = False

    def __str__(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        text = f"{verb} {len(self.deleted)} run(s), {size_text(self.bytes_freed)}"
        if self.finished:
            text += f"; finished {len(self.finished)} interrupted deletion(s)"
        if self.kept:
            text += f"; kept {len(self.kept)} run(s) that forks reference"
        if self.skipped:
            text += f"; skipped {len(self.skipped)} unreadable run(s)"
        return text


def collect_garbage(
    store: CheckpointStore,
    *,
    older_than: float | None = None,
    statuses: Iterable[str] = DEFAULT_STATUSES,
    dry_run: bool = False,
    forked_parents: bool = False,
    now: float | None = None,
) -> GcReport:
    """Delete the runs of ``store`` that finished with one of ``statuses`` more than
    ``older_than`` seconds before ``now`` (default: the current time), or longer ago than
    their own retention if that is shorter (``older_than=None``: their own retention only;
    runs without one are kept), except parents that forks still reference (see the
    module's docstring; ``forked_parents=True`` deletes a parent together with all its
    forks); first finish any deletion an interrupted pass left. ``dry_run`` deletes nothing
    and reports the same. Blocks: call it from a thread in a loop.
    """
    wanted = _statuses(statuses)
    if older_than is not None and (
        type(older_than) not in (int, float) or not math.isfinite(older_than) or older_than < 0
    ):
        raise UserError(
            f"older_than must be a number of seconds >= 0, got {older_than!r:.40}",
            hint="e.g. older_than=30 * 86400 for 30 days",
        )
    at = time.time() if now is None else now
    headers = store.marking()  # reads a run's headers without the checkpoint key too
    index = RunIndex(store)
    freed = 0

    # 1. What an interrupted pass left: tombstoned runs that still have objects.
    present = {e.name for e in store._list("", None) if e.is_dir}
    stones = [e for k, e in index.deleted().items() if k in present]
    left: dict[str, Manifest | None] = {}  # run id -> its manifest, if not deleted yet
    for stone in stones:
        unfinished, manifest = _leftover(headers, stone)
        if unfinished:
            left[stone.run_id] = manifest

    # 2. The runs, and who forks from whom.
    run_ids = [r for r in store.list_runs() if r not in left]
    manifests: dict[str, Manifest] = {}
    skipped: list[str] = []
    for run_id, found in zip(run_ids, store._map(_reader(headers), run_ids), strict=True):
        if isinstance(found, Manifest):
            manifests[run_id] = found
        elif found is not None:
            skipped.append(run_id)
    forks: dict[str, set[str]] = {}
    for m in [*manifests.values(), *filter(None, left.values())]:
        if m.fork is not None:
            forks.setdefault(m.fork.parent, set()).add(m.run_id)
    kept: dict[str, tuple[str, ...]] = {}
    for run_id in sorted(left):
        if forks.get(run_id, set()) - set(left):  # forked while it was being deleted
            kept[run_id] = tuple(sorted(forks[run_id]))
            manifest = left.pop(run_id)
            if manifest is not None and not dry_run:  # list it again
                index.append([_entry(manifest, time.time())], GC_PARTITION)
    every = {**manifests, **{k: m for k, m in left.items() if m is not None}}
    leftovers = sorted(left, key=lambda r: (-_depth(r, every), r))  # forks first
    old = {
        m.run_id for m in manifests.values() if m.status in wanted and _expired(m, at, older_than)
    }
    doomed = set(old)
    if forked_parents:  # a parent goes only with every fork that references it
        changed = True
        while changed:
            changed = False
            for run_id in sorted(doomed):
                if forks.get(run_id, set()) - doomed:
                    doomed.discard(run_id)
                    changed = True
    else:
        doomed = {run_id for run_id in doomed if not forks.get(run_id)}
    kept.update((run_id, tuple(sorted(forks[run_id]))) for run_id in sorted(old - doomed))
    order = sorted(doomed, key=lambda r: (-_depth(r, manifests), r))  # forks first

    # 3. Sizes (what would be freed), then, unless a dry run, the deletions.
    sizes = dict(zip(leftovers + order, store._map(_sizer(store), leftovers + order), strict=True))
    if dry_run:
        return GcReport(
            deleted=tuple(order),
            kept=kept,
            finished=tuple(leftovers),
            skipped=tuple(skipped),
            bytes_freed=sum(sizes.values()),
            dry_run=True,
        )
    for run_id in leftovers:
        _delete(store, run_id)
        freed += sizes[run_id]
    # Tombstones first: from now on an interrupted pass is finished by the next one.
    index.forget([_entry(manifests[run_id]) for run_id in order])
    deleted: list[str] = []
    for run_id in order:
        again = headers.read_manifest(run_id)  # resumed since it was listed? leave it
        before = manifests[run_id]
        if again is None or (again.status, again.finished_at) != (
            before.status,
            before.finished_at,
        ):
            _log.warning("run changed during gc: not deleted", run_id=run_id)
            if again is not None:  # list it again (a newer entry than the tombstone)
                index.append([_entry(again, time.time())], GC_PARTITION)
            continue
        _delete(store, run_id)
        deleted.append(run_id)
        freed += sizes[run_id]
    return GcReport(
        deleted=tuple(deleted),
        kept=kept,
        finished=tuple(leftovers),
        skipped=tuple(skipped),
        bytes_freed=freed,
    )


def _expired(m: Manifest, now: float, older_than: float | None) -> bool:
    """Whether finished run ``m`` is past ``older_than`` or its own retention (the shorter
    of the two; a run with neither is kept)."""
    keep = [t for t in (older_than, m.retention) if t is not None]
    return bool(keep) and m.finished_at is not None and m.finished_at < now - min(keep)


def _leftover(store: CheckpointStore, stone: IndexEntry) -> tuple[bool, Manifest | None]:
    """Whether the objects of tombstoned run ``stone.run_id`` are a deletion left unfinished
    (not a run started again under the same id, whose index entry is not written yet), and
    its manifest if it still has one."""
    try:
        manifest = store.read_manifest(stone.run_id)
    except GeckoError:
        return True, None  # what a deletion stopped midway may leave
    if manifest is None:
        return True, None  # the manifest goes first
    unfinished = manifest.status in TERMINAL and manifest.created_at <= stone.updated_at
    return unfinished, manifest


def _statuses(statuses: Iterable[str]) -> frozenset[str]:
    if isinstance(statuses, str):
        statuses = (statuses,)
    wanted = frozenset(statuses)
    if not wanted or not wanted <= TERMINAL:
        bad = sorted(wanted - TERMINAL) or "none"
        raise UserError(
            f"gc deletes finished runs only: invalid status(es) {bad}",
            hint=f"use one or more of {', '.join(DEFAULT_STATUSES)} (running and waiting "
            "runs are never deleted)",
        )
    return wanted


def _reader(store: CheckpointStore) -> Callable[[str], Manifest | GeckoError | None]:
    def read(run_id: str) -> Manifest | GeckoError | None:
        try:
            return store.read_manifest(run_id)
        except GeckoError as exc:  # a damaged run must not stop the pass
            _log.warning("run not read by gc", run_id=run_id, error=str(exc))
            return exc

    return read


def _sizer(store: CheckpointStore) -> Callable[[str], int]:
    def size(folder: str) -> int:
        """The bytes of every object under ``folder``, walked one listing per folder."""
        total = 0
        for entry in store._list(folder, None):
            path = f"{folder}/{entry.name}"
            if entry.is_dir:
                total += size(path)
            elif entry.size is not None:
                total += entry.size
            else:  # a listing without sizes: read the object
                total += len(store._get(path, None) or b"")
        return total

    return size


def _depth(run_id: str, manifests: dict[str, Manifest]) -> int:
    """How many forks deep ``run_id`` is (0: not a fork)."""
    depth, seen = 0, {run_id}
    fork = manifests[run_id].fork if run_id in manifests else None
    while fork is not None and fork.parent not in seen:
        depth += 1
        seen.add(fork.parent)
        parent = manifests.get(fork.parent)
        fork = parent.fork if parent is not None else None
    return depth


def _delete(store: CheckpointStore, run_id: str) -> None:
    """The manifest first (then the run is no run), then the rest of its folder."""
    path = store._path(run_id, _MANIFEST)
    store._retry("delete", path, run_id, lambda io: io.remove(path))
    store.delete_run(run_id)


def _entry(m: Manifest, updated_at: float | None = None) -> IndexEntry:
    stamp = updated_at if updated_at is not None else (m.finished_at or m.created_at)
    return IndexEntry(m.run_id, m.workflow, m.status, m.created_at, stamp, m.host)
