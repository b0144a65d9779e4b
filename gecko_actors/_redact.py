"""One place that decides what a secret is, and one redaction step for log lines and errors.

*Names.* :func:`is_secret_name` says whether an argument, header, query parameter or
environment variable holds a secret by its name; every check in the package (model extras on
Ray, ``runtime_env`` variables, checkpoint and store URLs, ``name=value`` pairs in log lines,
the environment scan below) uses it.

*Values.* :func:`is_secret_value` says whether a value is shaped like a credential (a provider
key, a bearer token, a private key, a password in a URL, ``password=...``) or was registered as
one. The shapes are one list, :data:`gecko_actors._secrets.shapes.SHAPES`, which
:func:`redact` masks and :func:`is_secret_value` refuses: what one finds, the other finds.

*Masking.* :func:`redact` masks registered values and credential-shaped text in log lines and
exception text; :func:`mask_url` masks a URL's credentials for display. Environment variables
whose names say they hold a secret are registered the first time anything is redacted, so a
key read from the environment is masked even if it leaks through a third-party error message.

Refusing a value is stricter than masking it: a false positive in a log costs a word, in a
refusal it costs the user a detour; a false negative in either leaks. So masking errs wide
(``sk-`` followed by any 8 characters), refusing asks for a random-looking key.

Every pattern runs in time linear in the text (bounded or possessive repeats, and no match that
can start inside a run it would scan): :func:`redact` runs on every log line, and a line or a
tool's error can be megabytes of attacker-chosen text.

*Where.* The parts are in :mod:`gecko_actors._secrets`, one concept a module: ``names``,
``shapes`` (and :data:`MASK`), ``pairs`` and ``urls``. This module is their front: it holds
the registered values and the environment scan, makes the decisions that need every part
(:func:`is_secret_value`, :func:`is_credentials_path`, :func:`is_secret_setting`,
:func:`url_holds_secret`) and the masking (:func:`redact`), and re-exports the rest; the
package imports all of it from here.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Collection

from gecko_actors._secrets.names import (
    is_flag_value,
    is_secret_name,
    looks_like_credentials_path,
)
from gecko_actors._secrets.pairs import is_refusable_pair, mask_pairs, secret_pairs
from gecko_actors._secrets.shapes import MASK, SHAPES
from gecko_actors._secrets.urls import (
    PATH_SCHEMES,
    holds_url_password,
    mask_url,
    mask_urls,
    url_has_credentials,
)

__all__ = [
    "MASK",
    "PATH_SCHEMES",
    "is_credentials_path",
    "is_flag_value",
    "is_secret_name",
    "is_secret_setting",
    "is_secret_value",
    "mask_url",
    "redact",
    "register_secret",
    "url_holds_secret",
]

_MIN_SECRET_LEN = 6

# --- registered values -------------------------------------------------------------------------

_lock = threading.Lock()
_secrets: set[str] = set()
# Held while the environment is scanned, so no thread redacts before the scan has registered
# everything (a separate lock: the scan registers through _lock).
_scan_lock = threading.Lock()
_env_scanned = False


def register_secret(value: str | None) -> None:
    """Mask ``value`` wherever it appears in logs or exception text from now on."""
    if value and len(value) >= _MIN_SECRET_LEN:
        # Rendered log lines escape the value: JSON (quotes, backslashes, non-ASCII) and the
        # console renderer's repr(); mask those forms too.
        forms = {
            value,
            json.dumps(value)[1:-1],
            json.dumps(value, ensure_ascii=False)[1:-1],
            repr(value)[1:-1],
        }
        with _lock:
            _secrets.update(forms)


def _scan_environment() -> None:
    """Register the values of the environment's secret-named variables, once. The flag is set
    only after everything is registered, and a second caller waits for the first."""
    global _env_scanned
    if _env_scanned:
        return
    with _scan_lock:
        if _env_scanned:
            return
        for name, value in list(os.environ.items()):
            if (
                is_secret_name(name)
                and not is_flag_value(value)
                and not is_credentials_path(name, value)
            ):
                register_secret(value)
        _env_scanned = True


def _is_registered(value: str) -> bool:
    """Whether ``value``, alone or after a scheme word (``Token <secret>``), is registered."""
    _scan_environment()
    words = value.strip().split()
    candidates = {value.strip(), words[-1]} if words else set()
    with _lock:
        return any(candidate in _secrets for candidate in candidates)


# --- deciding and masking ----------------------------------------------------------------------


def _has_secret_shape(value: str) -> bool:
    """Whether ``value`` holds a credential-shaped part (registered values aside)."""
    lowered = value.lower()
    return (
        any(shape.refused(value, lowered) for shape in SHAPES)
        or holds_url_password(value)
        or any(is_refusable_pair(value, pair) for pair in secret_pairs(value))
    )


def is_credentials_path(name: str, value: object) -> bool:
    """Whether ``value`` is a filesystem path under a credentials name, such as
    ``GOOGLE_APPLICATION_CREDENTIALS=/etc/sa.json``: the path is not the secret."""
    return (
        isinstance(value, str)
        and looks_like_credentials_path(name, value)
        and not _has_secret_shape(value)
    )


def is_secret_setting(name: str, value: object) -> bool:
    """Whether the pair ``name=value`` (an environment variable, a keyword argument) carries
    a secret: by its name (unless the value is empty, a flag such as ``1`` or ``false``, or a
    path to credentials) or by its value."""
    if is_secret_name(name) and not is_credentials_path(name, value):
        return value is not None and value != "" and not is_flag_value(value)
    return isinstance(value, str) and is_secret_value(value)


def is_secret_value(value: str) -> bool:
    """Whether ``value`` looks like a credential, or is a value registered as secret (alone
    or after a scheme word, as in ``Token <secret>``).

    Credential-shaped: a private key (``-----BEGIN PRIVATE KEY-----``), ``Bearer``/``Basic``
    with a token (not ``Bearer authentication``), a provider key with a random-looking tail
    (``sk-proj-...``, ``sk-ant-...``, ``sk_live_...``, ``ghp_...``, ``github_pat_...``,
    ``glpat-...``, ``xoxb-...``, ``AIza...``, ``hf_...``, ``gsk_...``, ``xai-...``, an AWS key
    id or a Bedrock ``ABSK...`` key), a JWT, a secret-named pair such as ``password=...`` or
    ``AccountKey=...``, or a password in a URL (``postgres://user:password@host``).
    """
    return _has_secret_shape(value) or _is_registered(value)


def url_holds_secret(url: str, *, path_schemes: Collection[str] = PATH_SCHEMES) -> bool:
    """Whether ``url`` carries a credential: a password (``user:password@``), a query parameter
    named like a secret (``?token=...``), or a credential-shaped part (``sk-...``). A user name
    alone (``redis://alice@host``) is not one, unless it is shaped like a credential."""
    return url_has_credentials(url, path_schemes=path_schemes) or is_secret_value(url)


def redact(text: str) -> str:
    """Return ``text`` with every known or credential-shaped secret replaced by ``***``: the
    values registered or read from secret-named environment variables, the shapes
    :func:`is_secret_value` finds (masked more widely: any ``sk-`` followed by 8 characters),
    URL user information, and the values of secret-named pairs (``api_key=...``,
    ``"Authorization": "Basic ..."``, ``Cookie: ...`` to the end of the line)."""
    if not text:
        return text
    _scan_environment()
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    # Masking only takes characters out and puts "***" in, which creates no hint: the lower-
    # case copy made once stays good enough to skip the shapes a line cannot hold.
    lowered = text.lower()
    text = SHAPES[0].mask(text, lowered)  # a private key first: its body is many lines
    text = mask_urls(text)
    for shape in SHAPES[1:]:
        text = shape.mask(text, lowered)
    return mask_pairs(text)
