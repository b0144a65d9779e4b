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

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from gecko_actors._redact import is_secret_name, mask_url
from gecko_actors._text import CONTROL_CHARACTER, clip, is_plain_number
from gecko_actors.exceptions import UserError

__all__ = ["GS_OPTIONS", "S3_OPTIONS", "Location", "parse_uri"]

_MEMORY_NAME = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")
# S3 and GCS bucket names: 3-63 lower-case letters, digits, '.', '-' (and '_' on GCS);
# upper case and longer names are still allowed for legacy buckets and other servers. No
# ':', '%', '@' or spaces: those are a port, an escape or a credential in the wrong place.
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]")
_LOOKS_LIKE_URI = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_ENDPOINT = re.compile(r"(?:https?://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(\d{1,5}))?/?")
_SHOWN = 200  # characters of a URI an error message shows


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


def _as_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"expected a number of seconds above 0, got {value!r:.40}")
    return seconds


def _as_retry_seconds(value: str) -> float:
    seconds = _as_seconds(value)
    # pyarrow drops fractions of a second, and a limit of 0 s never tries a request at all.
    if seconds < 1:
        raise ValueError(f"expected a number of seconds of at least 1, got {value!r:.40}")
    return seconds


def _as_count(value: str) -> int:
    if not is_plain_number(value, 9):
        raise ValueError(f"expected a whole number from 0 to 999999999, got {value!r:.40}")
    return int(value)


def _as_endpoint(value: str) -> str:
    match = _ENDPOINT.fullmatch(value)
    if not match:
        raise ValueError(f"expected host or host:port (e.g. 127.0.0.1:9000), got {value!r:.80}")
    if match[2] is not None and not 0 < int(match[2]) < 65536:
        raise ValueError(f"the port {match[2]} is not a number from 1 to 65535")
    return value


def _as_text(value: str) -> str:
    if not value:
        raise ValueError("expected a value, got nothing")
    return value


