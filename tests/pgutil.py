"""Throw-away PostgreSQL servers for the tests, on a free 127.0.0.1 port (never a shared one).

    with postgres_server(tmp_path) as pg:             # PostgreSQL found on this machine
        store = session_store_from_url(pg.url)
    with postgres_server(tmp_path, bin_dir=pgserver_bin_dir()) as pg:
        ...                                            # PostgreSQL 16 with pgvector, from pgserver

The binaries are found with :func:`find_bin_dir`: ``initdb`` on the PATH, ``pg_config
--bindir``, Debian's ``/usr/lib/postgresql/<version>/bin`` (newest first), and last the copy
bundled in the ``pgserver`` wheel (a test dependency: PostgreSQL 16 and the pgvector extension,
which Debian 12 does not package). :func:`pgserver_bin_dir` gives that bundled copy only, for
tests that need pgvector (``CREATE EXTENSION vector``).

PostgreSQL refuses to run as root, and CI runs the tests as root: then ``initdb`` and
``postgres`` run as the unprivileged ``nobody``, and the data and socket directories are in a
private directory of their own in the system's temporary directory, owned by ``nobody`` and
removed at the end. Not below pytest's ``tmp_path``: pytest's base directory is 0700, and
every pytest session starting on the machine makes it 0700 again, so opening it to
``nobody`` would race with them (initdb then fails half-way with "Permission denied"). The
bin directory and its parents get the search bit for others (``o+x``) if they lack it, as
pgserver itself does for its binaries.

Without any server binaries the tests are skipped, unless ``GECKO_REQUIRE_POSTGRES`` is set
(CI sets it): then they fail, so they can never be skipped there unnoticed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote

import pytest

__all__ = [
    "REQUIRE_ENV",
    "PostgresServer",
    "find_bin_dir",
    "pgserver_bin_dir",
    "postgres_server",
]

REQUIRE_ENV = "GECKO_REQUIRE_POSTGRES"
SERVER_HINT = (
    "install PostgreSQL's server (Debian: apt-get install postgresql) or pgserver "
    "(pip install pgserver, a wheel with PostgreSQL 16 and pgvector)"
)
# The account the server runs as when the tests run as root (PostgreSQL refuses root).
_UNPRIVILEGED = "nobody"
# A Unix socket path longer than this is refused by the kernel (sun_path is 108 bytes).
_MAX_SOCKET_PATH = 100


@dataclass(frozen=True)
class PostgresServer:
    """A running server: connect with :attr:`url` (or :meth:`connect_kwargs` for psycopg).

    Attributes:
        host: ``127.0.0.1``.
        port: the TCP port.
        user: the superuser's name.
        password: its password (``None``: the server trusts connections from 127.0.0.1).
        dbname: the database created for the tests.
        directory: the directory given, with the log (``postgres.log``).
        data_dir: the data directory: ``directory/data``, or, as root, in a private directory
            elsewhere (see the module's docstring).
        bin_dir: the binaries it runs.
    """

    host: str
    port: int
    user: str
    password: str | None = field(repr=False)
    dbname: str
    directory: Path
    data_dir: Path
    bin_dir: Path

    @property
    def url(self) -> str:
        """``postgresql://user[:password]@127.0.0.1:port/dbname``."""
        secret = f":{quote(self.password, safe='')}" if self.password else ""
        user = quote(self.user, safe="")
        return f"postgresql://{user}{secret}@{self.host}:{self.port}/{self.dbname}"

    @property
    def log(self) -> Path:
        """The server's log (stdout and stderr)."""
        return self.directory / "postgres.log"

    def connect_kwargs(self, dbname: str | None = None) -> dict[str, object]:
        """Keyword arguments for ``psycopg.connect`` (another database with ``dbname``)."""
        kwargs: dict[str, object] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "dbname": dbname or self.dbname,
            "connect_timeout": 3,
        }
        if self.password:
            kwargs["password"] = self.password
        return kwargs


def _skip_or_fail(reason: str) -> NoReturn:
    # CI sets GECKO_REQUIRE_POSTGRES, so these tests can never be skipped there.
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(reason)
    pytest.skip(reason)


