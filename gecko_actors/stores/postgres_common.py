"""What the PostgreSQL stores share: their connection settings and what is done with them.

:class:`~gecko_actors.stores.postgres_sessions.PostgresSessionStore` and
:class:`~gecko_actors.stores.pgvector.PgVectorStore` both connect with a host, port, database,
user, password and ``sslmode``, read from a URL of the same shape; both read a missing
password from ``GECKO_POSTGRES_PASSWORD`` where they connect, refuse to be pickled while
holding one, and never show it (nor the user, which a URL written ``<password>@host`` would
make the password). Here are the checks of those settings and the URL, the password's
handling, the arguments of a connection, and the hints for a failure to connect.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, TypeVar
from urllib.parse import unquote

from gecko_actors._redact import register_secret
from gecko_actors._text import CONTROL_CHARACTER, clip
from gecko_actors.exceptions import UserError
from gecko_actors.stores.registry import Kind, StoreURL, parse_store_url, password_would_travel

__all__ = [
    "PASSWORD_ENV",
    "DEFAULT_PORT",
    "ATTEMPTS",
    "BACKOFF_S",
    "PostgresConnection",
    "check_text",
    "connection_problem",
    "failure_text",
    "read_url",
    "refused",
]

PASSWORD_ENV = "GECKO_POSTGRES_PASSWORD"
"""Where the password is read from (in the process that connects) when the store has none."""

DEFAULT_PORT = 5432
"""PostgreSQL's port, when a URL or a store names none."""

ATTEMPTS = 3
"""How many times a call that may be repeated is tried, on a lost connection or a deadlock."""

BACKOFF_S = 0.05
"""The wait before the second try, doubled before each further one."""

_CONNECT_TIMEOUT_S = 5
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_S = TypeVar("_S", bound="PostgresConnection")


def read_url(
    url: str, kind: Kind, schemes: tuple[str, ...], parameters: tuple[str, ...], example: str
) -> tuple[StoreURL, dict[str, Any]]:
    """Split a store URL ``<scheme>://[user[:password]@]host[:port]/dbname[?...]`` and check
    its connection settings; a wrong part is a :class:`UserError` naming it (never the
    password), with ``example`` as the hint.

    Args:
        url: the URL.
        kind: ``"session"`` or ``"vector"`` (for messages).
        schemes: the schemes accepted.
        parameters: the query parameters the store takes besides ``sslmode``.
        example: a URL to show as a model.

    Returns:
        The URL's parts (for the store's own parameters, and its errors) and the keywords
        ``host``, ``port``, ``dbname``, ``user``, ``password`` and ``sslmode`` of the store.
    """
    hint = f"write e.g. {example}"
    parts = parse_store_url(url, kind)
    if parts.scheme not in schemes:
        accepted = " or ".join(f"{scheme}://" for scheme in schemes)
        raise parts.error(f"the scheme is not {accepted}", hint=hint)
    parts.check_query((*parameters, "sslmode"))
    if not parts.host:
        raise parts.error("the host is missing", hint=hint)
    path = parts.path.removeprefix("/")
    if "/" in path:
        problem = f"the database name {path!r:.60} (the path after the host) has a '/'"
        raise parts.error(problem, hint=hint)
    settings = {
        "host": parts.host,
        "port": parts.port_number(DEFAULT_PORT),
        "dbname": unquote(path) or None,
        "user": parts.username,
        "sslmode": parts.query.get("sslmode"),
    }
    if problem := connection_problem(**settings):
        raise parts.error(problem, hint=hint)
    return parts, {**settings, "password": parts.password}


def connection_problem(host: Any, port: Any, dbname: Any, user: Any, sslmode: Any) -> str | None:
    """What is wrong with these connection settings, or ``None``. The user name is never
    quoted: in a URL written ``<password>@host`` it is the password."""

    def name(value: object) -> bool:
        return isinstance(value, str) and bool(value) and not CONTROL_CHARACTER.search(value)

    whole = isinstance(port, int) and not isinstance(port, bool)
    unnamed = "is empty or has a control character"
    problems = [
        (not name(host), f"the host {host!r:.60} {unnamed}"),
        (not whole or not 0 < port < 65536, f"the port {port!r:.20} is not from 1 to 65535"),
        (dbname is not None and not name(dbname), f"the database name {dbname!r:.60} {unnamed}"),
        (user is not None and not name(user), f"the user name {unnamed}"),
        (sslmode is not None and sslmode not in _SSLMODES,
         f"the sslmode {sslmode!r:.30} is not one of {', '.join(_SSLMODES)}"),
    ]  # fmt: skip
    return next((problem for wrong, problem in problems if wrong), None)


def check_text(what: str, value: object) -> None:
    """Raise :class:`UserError` if ``value`` is not a str PostgreSQL's text can hold: the
    caller's mistake, said as such rather than as a storage failure."""
    if not isinstance(value, str):
        problem = f"is a {type(value).__name__}, not a str"
        raise UserError(f"the {what} {value!r:.80} {problem}", hint=f"pass the {what} as a str")
    problem = "contains a NUL character" if "\x00" in value else None
    try:
        value.encode()
    except UnicodeEncodeError:
        problem = "is not valid Unicode (it has a lone surrogate)"
    if problem:
        raise UserError(
            f"the {what} {value!r:.80} {problem}, which PostgreSQL cannot store",
            hint=f"leave such characters out of the {what}",
        )


