"""An append-only index of a store's runs (id, workflow, status, times, host), so that listing
runs costs a few reads however many runs there are, not a LIST and two GETs per run.

Layout, beside the runs (a run id never starts with a dot)::

    .index/<partition>/<time_ns>-<random>.msgpack    a batch of entries, written once

Each writer appends to its own partition (a workflow host batches the entries of many runs
into one object); readers merge every batch, and the newest entry of a run wins. The only
writer of a partition may ``compact`` it: one object with the newest entry of each run, then
the batches it merged are deleted (a reader that finds a listed batch gone reads again).

A deleted run (``gecko-actors gc``, :mod:`gecko_actors.checkpoint.retention`) gets a
*tombstone*: an entry with ``deleted=True``, newer than every entry of the run, appended to
the ``gc`` partition *before* anything of the run is deleted. The newest entry still wins, so a
reader drops the run, whichever partition holds its older entries; compaction keeps the
tombstone (the newest entry), and a run started again later under the same id has a newer
entry, which wins. A tombstone whose run still has objects is a deletion not finished yet
(:meth:`RunIndex.deleted` lists them; the next ``gc`` finishes them).

The index is a view: the runs' manifests and status objects stay the truth. An entry lost in
a crash is written again when the run's host resumes it; ``rebuild`` makes the index from the
manifests (the first writer of a store that has runs but no index does, once; ``gecko-actors
list`` scans a store without an index, writing nothing).
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from gecko_actors.checkpoint.records import (
    RECORD_VERSION,
    pack,
    unpack,
    validate_run_id,
    validate_status,
)
from gecko_actors.checkpoint.store import CheckpointStore
from gecko_actors.exceptions import CheckpointError, UserError
from gecko_actors.logging import get_logger

__all__ = ["GC_PARTITION", "IndexEntry", "RunIndex"]

_log = get_logger("gecko_actors.checkpoint")
_FOLDER = ".index"
_BATCH = re.compile(r"\d{20}-[0-9a-f]{8}\.msgpack")
_PARTITION = re.compile(r"[A-Za-z0-9_.-]{1,200}")
_FIELDS = ("run_id", "workflow", "status", "created_at", "updated_at", "host")
#: The partition the tombstones of deleted runs are appended to.
GC_PARTITION = "gc"


@dataclass(frozen=True)
class IndexEntry:
    """What the index says about one run, as of ``updated_at``; ``deleted``: a tombstone,
    the run was deleted (its last status is kept in ``status``)."""

    run_id: str
    workflow: str
    status: str
    created_at: float
    updated_at: float
    host: str | None = None
    deleted: bool = False


class RunIndex:
    """The run index of ``store``. Every method blocks (call it from a thread in a loop)."""

    def __init__(self, store: CheckpointStore) -> None:
        self.store = store
        self._started = False  # whether this store's index is known to exist

    def append(self, entries: list[IndexEntry], partition: str) -> int:
        """Write ``entries`` as one batch in ``partition``; returns the bytes written. The
        first writer of a store that has runs but no index indexes them first (once)."""
        if not entries:
            return 0
        folder = _folder(partition)
        if not self._started:
            if not self.store._list(_FOLDER, None):
                self.rebuild()
            self._started = True
        rec = {
            "type": "index",
            "version": RECORD_VERSION,
            "run_id": partition,
            "entries": [_checked(e) for e in entries],
        }
        data = pack(rec)
        name = f"{time.time_ns():020d}-{secrets.token_hex(4)}.msgpack"
        self.store._put(f"{folder}/{name}", data, None)  # type: ignore[arg-type]
        return len(data)

    def read(self) -> dict[str, IndexEntry]:
        """The newest entry of every run in the index (a deleted run's is dropped)."""
        return {k: e for k, e in self._read_all().items() if not e.deleted}

    def deleted(self) -> dict[str, IndexEntry]:
        """The runs whose newest entry is a tombstone: deleted, or being deleted."""
        return {k: e for k, e in self._read_all().items() if e.deleted}

    def forget(self, entries: list[IndexEntry], partition: str = GC_PARTITION) -> int:
        """Append tombstones for the runs of ``entries`` (each dated at least as late as now
        and as its own ``updated_at``, so that it is the run's newest entry); returns the
        bytes written. A reader no longer lists those runs."""
        now = time.time()
        stones = [
            dataclasses.replace(e, updated_at=max(now, e.updated_at), deleted=True) for e in entries
        ]
        return self.append(stones, partition)

    def _read_all(self) -> dict[str, IndexEntry]:
        for _ in range(3):  # a batch compacted away between listing and reading: read again
            batches, vanished = self._batches(None)
            if not vanished:
                break
        return _newest(*batches.values())

    def compact(self, partition: str) -> int:
        """Merge ``partition``'s batches into one (only its writer may); returns how many
        batches it replaced."""
        batches, _ = self._batches(partition)
        if len(batches) < 2:
            return 0
        self.append(list(_newest(*batches.values()).values()), partition)
        folder = _folder(partition)
        for name in batches:
            path = f"{folder}/{name}"
            self.store._retry("delete", path, None, lambda io, p=path: io.remove(p))
        return len(batches)

    def rebuild(self, partition: str = "rebuilt", *, write: bool = True) -> dict[str, IndexEntry]:
        """Index every run of the store from its manifest (a LIST and two GETs per run);
        ``write=False`` only reads (a store whose credentials cannot write)."""
        read = self.store.marking().read_manifest  # headers: no checkpoint key needed
        manifests = [m for m in map(read, self.store.list_runs()) if m]
        now = time.time()
        entries = [
            IndexEntry(m.run_id, m.workflow, m.status, m.created_at, m.finished_at or now, m.host)
            for m in manifests
        ]
        if write and entries:
            self._started = True
            self.append(entries, partition)
        return _newest(entries)

    def _batches(self, partition: str | None) -> tuple[dict[str, list[IndexEntry]], bool]:
        """Batch object name (sorted: oldest first) -> its entries, in one partition or all;
        and whether a listed batch was gone when read."""
        store = self.store
        parts = (
            [partition]
            if partition is not None
            else [e.name for e in store._list(_FOLDER, None) if e.is_dir]
        )
        paths = [
            f"{_folder(p)}/{e.name}"
            for p in parts
            for e in store._list(_folder(p), None)
            if not e.is_dir and _BATCH.fullmatch(e.name)
        ]
        paths.sort(key=lambda path: path.rsplit("/", 1)[1])
        found: dict[str, list[IndexEntry]] = {}
        vanished = False
        for path, raw in zip(paths, store._get_many(paths, None), strict=True):  # type: ignore[arg-type]
            if raw is None:  # compacted away meanwhile: its entries are in a newer batch
                vanished = True
                continue
            try:
                entries = _entries(raw, path, store)
            except CheckpointError as exc:  # a view: one bad batch must not hide the rest
                _log.warning("run index batch ignored", error=exc.message)
                continue
            found[path if partition is None else path.rsplit("/", 1)[1]] = entries
        return found, vanished


def _folder(partition: str) -> str:
    if not isinstance(partition, str) or not _PARTITION.fullmatch(partition):
        raise UserError(
            f"invalid index partition {partition!r:.80}",
            hint="use 1-200 letters, digits, '_', '.' or '-'",
        )
    return f"{_FOLDER}/{partition}"


def _checked(entry: IndexEntry) -> dict[str, Any]:
    validate_run_id(entry.run_id)
    validate_status(entry.status)
    found = dataclasses.asdict(entry)
    if not found.pop("deleted"):
        return found  # as written before tombstones existed
    return {**found, "deleted": True}


def _entries(raw: bytes, path: str, store: CheckpointStore) -> list[IndexEntry]:
    partition = path.split("/")[1]
    rec = unpack(raw, "index", partition, store._where(path))
    return [
        IndexEntry(**{k: item.get(k) for k in _FIELDS}, deleted=item.get("deleted") is True)
        for item in rec["entries"]
        if isinstance(item, dict) and isinstance(item.get("run_id"), str)
    ]


def _newest(*batches: list[IndexEntry]) -> dict[str, IndexEntry]:
    """Run id -> its newest entry in ``batches`` (a later batch wins a tie)."""
    latest: dict[str, IndexEntry] = {}
    for entries in batches:
        for entry in entries:
            seen = latest.get(entry.run_id)
            if seen is None or entry.updated_at >= seen.updated_at:
                latest[entry.run_id] = entry
    return latest
