"""RedisSessionStore: conversations in Redis, shared by the processes of every node.

Keys, under a namespace (``gecko`` unless the URL says ``?namespace=...``)::

    <namespace>:session:<id>   a list: a format marker, then one msgpack record per item
    <namespace>:applied:<id>   a set: the keys of the keyed appends already applied

Every write is one Lua script, and Redis runs a script with nothing else in between: an
append checks and records its key, creates the session, pushes its records and refreshes the
TTL in one step, so concurrent writers (to one session or to many) never lose or interleave
each other's records, and a keyed append happens once however often it is retried. Records
are packed as the SQLite store packs them: msgpack, never pickle.

Needs the ``redis`` package: ``pip install "gecko-actors[redis]"``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from gecko_actors._redact import register_secret
from gecko_actors.core.sessions import Record
from gecko_actors.exceptions import StorageError, UserError
from gecko_actors.logging import get_logger
from gecko_actors.stores.registry import missing_extra, parse_store_url, password_would_travel
from gecko_actors.stores.sessions import _pack_all, _unpack

__all__ = ["PASSWORD_ENV", "RedisSessionStore"]

PASSWORD_ENV = "GECKO_REDIS_PASSWORD"
"""Where the password is read from (in the process that connects) when the URL has none."""

_log = get_logger("gecko_actors.stores")
_T = TypeVar("_T")
_DEFAULT_PORT = 6379
_CONNECT_TIMEOUT_S = 5.0
_TIMEOUT_S = 30.0
_ATTEMPTS = 3
_BACKOFF_S = 0.05
# The first item of every session list: it keeps an empty session in existence (Redis deletes
# empty lists) and marks the format.
_HEADER = b"gecko-session/1"

_CHECK_TYPES = """
local function wrong(key, expected)
  local kind = redis.call('TYPE', key)['ok']
  return kind ~= 'none' and kind ~= expected
end
if wrong(KEYS[1], 'list') or wrong(KEYS[2], 'set') then
  return redis.error_reply('WRONGTYPE the session keys hold data of another type')
end
local function push(first)
  for i = first, #ARGV, 1000 do
    redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
end
local function expire(ttl)
  if ttl > 0 then
    redis.call('EXPIRE', KEYS[1], ttl)
    redis.call('EXPIRE', KEYS[2], ttl)
  end
end
"""
# KEYS: records, applied keys. ARGV: header, ttl, keyed ('1'/'0'), key, records...
_APPEND = (
    _CHECK_TYPES
    + """
if ARGV[3] == '1' and redis.call('SADD', KEYS[2], ARGV[4]) == 0 then
  return 0
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('RPUSH', KEYS[1], ARGV[1])
end
push(5)
expire(tonumber(ARGV[2]))
return 1
"""
)
# KEYS: records, applied keys. ARGV: header, ttl, records... The applied keys are kept.
_REPLACE = (
    _CHECK_TYPES
    + """