def _has_server(directory: Path | None) -> bool:
    return directory is not None and all(
        os.access(directory / name, os.X_OK) for name in ("initdb", "postgres")
    )


def pgserver_bin_dir() -> Path:
    """The bin directory of the PostgreSQL (16, with pgvector) bundled in the ``pgserver``
    wheel. Skips the test if pgserver is not installed (fails under ``GECKO_REQUIRE_POSTGRES``).
    """
    found = _pgserver_bin_dir()
    if found is None:
        _skip_or_fail(
            "pgserver (PostgreSQL 16 with pgvector) is not installed: pip install pgserver"
        )
    return found


def _pgserver_bin_dir() -> Path | None:
    # The package is located, never imported: importing it creates lock files and may start a
    # server of its own.
    spec = importlib.util.find_spec("pgserver")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "pginstall" / "bin"
        if _has_server(candidate):
            return candidate
    return None


def _system_bin_dirs() -> Iterator[Path]:
    initdb = shutil.which("initdb")
    if initdb:
        yield Path(initdb).resolve().parent  # /usr/local/bin/initdb may be a symlink
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            found = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            yield Path(found.stdout.strip())

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path.parent.name))

    yield from sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)


def find_bin_dir() -> Path:
    """A directory with ``initdb`` and ``postgres``: this machine's PostgreSQL, else
    pgserver's. Skips the test if there is none (fails under ``GECKO_REQUIRE_POSTGRES``)."""
    for candidate in [*_system_bin_dirs(), _pgserver_bin_dir()]:
        if _has_server(candidate):
            return candidate
    _skip_or_fail(f"no PostgreSQL server found: {SERVER_HINT}")


# --- running as root ---------------------------------------------------------------------------


def _run_as() -> pwd.struct_passwd | None:
    """The account to run the server as: ``nobody`` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(_UNPRIVILEGED)
    except KeyError:
        pytest.fail(f"running as root, and there is no {_UNPRIVILEGED!r} user to run PostgreSQL as")


def _let_through(path: Path) -> None:
    """Give others the search bit on ``path`` and its parents, so that the unprivileged server
    can reach files below."""
    for directory in [path, *path.parents]:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(mode | stat.S_IXOTH)


def _owned_dir(path: Path, account: pwd.struct_passwd | None) -> Path:
    path.mkdir(mode=0o700, exist_ok=True)
    if account is not None:
        os.chown(path, account.pw_uid, account.pw_gid)
    return path


@contextlib.contextmanager
def _home(directory: Path, account: pwd.struct_passwd | None) -> Iterator[Path]:
    """Where the data and socket directories go: ``directory``, or as root a private
    directory of ``nobody``'s, out of pytest's 0700 tree (see the module's docstring)."""
    if account is None:
        yield directory
        return
    home = Path(tempfile.mkdtemp(prefix="gecko-postgres-"))
    try:
        _let_through(home.parent)
        yield _owned_dir(home, account)
    finally:
        shutil.rmtree(home, ignore_errors=True)


# --- the server --------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres_server(
    directory: Path,
    bin_dir: Path | None = None,
    *,
    password: str | None = None,
    user: str = "gecko",
    dbname: str = "gecko",
    timeout: float = 30.0,
) -> Iterator[PostgresServer]:
    """Run a new PostgreSQL server in ``directory`` (a fresh one: ``tmp_path``) on a free
    127.0.0.1 port; yield it, then stop it (fast shutdown, then kill).

    Args:
        directory: an existing directory for the log (``postgres.log``), the data
            (``data/``) and the Unix socket (``socket/``); as root, the data and socket are in
            a private directory elsewhere, removed at the end.
        bin_dir: the directory of ``initdb`` and ``postgres``: ``pgserver_bin_dir()`` for
            pgvector; ``None`` finds one (:func:`find_bin_dir`), or skips.
        password: the superuser's password: connections over TCP must give it
            (scram-sha-256). ``None``: they are trusted.
        user: the superuser's name.
        dbname: a database created for the tests (``postgres`` always exists too).
        timeout: seconds to wait for the server to accept connections.
    """
    bin_dir = Path(bin_dir) if bin_dir is not None else find_bin_dir()
    if not _has_server(bin_dir):
        pytest.fail(f"{bin_dir} has no initdb and postgres: pass the bin directory of PostgreSQL")
    account = _run_as()
    if account is not None:
        _let_through(bin_dir)
    directory = Path(directory).resolve()
    settings = (password, user, dbname, timeout)
    with (
        _home(directory, account) as home,
        _run(directory, home, bin_dir, account, *settings) as pg,
    ):
        yield pg


