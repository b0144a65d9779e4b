"""Schedules in a checkpoint store: what starts a workflow's runs at each tick of a cron
expression (:class:`Schedule`), and how far its ticks are handled (:class:`Fired`). Ray-free.

Layout, beside the runs (a run id never starts with a dot, so no run can take the folder)::

    .schedules/<name>/schedule.msgpack    the schedule (replaced whole when it changes)
    .schedules/<name>/fired.msgpack       its cursor: the newest tick handled, the last run

Both are msgpack records (plain data: no pickle, nothing imported when read), each written
in one request with all its bytes, so a torn write is never read. The cursor is only a
shortcut: what makes a tick fire once is its run, whose id is the tick's and whose manifest
is created only if absent (see :mod:`gecko_actors.workflow.firing`).
"""

from __future__ import annotations

import calendar
import dataclasses
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgpack

from gecko_actors.checkpoint import crypto
from gecko_actors.checkpoint.codec import check_plain, decode_value, encode_field
from gecko_actors.checkpoint.records import pack, validate_run_id
from gecko_actors.checkpoint.store import CheckpointStore
from gecko_actors.core import cron
from gecko_actors.exceptions import CheckpointError, GeckoError, UserError
from gecko_actors.logging import get_logger

__all__ = [
    "SCHEDULE_VERSION",
    "Fired",
    "Schedule",
    "ScheduleBook",
    "check_schedule",
    "check_schedule_name",
    "tick_of",
]

_log = get_logger("gecko_actors.checkpoint")
#: The version of the schedule records this gecko_actors writes, and the only one it reads.
SCHEDULE_VERSION = 1
_FOLDER = ".schedules"
_SCHEDULE = "schedule.msgpack"
_FIRED = "fired.msgpack"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
_TICK = re.compile(r"\d{8}T\d{6}Z")
_TYPES = {
    "schedule": {
        "name": (str,),
        "cron": (str,),
        "timezone": (str,),
        "workflow": (str,),
        "target": (str, type(None)),
        "catch_up": (str,),
        "created_at": (int, float),
        "updated_at": (int, float),
        "paused": (bool,),
        "input": None,  # any plain data, checked by the codec
    },
    "schedule_fired": {
        "name": (str,),
        "tick": (int,),
        "run_id": (str, type(None)),
        "at": (int, float),
    },
}
_HINT = (
    "the object is damaged or was written by something else: delete the schedule "
    "(`gecko-actors schedules --checkpoint URI --delete NAME`) and create it again"
)


@dataclass(frozen=True)
class Schedule:
    """A recurring run of workflow ``workflow``: at each tick of ``cron`` (in IANA time zone
    ``timezone``), a run with input ``input`` and id ``<name>-<tick as UTC
    YYYYMMDDTHHMMSSZ>``. ``target`` (``module:attr``) is how a workflow host imports the
    workflow once no driver is left to send it. ``catch_up`` says which ticks missed during
    downtime fire (``latest``, ``all``, ``skip``; see :func:`gecko_actors.core.cron.due`).
    No tick at or before ``updated_at`` (its creation, the last change of its cron or time
    zone, its last resume) fires; a ``paused`` one fires none."""

    name: str
    cron: str
    workflow: str
    input: Any = None
    timezone: str = "UTC"
    target: str | None = None
    catch_up: str = "latest"
    created_at: float = 0.0
    updated_at: float = 0.0
    paused: bool = False

    def run_id(self, tick: int) -> str:
        """The id of the run of ``tick``: the same wherever and however often it fires."""
        return validate_run_id(f"{self.name}-{cron.tick_label(tick)}")

    def due(self, cursor: int | None, now: float) -> cron.Due:
        """The ticks to fire at ``now``, when those up to ``cursor`` are handled."""
        if self.paused:
            return cron.Due()
        since = max(self.updated_at, cursor if cursor is not None else self.updated_at)
        return cron.due(self.cron, self.timezone, self.catch_up, since, now)

    def next_tick(self, cursor: int | None) -> int | None:
        """The first tick not handled yet (due already if it is not in the future)."""
        since = max(self.updated_at, cursor if cursor is not None else self.updated_at)
        found = cron.next_ticks(self.cron, self.timezone, since, 1)
        return found[0] if found else None

    def next_fire_times(self, n: int = 5, now: float | None = None) -> list[datetime]:
        """The next ``n`` times it fires after ``now``, in its own time zone ([] if paused)."""
        if self.paused:
            return []
        after = max(time.time() if now is None else now, self.updated_at)
        zone = cron.check_timezone(self.timezone)
        ticks = cron.next_ticks(self.cron, self.timezone, after, n)
        return [datetime.fromtimestamp(tick, zone) for tick in ticks]