redis.call('DEL', KEYS[1])
redis.call('RPUSH', KEYS[1], ARGV[1])
push(3)
expire(tonumber(ARGV[2]))
return 1
"""
)


class RedisSessionStore:
    """A :class:`~gecko_actors.core.sessions.SessionStore` in Redis, for sessions shared
    across nodes; usually built from a URL by
    :func:`~gecko_actors.stores.registry.session_store_from_url`:
    ``redis://[[user]:password@]host[:port][/db][?ttl=<seconds>&namespace=<prefix>]``
    (``rediss://`` for TLS).

    Args:
        host: the server's host.
        port: its port.
        db: the database number.
        username: the ACL user (``None``: the default user).
        password: the password; when ``None`` it is read from ``GECKO_REDIS_PASSWORD`` in the
            process that connects. A store holding a password works in this process only:
            it refuses to be pickled (sent to a Ray actor), see :meth:`check_shippable`.
        ssl: connect with TLS.
        ttl: seconds a session lives after its last write (``None``: for ever).
        namespace: the prefix of every key.

    The connection is made lazily, one client per event loop, and the store pickles as its
    settings (Ray ships it to actors), never with a password: on Ray, leave the password out
    of the store and its URL and set ``GECKO_REDIS_PASSWORD`` where it runs. The password is
    never in ``repr``, messages or logs.
    Failures raise :class:`~gecko_actors.exceptions.StorageError`; reads, replaces, deletes
    and keyed appends are retried on connection errors, an unkeyed append is not (it could
    be applied twice).
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int = _DEFAULT_PORT,
        db: int = 0,
        *,
        username: str | None = None,
        password: str | None = None,
        ssl: bool = False,
        ttl: int | None = None,
        namespace: str = "gecko",
    ) -> None:
        if importlib.util.find_spec("redis") is None:
            raise missing_extra("RedisSessionStore", "redis", "redis")
        _check_settings(host, port, db, ttl, namespace)
        self.host, self.port, self.db = host, port, db
        self.username, self.ssl, self.ttl, self.namespace = username, ssl, ttl, namespace
        self._password = password or None
        if self._password:
            register_secret(self._password)
        self._reset()

    @classmethod
    def from_url(cls, url: str) -> RedisSessionStore:
        """Build a store from a ``redis://`` or ``rediss://`` URL; a malformed URL is a
        :class:`UserError` saying which part is wrong."""
        parts = parse_store_url(url)
        if parts.scheme not in ("redis", "rediss"):
            raise parts.error("the scheme is not redis:// or rediss://")
        parts.check_query(("ttl", "namespace"))
        if not parts.host:
            raise parts.error("the host is missing", hint="write e.g. redis://localhost:6379/0")
        db = parts.path.removeprefix("/") or "0"
        if not db.isdigit():
            raise parts.error(
                f"the database number {db!r} (the path after the host) is not a whole number",
                hint="write e.g. redis://localhost:6379/0, or leave it out for database 0",
            )
        return cls(
            parts.host,
            parts.port_number(_DEFAULT_PORT),
            int(db),
            username=parts.username,
            password=parts.password,
            ssl=parts.scheme == "rediss",
            ttl=parts.positive_int("ttl"),
            namespace=parts.query.get("namespace", "gecko"),
        )

    def _reset(self) -> None:
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return (
            f"RedisSessionStore(host={self.host!r}, port={self.port}, db={self.db}, "
            f"ttl={self.ttl}, namespace={self.namespace!r})"
        )

    def check_shippable(self) -> None:
        """Raise :class:`UserError` if this store holds a password: sent to another process
        (a Ray actor, whose arguments Ray keeps in its actor table) it would carry it along.
        Without one, the store reads ``GECKO_REDIS_PASSWORD`` where it connects."""
        if self._password:
            example = "redis://host:6379/0, or redis://user@host:6379/0 for an ACL user"
            raise password_would_travel(self, example, PASSWORD_ENV)

    def _settings(self) -> dict[str, Any]:
        names = ("host", "port", "db", "username", "ssl", "ttl", "namespace", "_password")
        return {name: getattr(self, name) for name in names}

    def __getstate__(self) -> dict[str, Any]:
        # Pickling is how a store leaves this process (Ray ships its arguments that way).
        self.check_shippable()
        return self._settings()

    def __copy__(self) -> RedisSessionStore:
        # A copy stays in this process: it may keep the password (pickling may not).
        copy = object.__new__(type(self))
        copy.__setstate__(self._settings())
        return copy

    def __deepcopy__(self, memo: dict[int, Any]) -> RedisSessionStore:
        return self.__copy__()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    async def aclose(self) -> None:
        """Close the connections (the store reconnects if used again)."""
        client, loop = self._client, self._loop
        self._reset()
        if client is not None and loop is asyncio.get_running_loop():
            await client.aclose()

    # --- the protocol -------------------------------------------------------------------

    async def load(self, session_id: str) -> list[Record]:
        """All records of a session, oldest first (empty if unknown)."""
        key = self._records_key(session_id)
        items = await self._call("load", session_id, lambda r: r.lrange(key, 0, -1))
        return self._decode(session_id, items)

    async def append(
        self, session_id: str, records: Sequence[Record], *, key: str | None = None
    ) -> bool:
        """Add records at the end of a session, atomically, refreshing its TTL. With ``key``
        (a run id) the append is idempotent across processes and nodes: a second append with
        the same key adds nothing and returns False."""
        args = [
            _HEADER,
            self.ttl or 0,
            int(key is not None),
            key or "",
            *_pack_all(session_id, records),
        ]
        added = await self._eval("append", session_id, _APPEND, args, retry=key is not None)
        return bool(added)

    async def replace(self, session_id: str, records: Sequence[Record]) -> None:
        """Set a session's records. The keys of earlier appends are kept, so a retried run
        still cannot append its exchange a second time after a compaction."""
        args = [_HEADER, self.ttl or 0, *_pack_all(session_id, records)]
        await self._eval("replace", session_id, _REPLACE, args)

    async def delete(self, session_id: str) -> None:
        """Forget a session and its append keys (no error if unknown)."""
        keys = self._keys(session_id)
        await self._call("delete", session_id, lambda r: r.delete(*keys))

    async def list_sessions(self) -> list[str]:
        """The ids of every stored session (not yet expired), sorted."""
        prefix = self._records_key("").encode()

        async def scan(client: Any) -> list[bytes]:
            return [
                k async for k in client.scan_iter(match=_glob_escape(prefix) + b"*", count=1000)
            ]

        keys = await self._call("list sessions", None, scan)
        return sorted({k[len(prefix) :].decode("utf-8", "surrogateescape") for k in keys})

    # --- keys, records and calls --------------------------------------------------------

    def _records_key(self, session_id: str) -> str:
        return f"{self.namespace}:session:{session_id}"

    def _keys(self, session_id: str) -> list[str]:
        return [self._records_key(session_id), f"{self.namespace}:applied:{session_id}"]

    def _decode(self, session_id: str, items: list[bytes]) -> list[Record]:
        if items and items[0] == _HEADER:
            items = items[1:]
        records = []
        for index, item in enumerate(items):
            record = _unpack(item)
            if record is None:
                # Skipped, not raised, as in the SQLite store: one damaged item must not make a
                # whole conversation unreadable.
                _log.warning(
                    "skipped an undecodable session record",
                    store=repr(self),
                    session_id=session_id,
                    index=index,
                )
                continue
            records.append(record)
        return records

    async def _eval(
        self, operation: str, session_id: str, script: str, args: list[Any], *, retry: bool = True
    ) -> Any:
        keys = self._keys(session_id)
        return await self._call(
            operation,
            session_id,
            lambda r: r.register_script(script)(keys=keys, args=args),
            retry=retry,
        )

    async def _call(
        self,
        operation: str,
        session_id: str | None,
        fn: Callable[[Any], Awaitable[_T]],
        *,
        retry: bool = True,
    ) -> _T:
        from redis import exceptions as errors

        attempts = _ATTEMPTS if retry else 1
        for attempt in range(1, attempts + 1):
            try:
                return await fn(self._connection())
            except errors.AuthenticationError as exc:
                raise self._storage_error(operation, session_id, exc) from exc
            except (errors.ConnectionError, errors.TimeoutError) as exc:
                if attempt == attempts:
                    raise self._storage_error(operation, session_id, exc) from exc
                await asyncio.sleep(_BACKOFF_S * 2 ** (attempt - 1))
            except errors.RedisError as exc:
                raise self._storage_error(operation, session_id, exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _connection(self) -> Any:
        # An asyncio client belongs to the loop it was made in: make one per loop.
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client, self._loop = self._new_client(), loop
        return self._client

    def _new_client(self) -> Any:
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        password = self._password or os.environ.get(PASSWORD_ENV) or None
        return redis.asyncio.Redis(
            host=self.host,
            port=self.port,
            db=self.db,
            username=self.username,
            password=password,
            ssl=self.ssl,
            socket_connect_timeout=_CONNECT_TIMEOUT_S,
            socket_timeout=_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),  # retries are ours: only where they are safe
        )

    def _storage_error(
        self, operation: str, session_id: str | None, exc: BaseException
    ) -> StorageError:
        where = f"{'rediss' if self.ssl else 'redis'}://{self.host}:{self.port}/{self.db}"
        about = f" session {session_id!r}" if session_id is not None else ""
        return StorageError(
            f"Redis session store {where!r} failed to {operation}{about}: "
            f"{type(exc).__name__}: {exc}",
            hint=self._hint(exc),
            url=where,
            operation=operation,
            session_id=session_id,
        )

    def _hint(self, exc: BaseException) -> str:
        from redis import exceptions as errors

        text = str(exc)
        if isinstance(exc, errors.AuthenticationError) or "NOAUTH" in text or "WRONGPASS" in text:
            return (
                f"the server refused the credentials: set {PASSWORD_ENV} where the store "
                "connects (on Ray, in the environment of every node), or, for a store used "
                "in this process only, give the password in the URL "
                "(redis://:<password>@host:port/db)"
            )
        if isinstance(exc, errors.TimeoutError):
            return f"the server did not answer within {_TIMEOUT_S:g} s: check its load"
        if "DB index" in text:
            return "the server has fewer databases: use a smaller number after the port"
        if isinstance(exc, errors.ConnectionError):
            return (
                f"could not reach Redis at {self.host}:{self.port}: check that redis-server "
                "is running there and that the URL's host and port are right"
            )
        if "WRONGTYPE" in text:
            return (
                f"keys under {self.namespace!r} hold data gecko_actors did not write: choose "
                "another namespace (?namespace=...) or database"
            )
        return "see the Redis server's log"


def _check_settings(host: str, port: int, db: int, ttl: int | None, namespace: str) -> None:
    def whole(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    problems = [
        (not isinstance(host, str) or not host, f"host {host!r} is not a host name"),
        (not whole(port) or not 0 < port < 65536, f"port {port!r} is not from 1 to 65535"),
        (not whole(db) or db < 0, f"db {db!r} is not a whole number from 0"),
        (ttl is not None and (not whole(ttl) or ttl <= 0), f"ttl {ttl!r} is not above 0"),
        (not isinstance(namespace, str) or not namespace, f"namespace {namespace!r} is empty"),
    ]
    for wrong, problem in problems:
        if wrong:
            raise UserError(
                f"invalid RedisSessionStore setting: {problem}",
                hint="e.g. RedisSessionStore('localhost', 6379, 0, ttl=3600)",
            )


def _glob_escape(text: bytes) -> bytes:
    """``text`` as a literal in a Redis MATCH pattern."""
    out = bytearray()
    for byte in text:
        if byte in b"*?[]\\":
            out.append(ord("\\"))
        out.append(byte)
    return bytes(out)