@contextlib.contextmanager
def _run(
    directory: Path,
    home: Path,
    bin_dir: Path,
    account: pwd.struct_passwd | None,
    password: str | None,
    user: str,
    dbname: str,
    timeout: float,
) -> Iterator[PostgresServer]:
    psycopg = _psycopg()
    data = _owned_dir(home / "data", account)
    sockets = _owned_dir(home / "socket", account)
    log_path = directory / "postgres.log"
    as_user = (
        {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []} if account else {}
    )
    # Nothing from our environment's libpq settings; the C locale and UTC, so that initdb
    # needs no locale installed and does not probe the time zone files.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C", TZ="UTC")

    initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", user, "-E", "UTF8"]
    initdb += ["--no-locale", "--no-sync", "--auth-local=trust"]
    if password:
        pwfile = home / "pwfile"
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o644)  # read by the server's account; removed right after
        initdb += ["--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
    else:
        initdb += ["--auth-host=trust"]
    try:
        done = subprocess.run(
            initdb, capture_output=True, text=True, env=env, timeout=180, **as_user
        )
    finally:
        if password:
            pwfile.unlink()
    if done.returncode != 0:
        pytest.fail(f"initdb failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    from s3util import free_port  # here: s3util imports moto, and workers import this module

    for attempt in range(3):
        # The free port may be taken by someone else before the server binds it: then again.
        port = free_port()
        socket_dir = str(sockets) if len(f"{sockets}/.s.PGSQL.{port}") <= _MAX_SOCKET_PATH else ""
        command = [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port)]
        command += ["-h", "127.0.0.1", "-k", socket_dir]
        # A test server: durability is not needed, speed is.
        for setting in ("fsync=off", "synchronous_commit=off", "full_page_writes=off"):
            command += ["-c", setting]
        server = PostgresServer("127.0.0.1", port, user, password, dbname, directory, data, bin_dir)
        start = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # a Ctrl-C of the tests does not reach it; we stop it
                **as_user,
            )
        if _wait_ready(psycopg, server, process, timeout, start, last=attempt == 2):
            break
    try:
        if dbname != "postgres":
            with psycopg.connect(**server.connect_kwargs("postgres"), autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{dbname}"')
        yield server
    finally:
        _stop(process)


def _psycopg():
    try:
        import psycopg
    except ImportError:
        pytest.fail('psycopg is not installed: pip install "gecko-actors[postgres]"')
    return psycopg


def _wait_ready(
    psycopg,
    server: PostgresServer,
    process: subprocess.Popen,
    timeout: float,
    start: int,
    last: bool,
) -> bool:
    """Wait until the server accepts connections (True), or it exited because its port was
    taken (False, unless ``last``); anything else fails the test, showing the log."""
    # Ready means a connection succeeds, not that the port is open: the server listens a moment
    # before it accepts (it is still starting up, or recovering).
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(**server.connect_kwargs("postgres")):
                return True
        except psycopg.OperationalError as exc:
            error = exc
        if process.poll() is not None or time.monotonic() > deadline:
            state = "exited" if process.poll() is not None else f"not ready after {timeout:g} s"
            _stop(process)
            with open(server.log, "rb") as file:
                file.seek(start)
                log = file.read().decode(errors="replace")
            if "could not bind" in log and not last:
                return False
            pytest.fail(
                f"PostgreSQL ({server.bin_dir}) on port {server.port} {state}: {error}\n"
                f"--- {server.log} ---\n{log}"
            )
        time.sleep(0.1)


def _stop(process: subprocess.Popen) -> None:
    # SIGINT is PostgreSQL's fast shutdown: it ends open sessions. (SIGTERM, the smart one,
    # would wait for every client to disconnect.)
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the postmaster and its backends
        process.wait()
