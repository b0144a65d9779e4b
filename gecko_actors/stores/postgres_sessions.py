"""PostgresSessionStore: conversations in PostgreSQL, shared by the processes of every node.

Three tables, named after the URL's ``?table=`` (``gecko_sessions`` by default), created on
first use::

    <table>          a row per session: its id, the number of its next record, its last write
    <table>_records  a row per record: (session_id, seq) and the record, msgpack in a bytea
    <table>_applied  (session_id, run_key): the keys of the keyed appends already applied

Every write is one transaction that first upserts the session's row, which locks it: writers
of one session take turns (records are numbered in commit order, an append's never split),
writers of other sessions do not wait. A keyed append then inserts its key with ``ON CONFLICT
DO NOTHING`` and rolls back if it was there, so it happens once however many processes retry
it at once. Records are msgpack as in the SQLite and Redis stores (JSONB would refuse a
``\\u0000`` in a tool's output). Needs psycopg 3: ``pip install "gecko-actors[postgres]"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, ClassVar, TypeVar

from gecko_actors.core.sessions import Record
from gecko_actors.exceptions import StorageError, UserError
from gecko_actors.logging import get_logger
from gecko_actors.stores.postgres_common import (
    ATTEMPTS,
    BACKOFF_S,
    DEFAULT_PORT,
    PASSWORD_ENV,
    PostgresConnection,
    check_text,
    connection_problem,
    failure_text,
    read_url,
    refused,
)
from gecko_actors.stores.registry import missing_extra
from gecko_actors.stores.sessions import _pack_all, _unpack

__all__ = ["PASSWORD_ENV", "PostgresSessionStore"]

_log = get_logger("gecko_actors.stores")
_T = TypeVar("_T")
_MAX_CONNECTIONS = 8  # per event loop: a burst of tasks must not use up max_connections
_MAX_TTL = 100 * 365 * 24 * 3600  # far beyond, PostgreSQL's interval arithmetic overflows
# Plain SQL names only, so that writing them into statements is safe; 50 leaves room for the
# suffixes within PostgreSQL's 63-byte identifiers.
_TABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,49}")
_EXAMPLE = "postgresql://user@localhost:5432/gecko?table=gecko_sessions"
_UPSERT = (  # locks the session's row until the commit, and reserves numbers for the records
    'INSERT INTO "{t}" AS s (session_id, next_seq) VALUES (%s, %s) ON CONFLICT (session_id) '
    "DO UPDATE SET next_seq = {next}, updated_at = now() RETURNING s.next_seq - %s"
)
_EXISTING = "SELECT count(to_regclass(name)) FROM unnest(%s::text[]) AS name"
_SCHEMA = (
    # Concurrent CREATE TABLE IF NOT EXISTS can fail on the catalog's unique index: processes
    # starting together take turns.
    "SELECT pg_advisory_xact_lock(hashtext('gecko_actors.sessions:{t}'))",
    'CREATE TABLE IF NOT EXISTS "{t}" (session_id text PRIMARY KEY, '
    "next_seq bigint NOT NULL DEFAULT 0, updated_at timestamptz NOT NULL DEFAULT now())",
    'CREATE TABLE IF NOT EXISTS "{t}_records" (session_id text NOT NULL, '
    "seq bigint NOT NULL, data bytea NOT NULL, PRIMARY KEY (session_id, seq))",
    'CREATE TABLE IF NOT EXISTS "{t}_applied" (session_id text NOT NULL, '
    "run_key text NOT NULL, PRIMARY KEY (session_id, run_key))",
    'CREATE INDEX IF NOT EXISTS "{t}_updated_at" ON "{t}" (updated_at)',
)


class PostgresSessionStore(PostgresConnection):
    """A :class:`~gecko_actors.core.sessions.SessionStore` in PostgreSQL, for sessions shared
    across nodes; usually built from a URL by
    :func:`~gecko_actors.stores.registry.session_store_from_url`:
    ``postgresql://[user[:password]@]host[:port]/dbname[?table=<name>&ttl=<s>&sslmode=<m>]``
    (``postgres://`` too).

    Args:
        host: the server's host (or the directory of its Unix socket).
        port: its port.
        dbname: the database (``None``: libpq's default, the user's name).
        user: the role (``None``: libpq's default, ``PGUSER`` or the system user).
        password: the password; when ``None`` it is read from ``GECKO_POSTGRES_PASSWORD`` in
            the process that connects (else libpq's ``PGPASSWORD`` or ``~/.pgpass``). A store
            holding one refuses to be pickled (sent to a Ray actor): see
            :meth:`check_shippable`.
        table: the name of the sessions table, and the prefix of the two others.
        ttl: seconds a session lives after its last write (``None``: for ever). Expired
            sessions are neither loaded nor listed, a write to one starts it afresh, and a
            store deletes them all when it first connects.
        sslmode: libpq's ``sslmode`` (``None``: libpq's default, ``prefer``).

    Connections are opened lazily, up to 8 per event loop. The store pickles as its settings
    (Ray ships it to actors), never with a password, which is never in ``repr``, messages or
    logs either. Failures raise :class:`~gecko_actors.exceptions.StorageError`; a call that
    lost its connection is retried if its commit was not sent yet (nothing was written), or
    if it is safe to repeat: anything but an unkeyed append.
    """

    _SCHEME: ClassVar[str] = "postgresql"
    _OWN: ClassVar[tuple[str, ...]] = ("table", "ttl")

    def __init__(
        self,
        host: str = "localhost",
        port: int = DEFAULT_PORT,
        dbname: str | None = None,
        *,
        user: str | None = None,
        password: str | None = None,
        table: str = "gecko_sessions",
        ttl: int | None = None,
        sslmode: str | None = None,
    ) -> None:
        if importlib.util.find_spec("psycopg") is None:
            raise missing_extra("PostgresSessionStore", "psycopg", "postgres")
        problem = connection_problem(host, port, dbname, user, sslmode) or _problem(table, ttl)
        if problem:
            raise UserError(
                f"invalid PostgresSessionStore setting: {problem}", hint=f"e.g. {_EXAMPLE}"
            )
        self._init_connection(host, port, dbname, user, password, sslmode)
        self.table, self.ttl = table, ttl
        self._reset()

    @classmethod
    def from_url(cls, url: str) -> PostgresSessionStore:
        """Build a store from a ``postgresql://`` or ``postgres://`` URL; a malformed URL is a
        :class:`UserError` saying which part is wrong."""
        schemes = ("postgresql", "postgres")
        parts, connection = read_url(url, "session", schemes, ("table", "ttl"), _EXAMPLE)
        table, ttl = parts.query.get("table", "gecko_sessions"), parts.positive_int("ttl")
        if problem := _problem(table, ttl):
            raise parts.error(problem, hint=f"write e.g. {_EXAMPLE}")
        return cls(**connection, table=table, ttl=ttl)

    def _reset(self) -> None:
        """Start with no connections (after a copy, in another process or not)."""
        self._pools: dict[asyncio.AbstractEventLoop, _Pool] = {}
        self._lock = threading.Lock()  # a store may serve the loops of several threads
        self._ready = False  # the tables exist: checked once per store and process

    def __repr__(self) -> str:
        # Without the user: "postgresql://<password>@host" would put a password there.
        return (
            f"PostgresSessionStore(host={self.host!r}, port={self.port}, "
            f"dbname={self.dbname!r}, table={self.table!r}, ttl={self.ttl})"
        )

    async def aclose(self) -> None:
        """Close this event loop's idle connections (the store reconnects if used again)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            # Another running loop's connections are its own to close, in its thread.
            for owner in [o for o in self._pools if o is loop or o.is_closed()]:
                self._pools.pop(owner).discard()

    # --- the protocol -------------------------------------------------------------------

    async def load(self, session_id: str) -> list[Record]:
        """All records of a session, oldest first (empty if unknown or expired)."""
        check_text("session id", session_id)
        sql = 'SELECT r.data FROM "{t}_records" r WHERE r.session_id = %s'
        if self.ttl:
            sql += ' AND EXISTS (SELECT FROM "{t}" s WHERE s.session_id = %s AND {live})'
        sql = self._sql(sql + " ORDER BY r.seq")
        args = (session_id, session_id) if self.ttl else (session_id,)

        async def load(conn: Any) -> list[Any]:
            return await (await conn.execute(sql, args)).fetchall()

        rows = await self._run("load", session_id, load)
        return self._decode(session_id, [row[0] for row in rows])

    async def append(
        self, session_id: str, records: Sequence[Record], *, key: str | None = None
    ) -> bool:
        """Add records at the end of a session, atomically, refreshing its TTL. With ``key``
        (a run id) the append is idempotent across processes and nodes: a second append with
        the same key adds nothing and returns False."""
        check_text("session id", session_id)
        if key is not None:
            check_text("key", key)
        blobs = _pack_all(session_id, records)

        async def append(conn: Any) -> bool:
            first = await self._upsert(conn, session_id, len(blobs), add=True)
            if key is not None:
                sql = 'INSERT INTO "{t}_applied" (session_id, run_key) VALUES (%s, %s) '
                sql = self._sql(sql + "ON CONFLICT DO NOTHING")
                if (await conn.execute(sql, (session_id, key))).rowcount == 0:
                    await conn.rollback()  # applied already: nor touch the TTL or numbering
                    return False
            await self._insert(conn, session_id, first, blobs)
            return True

        return await self._run("append", session_id, append, retry=key is not None)

    async def replace(self, session_id: str, records: Sequence[Record]) -> None:
        """Set a session's records. The keys of earlier appends are kept, so a retried run
        still cannot append its exchange a second time after a compaction."""
        check_text("session id", session_id)
        blobs = _pack_all(session_id, records)

        async def replace(conn: Any) -> None:
            await self._upsert(conn, session_id, len(blobs), add=False)
            sql = self._sql('DELETE FROM "{t}_records" WHERE session_id = %s')
            await conn.execute(sql, (session_id,))
            await self._insert(conn, session_id, 0, blobs)

        await self._run("replace", session_id, replace)

    async def delete(self, session_id: str) -> None:
        """Forget a session and its append keys (no error if unknown)."""
        check_text("session id", session_id)

        async def delete(conn: Any) -> None:
            # The session's row first, as every write does: its lock orders us among them.
            for suffix in ("", "_records", "_applied"):
                sql = self._sql(f'DELETE FROM "{{t}}{suffix}" WHERE session_id = %s')
                await conn.execute(sql, (session_id,))

        await self._run("delete", session_id, delete)

    async def list_sessions(self) -> list[str]:
        """The ids of every stored session (not expired), sorted."""
        sql = self._sql('SELECT session_id FROM "{t}" s' + (" WHERE {live}" if self.ttl else ""))

        async def list_ids(conn: Any) -> list[Any]:
            return await (await conn.execute(sql)).fetchall()

        return sorted(row[0] for row in await self._run("list sessions", None, list_ids))

    # --- statements ---------------------------------------------------------------------

    def _sql(self, text: str) -> str:
        # The table is a checked plain name and the ttl a whole number: both can be written in.
        live = f"s.updated_at > now() - interval '{self.ttl} seconds'"
        return text.replace("{t}", self.table).replace("{live}", live)

    async def _upsert(self, conn: Any, session_id: str, count: int, *, add: bool) -> int:
        """Create or lock the session's row (afresh if it expired), for ``count`` records
        added to its own (``add``) or replacing them; the number of the first."""
        await self._expire(conn, session_id)
        next_seq = "s.next_seq + EXCLUDED.next_seq" if add else "EXCLUDED.next_seq"
        sql = self._sql(_UPSERT.replace("{next}", next_seq))
        (first,) = await (await conn.execute(sql, (session_id, count, count))).fetchone()
        return first

    async def _expire(self, conn: Any, session_id: str | None) -> None:
        """With a ttl, delete the session (every one if ``None``) if it expired, with its
        records and keys."""
        if self.ttl:
            which = "s.session_id = %s AND " if session_id is not None else ""
            await conn.execute(
                self._sql(
                    f'WITH gone AS (DELETE FROM "{{t}}" s WHERE {which}NOT ({{live}}) '
                    'RETURNING s.session_id), r AS (DELETE FROM "{t}_records" WHERE '
                    'session_id IN (SELECT * FROM gone)) DELETE FROM "{t}_applied" '
                    "WHERE session_id IN (SELECT * FROM gone)"
                ),
                (session_id,) if session_id is not None else (),
            )

    async def _insert(self, conn: Any, session_id: str, first: int, blobs: list[bytes]) -> None:
        if blobs:  # one statement however many records: no round trip per record
            sql = 'INSERT INTO "{t}_records" (session_id, seq, data) SELECT %s, %s + n - 1, d '
            sql += "FROM unnest(%s::bytea[]) WITH ORDINALITY AS u(d, n)"
            await conn.execute(self._sql(sql), (session_id, first, blobs))

    def _decode(self, session_id: str, items: list[Any]) -> list[Record]:
        records = [_unpack(item) for item in items]
        for index in [i for i, record in enumerate(records) if record is None]:
            # Skipped, not raised, as in the SQLite store: one damaged row must not make a
            # whole conversation unreadable.
            _log.warning(
                "skipped an undecodable session record",
                store=repr(self),
                session_id=session_id,
                index=index,
            )
        return [record for record in records if record is not None]

    # --- connections and errors ---------------------------------------------------------

    async def _run(
        self,
        operation: str,
        session_id: str | None,
        work: Callable[[Any], Awaitable[_T]],
        *,
        retry: bool = True,
    ) -> _T:
        import psycopg

        for attempt in range(1, ATTEMPTS + 1):
            committing = False
            try:
                async with self._pool().lease(self._connect) as conn:
                    await self._prepare(conn)
                    result = await work(conn)
                    committing = True
                    await conn.commit()
                    return result
            except psycopg.Error as exc:
                if isinstance(exc, psycopg.errors.UndefinedTable):
                    self._ready = False  # dropped since: create them again
                # Until the commit is sent nothing is written: any call may run again.
                again = _transient(exc) and (retry or not committing) and attempt < ATTEMPTS
                if not again:
                    raise self._storage_error(operation, session_id, exc) from exc
            await asyncio.sleep(BACKOFF_S * 2 ** (attempt - 1))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _prepare(self, conn: Any) -> None:
        if not self._ready:
            # Created only if missing: CREATE ... IF NOT EXISTS needs the rights to create
            # even when all is there, which a role granted just the tables' use lacks.
            names = [self._sql(n) for n in ('"{t}"', '"{t}_records"', '"{t}_applied"')]
            cursor = await conn.execute(_EXISTING, (names,))
            if (await cursor.fetchone())[0] < len(names):
                for statement in _SCHEMA:
                    await conn.execute(self._sql(statement))
            await self._expire(conn, None)  # what expired while no store was writing
            await conn.commit()
            self._ready = True

    def _pool(self) -> _Pool:
        # psycopg's async connections belong to the loop they were made in: a pool per loop.
        loop = asyncio.get_running_loop()
        with self._lock:
            for owner in [o for o in self._pools if o.is_closed()]:
                self._pools.pop(owner).discard()  # an asyncio.run() that ended
            return self._pools.setdefault(loop, _Pool())

    async def _connect(self) -> Any:
        import psycopg

        return await psycopg.AsyncConnection.connect(**self._connect_kwargs())

    def _storage_error(
        self, operation: str, session_id: str | None, exc: BaseException
    ) -> StorageError:
        where = self._url(f"?table={self.table}")
        about = f" session {session_id!r}" if session_id is not None else ""
        denied = f"grant the user the rights to create and write the tables {self.table}*"
        return StorageError(
            f"PostgreSQL session store {where!r} failed to {operation}{about}: {failure_text(exc)}",
            hint=self._hint(exc, denied),
            url=where,
            operation=operation,
            session_id=session_id,
        )


class _Pool:
    """One event loop's idle connections, and a cap on how many are open at once."""

    def __init__(self) -> None:
        self.idle: list[Any] = []
        self.slots = asyncio.Semaphore(_MAX_CONNECTIONS)
        self.closed = False

    @contextlib.asynccontextmanager
    async def lease(self, connect: Callable[[], Awaitable[Any]]) -> AsyncIterator[Any]:
        """A connection (idle or new), returned to the pool after a clean exit."""
        async with self.slots:
            conn = self.idle.pop() if self.idle else await connect()
            try:
                yield conn
            except BaseException:
                conn.pgconn.finish()  # mid-transaction or broken: never reused
                raise
            if self.closed or conn.closed:
                conn.pgconn.finish()
            else:
                self.idle.append(conn)

    def discard(self) -> None:
        """Close the idle connections, synchronously: their loop may be gone."""
        self.closed = True
        while self.idle:
            self.idle.pop().pgconn.finish()


def _transient(exc: BaseException) -> bool:
    """Whether another try may succeed: after a lost connection, a deadlock or a dropped
    table; not after refused credentials or a missing database."""
    from psycopg import errors

    if isinstance(exc, errors.UndefinedTable):
        return True
    text = str(exc)
    if refused(text) or "pg_hba.conf" in text or "does not exist" in text:
        return False
    return isinstance(exc, errors.OperationalError)  # with TransactionRollback (deadlocks)


def _problem(table: Any, ttl: Any) -> str | None:
    """What is wrong with the settings of the tables, if anything."""
    if not isinstance(table, str) or not _TABLE.fullmatch(table):
        return (
            f"the table {table!r:.60} is not a plain SQL name (letters, digits and '_', at "
            "most 50, not starting with a digit)"
        )
    whole = isinstance(ttl, int) and not isinstance(ttl, bool)
    if ttl is not None and (not whole or not 0 < ttl <= _MAX_TTL):
        return f"the ttl {ttl!r:.20} is not from 1 to {_MAX_TTL} seconds (100 years)"
    return None
