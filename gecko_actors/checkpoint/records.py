"""The records of a checkpoint: what a run is (:class:`Manifest`), what each committed node
visit did (:class:`StepRecord`, with its :class:`StateWrite` list), and how each record becomes
a msgpack map and back (steps and their markers: :mod:`gecko_actors.checkpoint.steps`).

Every stored object is a msgpack map with a ``type`` and a ``version``; reading one accepts
only the known types, the current :data:`RECORD_VERSION`, exactly the expected keys and value
types, and plain data with no msgpack extension types. Anything else is a
:class:`~gecko_actors.exceptions.CheckpointError` naming the object. Writing validates every
field first and names the bad one in a :class:`~gecko_actors.exceptions.UserError`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

import msgpack

from gecko_actors.checkpoint.codec import check_plain, decode_value, encode_field
from gecko_actors.core.messages import Usage
from gecko_actors.exceptions import CheckpointError, UserError
from gecko_actors.workflow.graph import Next

__all__ = [
    "MAX_EPOCH",
    "MAX_SEQ",
    "RECORD_VERSION",
    "STATUSES",
    "TERMINAL",
    "Fork",
    "Manifest",
    "Marker",
    "StateWrite",
    "StepRecord",
    "apply_status",
    "corrupt",
    "manifest_data",
    "manifest_from",
    "owner_data",
    "pack",
    "status_data",
    "unpack",
    "validate_epoch",
    "validate_run_id",
    "validate_status",
]

#: The version of every record this gecko_actors writes, and the only one it reads.
#: 2: content-addressed step data, owner epochs, typed step records with state writes.
RECORD_VERSION = 2
#: The statuses a run can have.
STATUSES = ("running", "waiting", "succeeded", "failed", "cancelled")
#: The statuses of a finished run.
TERMINAL = frozenset(("succeeded", "failed", "cancelled"))
#: Sequence numbers and epochs are written with 8 digits in object names.
MAX_SEQ = 10**8 - 1
MAX_EPOCH = 10**8 - 1

_RUN_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}")
SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Fork:
    """Where a forked run comes from. Its first ``at_step`` steps are run ``parent``'s, read
    from there (never copied); then ``state`` is written (through the workflow's reducers),
    and, with ``node``, that node's pending visit is given ``input`` instead of its own."""

    parent: str
    at_step: int
    state: dict[str, Any] | None = None
    node: str | None = None
    input: Any = None


@dataclass(frozen=True)
class Manifest:
    """What a run is: created once when it starts. Its status lives in a separate small
    object (see ``CheckpointStore.update_status``), merged in by
    ``CheckpointStore.read_manifest``."""

    run_id: str
    workflow: str
    fingerprint: str
    input: Any
    created_at: float
    status: str = "running"  # running | succeeded | failed | cancelled
    result: Any = None
    error: str | None = None
    finished_at: float | None = None
    host: str | None = None  # the actor that drives the run (a workflow host, or dedicated)
    # The run's budget (a ``Budget`` as a dict; a resume may raise it) and what its model
    # calls spent as of its last status (a ``Usage`` as a dict), for budgeted runs.
    budget: dict[str, Any] | None = None
    spent: dict[str, Any] | None = None
    # The parked nodes of a waiting run: node -> {"key": its interrupt, "payload": ...}.
    waiting: dict[str, Any] | None = None
    # Whether the run journals its model calls (decided when it starts, kept on a resume).
    journal_models: bool = False
    fork: Fork | None = None  # a forked run's parent, and what the fork changed
    # The graph's structure (``WorkflowGraph.describe()``: nodes, kinds, edges, entry), so that
    # a run can be drawn from its checkpoint alone (``gecko-actors ui``, after the cluster).
    graph: dict[str, Any] | None = None
    # The workflow's version the run was created with (stored as ``workflow_version``: the
    # record's ``version`` is its format's); a resume with a newer one records an upgrade
    # (``checkpoint/upgrades.py``). How long gc keeps the run once finished (seconds).
    version: str | None = None
    retention: float | None = None


@dataclass(frozen=True)
class StateWrite:
    """One write a node made to the run's state: a new value for ``key``, or its deletion."""

    key: str
    value: Any = None
    deleted: bool = False


@dataclass(frozen=True)
class StepRecord:
    """One committed visit of a node. ``writes`` are the state writes it made, in the order
    they are applied; ``epoch`` is the owner epoch of the engine that committed it.

    ``seq`` is the commit order (0-based); the visit's idempotency key is
    ``f"{run_id}/{node}/{visit}"``. ``next`` is the ``Next(node, input)`` jump the node
    returned; ``routes`` maps each outgoing edge's target to its condition's outcome, so that
    a resumed run replays the decisions instead of evaluating the conditions again.
    """

    seq: int
    node: str
    visit: int
    output: Any
    writes: tuple[StateWrite, ...] = ()
    attempts: int = 1
    duration: float = 0.0
    usage: Usage | None = None
    next: Next | None = None
    routes: dict[str, bool] | None = None
    epoch: int = 0
    finished_at: float = 0.0
    # What the visit was given, shortened (its history shows it; the input itself is the
    # output it came from, already in the checkpoint).
    input_summary: str | None = None


@dataclass(frozen=True)
class Marker:
    """A step's commit marker: which content-addressed data object is step ``seq``, its
    size and sha256, and the epoch of the engine that committed it. A small step's packed
    data is ``data``, inside the marker: then no data object is written (one write per step)."""

    seq: int
    object: str
    size: int
    sha256: str
    epoch: int
    data: bytes | None = None


_STATUS_FIELDS = (
    "status",
    "result",
    "error",
    "updated_at",
    "finished_at",
    "epoch",
    "budget",
    "spent",
    "waiting",
)
_KEYS = {
    "manifest": frozenset(
        ["type", "workflow_version", *(f.name for f in dataclasses.fields(Manifest))]
    ),
    "status": frozenset(("type", "version", "run_id", *_STATUS_FIELDS)),
    "step": frozenset(
        ["type", "version", "run_id", *(f.name for f in dataclasses.fields(StepRecord))]
    ),
    "commit": frozenset(
        ["type", "version", "run_id", *(f.name for f in dataclasses.fields(Marker))]
    ),
    "owner": frozenset(("type", "version", "run_id", "epoch", "claimed_at", "holder")),
    "journal": frozenset(("type", "version", "run_id", "key", "value", "epoch", "at")),
    "index": frozenset(("type", "version", "run_id", "entries")),
    "upgrade": frozenset(
        ("type", "version", "run_id", "number", "label", "fingerprint", "graph", "renames", "at")
    ),
}
# Keys a record may lack (written by an earlier release of the same record version).
_SPEND = frozenset(["budget", "spent"])
_OPTIONAL = {
    "manifest": frozenset(
        ["host", "waiting", "journal_models", "fork", "graph", "workflow_version", "retention"]
    )
    | _SPEND,
    "status": _SPEND | {"waiting"},
    "commit": frozenset(["data"]),
    "step": frozenset(["input_summary"]),
}


# --- checks ----------------------------------------------------------------------------------


def is_number(value: Any) -> bool:
    return type(value) in (int, float)


def is_count(value: Any) -> bool:
    return type(value) is int and value >= 0


def validate_run_id(run_id: Any) -> str:
    """``run_id`` if it is a valid run id (it becomes a folder name), else a UserError."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise UserError(
            f"invalid run_id {run_id!r:.80}",
            hint="a run_id is 1-200 letters, digits, '_', '-' or '.', not starting with '.'",
        )
    return run_id


def validate_status(status: Any) -> str:
    """``status`` if it is one of :data:`STATUSES`, else a UserError."""
    if status not in STATUSES:
        raise UserError(f"invalid run status {status!r:.40}", hint=f"use one of {STATUSES}")
    return status


def validate_epoch(epoch: Any, what: str = "epoch") -> int:
    """``epoch`` if it is an int from 0 to :data:`MAX_EPOCH`, else a UserError naming
    ``what``."""
    if not is_count(epoch) or epoch > MAX_EPOCH:
        raise UserError(f"invalid {what} {epoch!r:.40}: expected an int from 0 to {MAX_EPOCH}")
    return epoch


def corrupt(where: str, run_id: str | None, problem: str) -> CheckpointError:
    """The error for a stored object (``where``, its URI) of run ``run_id`` that is damaged or
    not ours: the message names the object, the run and ``problem``."""
    return CheckpointError(
        f"checkpoint object {where!r}{_of_run(run_id)} {problem}",
        hint="the checkpoint is damaged or was written by something else; restore it, or "
        "delete the run and start it again",
        uri=where,
        run_id=run_id,
    )


def _of_run(run_id: str | None) -> str:
    return "" if run_id is None else f" of run {run_id!r}"


# --- bytes <-> maps --------------------------------------------------------------------------


class _RefusedExtension(Exception):
    pass


def _refuse_ext(code: int, data: bytes) -> Any:
    raise _RefusedExtension(code)


def pack(record: dict[str, Any]) -> bytes:
    """A record map as msgpack bytes (with no extension types: values are already plain)."""
    try:
        return msgpack.packb(record, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:  # encode_value should prevent this
        raise UserError(f"cannot serialise a checkpoint record: {exc}") from None


def unpack(raw: bytes, kind: str, run_id: str, where: str) -> dict[str, Any]:
    """Decode the untrusted bytes of the ``kind`` record of run ``run_id`` stored at
    ``where``: plain data only, a known type, the current version, exactly its keys."""
    try:
        rec = msgpack.unpackb(
            raw, raw=False, strict_map_key=True, ext_hook=_refuse_ext, use_list=True
        )
    except _RefusedExtension as exc:
        raise corrupt(where, run_id, f"holds msgpack extension type {exc}") from None
    except Exception as exc:  # any decoding failure of untrusted bytes
        raise corrupt(
            where, run_id, f"is not a valid msgpack record ({type(exc).__name__}: {exc!s:.200})"
        ) from None
    try:
        check_plain(rec)
    except (CheckpointError, RecursionError):
        raise corrupt(where, run_id, "holds something other than plain data") from None
    if type(rec) is not dict or "type" not in rec or "version" not in rec:
        raise corrupt(where, run_id, "is not a gecko_actors checkpoint record")
    # The type may be any plain value (a list is unhashable): compare, never look it up.
    if type(rec["type"]) is not str or rec["type"] not in _KEYS:
        raise corrupt(where, run_id, f"holds a record of unknown type {rec['type']!r:.60}")
    if rec["type"] != kind:
        raise corrupt(where, run_id, f"holds a {rec['type']!r} record, not a {kind!r}")
    if rec["version"] != RECORD_VERSION:
        error = corrupt(
            where,
            run_id,
            f"holds {kind!r} record version {rec['version']!r:.40}; this gecko_actors "
            f"reads version {RECORD_VERSION}",
        )
        error.hint = (
            "it was written by another gecko_actors version: use that version to finish or "
            "inspect the run"
        )
        raise error
    keys = set(rec) | _OPTIONAL.get(kind, frozenset())
    if keys != _KEYS[kind]:
        missing, extra = sorted(_KEYS[kind] - keys), sorted(keys - _KEYS[kind])
        raise corrupt(
            where, run_id, f"is a malformed {kind!r} record (missing {missing}, unexpected {extra})"
        )
    if rec["run_id"] != run_id:
        raise corrupt(where, run_id, f"belongs to run {rec['run_id']!r:.80}")
    return rec


def expect(rec: dict[str, Any], where: str, run_id: str, **types: Any) -> None:
    for key, allowed in types.items():
        allowed = allowed if isinstance(allowed, tuple) else (allowed,)
        if not any(rec[key] is None if t is None else type(rec[key]) is t for t in allowed):
            expected = " or ".join("None" if t is None else t.__name__ for t in allowed)
            raise corrupt(
                where,
                run_id,
                f"has an invalid {key!r} (expected {expected}, found {type(rec[key]).__name__})",
            )


def _status_of(rec: dict[str, Any], where: str, run_id: str) -> str:
    if rec["status"] not in STATUSES:
        raise corrupt(where, run_id, f"has the unknown status {rec['status']!r:.40}")
    return rec["status"]


def decode_at(data: Any, where: str, run_id: str) -> Any:
    try:
        return decode_value(data)
    except CheckpointError as exc:
        raise CheckpointError(
            f"checkpoint object {where!r}{_of_run(run_id)}: {exc.message}",
            hint=exc.hint,
            uri=where,
            run_id=run_id,
        ) from None


def header(kind: str, run_id: str) -> dict[str, Any]:
    return {"type": kind, "version": RECORD_VERSION, "run_id": run_id}


# --- manifest and status ---------------------------------------------------------------------


def manifest_data(manifest: Manifest) -> dict[str, Any]:
    """The record map of a manifest, after checking every field."""
    run_id = validate_run_id(manifest.run_id)
    validate_status(manifest.status)
    for name in ("workflow", "fingerprint"):
        if not isinstance(getattr(manifest, name), str):
            raise UserError(f"Manifest.{name} must be a str", run_id=run_id)
    if not is_number(manifest.created_at):
        raise UserError("Manifest.created_at must be a number (time.time())", run_id=run_id)
    if manifest.error is not None and not isinstance(manifest.error, str):
        raise UserError("Manifest.error must be a str or None", run_id=run_id)
    if manifest.finished_at is not None and not is_number(manifest.finished_at):
        raise UserError("Manifest.finished_at must be a number or None", run_id=run_id)
    if manifest.host is not None and not isinstance(manifest.host, str):
        raise UserError("Manifest.host must be a str or None", run_id=run_id)
    if not isinstance(manifest.journal_models, bool):
        raise UserError("Manifest.journal_models must be a bool", run_id=run_id)
    _check_spend(manifest.budget, manifest.spent, run_id)
    if manifest.graph is not None and not isinstance(manifest.graph, dict):
        raise UserError("Manifest.graph must be a dict (WorkflowGraph.describe()) or None")
    if manifest.version is not None and not isinstance(manifest.version, str):
        raise UserError("Manifest.version must be a str or None", run_id=run_id)
    if manifest.retention is not None and not (
        is_number(manifest.retention) and manifest.retention > 0
    ):
        raise UserError("Manifest.retention must be a number of seconds > 0, or None")
    return {
        **header("manifest", run_id),
        "workflow": str(manifest.workflow),
        "fingerprint": str(manifest.fingerprint),
        "input": encode_field(manifest.input, "input", run_id=run_id),
        "created_at": float(manifest.created_at),
        "status": manifest.status,
        "result": encode_field(manifest.result, "result", run_id=run_id),
        "error": manifest.error,
        "finished_at": None if manifest.finished_at is None else float(manifest.finished_at),
        "host": manifest.host,
        # Only when set: a manifest without them is read by releases that know neither.
        **{k: v for k, v in (("budget", manifest.budget), ("spent", manifest.spent)) if v},
        **({"journal_models": True} if manifest.journal_models else {}),
        **({} if manifest.fork is None else {"fork": _fork_data(manifest.fork, run_id)}),
        **({} if manifest.graph is None else {"graph": manifest.graph}),
        **({} if manifest.version is None else {"workflow_version": manifest.version}),
        **({} if manifest.retention is None else {"retention": float(manifest.retention)}),
    }


def _fork_data(fork: Fork, run_id: str) -> dict[str, Any]:
    validate_run_id(fork.parent)
    if not is_count(fork.at_step):
        raise UserError("Fork.at_step must be an int >= 0", run_id=run_id)
    if fork.state is not None and not (
        isinstance(fork.state, dict) and all(isinstance(k, str) for k in fork.state)
    ):
        raise UserError("Fork.state must be a dict with str keys, or None", run_id=run_id)
    if fork.node is not None and not isinstance(fork.node, str):
        raise UserError("Fork.node must be a str or None", run_id=run_id)
    return {
        "parent": fork.parent,
        "at_step": fork.at_step,
        "state": encode_field(fork.state, "the fork's state", run_id=run_id),
        "node": fork.node,
        "input": encode_field(fork.input, "the fork's input", run_id=run_id),
    }


def _fork_from(data: Any, where: str, run_id: str) -> Fork | None:
    if data is None:
        return None
    if type(data) is not dict or set(data) != {"parent", "at_step", "state", "node", "input"}:
        raise corrupt(where, run_id, "has a malformed 'fork'")
    expect(data, where, run_id, parent=str, at_step=int, node=(str, None))
    state = decode_at(data["state"], where, run_id)
    if state is not None and type(state) is not dict:
        raise corrupt(where, run_id, "has a malformed 'fork' state")
    return Fork(
        data["parent"],
        data["at_step"],
        state,
        data["node"],
        decode_at(data["input"], where, run_id),
    )


def _check_spend(budget: Any, spent: Any, run_id: str) -> None:
    for name, value in (("budget", budget), ("spent", spent)):
        if value is not None and not isinstance(value, dict):
            raise UserError(f"a run's {name} must be a dict or None", run_id=run_id)


def _spend_of(rec: dict[str, Any], where: str, run_id: str) -> dict[str, Any]:
    """A record's budget and spend (``None`` when it has none; what they hold is the
    engine's to check)."""
    found = {key: rec.get(key) for key in _SPEND}
    expect(found, where, run_id, budget=(dict, None), spent=(dict, None))
    return found


def manifest_from(rec: dict[str, Any], where: str, run_id: str) -> Manifest:
    """The :class:`Manifest` of an unpacked manifest record."""
    expect(rec, where, run_id, workflow=str, fingerprint=str, status=str)
    expect(rec, where, run_id, created_at=(int, float))
    expect(rec, where, run_id, error=(str, None), finished_at=(int, float, None))
    rec.setdefault("host", None)
    rec.setdefault("journal_models", False)
    rec.setdefault("fork", None)
    rec.setdefault("graph", None)
    rec.setdefault("workflow_version", None)
    rec.setdefault("retention", None)
    expect(rec, where, run_id, host=(str, None), journal_models=bool, graph=(dict, None))
    expect(rec, where, run_id, workflow_version=(str, None), retention=(int, float, None))
    return Manifest(
        **_spend_of(rec, where, run_id),
        run_id=run_id,
        workflow=rec["workflow"],
        fingerprint=rec["fingerprint"],
        input=decode_at(rec["input"], where, run_id),
        created_at=rec["created_at"],
        status=_status_of(rec, where, run_id),
        result=decode_at(rec["result"], where, run_id),
        error=rec["error"],
        finished_at=rec["finished_at"],
        host=rec["host"],
        journal_models=rec["journal_models"],
        fork=_fork_from(rec["fork"], where, run_id),
        graph=rec["graph"],
        version=rec["workflow_version"],
        retention=rec["retention"],
    )


def status_data(
    run_id: str,
    status: str,
    result: Any,
    error: str | None,
    epoch: int | None,
    now: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The record map of a run's status, after checking every field (``extra``: a budgeted
    run's ``budget`` and ``spent``, a waiting run's parked nodes as ``waiting``)."""
    validate_status(status)
    if error is not None and not isinstance(error, str):
        raise UserError("error must be a str or None", run_id=run_id)
    extra = {k: v for k, v in (extra or {}).items() if v is not None}
    _check_spend(extra.get("budget"), extra.get("spent"), run_id)
    if "waiting" in extra:
        extra["waiting"] = encode_field(extra["waiting"], "waiting", run_id=run_id)
    return {
        **header("status", run_id),
        "status": status,
        "result": encode_field(result, "result", run_id=run_id),
        "error": error,
        "updated_at": now,
        "finished_at": now if status in TERMINAL else None,
        "epoch": epoch,
        **{key: value for key, value in extra.items() if key in (*_SPEND, "waiting")},
    }


def apply_status(manifest: Manifest, rec: dict[str, Any], where: str) -> Manifest:
    """``manifest`` with the status of an unpacked status record merged in."""
    run_id = manifest.run_id
    expect(rec, where, run_id, status=str, error=(str, None), epoch=(int, None))
    expect(rec, where, run_id, updated_at=(int, float), finished_at=(int, float, None))
    spend = {k: v for k, v in _spend_of(rec, where, run_id).items() if k in rec}
    waiting = decode_at(rec.get("waiting"), where, run_id)
    if waiting is not None and not isinstance(waiting, dict):
        raise corrupt(where, run_id, "has an invalid 'waiting' (expected a map)")
    return dataclasses.replace(
        manifest,
        **spend,
        waiting=waiting,
        status=_status_of(rec, where, run_id),
        result=decode_at(rec["result"], where, run_id),
        error=rec["error"],
        finished_at=rec["finished_at"],
    )


def owner_data(run_id: str, epoch: int, holder: str, now: float) -> dict[str, Any]:
    """The record map of an owner claim (``holder`` says which process took it, for people
    reading the store)."""
    return {**header("owner", run_id), "epoch": epoch, "claimed_at": now, "holder": holder}
