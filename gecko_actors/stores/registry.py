"""Pick a store from a URL: one registry of session stores and one of vector stores, by scheme.

Built in:

==========================  =====================================================================
``memory://``               sessions in this process (:class:`InMemorySessionStore`)
``sqlite:///<path>``        sessions in a SQLite file (:class:`SQLiteSessionStore`, the default)
``redis://host:port/db``    sessions in Redis, shared across nodes (:class:`RedisSessionStore`,
                            extra ``redis``); ``rediss://`` for TLS
``postgresql://host/db``    sessions in PostgreSQL (:class:`PostgresSessionStore`, extra
                            ``postgres``); ``postgres://`` too
``lancedb://<path>``        vectors in a LanceDB directory (:class:`LanceVectorStore`)
``pgvector://host/db``      vectors in PostgreSQL with pgvector (extra ``pgvector``)
``qdrant://...``            vectors in Qdrant: ``qdrant:///<folder>`` embedded, or a server
                            (extra ``qdrant``)
``chroma://...``            vectors in Chroma: ``chroma:///<folder>`` persistent, or a server
                            (extra ``chroma``)
``milvus://...``            vectors in Milvus: ``milvus:///<file>.db`` is Milvus Lite, or a
                            server (extra ``milvus``)
==========================  =====================================================================

Other packages add schemes with :func:`register_session_store` / :func:`register_vector_store`,
or without any import through the entry point groups ``gecko_actors.session_stores`` and
``gecko_actors.vector_stores`` (name: the scheme; value: the factory). Entry points are loaded
only when a URL uses a scheme nobody registered.

A factory takes the URL (a session factory nothing else; a vector factory also the keywords
``embedder`` and ``table``) and returns the store. URLs are never echoed with their password:
error messages show them through :func:`redact_url`.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote

from gecko_actors._redact import MASK, mask_url, register_secret
from gecko_actors._text import CONTROL_CHARACTER, clip, is_plain_number
from gecko_actors.core.embedders import Embedder
from gecko_actors.core.sessions import InMemorySessionStore, SessionStore
from gecko_actors.exceptions import ConfigurationError, GeckoError, UserError

__all__ = [
    "StoreURL",
    "known_schemes",
    "missing_extra",
    "parse_store_url",
    "password_would_travel",
    "redact_url",
    "register_session_store",
    "register_vector_store",
    "session_store_from_url",
    "vector_store_from_url",
]

_SHOWN = 200  # characters of a URL an error message shows

Kind = Literal["session", "vector"]
SessionStoreFactory = Callable[[str], SessionStore]
VectorStoreFactory = Callable[..., Any]

_SCHEME = re.compile(r"[a-z][a-z0-9+.\-]*")
_MAX_PORT_DIGITS = 5
_GROUPS = {"session": "gecko_actors.session_stores", "vector": "gecko_actors.vector_stores"}
_EXAMPLES = {
    "session": (
        "use 'memory://' (in-process, lost on exit), 'sqlite:///<path>' "
        "('sqlite:///sessions.db' is relative to the current directory, "
        "'sqlite:////var/data/sessions.db' is absolute), 'redis://localhost:6379/0' "
        '(shared across nodes; pip install "gecko-actors[redis]") or '
        "'postgresql://user@host:5432/db' (pip install \"gecko-actors[postgres]\")"
    ),
    "vector": (
        "use 'lancedb://<directory>' ('lancedb://vectors' is relative to the current "
        "directory, 'lancedb:///var/data/vectors' is absolute), 'pgvector://host/db', "
        "'qdrant:///<folder>' or 'qdrant://host:6333', 'chroma:///<folder>' or "
        "'chroma://host:8000', 'milvus:///<file>.db' or 'milvus://host:19530'"
    ),
}


# --- URLs -----------------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """``url`` with its user information masked (``redis://user:***@host/0``), and the values
    of query parameters whose names say they hold a secret (``?password=***``), for messages.

    Errs on the side of masking: everything before the last ``@`` is treated as user
    information, so even a password with an unescaped ``/``, ``?`` or ``#`` does not leak;
    so is a ``user:password@`` after a ``scheme:`` without ``//``, or after ``:///``. The
    same masking as every URL the package shows (:func:`gecko_actors._redact.mask_url`).
    """
    return mask_url(url)


@dataclass(frozen=True)
class StoreURL:
    """A store URL split into its parts, for factories. ``str()`` and ``repr()`` never show
    the password.

    Attributes:
        kind: ``"session"`` or ``"vector"`` (for messages).
        url: the URL as given.
        scheme: the scheme, lower-cased.
        rest: everything after ``scheme://``, as given.
        username: the user name, percent-decoded (``None`` if absent).
        password: the password, percent-decoded (``None`` if absent).
        host: the host (``None`` if absent); IPv6 addresses without brackets.
        port: the port as written (``None`` if absent); see :meth:`port_number`.
        path: the path after the host, starting with ``/`` (or empty).
        query: the query parameters.
    """

    kind: Kind
    url: str = field(repr=False)
    scheme: str
    rest: str = field(repr=False)
    username: str | None
    password: str | None = field(repr=False)
    host: str | None
    port: str | None
    path: str
    query: dict[str, str]

    def __str__(self) -> str:
        return redact_url(self.url)

    def error(self, problem: str, hint: str | None = None) -> UserError:
        """A :class:`UserError` about this URL: ``problem`` says which part is wrong."""
        examples = _EXAMPLES[self.kind]
        return UserError(
            f"invalid {self.kind} store URL {clip(str(self), _SHOWN)!r}: {problem}",
            hint=f"{hint}; {examples}" if hint else examples,
            url=clip(str(self), _SHOWN),
        )

    def port_number(self, default: int) -> int:
        """The port, checked to be a number from 1 to 65535 (``default`` if absent)."""
        if self.port is None:
            return default
        if not is_plain_number(self.port, _MAX_PORT_DIGITS) or not 0 < int(self.port) < 65536:
            raise self.error(
                f"the port {self.port!r:.20} is not a number from 1 to 65535",
                hint=f"write the port after the host, e.g. {self.scheme}://localhost:{default}",
            )
        return int(self.port)

    def check_query(self, allowed: tuple[str, ...]) -> None:
        """Refuse query parameters other than ``allowed``."""
        unknown = sorted(set(self.query) - set(allowed))
        if unknown:
            supported = ", ".join(allowed) if allowed else "none"
            raise self.error(
                f"unknown query parameter {unknown[0]!r}",
                hint=f"the {self.scheme}:// URL takes these query parameters: {supported}",
            )

    def positive_int(self, name: str) -> int | None:
        """The query parameter ``name`` as a whole number above 0 (``None`` if absent)."""
        value = self.query.get(name)
        if value is None:
            return None
        if not is_plain_number(value, 18) or int(value) == 0:
            raise self.error(
                f"the {name} {value!r} is not a whole number above 0",
                hint=f"write e.g. ?{name}=3600",
            )
        return int(value)


def parse_store_url(url: object, kind: Kind = "session") -> StoreURL:
    """Split a store URL, raising a :class:`UserError` that says which part is wrong.

    A password found in the URL is registered for redaction, so it is masked in logs and
    exception text from then on.
    """
    text, scheme, rest = _split_scheme(url, kind)
    before_query, _, query = rest.partition("?")
    userinfo, at, after = _split_userinfo(before_query)
    hostport, slash, path = after.partition("/")
    username, colon, password = userinfo.partition(":")
    parts = StoreURL(
        kind=kind,
        url=text,
        scheme=scheme,
        rest=rest,
        username=unquote(username) if at and username else None,
        password=unquote(password) if colon else None,
        host=None,
        port=None,
        path=slash + path,
        query={},
    )
    if parts.password:
        register_secret(parts.password)
    host, port = _split_host(parts, hostport)
    if host and (bad := CONTROL_CHARACTER.search(host)):  # a %00 in the host decodes to NUL
        raise parts.error(f"the host has the control character {bad[0]!r}")
    return dataclasses.replace(parts, host=host, port=port, query=_parse_query(parts, query))


def _split_scheme(url: object, kind: Kind) -> tuple[str, str, str]:
    """The stripped URL, its lower-cased scheme, and what follows ``://``."""
    if not isinstance(url, str):
        raise UserError(
            f"a {kind} store URL must be a string, got {type(url).__name__}",
            hint=_EXAMPLES[kind],
        )
    text = url.strip()
    head, sep, rest = text.partition("://")
    scheme = head.lower()
    problem, hint = None, _EXAMPLES[kind]
    if bad := CONTROL_CHARACTER.search(text):
        # NUL cannot be in a file name, and a newline in a URL is a copy-paste accident.
        problem = f"it has the control character {bad[0]!r} (at index {bad.start()})"
        hint = f"remove it; {hint}"
    elif not sep or not _SCHEME.fullmatch(scheme):
        problem = "it does not start with a scheme (letters before '://')"
    elif "@" in rest.partition("?")[2]:
        # Most likely a password with an unescaped "?": say so without quoting any of it.
        problem = "an '@' comes after the '?'"
        hint = (
            "percent-encode '@', '?', '/' and '#' in a password or a query value "
            "(urllib.parse.quote(value, safe=''))"
        )
    if problem:
        shown = clip(redact_url(text), _SHOWN)
        raise UserError(f"invalid {kind} store URL {shown!r}: {problem}", hint=hint, url=shown)
    return text, scheme, rest


def _split_userinfo(before_query: str) -> tuple[str, str, str]:
    # As in redact_url: the last "@" ends the user information, so that a password with an
    # unescaped "/" is neither parsed as a host or port nor quoted in an error.
    if before_query.startswith("/"):
        return "", "", before_query
    return before_query.rpartition("@")


def _split_host(parts: StoreURL, hostport: str) -> tuple[str | None, str | None]:
    if hostport.startswith("["):  # an IPv6 address: [::1]:6379
        end = hostport.find("]")
        if end < 0 or (hostport[end + 1 :] and not hostport[end + 1 :].startswith(":")):
            raise parts.error(
                f"the host {hostport!r} is not a valid IPv6 address in brackets",
                hint="write it as [::1]:6379",
            )
        host = hostport[1:end]
        port = hostport[end + 2 :] if hostport[end + 1 :] else None
    else:
        host, colon, port_text = hostport.partition(":")
        port = port_text if colon else None
    return unquote(host) or None, port


def _parse_query(parts: StoreURL, query: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in values:
            raise parts.error(f"the query parameter {name!r} is given twice")
        values[name] = value
    return values


# --- the registries ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., Any]
    extra: str | None = None


class _Registry:
    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self.group = _GROUPS[kind]
        self.entries: dict[str, _Entry] = {}
        self.lock = threading.Lock()

    def register(
        self, scheme: str, factory: Callable[..., Any], extra: str | None, replace: bool
    ) -> None:
        if not isinstance(scheme, str) or not _SCHEME.fullmatch(scheme):
            raise UserError(
                f"invalid {self.kind} store scheme {scheme!r}",
                hint="a scheme is lower-case letters, digits, '+', '-' or '.', starting with a "
                "letter, without '://' (e.g. 'redis')",
            )
        if not callable(factory):
            raise UserError(f"the factory for {scheme!r} is not callable: {factory!r}")
        with self.lock:
            if scheme in self.entries and not replace:
                raise UserError(
                    f"a {self.kind} store is already registered for {scheme!r}",
                    hint="pass replace=True to override it",
                )
            self.entries[scheme] = _Entry(factory, extra)

    def schemes(self) -> list[str]:
        with self.lock:
            names = set(self.entries)
        names.update(ep.name for ep in metadata.entry_points(group=self.group))
        return sorted(names)

    def lookup(self, parts: StoreURL) -> _Entry:
        with self.lock:
            entry = self.entries.get(parts.scheme)
        if entry is None:
            entry = self._load_entry_point(parts)
        return entry

    def _load_entry_point(self, parts: StoreURL) -> _Entry:
        found = [ep for ep in metadata.entry_points(group=self.group) if ep.name == parts.scheme]
        if not found:
            known = ", ".join(f"{s}://" for s in self.schemes())
            raise parts.error(f"unknown scheme {parts.scheme!r} (known schemes: {known})")
        point = found[0]
        try:
            factory = point.load()
        except Exception as exc:
            dist = getattr(point.dist, "name", None) or "the package that declares it"
            raise ConfigurationError(
                f"the {self.kind} store plugin for {parts.scheme!r} ({point.value}) could not "
                f"be loaded: {type(exc).__name__}: {exc}",
                hint=f"reinstall {dist} (it declares the {self.group!r} entry point)",
                scheme=parts.scheme,
            ) from exc
        with self.lock:
            return self.entries.setdefault(parts.scheme, _Entry(factory))

    def build(self, url: object, **options: Any) -> Any:
        parts = parse_store_url(url, self.kind)
        entry = self.lookup(parts)
        try:
            return entry.factory(parts.url, **options)
        except ModuleNotFoundError as exc:
            raise _missing_module(self.kind, parts, entry, exc) from exc
        except GeckoError:
            raise
        except Exception as exc:
            # Any of them (a RuntimeError for "~nosuchuser/", an OSError, a plugin's own):
            # the caller gets one typed error naming the URL, never with its password.
            shown = clip(str(parts), _SHOWN)
            raise ConfigurationError(
                f"could not build a {self.kind} store from {shown!r}: "
                f"{type(exc).__name__}: {clip(_without_password(str(exc), parts), 500)}",
                hint=_EXAMPLES[self.kind],
                url=shown,
            ) from exc


def _without_password(text: str, parts: StoreURL) -> str:
    """``text`` (a factory's error) with the URL's password masked, as given and decoded."""
    for secret in {parts.password, parts.rest.rpartition("@")[0].partition(":")[2]}:
        if secret:
            text = text.replace(secret, MASK)
    return text


def missing_extra(what: str, module: str, extra: str) -> ConfigurationError:
    """The error for an optional dependency that is not installed."""
    return ConfigurationError(
        f"{what} needs the optional dependency {module!r}, which is not installed",
        hint=f'pip install "gecko-actors[{extra}]"',
        extra=extra,
    )


def password_would_travel(store: object, example_url: str, env: str) -> UserError:
    """The error for a store holding a password that is about to leave this process (be
    pickled): ``example_url`` is the store's URL without it, ``env`` the variable the store
    reads the password from where it connects."""
    return UserError(
        f"{store!r} holds a password, which would travel with it to another process: on Ray "
        "into an actor's arguments, which Ray keeps in its actor table",
        hint=f"leave the password out of the store and its URL ({example_url}) and set {env} "
        "in the environment where the store is used (every node's, on a cluster): the store "
        "reads it there when it connects",
        store=repr(store),
    )


def _missing_module(
    kind: Kind, parts: StoreURL, entry: _Entry, exc: ModuleNotFoundError
) -> ConfigurationError:
    what = f"the {parts.scheme}:// {kind} store"
    if entry.extra:
        return missing_extra(what, exc.name or str(exc), entry.extra)
    return ConfigurationError(
        f"{what} needs the module {exc.name!r}, which is not installed",
        hint=f"install the package that provides {exc.name!r}",
    )


_SESSIONS = _Registry("session")
_VECTORS = _Registry("vector")


def register_session_store(
    scheme: str, factory: SessionStoreFactory, extra: str | None = None, *, replace: bool = False
) -> None:
    """Build session stores for ``scheme://`` URLs with ``factory(url)``.

    Args:
        scheme: the scheme, without ``://`` (``"postgres"``).
        factory: called with the whole URL; returns a
            :class:`~gecko_actors.core.sessions.SessionStore`. It should import its optional
            dependencies inside, so that registering costs nothing.
        extra: the gecko-actors extra that provides the factory's dependencies: a missing
            module then becomes a :class:`ConfigurationError` saying
            ``pip install "gecko-actors[<extra>]"``.
        replace: allow replacing a factory already registered for ``scheme``.
    """
    _SESSIONS.register(scheme, factory, extra, replace)


def register_vector_store(
    scheme: str, factory: VectorStoreFactory, extra: str | None = None, *, replace: bool = False
) -> None:
    """Build vector stores for ``scheme://`` URLs with ``factory(url, embedder=..., table=...)``.

    Arguments as for :func:`register_session_store`; the store has ``add``, ``search`` and
    ``count`` as :class:`~gecko_actors.stores.vectors.LanceVectorStore` does.
    """
    _VECTORS.register(scheme, factory, extra, replace)


def known_schemes(kind: Kind = "session") -> list[str]:
    """The schemes that ``kind`` stores can be built from, registered or declared by an
    installed package's entry point, sorted."""
    return _registry(kind).schemes()


def session_store_from_url(url: str) -> SessionStore:
    """Build a session store from a URL.

    - ``memory://``: an :class:`~gecko_actors.core.sessions.InMemorySessionStore`.
    - ``sqlite:///<path>``: a :class:`~gecko_actors.stores.sessions.SQLiteSessionStore`. As in
      SQLAlchemy, the path is everything after the three slashes: ``sqlite:///sessions.db`` is
      relative to the current directory, ``sqlite:////var/data/sessions.db`` (four slashes)
      is absolute.
    - ``redis://[[user]:password@]host[:port][/db][?ttl=<seconds>&namespace=<prefix>]``
      (``rediss://`` for TLS): a :class:`~gecko_actors.stores.redis_sessions.RedisSessionStore`
      (``pip install "gecko-actors[redis]"``).
    - any scheme added with :func:`register_session_store` or an entry point.

    A malformed URL or an unknown scheme is a :class:`~gecko_actors.exceptions.UserError`
    saying which part is wrong; a missing optional dependency a
    :class:`~gecko_actors.exceptions.ConfigurationError` naming the extra to install.
    """
    store = _SESSIONS.build(url)
    if not isinstance(store, SessionStore):
        raise ConfigurationError(
            f"the session store factory for {redact_url(str(url))!r} returned {store!r}, "
            "which is not a SessionStore",
            hint="it needs async load, append, replace, delete and list_sessions methods",
        )
    return store


def vector_store_from_url(
    url: str, *, embedder: Embedder | None = None, table: str = "memory"
) -> Any:
    """Build a vector store from a URL (``lancedb://<directory>``, or a registered scheme).

    Args:
        url: the URL. ``lancedb://`` is followed by the directory: ``lancedb://vectors`` is
            relative to the current directory, ``lancedb:///var/data/vectors`` is absolute.
        embedder: what turns texts into vectors (the store's default if ``None``).
        table: the table (collection) name.
    """
    return _VECTORS.build(url, embedder=embedder, table=table)


def _registry(kind: Kind) -> _Registry:
    if kind not in _GROUPS:
        raise UserError(f"unknown store kind {kind!r}", hint="use 'session' or 'vector'")
    return _SESSIONS if kind == "session" else _VECTORS


# --- the built-in factories -------------------------------------------------------------------


def _memory(url: str) -> SessionStore:
    parts = parse_store_url(url)
    if parts.rest:
        raise parts.error("'memory://' takes nothing after it")
    return InMemorySessionStore()


def _sqlite(url: str) -> SessionStore:
    from gecko_actors.stores.sessions import SQLiteSessionStore

    parts = parse_store_url(url)
    path, question, _ = parts.rest[1:].partition("?")
    if parts.rest and not parts.rest.startswith("/"):
        raise parts.error(
            "a SQLite URL has no host, it is 'sqlite:///' followed by the file's path"
        )
    if question:
        raise parts.error("query parameters are not supported")
    if not path:
        raise parts.error(
            "it names no database file (an in-memory SQLite database would not outlive one call)",
            hint="for a store in memory use 'memory://'",
        )
    return SQLiteSessionStore(path)


def _redis(url: str) -> SessionStore:
    from gecko_actors.stores.redis_sessions import RedisSessionStore

    return RedisSessionStore.from_url(url)


def _postgres(url: str) -> SessionStore:
    from gecko_actors.stores.postgres_sessions import PostgresSessionStore

    return PostgresSessionStore.from_url(url)


def _lancedb(url: str, *, embedder: Embedder | None = None, table: str = "memory") -> Any:
    from gecko_actors.stores.vectors import LanceVectorStore

    parts = parse_store_url(url, "vector")
    path, question, _ = parts.rest.partition("?")
    if question:
        raise parts.error(
            "query parameters are not supported", hint="pass table= to vector_store_from_url"
        )
    if not path:
        raise parts.error("it names no directory")
    if parts.password is not None or parts.username is not None:
        # It would become the directory's name, with the password in it.
        raise parts.error(
            "it has a user or password ('...@'), but a lancedb:// URL names a local directory"
        )
    return LanceVectorStore(path, table=table, embedder=embedder)


def _factory(module: str, name: str) -> VectorStoreFactory:
    """``gecko_actors.stores.<module>.<name>.from_url``, imported only when a URL asks for it
    (so that a missing optional dependency is an error naming the extra, not an import error
    of the package)."""

    def build(url: str, *, embedder: Embedder | None = None, table: str = "memory") -> Any:
        from importlib import import_module

        store_class = getattr(import_module(f"gecko_actors.stores.{module}"), name)
        return store_class.from_url(url, embedder=embedder, table=table)

    return build


register_session_store("memory", _memory)
register_session_store("sqlite", _sqlite)
register_session_store("redis", _redis, extra="redis")
register_session_store("rediss", _redis, extra="redis")
register_session_store("postgresql", _postgres, extra="postgres")
register_session_store("postgres", _postgres, extra="postgres")
register_vector_store("lancedb", _lancedb)
register_vector_store("pgvector", _factory("pgvector", "PgVectorStore"), extra="pgvector")
register_vector_store("qdrant", _factory("qdrant", "QdrantVectorStore"), extra="qdrant")
register_vector_store("chroma", _factory("chroma", "ChromaVectorStore"), extra="chroma")
register_vector_store("milvus", _factory("milvus", "MilvusVectorStore"), extra="milvus")