#: The query parameters an ``s3://`` URI accepts (pyarrow's ``S3FileSystem`` options), with
#: the parser of each value.
S3_OPTIONS: dict[str, Callable[[str], Any]] = {
    "region": _as_text,
    "endpoint_override": _as_endpoint,
    "scheme": _as_scheme,
    "allow_delayed_open": _as_bool,
    "allow_bucket_creation": _as_bool,
    "allow_bucket_deletion": _as_bool,
    "check_directory_existence_before_creation": _as_bool,
    "force_virtual_addressing": _as_bool,
    "background_writes": _as_bool,
    "anonymous": _as_bool,
    "connect_timeout": _as_seconds,
    "request_timeout": _as_seconds,
    "load_frequency": _as_count,
    "tls_ca_file_path": _as_text,
    "role_arn": _as_text,
    "session_name": _as_text,
    "external_id": _as_text,
}
#: The query parameters a ``gs://`` URI accepts, with the parser of each value: where the
#: server is (an emulator's ``endpoint_override`` and ``scheme``), whether to send no
#: credentials (``anonymous``; by default none over http), where and in which project pyarrow
#: creates buckets, and how long one request is retried before the store's own retries.
GS_OPTIONS: dict[str, Callable[[str], Any]] = {
    "scheme": _as_scheme,
    "endpoint_override": _as_endpoint,
    "anonymous": _as_bool,
    "location": _as_text,
    "project_id": _as_text,
    "retry_limit_seconds": _as_retry_seconds,
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


def _shown(uri: str) -> str:
    """``uri`` as an error message shows it: masked as every URL the package shows, with
    everything before its last '@' taken for credentials (a password may hold an unescaped
    '/', '?' or '#'; a path with a '@' in it is masked too, which is harmless), then without
    its query and fragment, clipped."""
    masked = mask_url(uri, path_schemes=(), keep_user=False)
    return clip(re.split(r"[?#]", masked, maxsplit=1)[0], _SHOWN)


def _credentials_error(shown: str, what: str) -> UserError:
    return UserError(
        f"the checkpoint URI {shown!r} carries credentials ({what}); they are not accepted "
        "in a URI, which ends up in logs, events and job entrypoints",
        hint="remove them and set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus "
        "AWS_SESSION_TOKEN for temporary credentials) in the environment, or use an AWS "
        "profile or role; for gs:// use GOOGLE_APPLICATION_CREDENTIALS; a '@' that is part "
        "of a prefix is written %40",
    )


def _check_text(shown: str, what: str, text: str) -> None:
    """Refuse a control character (NUL, newline, ...) in ``text``, the ``what`` of the URI:
    a path cannot hold NUL, and ``urlsplit`` silently drops tabs and newlines."""
    if match := CONTROL_CHARACTER.search(text):
        raise UserError(
            f"the checkpoint URI {shown!r} has the control character {match[0]!r} in its "
            f"{what} (at index {match.start()})",
            hint="remove it (a percent-escape such as %00 or %0A decodes to one too)",
        )


_SCHEMES_HINT = (
    "use an absolute path, file:///abs/dir, s3://bucket/prefix, gs://bucket/prefix or memory://name"
)


def parse_uri(uri: Any) -> Location:
    """Parse and check a store URI; anything wrong (a relative path, credentials, an unknown
    scheme or option, a bad bucket, a '..' in a prefix, a control character) is a
    :class:`UserError` that names the bad part and never echoes a credential."""
    if not isinstance(uri, str) or not uri.strip():
        raise UserError(f"invalid checkpoint location {uri!r:.80}", hint=_SCHEMES_HINT)
    uri = uri.strip()
    shown = _shown(uri)
    if "://" not in uri:
        return _plain_path(uri, shown)
    _check_text(shown, "text", uri)
    # Object store and memory URIs have no use for a raw '@' (a prefix writes it %40): one
    # anywhere is taken for user:password@, whose password may hold '/', '?' or '#'.
    if uri.partition("://")[0].lower() in ("s3", "gs", "gcs", "memory") and "@" in uri:
        raise _credentials_error(shown, "user:password@")
    try:
        parts = urlsplit(uri)
    except ValueError as exc:  # its text may quote the host, with a password before '@'
        reason = f": {exc}" if "@" not in uri else ""
        raise UserError(f"invalid checkpoint URI {shown!r}{reason}", hint=_SCHEMES_HINT) from None
    scheme = parts.scheme.lower()
    if "@" in parts.netloc:
        raise _credentials_error(shown, "user:password@")
    query = parse_qsl(parts.query, keep_blank_values=True)
    secret = sorted({name for name, _ in query if is_secret_name(name)})
    if secret:
        raise _credentials_error(shown, "query parameters " + ", ".join(secret))
    for name, value in query:
        _check_text(shown, f"query parameter {name!r:.40}", name + value)
    if parts.fragment:
        raise UserError(f"the checkpoint URI {shown!r} has a '#' fragment", hint="remove it")
    if scheme == "file":
        return _file(parts.netloc, unquote(parts.path), query, shown)
    if scheme == "memory":
        return _memory(f"{parts.netloc}{unquote(parts.path)}".strip("/"), query, shown)
    if scheme in ("gs", "gcs"):
        scheme = "gs"
    elif scheme != "s3":
        raise UserError(
            f"unsupported checkpoint URI scheme {scheme!r:.40} in {shown!r}", hint=_SCHEMES_HINT
        )
    root = _bucket_root(scheme, parts.netloc, unquote(parts.path), shown)
    return Location(scheme, root, _options(scheme, query, shown))


def _plain_path(uri: str, shown: str) -> Location:
    """A location written as a path (no ``://``)."""
    _check_text(shown, "path", uri)
    if not os.path.isabs(uri):
        scheme = _LOOKS_LIKE_URI.match(uri)
        if scheme and scheme[1].lower() in ("s3", "gs", "gcs", "memory"):
            raise UserError(
                f"the checkpoint location {shown!r} lacks '//' after {scheme[0]!r}",
                hint=_SCHEMES_HINT,
            )
        raise UserError(
            f"the checkpoint location {shown!r} is a relative path",
            hint="give an absolute path or file:///abs/dir (a relative path would depend "
            "on the working directory of whichever process opens it)",
        )
    return Location("file", os.path.normpath(uri))


def _file(netloc: str, path: str, query: list[tuple[str, str]], shown: str) -> Location:
    if netloc not in ("", "localhost") or not os.path.isabs(path):
        raise UserError(
            f"the checkpoint URI {shown!r} does not name an absolute path",
            hint="write file:///abs/dir (three slashes), or give the absolute path itself",
        )
    _check_text(shown, "path", path)
    if query:
        raise UserError(f"the checkpoint URI {shown!r} has query parameters; file:// takes none")
    return Location("file", os.path.normpath(path))


def _memory(name: str, query: list[tuple[str, str]], shown: str) -> Location:
    hint = "write memory://name (letters, digits, '_', '-', '.'; no query)"
    if query:
        raise UserError(f"the checkpoint URI {shown!r} has query parameters", hint=hint)
    if not _MEMORY_NAME.fullmatch(name) or ".." in name.split("/"):
        raise UserError(
            f"invalid checkpoint URI {shown!r}: the memory store name {name!r:.80} is not valid",
            hint=hint,
        )
    return Location("memory", name)


def _bucket_root(scheme: str, bucket: str, path: str, shown: str) -> str:
    """``bucket/prefix`` of an ``s3://`` or ``gs://`` URI, checked part by part."""
    hint = f"write {scheme}://bucket/prefix"
    if not bucket:
        raise UserError(f"invalid checkpoint URI {shown!r}: it names no bucket", hint=hint)
    if not _BUCKET.fullmatch(bucket):
        raise UserError(
            f"invalid checkpoint URI {shown!r}: the bucket name {bucket!r:.80} is not valid",
            hint=f"{hint}; a bucket name is 3-63 letters, digits, '.', '-' or '_' (a custom "
            "endpoint's host:port goes in ?endpoint_override=...)",
        )
    _check_text(shown, "prefix", path)
    prefix = path.strip("/")
    bad = [seg for seg in prefix.split("/") if seg in ("", ".", "..")] if prefix else []
    if bad:
        raise UserError(
            f"invalid checkpoint URI {shown!r}: its prefix {prefix!r:.80} has an "
            f"{'empty' if not bad[0] else repr(bad[0])} path segment",
            hint=f"{hint}, with no '//', '.' or '..' in the prefix",
        )
    return f"{bucket}/{prefix}" if prefix else bucket


def _options(scheme: str, query: list[tuple[str, str]], shown: str) -> tuple[tuple[str, Any], ...]:
    """The checked client options of an ``s3://`` or ``gs://`` URI, as parsed values."""
    names = [name for name, _ in query]
    if len(set(names)) != len(names):
        repeated = next(name for name in names if names.count(name) > 1)
        raise UserError(
            f"the checkpoint URI {shown!r} repeats the query parameter {repeated!r:.40}"
        )
    accepted = S3_OPTIONS if scheme == "s3" else GS_OPTIONS
    options: list[tuple[str, Any]] = []
    for name, value in query:
        if name not in accepted:
            raise UserError(
                f"unknown query parameter {name!r:.40} in the checkpoint URI {shown!r}",
                hint=f"{scheme}:// URIs accept {', '.join(sorted(accepted))}",
            )
        try:
            parsed = accepted[name](value)
        except ValueError as exc:
            raise UserError(f"invalid {name!r} in the checkpoint URI {shown!r}: {exc}") from None
        options.append((name, parsed))
    return tuple(options)
