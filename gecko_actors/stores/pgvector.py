"""PgVectorStore: texts, metadata and their embeddings in PostgreSQL, with pgvector.

URL: ``pgvector://[user[:password]@]host[:port]/dbname[?schema=<name>&sslmode=<mode>]``. Each
store ``table`` is the table of that very name (quoted: ``-`` and ``.`` are kept), as in every
other backend; in ``schema``, else where ``search_path`` puts it. A table of that name made by
someone else is refused, never altered (``?schema=`` keeps the store's tables apart)::

    id        text PRIMARY KEY                 upserted
    text      text NOT NULL
    metadata  text NOT NULL                    JSON, keys sorted, exactly as the base wrote it
    vector    vector(<dimensions>) NOT NULL
    tsv       tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED, GIN index

Metadata is text, not jsonb: jsonb refuses ``\\u0000`` in strings, and ``where`` is matched in
Python anyway. Vector search is exact (no ANN index: HNSW would make it approximate; add one
yourself for millions of rows). Text search stems English, drops stop words and ORs the
query's words, as BM25 does: a chunk need not hold every word of a question, and "the" must
not match every row. Needs ``pip install "gecko-actors[pgvector]"`` and pgvector installed on
the server; the store runs ``CREATE EXTENSION vector`` itself.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from gecko_actors._text import CONTROL_CHARACTER, clip
from gecko_actors.core.embedders import Embedder
from gecko_actors.exceptions import ConfigurationError, StorageError, UserError
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
)
from gecko_actors.stores.registry import missing_extra
from gecko_actors.stores.vector_base import Candidate, Rows, VectorStoreBase, cosine_score

__all__ = ["PASSWORD_ENV", "PgVectorStore"]

_T = TypeVar("_T")
_WAIT_S = 30.0  # for a free pooled connection: a burst of writers queues for one
_POOL_SIZE = 4  # connections per server and process, shared by every store on it
_MAX_NAME = 63  # PostgreSQL silently truncates longer names: two long tables would meet
_EXAMPLE = "pgvector://user@localhost:5432/gecko?schema=vectors"
_COLUMNS = {"id": "text", "text": "text", "metadata": "text", "vector": "vector", "tsv": "tsvector"}
# Every CREATE of these stores in a database takes this lock: concurrent CREATE ... IF NOT
# EXISTS can still fail on a catalog's unique index (two creators of one table or extension).
_DDL_LOCK = "SELECT pg_advisory_xact_lock(hashtext('gecko_actors.pgvector'))"
_CREATE = (
    "CREATE TABLE {t} (id text PRIMARY KEY, text text NOT NULL, metadata text NOT NULL, "
    "vector vector({dims}) NOT NULL, tsv tsvector GENERATED ALWAYS AS "
    "(to_tsvector('english'::regconfig, text)) STORED)"
)
# ORDER BY: concurrent upserts lock their rows in one order, so they cannot deadlock.
_UPSERT = (
    "INSERT INTO {t} (id, text, metadata, vector) "
    "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::vector[]) ORDER BY 1 "
    "ON CONFLICT (id) DO UPDATE SET text = EXCLUDED.text, metadata = EXCLUDED.metadata, "
    "vector = EXCLUDED.vector"
)
_VECTOR_SEARCH = "SELECT id, text, metadata, vector <=> %s AS d FROM {t} ORDER BY d, id LIMIT %s"
# The query's lexemes, stemmed as the column's, OR-ed; NULL (no row matches) if all are stop
# words. ts_rank's 1: divided by the log of the length, so long chunks do not win by size.
_TEXT_SEARCH = (
    "WITH q AS (SELECT string_agg(plainto_tsquery('simple', w)::text, ' | ')::tsquery AS q "
    "FROM unnest(tsvector_to_array(to_tsvector('english'::regconfig, %s))) AS w) "
    "SELECT id, text, metadata, ts_rank(tsv, q.q, 1) AS r FROM {t}, q WHERE tsv @@ q.q "
    "ORDER BY r DESC, id LIMIT %s"
)
_COLUMNS_OF = (
    "SELECT c.relkind, a.attname, t.typname, a.atttypmod FROM pg_class c "
    "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
    "LEFT JOIN pg_type t ON t.oid = a.atttypid WHERE c.oid = to_regclass(%s)"
)
# One pool per server, role and process, shared by its stores (an app with many tables must
# not open a pool per table); keyed with the pid, so a forked child makes its own.
_POOLS: dict[tuple[Any, ...], Any] = {}
_POOLS_LOCK = threading.Lock()


class PgVectorStore(PostgresConnection, VectorStoreBase):
    """A vector store in PostgreSQL with pgvector, usually built from a ``pgvector://`` URL.

    Args:
        host: the server's host (or the directory of its Unix socket); ``port`` its port.
        dbname: the database (``None``: libpq's default, the user's name).
        table: the table (letters, digits, ``_``, ``-``, ``.``; at most 63), created on the
            first :meth:`add`. It holds vectors of one dimension: one table per embedder.
        embedder: what turns texts into vectors; :class:`HashEmbedder` by default.
        user: the role (``None``: libpq's default).
        password: when ``None``, read from ``GECKO_POSTGRES_PASSWORD`` in the process that
            connects (then libpq's ``PGPASSWORD``, ``~/.pgpass``). A store holding a password
            refuses to be pickled (sent to a Ray actor); it is never in ``repr`` or errors.
        schema: the table's schema, created if missing (``None``: the ``search_path``).
        sslmode: libpq's ``sslmode`` (``None``: libpq's default, ``prefer``).

    Connections come from a pool per server and process, opened on first use. Search modes:
    ``"vector"`` (exact cosine), ``"fts"`` (PostgreSQL full text) and ``"hybrid"``. Failures
    raise :class:`StorageError`; a server without pgvector :class:`ConfigurationError`.
    """

    modes: ClassVar[frozenset[str]] = frozenset({"vector", "fts"})
    _SCHEME: ClassVar[str] = "pgvector"
    _OWN: ClassVar[tuple[str, ...]] = ("schema", "table", "embedder")

    def __init__(
        self,
        host: str = "localhost",
        port: int = DEFAULT_PORT,
        dbname: str | None = None,
        *,
        table: str = "memory",
        embedder: Embedder | None = None,
        user: str | None = None,
        password: str | None = None,
        schema: str | None = None,
        sslmode: str | None = None,
    ) -> None:
        for module in ("psycopg", "psycopg_pool", "pgvector"):
            if importlib.util.find_spec(module) is None:
                raise missing_extra("PgVectorStore", module, "pgvector")
        self._init_base(table, embedder)
        problem = connection_problem(host, port, dbname, user, sslmode)
        if problem := problem or _problem(schema, self.table):
            raise UserError(f"invalid PgVectorStore setting: {problem}")
        self._init_connection(host, port, dbname, user, password, sslmode)
        self.schema = schema
        self._reset()

    @classmethod
    def from_url(
        cls, url: str, *, embedder: Embedder | None = None, table: str = "memory"
    ) -> PgVectorStore:
        """Build a store from a ``pgvector://`` URL; a malformed URL (or an unknown query
        parameter) is a :class:`UserError` saying which part is wrong, without the password."""
        parts, connection = read_url(url, "vector", ("pgvector",), ("schema",), _EXAMPLE)
        schema = parts.query.get("schema")
        if problem := _problem(schema):
            raise parts.error(problem, hint=f"write e.g. {_EXAMPLE}")
        return cls(**connection, schema=schema, table=table, embedder=embedder)

    @property
    def location(self) -> str:  # type: ignore[override]
        """Where the table is, for messages: the URL without user and password (a URL written
        ``pgvector://<password>@host`` puts the password in the user's place)."""
        return self._url(f"?schema={self.schema}" if self.schema else "")

    def _reset(self) -> None:
        """Forget the table's dimensions: looked up again (after a copy, in a process)."""
        self._dims: int | None = None  # the table's dimensions, once seen in this process

    def __repr__(self) -> str:
        return (
            f"PgVectorStore(host={self.host!r}, port={self.port}, dbname={self.dbname!r}, "
            f"schema={self.schema!r}, table={self.table!r}, embedder={self.embedder!r})"
        )

    # --- the hooks (blocking; in worker threads) -------------------------------------------

    def _write_sync(self, rows: Rows, dimensions: int) -> None:
        from pgvector import Vector

        for key, (text, metadata, _) in rows.items():
            for what, value in (("id", key), ("text", text), ("metadata", metadata)):
                check_text(what, value)
        texts, metadata, vectors = zip(*rows.values(), strict=True)
        columns = (list(rows), list(texts), list(metadata), [Vector(v) for v in vectors])

        def write(conn: Any) -> None:
            stored = self._open(conn, create=dimensions) or 0
            if stored != dimensions:
                raise self._dimension_error(stored, dimensions)
            conn.execute(self._sql(_UPSERT), columns)

        self._call("add", write)

    def _search_sync(
        self, mode: str, query: str, vector: list[float] | None, limit: int
    ) -> list[Candidate]:
        from pgvector import Vector

        def search(conn: Any) -> list[Candidate]:
            dims = self._open(conn)
            if dims is None:
                return []
            if mode == "fts":
                rows = conn.execute(self._sql(_TEXT_SEARCH), (query, limit)).fetchall()
                return [Candidate(i, t, m, float(rank)) for i, t, m, rank in rows]
            if vector is None or len(vector) != dims:
                raise self._dimension_error(dims, len(vector or ()))
            rows = conn.execute(self._sql(_VECTOR_SEARCH), (Vector(vector), limit)).fetchall()
            return [Candidate(i, t, m, cosine_score(d)) for i, t, m, d in rows]

        return self._call("search", search)

    def _scan_sync(self) -> list[tuple[str, dict[str, Any]]]:
        statement = self._sql("SELECT id, metadata FROM {t}")
        rows = self._on_table("scan", [], lambda c: c.execute(statement).fetchall())
        return [(key, json.loads(metadata)) for key, metadata in rows]

    def _delete_sync(self, ids: list[str]) -> int:
        statement = self._sql("DELETE FROM {t} WHERE id = ANY(%s)")
        return self._on_table("delete", 0, lambda c: c.execute(statement, (ids,)).rowcount)

    def _count_sync(self) -> int:
        statement = self._sql("SELECT count(*) FROM {t}")
        return self._on_table("count", 0, lambda c: c.execute(statement).fetchone()[0])

    # --- the table -------------------------------------------------------------------------

    def _on_table(self, op: str, missing: _T, work: Callable[[Any], _T]) -> _T:
        """``work(conn)``, or ``missing`` when the table does not exist."""
        return self._call(op, lambda conn: missing if self._open(conn) is None else work(conn))

    def _sql(self, statement: str, **parts: Any) -> Any:
        from psycopg import sql

        name = (self.schema, self.table) if self.schema else (self.table,)
        return sql.SQL(statement).format(t=sql.Identifier(*name), **parts)

    def _open(self, conn: Any, create: int | None = None) -> int | None:
        """The table's dimensions, creating the table for ``create`` dimensions if it is
        missing; ``None`` if it is missing (and not created)."""
        if self._dims is not None:
            return self._dims
        dims = self._read_columns(conn)
        if dims is None and create is not None:
            conn.execute(_DDL_LOCK)
            dims = self._read_columns(conn)  # made meanwhile by whoever held the lock
            if dims is None:
                self._create(conn, create)
                dims = create
            conn.commit()  # releases the lock; every store sees the table
        expected = getattr(self.embedder, "dimensions", None)
        if dims is not None and isinstance(expected, int) and expected != dims:
            raise self._dimension_error(dims, expected)
        self._dims = dims
        return dims

    def _read_columns(self, conn: Any) -> int | None:
        rows = conn.execute(_COLUMNS_OF, (self._sql("{t}").as_string(conn),)).fetchall()
        if not rows:
            return None
        columns = {name: kind for _, name, kind, _ in rows if name is not None}
        dims = {name: modifier for _, name, _, modifier in rows}.get("vector", -1)
        if rows[0][0] not in ("r", "p") or columns != _COLUMNS or dims < 1:
            raise UserError(
                f"table {self.table!r} at {self.location!r} was not made by PgVectorStore "
                f"(columns {sorted(columns)})",
                hint="use another table name, or another schema (?schema=...), for the store",
                uri=self.location,
                table=self.table,
            )
        return dims

    def _create(self, conn: Any, dims: int) -> None:
        from psycopg import sql

        if self.schema:
            schema = sql.Identifier(self.schema)
            # Only if missing: CREATE SCHEMA IF NOT EXISTS needs the right to create schemas
            # even when the schema exists.
            found = conn.execute("SELECT to_regnamespace(%s)", (schema.as_string(conn),))
            if found.fetchone()[0] is None:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
        conn.execute(self._sql(_CREATE, dims=sql.Literal(int(dims))))
        # Unnamed: PostgreSQL picks a name no other relation of the schema has.
        conn.execute(self._sql("CREATE INDEX ON {t} USING gin (tsv)"))

    # --- connections and errors ------------------------------------------------------------

    def _call(self, op: str, work: Callable[[Any], _T]) -> _T:
        import psycopg
        from psycopg import errors
        from psycopg_pool import PoolTimeout

        for attempt in range(1, ATTEMPTS + 1):
            try:
                with self._pool().connection(timeout=_WAIT_S) as conn:
                    result = work(conn)
                    conn.commit()
                    return result
            except PoolTimeout as exc:
                raise self._unreachable(op, exc) from exc
            except errors.UndefinedTable as exc:
                self._dims = None  # dropped since it was seen: look again
                failure: psycopg.Error = exc
            except (psycopg.OperationalError, errors.TransactionRollback) as exc:
                # A lost connection or a deadlock. Every call is safe to repeat: an add is an
                # upsert (only a repeated delete may count fewer rows than it deleted).
                failure = exc
            except psycopg.Error as exc:
                raise self._error(op, exc) from exc
            if attempt == ATTEMPTS:
                raise self._error(op, failure) from failure
            time.sleep(BACKOFF_S * 2 ** (attempt - 1))
        raise AssertionError("unreachable")  # pragma: no cover

    def _pool(self) -> Any:
        kwargs = self._connect_kwargs()
        key = (os.getpid(), *sorted(kwargs.items()))
        with _POOLS_LOCK:
            if key in _POOLS:
                return _POOLS[key]
        self._check_server()
        from psycopg_pool import ConnectionPool

        with _POOLS_LOCK:
            if key not in _POOLS:
                _POOLS[key] = pool = ConnectionPool(
                    kwargs=kwargs,
                    min_size=0,
                    max_size=_POOL_SIZE,
                    open=False,
                    configure=_prepare,
                    check=ConnectionPool.check_connection,  # idle ones may have died
                    name="gecko_actors.pgvector",
                    num_workers=2,
                )
                pool.open()
            return _POOLS[key]

    def _check_server(self) -> None:
        """Connect and prepare a connection of our own: where the pool retries a failing
        connection in the background and only times out, this says at once what is wrong."""
        import psycopg

        try:
            with psycopg.connect(**self._connect_kwargs()) as conn:
                _prepare(conn)
        except psycopg.Error as exc:
            raise self._server_error(exc) from exc

    def _server_error(self, exc: Any) -> UserError | StorageError:
        where = self._address
        if exc.sqlstate in ("0A000", "58P01"):  # not available: no vector.control there
            return ConfigurationError(
                f"the PostgreSQL server at {where} does not have the pgvector extension "
                f"installed: {clip(str(exc).strip().splitlines()[0], 200)}",
                hint="install pgvector on the server (https://github.com/pgvector/pgvector; "
                "Debian/Ubuntu: apt-get install postgresql-<version>-pgvector; Docker: the "
                "pgvector/pgvector image); the store then runs CREATE EXTENSION vector itself",
                uri=self.location,
            )
        if exc.sqlstate == "42501":  # the only thing _prepare needs a right for
            return ConfigurationError(
                f"the role may not create the pgvector extension in the database at {where}",
                hint="have a superuser run CREATE EXTENSION vector; in that database, once",
                uri=self.location,
            )
        return self._error("connect", exc)

    def _unreachable(self, op: str, exc: Exception) -> StorageError:
        """Why no pooled connection came: a connection of our own says (or all were busy)."""
        self._check_server()
        busy = f"all {_POOL_SIZE} connections stayed busy for {_WAIT_S:g} s: look for locks"
        return self._error(op, exc, hint=busy)

    def _error(self, op: str, exc: Exception, hint: str | None = None) -> StorageError:
        denied = f"grant the role the rights on {self.table!r}, or use ?schema= one it owns"
        return StorageError(
            f"PgVectorStore {self.location!r} failed to {op} (table {self.table!r}): "
            f"{failure_text(exc)}",
            hint=hint or self._hint(exc, denied),
            uri=self.location,
            table=self.table,
            operation=op,
        )


def _prepare(conn: Any) -> None:
    """Every new connection: the vector extension created if missing, vectors adapted."""
    from pgvector.psycopg import register_vector

    if not conn.execute("SELECT FROM pg_extension WHERE extname = 'vector'").fetchone():
        conn.execute(_DDL_LOCK)
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.commit()
    register_vector(conn)
    conn.commit()  # the pool takes connections only when idle


@atexit.register
def _close_pools() -> None:
    # Only this process's pools: a forked child must not close its parent's connections.
    with _POOLS_LOCK:
        pools = [_POOLS.pop(key) for key in list(_POOLS) if key[0] == os.getpid()]
    for pool in pools:
        pool.close(timeout=1.0)


def _problem(schema: Any, table: str | None = None) -> str | None:
    """What is wrong with the schema or the table (if given), or ``None``."""
    plain = isinstance(schema, str) and not CONTROL_CHARACTER.search(schema)
    if schema is not None and (not plain or not 0 < len(schema.encode()) <= _MAX_NAME):
        return f"the schema {schema!r:.80} is not a name of 1 to {_MAX_NAME} bytes"
    if table is not None and len(table) > _MAX_NAME:
        return (
            f"the table {table!r:.80} is longer than {_MAX_NAME} characters, PostgreSQL's "
            "limit for names"
        )
    return None
