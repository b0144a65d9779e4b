"""Step records as msgpack maps: a committed node visit (:class:`StepRecord`) and its commit
marker (:class:`Marker`), checked field by field on the way in and on the way out (see
:mod:`gecko_actors.checkpoint.records` for the rules every record follows)."""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import ValidationError

from gecko_actors.checkpoint.codec import encode_field
from gecko_actors.checkpoint.records import (
    MAX_EPOCH,
    MAX_SEQ,
    SHA256,
    Marker,
    StateWrite,
    StepRecord,
    corrupt,
    decode_at,
    expect,
    header,
    is_count,
    is_number,
)
from gecko_actors.core.messages import Usage
from gecko_actors.exceptions import UserError
from gecko_actors.workflow.graph import Next

__all__ = ["data_name", "marker_data", "marker_from", "step_data", "step_from"]

# --- steps -----------------------------------------------------------------------------------


def step_data(run_id: str, r: StepRecord) -> dict[str, Any]:
    """The record map of a step, after checking every field (a UserError names the bad one)
    and encoding every value: nothing is written for a step that fails here."""

    def bad(field: str, expected: str) -> UserError:
        value = getattr(r, field, None)
        return UserError(
            f"invalid StepRecord.{field} {value!r:.60}: expected {expected}",
            run_id=run_id,
            node=getattr(r, "node", None),
        )

    if not isinstance(r, StepRecord):
        raise UserError(f"expected a StepRecord, got {type(r).__name__}", run_id=run_id)
    if not is_count(r.seq) or r.seq > MAX_SEQ:
        raise bad("seq", f"an int from 0 to {MAX_SEQ}")
    if not isinstance(r.node, str) or not r.node:
        raise bad("node", "a non-empty str")
    if not is_count(r.visit):
        raise bad("visit", "an int >= 0")
    if not is_count(r.attempts):
        raise bad("attempts", "an int >= 0")
    if not is_number(r.duration) or r.duration < 0:
        raise bad("duration", "a number of seconds >= 0")
    if not is_number(r.finished_at):
        raise bad("finished_at", "a number (time.time())")
    if not is_count(r.epoch) or r.epoch > MAX_EPOCH:
        raise bad("epoch", f"an int from 0 to {MAX_EPOCH} (the engine's owner epoch)")
    if r.usage is not None and not isinstance(r.usage, Usage):
        raise bad("usage", "a Usage or None")
    if r.next is not None and (not isinstance(r.next, Next) or not isinstance(r.next.node, str)):
        raise bad("next", "a Next(node: str, input) or None")
    routes = r.routes
    if routes is not None and (
        not isinstance(routes, dict)
        or not all(isinstance(k, str) and isinstance(v, bool) for k, v in routes.items())
    ):
        raise bad("routes", "None or a dict of target node -> bool")
    if not isinstance(r.writes, (tuple, list)):
        raise bad("writes", "a tuple of StateWrite")
    if r.input_summary is not None and not isinstance(r.input_summary, str):
        raise bad("input_summary", "a str or None")
    at = {"run_id": run_id, "node": r.node}
    writes = []
    for i, write in enumerate(r.writes):
        if not isinstance(write, StateWrite):
            raise bad("writes", f"a tuple of StateWrite (item {i} is a {type(write).__name__})")
        if not isinstance(write.key, str) or type(write.deleted) is not bool:
            raise bad("writes", f"StateWrite(key: str, value, deleted: bool) at item {i}")
        if write.deleted and write.value is not None:
            raise bad("writes", f"a deletion with value None (item {i}, key {write.key!r:.40})")
        value = encode_field(write.value, f"writes[{i}] (state key {write.key!r:.40})", **at)
        writes.append({"key": str.__str__(write.key), "value": value, "deleted": write.deleted})
    return {
        **header("step", run_id),
        "seq": r.seq,
        "node": str.__str__(r.node),
        "visit": r.visit,
        "output": encode_field(r.output, "output", **at),
        "writes": writes,
        "attempts": r.attempts,
        "duration": float(r.duration),
        # Usage is stored as its plain fields (not a tagged value): a step always has one type.
        "usage": None if r.usage is None else r.usage.model_dump(mode="json", exclude_none=True),
        "next": None
        if r.next is None
        else {
            "node": str.__str__(r.next.node),
            "input": encode_field(r.next.input, "next input", **at),
        },
        "routes": None if routes is None else {str(k): bool(v) for k, v in routes.items()},
        "epoch": r.epoch,
        "finished_at": float(r.finished_at),
        # Only when set: a step without it is read by releases that do not know it.
        **({} if r.input_summary is None else {"input_summary": str(r.input_summary)}),
    }