def refused(text: str) -> bool:
    """Whether libpq's message says the credentials were refused (it has no SQLSTATE)."""
    return "password" in text or "authentication" in text or 'role "' in text


def failure_text(exc: BaseException) -> str:
    """A psycopg error for a message: its type and its text, on one line and clipped."""
    return f"{type(exc).__name__}: {clip(' '.join(str(exc).split()), 500)}"


class PostgresConnection:
    """The connection settings of a PostgreSQL store, and what a store does with them: hold
    the password (registered for redaction), refuse to be pickled while holding it, pickle
    and copy as its settings, give psycopg's connection arguments, and hint at what to do
    when connecting or a statement fails.

    A store sets ``_SCHEME`` (its URL's, for messages), ``_OWN`` (its other settings, pickled
    with these), calls :meth:`_init_connection` and overrides :meth:`_reset`.
    """

    _SCHEME: ClassVar[str]
    _OWN: ClassVar[tuple[str, ...]]
    host: str
    port: int
    dbname: str | None
    user: str | None
    sslmode: str | None
    _password: str | None

    def _init_connection(
        self,
        host: str,
        port: int,
        dbname: str | None,
        user: str | None,
        password: str | None,
        sslmode: str | None,
    ) -> None:
        """Keep the settings, checked beforehand with :func:`connection_problem`."""
        self.host, self.port, self.dbname, self.user = host, port, dbname, user
        self.sslmode, self._password = sslmode, password or None
        register_secret(self._password)  # masked in logs and errors from now on

    def _reset(self) -> None:
        """Start this process's state afresh (connections, what was seen): after a copy."""

    @property
    def _address(self) -> str:
        """``host:port``, for messages (an IPv6 address in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def _url(self, query: str = "") -> str:
        """The store's URL without user and password, for messages."""
        return f"{self._SCHEME}://{self._address}/{self.dbname or ''}{query}"

    def check_shippable(self) -> None:
        """Raise :class:`UserError` if this store holds a password: sent to another process
        (a Ray actor, whose arguments Ray keeps in its actor table) it would carry it along.
        Without one, the store reads ``GECKO_POSTGRES_PASSWORD`` where it connects."""
        if self._password:
            example = f"{self._SCHEME}://user@host:{DEFAULT_PORT}/dbname"
            raise password_would_travel(self, example, PASSWORD_ENV)

    def _settings(self) -> dict[str, Any]:
        names = ("host", "port", "dbname", "user", "sslmode", *self._OWN, "_password")
        return {name: getattr(self, name) for name in names}

    def __getstate__(self) -> dict[str, Any]:
        # Pickling is how a store leaves this process (Ray ships its arguments that way).
        self.check_shippable()
        return self._settings()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def __copy__(self: _S) -> _S:
        # A copy stays in this process: it may keep the password (pickling may not).
        copy = object.__new__(type(self))
        copy.__setstate__(self._settings())
        return copy

    def __deepcopy__(self: _S, memo: dict[int, Any]) -> _S:
        return self.__copy__()

    def _connect_kwargs(self) -> dict[str, Any]:
        """psycopg's arguments for a connection."""
        # None: libpq's own PGPASSWORD or ~/.pgpass.
        password = self._password or os.environ.get(PASSWORD_ENV) or None
        given = {"dbname": self.dbname, "user": self.user, "password": password}
        given["sslmode"] = self.sslmode
        kwargs = {key: value for key, value in given.items() if value is not None}
        kwargs.update(host=self.host, port=self.port, connect_timeout=_CONNECT_TIMEOUT_S)
        # No server-side prepared statements: they break behind PgBouncer's transaction
        # pooling, and these statements are cheap to plan.
        return {**kwargs, "application_name": "gecko_actors", "prepare_threshold": None}

    def _hint(self, exc: BaseException, denied: str) -> str:
        """What to do about a psycopg error; ``denied`` when the role lacks a right."""
        text, state = str(exc), getattr(exc, "sqlstate", None) or ""
        if "pg_hba.conf" in text:
            return "add a line for this host, user and database to the server's pg_hba.conf"
        if state.startswith("28") or refused(text):
            return (
                f"the server refused the user or its password: set {PASSWORD_ENV} where the "
                "store connects (on Ray, in the environment of every node), or, for a store "
                "used in this process only, give it in the URL "
                f"({self._SCHEME}://user:<password>@host:port/dbname)"
            )
        if state == "3D000" or ("database" in text and "does not exist" in text):
            return f"create the database first: createdb {self.dbname or '<dbname>'}"
        if state == "42501":
            return denied
        if not state:  # libpq's own errors: the connection failed or broke
            return (
                f"could not reach PostgreSQL at {self._address}: check that the server is "
                "running there and accepts TCP connections from this machine "
                "(listen_addresses), and that the URL's host and port are right"
            )
        return "see the PostgreSQL server's log"
