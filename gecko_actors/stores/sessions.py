"""The SQLite session store (and :func:`session_store_from_url`, re-exported from the registry).

:class:`SQLiteSessionStore` keeps conversations in one SQLite file with the standard library's
``sqlite3``: several processes (Ray actors on one machine) may share the file. Records are
stored as msgpack (plain data, never pickle), one row per record.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgpack

from gecko_actors.core.sessions import Record
from gecko_actors.exceptions import StorageError, UserError
from gecko_actors.logging import get_logger

# Kept importable from here: the URL registry builds every kind of store.
from gecko_actors.stores.registry import session_store_from_url

_log = get_logger("gecko_actors.stores")
_T = TypeVar("_T")

# How long a writer waits for another connection's (or process's) write lock before failing.
_BUSY_TIMEOUT_S = 30.0

_SCHEMA = (
    # One row per session, so that a session with no records (``append(sid, [])``,
    # ``replace(sid, [])``) still exists and is listed, as in the in-memory store.
    """CREATE TABLE IF NOT EXISTS sessions (
        session_id TEXT PRIMARY KEY NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS records (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL,
        run_key TEXT,
        data BLOB NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS records_by_session ON records (session_id, id)",
    # The keys of the keyed appends already applied: the primary key makes a second append
    # with the same (session_id, run_key) a no-op.
    """CREATE TABLE IF NOT EXISTS applied_keys (
        session_id TEXT NOT NULL,
        run_key TEXT NOT NULL,
        PRIMARY KEY (session_id, run_key)
    )""",
)


class SQLiteSessionStore:
    """A :class:`~gecko_actors.core.sessions.SessionStore` in a SQLite file.

    Safe to share between threads and processes on one machine: the file is in WAL mode,
    every write is one ``BEGIN IMMEDIATE`` transaction, and a writer waits up to 30 s for
    another's lock. Each call opens its own connection in a worker thread
    (:func:`asyncio.to_thread`), so the event loop never blocks on disk and no connection is
    shared between threads. Do not put the file on a network file system (NFS, SMB): SQLite's
    locking is not reliable there.

    The parent directories and the schema are created on first use. A relative ``path`` is
    resolved against the current directory when the store is created (``~`` is expanded), so
    a pickled copy (Ray ships the store to actors) opens the same file; the pickled state is
    just the path.

    Args:
        path: the database file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise UserError(
                f"SQLiteSessionStore needs a file path, got {path!r}",
                hint="pass the path of the database file, e.g. 'data/sessions.db'",
            )
        self.path = Path(os.path.abspath(Path(path).expanduser()))
        self._ready = False

    def __repr__(self) -> str:
        return f"SQLiteSessionStore(path={str(self.path)!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = Path(state["path"])
        self._ready = False

    # --- the protocol -------------------------------------------------------------------

    async def load(self, session_id: str) -> list[Record]:
        """All records of a session, oldest first (empty if unknown)."""
        return await self._run("load", self._load, session_id)

    async def append(
        self, session_id: str, records: Sequence[Record], *, key: str | None = None
    ) -> bool:
        """Add records at the end of a session. With ``key`` (a run id) the append is
        idempotent, also across processes: a second append with the same key adds nothing
        and returns False."""
        blobs = _pack_all(session_id, records)
        return await self._run("append", self._append, session_id, blobs, key)

    async def replace(self, session_id: str, records: Sequence[Record]) -> None:
        """Set a session's records. The keys of earlier appends are kept, so a retried run
        still cannot append its exchange a second time after a compaction."""
        blobs = _pack_all(session_id, records)
        await self._run("replace", self._replace, session_id, blobs)

    async def delete(self, session_id: str) -> None:
        """Forget a session and its append keys (no error if unknown)."""
        await self._run("delete", self._delete, session_id)

    async def list_sessions(self) -> list[str]:
        """The ids of every stored session, oldest first."""
        return await self._run("list_sessions", self._list_sessions)

    # --- blocking work, run in a worker thread ------------------------------------------

    def _load(self, conn: sqlite3.Connection, session_id: str) -> list[Record]:
        rows = conn.execute(
            "SELECT id, data FROM records WHERE session_id = ? ORDER BY id", (session_id,)
        ).fetchall()
        records: list[Record] = []
        for row_id, data in rows:
            record = _unpack(data)
            if record is None:
                # Skipped, not raised: one damaged row must not make a whole conversation
                # unreadable, and the reader (TokenMemory.get_history) drops records that are
                # not valid messages anyway.
                _log.warning(
                    "skipped an undecodable session record",
                    path=str(self.path),
                    session_id=session_id,
                    row_id=row_id,
                )
                continue
            records.append(record)
        return records

    def _append(
        self, conn: sqlite3.Connection, session_id: str, blobs: list[bytes], key: str | None
    ) -> bool:
        with _immediate(conn):
            if key is not None:
                added = conn.execute(
                    "INSERT OR IGNORE INTO applied_keys (session_id, run_key) VALUES (?, ?)",
                    (session_id, key),
                ).rowcount
                if not added:
                    return False
            conn.execute("INSERT OR IGNORE INTO sessions (session_id) VALUES (?)", (session_id,))
            conn.executemany(
                "INSERT INTO records (session_id, run_key, data) VALUES (?, ?, ?)",
                [(session_id, key, blob) for blob in blobs],
            )
        return True

    def _replace(self, conn: sqlite3.Connection, session_id: str, blobs: list[bytes]) -> None:
        with _immediate(conn):
            conn.execute("DELETE FROM records WHERE session_id = ?", (session_id,))
            conn.execute("INSERT OR IGNORE INTO sessions (session_id) VALUES (?)", (session_id,))
            conn.executemany(
                "INSERT INTO records (session_id, run_key, data) VALUES (?, NULL, ?)",
                [(session_id, blob) for blob in blobs],
            )

    def _delete(self, conn: sqlite3.Connection, session_id: str) -> None:
        with _immediate(conn):
            conn.execute("DELETE FROM records WHERE session_id = ?", (session_id,))
            conn.execute("DELETE FROM applied_keys WHERE session_id = ?", (session_id,))
            conn.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,))

    def _list_sessions(self, conn: sqlite3.Connection) -> list[str]:
        return [row[0] for row in conn.execute("SELECT session_id FROM sessions ORDER BY rowid")]

    # --- connections and errors ---------------------------------------------------------

    async def _run(self, operation: str, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.to_thread(self._call, operation, fn, *args)

    def _call(self, operation: str, fn: Callable[..., _T], *args: Any) -> _T:
        try:
            conn = self._connect()
        except (sqlite3.Error, OSError) as exc:
            raise self._storage_error(operation, exc) from exc
        try:
            return fn(conn, *args)
        except sqlite3.Error as exc:
            self._ready = False  # check the directory and schema again next time
            raise self._storage_error(operation, exc) from exc
        finally:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        if not self._ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; writes use explicit BEGIN IMMEDIATE.
        conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        try:
            if not self._ready:
                self._create_schema(conn)
                self._ready = True
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _create_schema(conn: sqlite3.Connection) -> None:
        # WAL lets readers and one writer work at once; the mode is stored in the file.
        # Switching a new file to WAL needs an exclusive lock and SQLite reports "database is
        # locked" at once, without waiting the busy timeout, when another process is doing
        # the same: retry until the timeout instead.
        deadline = time.monotonic() + _BUSY_TIMEOUT_S
        delay = 0.005
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                with _immediate(conn):
                    for statement in _SCHEMA:
                        conn.execute(statement)
                return
            except sqlite3.OperationalError as exc:
                text = str(exc).lower()
                if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _storage_error(self, operation: str, exc: BaseException) -> StorageError:
        text = str(exc)
        lowered = text.lower()
        if self.path.is_dir():
            hint = "the path is a directory: give the path of a database file inside it"
        elif "not a database" in lowered or "malformed" in lowered:
            hint = (
                "the file is not a (valid) SQLite database: point the store at another path, "
                "or move the file away to start afresh"
            )
        elif "locked" in lowered or "busy" in lowered:
            hint = (
                f"another connection held the database lock for more than {_BUSY_TIMEOUT_S:g} s; "
                "look for a stuck process using the file"
            )
        elif "full" in lowered:
            hint = "the disk is full: free some space"
        elif "readonly" in lowered or "read-only" in lowered or isinstance(exc, PermissionError):
            hint = "the file or its directory is not writable: fix the permissions"
        else:
            hint = (
                "check that the path is a file in a directory this process can write to, and "
                "that the disk is not full"
            )
        return StorageError(
            f"session store {str(self.path)!r} failed to {operation}: {type(exc).__name__}: {text}",
            hint=hint,
            path=str(self.path),
            operation=operation,
        )


@contextlib.contextmanager
def _immediate(conn: sqlite3.Connection):
    """One write transaction, taking the write lock at the start (waiting up to the busy
    timeout), so a read-then-write cannot race another writer."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _pack_all(session_id: str, records: Sequence[Record]) -> list[bytes]:
    blobs = []
    for index, record in enumerate(records):
        try:
            blobs.append(msgpack.packb(record, use_bin_type=True))
        except (TypeError, ValueError, OverflowError) as exc:
            raise UserError(
                f"record {index} for session {session_id!r} is not plain data: {exc}",
                hint="store the JSON-mode dump of a Message: "
                "message.model_dump(mode='json', exclude_none=True)",
                session_id=session_id,
            ) from None
    return blobs


def _unpack(data: Any) -> Record | None:
    if not isinstance(data, bytes):
        return None
    try:
        record = msgpack.unpackb(data, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    return record if isinstance(record, dict) else None


__all__ = ["SQLiteSessionStore", "session_store_from_url"]
