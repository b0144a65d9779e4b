"""Where a checkpoint store lives: parsing and checking its URI.

Accepted: an absolute path or ``file:///abs/dir``; ``s3://bucket/prefix`` (query parameters
such as ``endpoint_override=host:port``, ``scheme=http`` and ``region=...`` configure the
client); ``gs://bucket/prefix`` (query parameters go to pyarrow's GCS filesystem); and
``memory://name``, a store held in the memory of the current process (for tests).

Credentials come from the standard environment (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, or Google's default credentials such as
``GOOGLE_APPLICATION_CREDENTIALS``); a URI carrying them is refused, since URIs end up in logs,
events and job entrypoints.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from gecko_actors.exceptions import UserError

__all__ = ["S3_OPTIONS", "Location", "parse_uri"]

# Query parameters and user-info that would put a credential into the URI.
_SECRET_PARAM = re.compile(r"(secret|token|password|passwd|credential|access_?key)", re.I)
_MEMORY_NAME = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")


def _as_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r:.40}")


def _as_scheme(value: str) -> str:
    if value not in ("http", "https"):
        raise ValueError(f"expected http or https, got {value!r:.40}")
    return value


#: The query parameters an ``s3://`` URI accepts (pyarrow's ``S3FileSystem`` options), with
#: the parser of each value.
S3_OPTIONS: dict[str, Callable[[str], Any]] = {
    "region": str,
    "endpoint_override": str,
    "scheme": _as_scheme,
    "allow_delayed_open": _as_bool,
    "allow_bucket_creation": _as_bool,
    "allow_bucket_deletion": _as_bool,
    "check_directory_existence_before_creation": _as_bool,
    "force_virtual_addressing": _as_bool,
    "background_writes": _as_bool,
    "anonymous": _as_bool,
    "connect_timeout": float,
    "request_timeout": float,
    "load_frequency": int,
    "tls_ca_file_path": str,
    "role_arn": str,
    "session_name": str,
    "external_id": str,
}


@dataclass(frozen=True)
class Location:
    """A parsed store URI: its scheme (``file``, ``s3``, ``gs`` or ``memory``), its root (a
    local path, ``bucket/prefix`` or a memory store's name) and its client options."""

    scheme: str
    root: str
    options: tuple[tuple[str, Any], ...] = ()

    def display(self, path: str = "") -> str:
        """The URI of the object at ``path`` (relative to the root), without query
        parameters: what error messages and logs show."""
        full = f"{self.root.rstrip('/')}/{path}" if path else self.root
        return f"{self.scheme}://{full}"


def _credentials_error(safe_uri: str, what: str) -> UserError:
    return UserError(
        f"the checkpoint URI {safe_uri!r} carries credentials ({what}); they are not accepted "
        "in a URI, which ends up in logs, events and job entrypoints",
        hint="remove them and set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus "
        "AWS_SESSION_TOKEN for temporary credentials) in the environment, or use an AWS "
        "profile or role; for gs:// use GOOGLE_APPLICATION_CREDENTIALS",
    )


_SCHEMES_HINT = (
    "use an absolute path, file:///abs/dir, s3://bucket/prefix, gs://bucket/prefix or memory://name"
)


def parse_uri(uri: Any) -> Location:
    """Parse and check a store URI; anything wrong (a relative path, credentials, an unknown
    scheme or option) is a :class:`UserError` that never echoes a credential."""
    if not isinstance(uri, str) or not uri.strip():
        raise UserError(f"invalid checkpoint location {uri!r:.80}", hint=_SCHEMES_HINT)
    uri = uri.strip()
    if "://" not in uri:
        if not os.path.isabs(uri):
            raise UserError(
                f"the checkpoint location {uri!r} is a relative path",
                hint="give an absolute path or file:///abs/dir (a relative path would depend "
                "on the working directory of whichever process opens it)",
            )
        return Location("file", os.path.normpath(uri))
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise UserError(f"invalid checkpoint URI: {exc}") from None
    scheme = parts.scheme.lower()
    host = parts.netloc.rpartition("@")[2]
    safe = f"{scheme}://{host}{parts.path}"
    query = parse_qsl(parts.query, keep_blank_values=True)
    if "@" in parts.netloc:
        raise _credentials_error(safe, "user:password@")
    secret = sorted({name for name, _ in query if _SECRET_PARAM.search(name)})
    if secret:
        raise _credentials_error(safe, "query parameters " + ", ".join(secret))
    if parts.fragment:
        raise UserError(f"the checkpoint URI {safe!r} has a '#' fragment", hint="remove it")
    if scheme == "file":
        path = unquote(parts.path)
        if parts.netloc not in ("", "localhost") or not os.path.isabs(path):
            raise UserError(
                f"the checkpoint URI {uri!r} does not name an absolute path",
                hint="write file:///abs/dir (three slashes), or give the absolute path itself",
            )
        if query:
            raise UserError(f"the checkpoint URI {uri!r} has query parameters; file:// takes none")
        return Location("file", os.path.normpath(path))
    if scheme == "memory":
        name = f"{host}{unquote(parts.path)}".strip("/")
        if query or not _MEMORY_NAME.fullmatch(name) or ".." in name.split("/"):
            raise UserError(
                f"invalid checkpoint URI {safe!r}",
                hint="write memory://name (letters, digits, '_', '-', '.'; no query)",
            )
        return Location("memory", name)
    if scheme in ("gs", "gcs"):
        scheme = "gs"
    elif scheme != "s3":
        raise UserError(
            f"unsupported checkpoint URI scheme {scheme!r} in {safe!r}", hint=_SCHEMES_HINT
        )
    prefix = unquote(parts.path).strip("/")
    if not host or any(seg in ("", ".", "..") for seg in prefix.split("/") if prefix):
        raise UserError(f"invalid checkpoint URI {safe!r}", hint=f"write {scheme}://bucket/prefix")
    root = f"{host}/{prefix}" if prefix else host
    names = [name for name, _ in query]
    if len(set(names)) != len(names):
        raise UserError(f"the checkpoint URI {safe!r} repeats a query parameter")
    if scheme == "gs":  # passed to pyarrow's FileSystem.from_uri, which checks them
        return Location("gs", root, tuple(query))
    options: list[tuple[str, Any]] = []
    for name, value in query:
        if name not in S3_OPTIONS:
            raise UserError(
                f"unknown query parameter {name!r} in the checkpoint URI {safe!r}",
                hint=f"s3:// URIs accept {', '.join(sorted(S3_OPTIONS))}",
            )
        try:
            options.append((name, S3_OPTIONS[name](value)))
        except ValueError as exc:
            raise UserError(f"invalid {name!r} in the checkpoint URI {safe!r}: {exc}") from None
    return Location("s3", root, tuple(options))