def step_from(rec: dict[str, Any], where: str, run_id: str, seq: int) -> StepRecord:
    """The :class:`StepRecord` of an unpacked step record (typed: ``Usage``, ``Next`` and a
    tuple of :class:`StateWrite`, never dicts)."""
    expect(rec, where, run_id, seq=int, node=str, visit=int, attempts=int, epoch=int)
    expect(rec, where, run_id, duration=(int, float), finished_at=(int, float))
    expect(rec, where, run_id, writes=list, usage=(dict, None), next=(dict, None))
    rec.setdefault("input_summary", None)
    expect(rec, where, run_id, routes=(dict, None), input_summary=(str, None))
    if rec["seq"] != seq:
        raise corrupt(where, run_id, f"holds step {rec['seq']}, not {seq}")
    writes = []
    for item in rec["writes"]:
        if (
            type(item) is not dict
            or set(item) != {"key", "value", "deleted"}
            or type(item["key"]) is not str
            or type(item["deleted"]) is not bool
            or (item["deleted"] and item["value"] is not None)
        ):
            raise corrupt(where, run_id, "has a malformed 'writes'")
        value = decode_at(item["value"], where, run_id)
        writes.append(StateWrite(item["key"], value, item["deleted"]))
    jump = rec["next"]
    if jump is not None:
        if set(jump) != {"node", "input"} or type(jump["node"]) is not str:
            raise corrupt(where, run_id, "has a malformed 'next'")
        jump = Next(jump["node"], decode_at(jump["input"], where, run_id))
    usage = rec["usage"]
    if usage is not None:
        try:
            usage = Usage.model_validate(usage)
        except ValidationError:
            raise corrupt(where, run_id, "has a malformed 'usage'") from None
    routes = rec["routes"]
    if routes is not None and not all(type(v) is bool for v in routes.values()):
        raise corrupt(where, run_id, "has a malformed 'routes'")
    return StepRecord(
        seq=seq,
        node=rec["node"],
        visit=rec["visit"],
        output=decode_at(rec["output"], where, run_id),
        writes=tuple(writes),
        attempts=rec["attempts"],
        duration=rec["duration"],
        usage=usage,
        next=jump,
        routes=routes,
        epoch=rec["epoch"],
        finished_at=rec["finished_at"],
        input_summary=rec["input_summary"],
    )


def marker_data(run_id: str, marker: Marker) -> dict[str, Any]:
    """The record map of a commit marker (without ``data`` when the step has an object)."""
    fields = dataclasses.asdict(marker)
    if marker.data is None:
        del fields["data"]
    return {**header("commit", run_id), **fields}


def marker_from(rec: dict[str, Any], where: str, run_id: str, seq: int) -> Marker:
    """The :class:`Marker` of an unpacked commit record, checked to be step ``seq``'s and to
    name the data object its hash says."""
    expect(rec, where, run_id, seq=int, object=str, size=int, sha256=str, epoch=int)
    if "data" in rec:  # the step itself, inline (checked against size and sha256 on use)
        expect(rec, where, run_id, data=bytes)
    if (
        rec["seq"] != seq
        or not SHA256.fullmatch(rec["sha256"])
        or rec["object"] != data_name(seq, rec["sha256"])
        or rec["size"] < 0
    ):
        raise corrupt(where, run_id, "is not the commit marker of its step")
    return Marker(seq, rec["object"], rec["size"], rec["sha256"], rec["epoch"], rec.get("data"))


def data_name(seq: int, sha256: str) -> str:
    """The name of step ``seq``'s data object with this content hash: two writers of one
    seq never overwrite each other's data."""
    return f"{seq:08d}-{sha256}.msgpack"