@dataclass(frozen=True)
class Fired:
    """A schedule's cursor: ``tick``, the newest tick handled (fired, or passed over by its
    catch-up policy); ``run_id``, the last run it started (or found started); ``at``, when."""

    tick: int
    run_id: str | None
    at: float


def check_schedule_name(name: object) -> str:
    """``name`` if it can name a schedule (it starts its runs' ids), else a UserError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UserError(
            f"invalid schedule name {name!r:.80}",
            hint="use 1-100 letters, digits, '_', '.' or '-', not starting with '.' or '-' "
            "(it starts the ids of its runs: <name>-<tick>)",
        )
    return name


def check_schedule(schedule: Schedule) -> Schedule:
    """``schedule`` with its cron expression tidied, once every field is valid; else a
    UserError naming the field and how to fix it."""
    check_schedule_name(schedule.name)
    text = cron.check_cron(schedule.cron)
    cron.check_timezone(schedule.timezone)
    cron.check_catch_up(schedule.catch_up)
    if not isinstance(schedule.workflow, str) or not schedule.workflow:
        raise UserError(f"schedule {schedule.name!r}: its workflow must be named")
    if schedule.target is not None and not isinstance(schedule.target, str):
        raise UserError(f"schedule {schedule.name!r}: its target must be 'module:attr' or None")
    for field in ("created_at", "updated_at"):
        if type(getattr(schedule, field)) not in (int, float):
            raise UserError(f"schedule {schedule.name!r}: {field} must be a number (time.time())")
    if not isinstance(schedule.paused, bool):
        raise UserError(f"schedule {schedule.name!r}: paused must be a bool")
    return dataclasses.replace(schedule, cron=text)


def tick_of(name: str, run_id: str) -> int | None:
    """The tick whose run ``run_id`` is, if it is a run of schedule ``name``; else None."""
    prefix = f"{name}-"
    label = run_id[len(prefix) :] if run_id.startswith(prefix) else ""
    if not _TICK.fullmatch(label):
        return None
    return calendar.timegm(time.strptime(label, "%Y%m%dT%H%M%SZ"))


class ScheduleBook:
    """The schedules of ``store``. Every method blocks (call it from a thread in a loop)."""

    def __init__(self, store: CheckpointStore) -> None:
        self.store = store

    def __repr__(self) -> str:
        return f"ScheduleBook({self.store.uri!r})"

    def save(self, schedule: Schedule) -> Schedule:
        """Store ``schedule`` (replacing one of its name); returns it as stored. Every field
        is checked, and its input encoded, before anything is written."""
        schedule = check_schedule(schedule)
        data = {
            **_header("schedule"),
            **{f.name: getattr(schedule, f.name) for f in dataclasses.fields(Schedule)},
            "input": encode_field(schedule.input, f"the input of schedule {schedule.name!r}"),
            "created_at": float(schedule.created_at),
            "updated_at": float(schedule.updated_at),
        }
        data = crypto.seal_record(data)  # its input, with GECKO_CHECKPOINT_KEY (crypto.py)
        self.store._put(self._path(schedule.name, _SCHEDULE), pack(data), None)  # type: ignore[arg-type]
        return schedule

    def load(self, name: str) -> tuple[Schedule | None, Fired | None]:
        """Schedule ``name`` and its cursor (None for each that is not stored)."""
        check_schedule_name(name)
        found = self._read(name)
        return found if found is not None else (None, None)

    def load_all(self) -> dict[str, tuple[Schedule, Fired | None]]:
        """Every schedule of the store with its cursor, by name (reads overlap on object
        stores). One that cannot be read is left out, with a warning in the log."""
        names = [
            e.name for e in self.store._list(_FOLDER, None) if e.is_dir and _NAME.fullmatch(e.name)
        ]
        found: dict[str, tuple[Schedule, Fired | None]] = {}
        for name, pair in zip(names, self.store._map(self._read_quietly, names), strict=True):
            if pair is not None:
                found[name] = pair
        return dict(sorted(found.items()))

    def delete(self, name: str) -> bool:
        """Delete schedule ``name`` and its cursor; False if there was no such schedule."""
        check_schedule_name(name)
        exists = self.store._get(self._path(name, _SCHEDULE), None) is not None
        folder = self._path(name)
        self.store._retry("delete", folder, None, lambda io: io.delete(folder))
        return exists

    def record_fired(self, name: str, tick: int, run_id: str | None = None) -> Fired:
        """Move schedule ``name``'s cursor to ``tick`` (with ``run_id``, the run it started,
        if any) unless it is there already; returns the cursor as stored. Two firers may
        race here: the cursor can then fall back a little, which never refires a tick (its
        run exists), so no fence is needed."""
        path = self._path(name, _FIRED)
        raw = self.store._get(path, None)
        old = None if raw is None else _fired(raw, self.store._where(path), name)
        if old is not None and old.tick >= tick:
            return old
        if run_id is None and old is not None:  # a tick passed over: the last run stays
            run_id = old.run_id
        fired = Fired(tick, run_id, time.time())
        data = {**_header("schedule_fired"), "name": name, **dataclasses.asdict(fired)}
        self.store._put(path, pack(data), None)  # type: ignore[arg-type]
        return fired

    # --- reading ----------------------------------------------------------------------------

    def _path(self, name: str, *parts: str) -> str:
        return "/".join((_FOLDER, name, *parts))

    def _read(self, name: str) -> tuple[Schedule, Fired | None] | None:
        paths = [self._path(name, _SCHEDULE), self._path(name, _FIRED)]
        raw_schedule, raw_fired = (self.store._get(path, None) for path in paths)
        if raw_schedule is None:  # deleted, or a cursor a racing firer wrote after that
            return None
        marking = self.store.encrypted == "mark"  # an input it cannot decrypt: a marker
        schedule = _schedule(raw_schedule, self.store._where(paths[0]), name, marking)
        fired = None if raw_fired is None else _fired(raw_fired, self.store._where(paths[1]), name)
        return schedule, fired

    def _read_quietly(self, name: str) -> tuple[Schedule, Fired | None] | None:
        try:
            return self._read(name)
        except GeckoError as exc:  # one damaged schedule must not stop the others
            _log.warning("schedule ignored: it cannot be read", schedule=name, error=str(exc))
            return None


def _header(kind: str) -> dict[str, Any]:
    return {"type": kind, "version": SCHEDULE_VERSION}


def _damaged(where: str, problem: str) -> CheckpointError:
    return CheckpointError(f"schedule object {where!r} {problem}", hint=_HINT, uri=where)


def _refuse_extension(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code}")


def _unpack(raw: bytes, kind: str, where: str, name: str) -> dict[str, Any]:
    """The record of ``kind`` of schedule ``name`` in the untrusted bytes ``raw``: plain data
    only, this version, exactly its keys, each of its type."""
    try:
        rec = msgpack.unpackb(
            raw, raw=False, strict_map_key=True, ext_hook=_refuse_extension, use_list=True
        )
        check_plain(rec)
    except Exception as exc:  # any failure to decode untrusted bytes
        raise _damaged(where, f"is not a valid msgpack record ({exc!s:.200})") from None
    if type(rec) is not dict or rec.get("type") != kind:
        raise _damaged(where, f"is not a {kind!r} record")
    if rec.get("version") != SCHEDULE_VERSION:
        raise _damaged(
            where,
            f"holds version {rec.get('version')!r:.40}; this gecko_actors reads version "
            f"{SCHEDULE_VERSION}",
        )
    types = _TYPES[kind]
    if set(rec) != {"type", "version", *types}:
        raise _damaged(where, f"is a malformed {kind!r} record (keys {sorted(rec)})")
    for key, allowed in types.items():
        if allowed is not None and type(rec[key]) not in allowed:
            raise _damaged(where, f"has an invalid {key!r} ({type(rec[key]).__name__})")
    if rec["name"] != name:
        raise _damaged(where, f"belongs to schedule {rec['name']!r:.80}")
    return rec


def _schedule(raw: bytes, where: str, name: str, mark: bool = False) -> Schedule:
    rec = _unpack(raw, "schedule", where, name)
    crypto.open_record(rec, where, mark=mark)
    try:
        rec["input"] = (
            rec["input"] if crypto.is_marker(rec["input"]) else decode_value(rec["input"])
        )
        fields = {f.name: rec[f.name] for f in dataclasses.fields(Schedule)}
        return check_schedule(Schedule(**fields))
    except (CheckpointError, UserError) as exc:
        raise _damaged(where, f"holds an invalid schedule: {exc.message}") from None


def _fired(raw: bytes, where: str, name: str) -> Fired:
    rec = _unpack(raw, "schedule_fired", where, name)
    return Fired(rec["tick"], rec["run_id"], rec["at"])
