"""A run's effect journal: the recorded result of each side effect a visit made, so that a
visit run again (a retry, a restarted host, a resume after the whole cluster was lost)
returns what the effect returned the first time instead of causing it again.

Each entry is one msgpack record beside the run's steps (``journal/<sha256 of key>``),
written only if absent: of two attempts that race (a stale one still running somewhere), the
first to write wins and the other gets its value. A write is fenced like a commit: an engine
whose run was taken over by a newer one cannot journal (``OwnershipLost``). What stays
at-least-once: an effect that ran but whose entry was not yet written when its process died
runs again (with the same idempotency key, which is what the key is for).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from gecko_actors.checkpoint.codec import decode_value, encode_field
from gecko_actors.checkpoint.crypto import seal_record
from gecko_actors.checkpoint.records import corrupt, expect, header, pack, unpack

__all__ = ["MISSING", "Journal"]

MISSING: Any = object()  # no entry for a key
_FOLDER = "journal"


class Journal:
    """The journal of run ``run_id`` in ``store``, written by the engine of ``epoch``;
    ``models``: whether model calls are journaled too (tool calls and steps always are)."""

    MISSING = MISSING

    def __init__(self, store: Any, run_id: str, epoch: int, *, models: bool = False) -> None:
        self.store, self.run_id, self.epoch, self.models = store, run_id, epoch, models

    def __repr__(self) -> str:
        return f"Journal({self.store.uri!r}, {self.run_id!r})"

    def get(self, key: str) -> Any:
        """The value recorded under ``key``, or :data:`MISSING`."""
        found = self._read(self._path(key))
        return MISSING if found is None else found["value"]

    def entries(self) -> list[dict[str, Any]]:
        """Every entry (``key``, ``value``, ``at``: when it was recorded), oldest first; the
        reads overlap on object stores."""
        folder = self.store._path(self.run_id, _FOLDER)
        names = [e.name for e in self.store._list(folder, self.run_id) if not e.is_dir]
        paths = [self.store._path(self.run_id, _FOLDER, name) for name in names]
        found = [entry for entry in self.store._map(self._read, paths) if entry is not None]
        return sorted(found, key=lambda entry: entry["at"])

    def _read(self, path: str) -> dict[str, Any] | None:
        raw = self.store._get(path, self.run_id)
        if raw is None:
            return None
        where = self.store._where(path)
        rec = self.store._opened(unpack(raw, "journal", self.run_id, where), where)
        expect(rec, where, self.run_id, key=str, epoch=int, at=(int, float))
        if self._path(rec["key"]) != path:  # an entry copied under another key's name
            raise corrupt(where, self.run_id, f"holds the entry of key {rec['key']!r:.80}")
        return {"key": rec["key"], "value": decode_value(rec["value"]), "at": rec["at"]}

    def put(self, key: str, value: Any) -> Any:
        """Record ``value`` under ``key`` unless an entry exists; returns the value that is
        recorded (ours, or the one written first), as the checkpoint gives it back."""
        self.store._writable("journal an effect")
        data = encode_field(value, f"the result of step {key!r}", run_id=self.run_id)
        self.store._check_owner(self.run_id, self.epoch, f"journal {key!r}")
        record = {**header("journal", self.run_id), "key": key, "value": data}
        record.update(epoch=self.epoch, at=time.time())
        if self.store._put_if_absent(self._path(key), pack(seal_record(record)), self.run_id):
            return decode_value(data)
        return self.get(key)  # another attempt recorded it first: its value holds

    def count(self) -> int:
        """How many entries the run's journal holds."""
        return len(self.store._list(self.store._path(self.run_id, _FOLDER), self.run_id))

    def _path(self, key: str) -> str:
        name = hashlib.sha256(key.encode()).hexdigest()
        return self.store._path(self.run_id, _FOLDER, f"{name}.msgpack")
