"""A run's upgrades: each time a run goes on with another version of its workflow (a
compatible resume, or ``wf.migrate``), one small record says which graph it follows from
then on. Ray-free.

::

    <run_id>/upgrades/00000001.msgpack   {number, label, fingerprint, graph, renames, at}

The manifest is created once and never rewritten, and the status record is rewritten by
whichever engine writes last (it is advisory), so neither can say durably which graph a
run's later steps were committed under. An upgrade record is written once, only if absent
(numbered: of two engines upgrading a run at once, one wins number *n* and the other reads
it back), before any step is committed under the new graph. The latest one is the run's
current graph; ``renames`` maps the node names of its earlier steps to new ones (only what
``wf.migrate`` was given; they compose in order, see :func:`composed`).

Records are plain msgpack, checked on read like every checkpoint record: a damaged one is a
:class:`~gecko_actors.exceptions.CheckpointError` naming it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gecko_actors.checkpoint.codec import check_plain
from gecko_actors.checkpoint.records import (
    SHA256,
    corrupt,
    expect,
    header,
    pack,
    unpack,
    validate_run_id,
)
from gecko_actors.exceptions import CheckpointError, UserError

__all__ = ["Upgrade", "composed", "read_upgrades", "write_upgrade"]

_FOLDER = "upgrades"
_NAME = re.compile(r"(\d{8})\.msgpack")
_MAX_NUMBER = 10**8 - 1


@dataclass(frozen=True)
class Upgrade:
    """Run ``run_id`` follows this graph from upgrade ``number`` (1, 2, ...) on.

    ``label`` is the workflow's version (``None``: unversioned), ``fingerprint`` and
    ``graph`` are its ``fingerprint()`` and ``describe()``, ``renames`` maps old node names
    to new ones (``wf.migrate``; empty for a plain compatible resume), ``at`` is when it was
    recorded.
    """

    number: int
    label: str | None
    fingerprint: str
    graph: dict[str, Any]
    renames: dict[str, str] = field(default_factory=dict)
    at: float = 0.0


def read_upgrades(store: Any, run_id: str) -> list[Upgrade]:
    """The run's upgrades, oldest first ([] for a run never upgraded: one listing). A gap
    in their numbers, or a record that does not check, is a CheckpointError."""
    run_id = validate_run_id(run_id)
    folder = store._path(run_id, _FOLDER)
    numbers = sorted(
        int(match[1])
        for entry in store._list(folder, run_id)
        if not entry.is_dir and (match := _NAME.fullmatch(entry.name))
    )
    if numbers != list(range(1, len(numbers) + 1)):
        raise CheckpointError(
            f"the upgrades of run {run_id!r} are damaged: numbers {numbers[:10]} do not "
            "count from 1",
            hint="restore the missing upgrade record, or delete the run",
            run_id=run_id,
        )
    paths = [_path(store, run_id, n) for n in numbers]
    found = []
    for number, path, raw in zip(
        numbers, paths, store._map(_getter(store, run_id), paths), strict=True
    ):
        where = store._where(path)
        if raw is None:
            raise corrupt(where, run_id, "disappeared while it was read")
        found.append(_upgrade_from(unpack(raw, "upgrade", run_id, where), where, run_id, number))
    return found


def write_upgrade(store: Any, run_id: str, upgrade: Upgrade) -> bool:
    """Record ``upgrade`` unless upgrade ``upgrade.number`` exists: True if this call wrote
    it, False if another one did first (read it back with :func:`read_upgrades`). An invalid
    field is a UserError before anything is written."""
    data = pack(_upgrade_data(validate_run_id(run_id), upgrade))
    return store._put_if_absent(_path(store, run_id, upgrade.number), data, run_id)


def composed(upgrades: Sequence[Upgrade]) -> dict[str, str]:
    """Every node name a run's steps may carry that is not its current one -> the current
    one: each upgrade's renames, applied in order (``a -> b`` then ``b -> c``: ``a`` and
    ``b`` both end as ``c``)."""
    renames: dict[str, str] = {}
    for upgrade in upgrades:
        renames = {old: upgrade.renames.get(new, new) for old, new in renames.items()}
        for old, new in upgrade.renames.items():
            renames.setdefault(old, new)
    return {old: new for old, new in renames.items() if old != new}


def _path(store: Any, run_id: str, number: int) -> str:
    return store._path(run_id, _FOLDER, f"{number:08d}.msgpack")


def _getter(store: Any, run_id: str) -> Any:
    return lambda path: store._get(path, run_id)


def _upgrade_data(run_id: str, upgrade: Upgrade) -> dict[str, Any]:
    """The record map of an upgrade, after checking every field."""
    if type(upgrade.number) is not int or not 1 <= upgrade.number <= _MAX_NUMBER:
        raise UserError(f"Upgrade.number must be an int from 1, got {upgrade.number!r:.40}")
    if upgrade.label is not None and not isinstance(upgrade.label, str):
        raise UserError("Upgrade.label must be a str or None", run_id=run_id)
    if not isinstance(upgrade.fingerprint, str) or not SHA256.fullmatch(upgrade.fingerprint):
        raise UserError("Upgrade.fingerprint must be a sha256 hex digest", run_id=run_id)
    if not isinstance(upgrade.graph, dict):
        raise UserError("Upgrade.graph must be a dict (WorkflowGraph.describe())", run_id=run_id)
    check_plain(upgrade.graph)
    if not isinstance(upgrade.renames, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in upgrade.renames.items()
    ):
        raise UserError("Upgrade.renames must map str node names to str", run_id=run_id)
    return {
        **header("upgrade", run_id),
        "number": upgrade.number,
        "label": upgrade.label,
        "fingerprint": upgrade.fingerprint,
        "graph": upgrade.graph,
        "renames": dict(upgrade.renames),
        "at": float(upgrade.at or time.time()),
    }


def _upgrade_from(rec: dict[str, Any], where: str, run_id: str, number: int) -> Upgrade:
    """The :class:`Upgrade` of an unpacked upgrade record stored as ``number``."""
    expect(rec, where, run_id, number=int, label=(str, None), fingerprint=str)
    expect(rec, where, run_id, graph=dict, renames=dict, at=(int, float))
    if rec["number"] != number:
        raise corrupt(where, run_id, f"holds upgrade {rec['number']!r:.20}, not {number}")
    renames = rec["renames"]
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in renames.items()):
        raise corrupt(where, run_id, "has a malformed 'renames'")
    return Upgrade(number, rec["label"], rec["fingerprint"], rec["graph"], dict(renames), rec["at"])
