"""What the run viewer shows, read from a checkpoint store alone (no Ray: it works after the
cluster is gone), redacted, as JSON-able data.

Listing stays cheap however many runs the store holds: the run list comes from the store's
run index (a few reads), plus, now and then, one listing of the store's top level for runs no
index entry names (written by an engine without a host, or whose entry is still queued). Per
run figures (steps, tokens, cost) are read only for the runs on the page; a finished run's
never change, so they are read once, and a live run's at most every ``live_every`` seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic_core import to_jsonable_python

from gecko_actors._redact import MASK, is_secret_setting, redact
from gecko_actors.checkpoint import CheckpointStore, Manifest, StepRecord
from gecko_actors.checkpoint.index import IndexEntry, RunIndex
from gecko_actors.checkpoint.records import STATUSES, TERMINAL, validate_run_id
from gecko_actors.exceptions import CheckpointError, GeckoError, UserError
from gecko_actors.ui.graph_svg import render_svg
from gecko_actors.ui.progress import GraphView, Progress, graph_view, progress
from gecko_actors.workflow.history import run_history, summary
from gecko_actors.workflow.upgrading import latest
from gecko_actors.workflow.versions import renamed_steps
from gecko_actors.workflow.waiting import answerable

__all__ = ["MAX_PAGE", "RunsReader", "jsonable", "redact_value"]

#: The most runs one page of the list shows.
MAX_PAGE = 1000
_NAME_FILTER = 200  # characters of a name filter: it is matched against every run


def redact_value(value: Any) -> Any:
    """``value`` (JSON-able data) with every string redacted, and the value of every key
    named like a secret (``api_key``, ``password``) masked."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {
            redact(str(k)): MASK
            if isinstance(v, str) and is_secret_setting(str(k), v)
            else redact_value(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact_value(v) for v in value]
    return value


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data (an agent's output, a dataclass: their fields; anything
    else JSON has no form for: its ``str``), redacted."""
    return redact_value(to_jsonable_python(value, fallback=str))


@dataclass
class _Figures:
    """A run as the list shows it, and when it was read (``key`` says whether it is still
    good: a finished run's never changes until it is resumed)."""

    key: tuple[Any, ...]
    read_at: float
    row: dict[str, Any]


class RunsReader:
    """The runs of ``store`` as the viewer shows them. Thread-safe; every method blocks
    (call it from a thread in an event loop).

    Args:
        store: the checkpoint store.
        live_every: how old (seconds) a live run's figures and the run list may be.
        scan_every: how often (seconds) the store's top level is listed for runs that no
            index entry names.
        clock: the time (tests move it).
    """

    def __init__(
        self,
        store: CheckpointStore,
        *,
        live_every: float = 1.5,
        scan_every: float = 15.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # What this process cannot decrypt shows as a marker (actions write through their
        # own strict store: a marker is never written back).
        self.store = store.marking()
        self.index = RunIndex(self.store)
        self.live_every = live_every
        self.scan_every = scan_every
        self.clock = clock
        self._lock = threading.Lock()
        self._listed: tuple[float, dict[str, IndexEntry]] | None = None
        self._scanned_at: float | None = None
        self._unindexed: dict[str, IndexEntry] = {}
        self._live: dict[str, _Figures] = {}  # live runs' rows, from their manifests
        self._figures: dict[str, _Figures] = {}  # rows with steps, tokens and cost
        self._details: dict[str, _Figures] = {}  # run pages

    # --- the list ----------------------------------------------------------------------

    def runs(
        self,
        status: str | None = None,
        name: str | None = None,
        offset: int = 0,
        limit: int = 200,
    ) -> dict[str, Any]:
        """The runs newest first, with ``status`` (one of :data:`STATUSES`) and whose id or
        workflow holds ``name`` (case-insensitive), from the ``offset``-th, at most
        ``limit``: each with its id, workflow, status, steps, tokens, cost (``usd``),
        created and finished times, duration and host; and ``total``, how many match."""
        status, name = _filters(status, name, offset, limit)
        with self._lock:
            entries = self._entries()
            now = self.clock()
            rows = [
                self._live_row(e, now) if e.status not in TERMINAL else _row(e) for e in entries
            ]
            rows.sort(key=lambda r: r["created_at"], reverse=True)
            wanted = name.lower() if name else None
            matching = [
                r
                for r in rows
                if (status is None or r["status"] == status)
                and (
                    wanted is None
                    or wanted in r["run_id"].lower()
                    or wanted in r["workflow"].lower()
                )
            ]
            page = [self._with_figures(r, now) for r in matching[offset : offset + limit]]
        return {
            "runs": jsonable(page),
            "total": len(matching),
            "offset": offset,
            "limit": limit,
            "statuses": list(STATUSES),
            "store": redact(self.store.uri),
        }

    def _entries(self) -> list[IndexEntry]:
        """Every run: the index's entries, and those of runs no entry names (found by a
        listing of the store's top level, at most every ``scan_every`` seconds)."""
        now = self.clock()
        if self._listed is None or now - self._listed[0] >= self.live_every:
            self._listed = (now, self.index.read())
        indexed = self._listed[1]
        if self._scanned_at is None or now - self._scanned_at >= self.scan_every:
            self._scanned_at = now
            self._scan(indexed)
        for run_id in [r for r in self._unindexed if r in indexed]:
            del self._unindexed[run_id]  # indexed since
        return [*indexed.values(), *self._unindexed.values()]

    def _scan(self, indexed: dict[str, IndexEntry]) -> None:
        names = [
            e.name
            for e in self.store._list("", None)
            if e.is_dir and not e.name.startswith(".") and e.name not in indexed
        ]
        for run_id in names:
            if run_id in self._unindexed:
                continue
            manifest = self._manifest(run_id)
            if manifest is not None:  # else: a run being created, or not a run
                self._unindexed[run_id] = _entry(manifest)

    def _manifest(self, run_id: str) -> Manifest | None:
        try:
            return self.store.read_manifest(validate_run_id(run_id))
        except (UserError, CheckpointError):  # not a run's folder, or a damaged one
            return None

    def _live_row(self, entry: IndexEntry, now: float) -> dict[str, Any]:
        """A running or waiting run's row, from its manifest (its index entry may lag by
        a batch), read again at most every ``live_every`` seconds."""
        cached = self._live.get(entry.run_id)
        if cached is not None and now - cached.read_at < self.live_every:
            return cached.row
        manifest = self._manifest(entry.run_id)
        row = _row(entry) if manifest is None else _row(_entry(manifest, entry.host))
        _keep(self._live, entry.run_id, _Figures((), now, row))
        return row

    def _with_figures(self, row: dict[str, Any], now: float) -> dict[str, Any]:
        """``row`` with its steps, tokens and cost (read once for a finished run)."""
        key = (row["status"], row["updated_at"])  # a resumed run has a new entry
        cached = self._figures.get(row["run_id"])
        fresh = cached is not None and (
            row["status"] in TERMINAL or now - cached.read_at < self.live_every
        )
        if cached is not None and fresh and cached.key == key:
            return _timed(cached.row, now)
        try:
            records = self.store.load_steps(row["run_id"])
            manifest = self.store.read_manifest(row["run_id"])
            if manifest is not None:  # as of its latest upgrade: the version it follows now
                manifest = latest(self.store, manifest)[0]
        except GeckoError as exc:  # one damaged run must not hide the others
            return {**row, "steps": None, "tokens": None, "usd": None, "problem": str(exc)}
        if manifest is not None:
            row = {**row, **_row(_entry(manifest, row["host"]))}
            row["error"] = manifest.error
            row["forked_from"] = manifest.fork.parent if manifest.fork else None
            row["version"] = manifest.version
        row.update(_totals(records))
        _keep(self._figures, row["run_id"], _Figures(key, now, row))
        return _timed(row, now)

    # --- one run -------------------------------------------------------------------------

    def run(self, run_id: str) -> dict[str, Any] | None:
        """Everything the run's page shows (``None`` for an unknown run): the run, its graph
        as SVG with each node's state, its steps, waiting branches and fork lineage. A
        finished run's is read once."""
        validate_run_id(run_id)
        now = self.clock()
        with self._lock:
            cached = self._details.get(run_id)
        if cached is not None and (cached.key[0] in TERMINAL or now - cached.read_at < 1.0):
            manifest = self.store.read_manifest(run_id)  # resumed since? (two small reads)
            if manifest is not None and cached.key == (manifest.status, manifest.finished_at):
                return {**cached.row, "run": _timed(cached.row["run"], now)}
        manifest = self.store.read_manifest(run_id)
        if manifest is None:
            return None
        # Drawn as of its latest upgrade: that version's graph, renamed nodes' steps under
        # their new names (workflow/upgrading.py).
        manifest, renames = latest(self.store, manifest)
        records = renamed_steps(self.store.load_steps(run_id), renames)
        history = run_history(self.store, run_id) or {"steps": [], "forked_from": []}
        view = graph_view(manifest, records)
        shown = progress(manifest, records, view)
        detail = {
            "run": jsonable(_run_info(manifest, records)),
            "graph": {
                "svg": render_svg(*_masked(view, shown)),
                "recorded": view.recorded,
                "entry": redact(view.entry or ""),
                "states": {redact(n): s for n, s in shown.states.items()},
                "visits": {redact(n): v for n, v in shown.visits.items()},
            },
            "steps": jsonable(history["steps"]),
            "waiting": jsonable(
                {n: e.get("payload") for n, e in answerable(manifest.waiting or {}).items()}
                if manifest.status == "waiting"
                else {}
            ),
            "forked_from": jsonable(history["forked_from"]),
        }
        with self._lock:
            _keep(
                self._details,
                run_id,
                _Figures((manifest.status, manifest.finished_at), now, detail),
            )
        return {**detail, "run": _timed(detail["run"], now)}

    def step(self, run_id: str, seq: int) -> dict[str, Any] | None:
        """Step ``seq`` of the run as it is stored, in full (``None`` if it is not
        committed): its output, state writes, usage, edge decisions and jump."""
        validate_run_id(run_id)
        if type(seq) is not int or seq < 0:
            raise UserError(f"invalid step {seq!r:.40}", hint="a step is a number from 0")
        if self.store.read_manifest(run_id) is None:
            return None
        try:
            record: StepRecord = self.store.read_step(run_id, seq)
        except CheckpointError as exc:
            if "is not committed" in exc.message:
                return None
            raise
        return {"run_id": run_id, "seq": seq, "record": jsonable(_record(record))}


_CACHED = 2000  # runs whose figures or page are kept


def _keep(cache: dict[str, _Figures], run_id: str, found: _Figures) -> None:
    """Cache ``found`` for ``run_id``, forgetting the oldest entries past :data:`_CACHED`."""
    cache.pop(run_id, None)
    cache[run_id] = found
    while len(cache) > _CACHED:
        del cache[next(iter(cache))]


def _filters(status: str | None, name: str | None, offset: int, limit: int) -> tuple[Any, Any]:
    """The list's filters, checked (a UserError names the bad one)."""
    if status in ("", "all"):
        status = None
    if status is not None and status not in STATUSES:
        raise UserError(
            f"unknown status filter {status!r:.40}", hint=f"use one of {', '.join(STATUSES)}"
        )
    if name is not None and len(name) > _NAME_FILTER:
        raise UserError(f"the name filter is longer than {_NAME_FILTER} characters")
    if type(offset) is not int or offset < 0:
        raise UserError(f"invalid offset {offset!r:.40}", hint="a number from 0")
    if type(limit) is not int or not 1 <= limit <= MAX_PAGE:
        raise UserError(f"invalid limit {limit!r:.40}", hint=f"a number from 1 to {MAX_PAGE}")
    return status, name or None


def _entry(manifest: Manifest, host: str | None = None) -> IndexEntry:
    """An index entry made from a manifest (for a run no index entry names, or a live run
    whose entry may lag)."""
    at = manifest.finished_at or manifest.created_at
    return IndexEntry(
        manifest.run_id,
        manifest.workflow,
        manifest.status,
        manifest.created_at,
        at,
        manifest.host or host,
    )


def _row(entry: IndexEntry) -> dict[str, Any]:
    finished = entry.updated_at if entry.status in TERMINAL else None
    return {
        "run_id": entry.run_id,
        "workflow": entry.workflow,
        "status": entry.status,
        "created_at": entry.created_at,
        "updated_at": entry.updated_at,
        "finished_at": finished,
        "host": entry.host,
    }


def _totals(records: list[StepRecord]) -> dict[str, Any]:
    usages = [r.usage for r in records if r.usage is not None]
    return {
        "steps": len(records),
        "tokens": sum(u.total_tokens for u in usages),
        "usd": sum(u.cost or 0.0 for u in usages),
    }


def _timed(row: dict[str, Any], now: float) -> dict[str, Any]:
    """``row`` with its duration: to its end, or to now for a live run."""
    end = row.get("finished_at") or now
    return {**row, "duration": max(0.0, end - row["created_at"])}


def _run_info(manifest: Manifest, records: list[StepRecord]) -> dict[str, Any]:
    return {
        "run_id": manifest.run_id,
        "workflow": manifest.workflow,
        "status": manifest.status,
        "error": manifest.error,
        "created_at": manifest.created_at,
        "finished_at": manifest.finished_at,
        "host": manifest.host,
        "input": summary(manifest.input),
        "result": summary(manifest.result) if manifest.status == "succeeded" else None,
        "budget": manifest.budget,
        "spent": manifest.spent,
        "forked_from": manifest.fork.parent if manifest.fork else None,
        "version": manifest.version,
        **_totals(records),
    }


def _record(record: StepRecord) -> dict[str, Any]:
    """A step record for people: its state writes as ``{key: value}`` (so that a key named
    like a secret has its value masked) and the keys it deleted."""
    return {
        "seq": record.seq,
        "node": record.node,
        "visit": record.visit,
        "attempts": record.attempts,
        "duration": record.duration,
        "finished_at": record.finished_at,
        "input": record.input_summary,
        "output": record.output,
        "state": {w.key: w.value for w in record.writes if not w.deleted},
        "deleted": [w.key for w in record.writes if w.deleted],
        "usage": record.usage,
        "next": None
        if record.next is None
        else {"node": record.next.node, "input": record.next.input},
        "routes": record.routes,
        "epoch": record.epoch,
    }


def _masked(view: GraphView, shown: Progress) -> tuple[GraphView, Progress]:
    """The graph and its progress with every name redacted (for drawing)."""
    name = redact
    nodes = {name(n): info for n, info in view.nodes.items()}
    edges = [(name(s), name(t), None if c is None else name(c)) for s, t, c in view.edges]
    entry = None if view.entry is None else name(view.entry)
    return (
        GraphView(nodes, edges, entry, view.recorded),
        Progress(
            {name(n): s for n, s in shown.states.items()},
            {name(n): v for n, v in shown.visits.items()},
            None if shown.latest is None else name(shown.latest),
            {(name(s), name(t)): k for (s, t), k in shown.jumps.items()},
        ),
    )
