"""One place that decides what a secret is, and one redaction step for log lines and errors.

*Names.* :func:`is_secret_name` says whether an argument, header, query parameter or
environment variable holds a secret by its name; every check in the package (model extras on
Ray, ``runtime_env`` variables, checkpoint and store URLs, the environment scan below) uses it.

*Values.* :func:`is_secret_value` says whether a value is shaped like a credential (a provider
key, a bearer token, a password in a URL...) or was registered as one.

*Masking.* :func:`redact` masks registered values and credential-shaped text in log lines and
exception text; :func:`mask_url` masks a URL's credentials for display. Environment variables
whose names say they hold a secret are registered the first time anything is redacted, so a
key read from the environment is masked even if it leaks through a third-party error message.

Refusing a value is stricter than masking it: a false positive in a log costs a word, in a
refusal it costs the user a detour; a false negative in either leaks. So masking errs wide
(``sk-`` followed by any 8 characters), refusing asks for a random-looking key.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Collection
from urllib.parse import unquote_plus

__all__ = [
    "MASK",
    "is_credentials_path",
    "is_secret_name",
    "is_secret_setting",
    "is_secret_value",
    "mask_url",
    "redact",
    "register_secret",
    "url_holds_secret",
]

MASK = "***"
_MIN_SECRET_LEN = 6

# --- names -------------------------------------------------------------------------------------

_NAME_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
# A name is secret when its letters (words joined, lower case) contain one of these...
_SECRET_STEMS = (
    "secret",
    "password",
    "passwd",
    "passphrase",
    "credential",
    "authorization",
    "cookie",
    "apikey",
    "privatekey",
    "accesskey",
    "accesstoken",
    "refreshtoken",
    "sessiontoken",
    "authtoken",
)
# ...or one of its words is one of these...
_SECRET_WORDS = frozenset({"pwd"})
# ...or its last word is one of these: HF_TOKEN, x-api-key, DB_PASS, basic_auth, a SAS "sig",
# but not token_budget, pass_through, max_tokens or auth_mode.
_SECRET_LAST_WORDS = frozenset({"key", "token", "pass", "auth", "sig", "signature"})
# Known names that are not secrets although a rule above matches them.
_NOT_SECRET_NAMES = frozenset(
    {
        "cache_key",
        "prompt_cache_key",  # OpenAI's prompt-caching parameter
        "idempotency_key",
        "partition_key",
        "primary_key",
        "sort_key",
        "bos_token",
        "eos_token",
        "pad_token",
    }
)
# Names of where a secret is, not of the secret: SSL_KEY_FILE, private_key_path, a key's id.
_NOT_SECRET_LAST_WORDS = frozenset({"file", "filename", "path", "dir"})
_PATH_VALUE = re.compile(r"(?:~|\.{1,2})?/[^\x00-\x1f]*|[A-Za-z]:[\\/][^\x00-\x1f]*")
_MAX_PATH_LEN = 4096


def _words(name: str) -> list[str]:
    """``name`` split into lower-case words on ``_``, ``-``, dots, digits and camelCase."""
    return [word.lower() for word in _NAME_WORD.findall(name)]


def is_secret_name(name: str) -> bool:
    """Whether an argument, header, query parameter or variable called ``name`` holds a secret.

    Split into words (on ``_``, ``-`` and camelCase), ``name`` is secret when it contains
    secret, password, passwd, passphrase, credential(s), authorization, cookie, apikey or
    privatekey (``aws_secret_access_key``, ``vertex_credentials``, ``x-api-key``), has the word
    pwd, or ends in key, token, pass, auth, sig or signature (``HF_TOKEN``, ``DB_PASS``). Not
    secret: ``token_budget``, ``pass_through``, ``max_tokens``, names of where a secret is
    (ending in file, path or dir; ``*_key_id``) and a few known names (``prompt_cache_key``,
    ``idempotency_key``, ``cache_key``). When unsure it says yes: a false positive only makes
    the user pass the value by variable name, a false negative leaks it.
    """
    words = _words(name)
    if not words:
        return False
    normalized = "_".join(words)
    meaningful = [word for word in words if not word.isdigit()]  # API_KEY_2 ends in "key"
    if (
        normalized in _NOT_SECRET_NAMES
        or words[-1] in _NOT_SECRET_LAST_WORDS
        or normalized == "key_id"
        or normalized.endswith("_key_id")
    ):
        return False
    joined = "".join(words)
    return (
        any(stem in joined for stem in _SECRET_STEMS)
        or any(word in _SECRET_WORDS for word in words)
        or bool(meaningful and meaningful[-1] in _SECRET_LAST_WORDS)
    )


def is_credentials_path(name: str, value: object) -> bool:
    """Whether ``value`` is a filesystem path under a credentials name, such as
    ``GOOGLE_APPLICATION_CREDENTIALS=/etc/sa.json``: the path is not the secret."""
    return (
        isinstance(value, str)
        and "credential" in "".join(_words(name))
        and len(value) <= _MAX_PATH_LEN
        and _PATH_VALUE.fullmatch(value) is not None
        and not is_secret_value(value)
    )


def is_secret_setting(name: str, value: object) -> bool:
    """Whether the pair ``name=value`` (an environment variable, a keyword argument) carries
    a secret: by its name (unless the value is a path to credentials) or by its value."""
    if is_secret_name(name) and not is_credentials_path(name, value):
        return value is not None and value != ""
    return isinstance(value, str) and is_secret_value(value)


# --- values ------------------------------------------------------------------------------------

# Provider keys: sk-..., sk-proj-..., sk-ant-api03-..., rk-..., pk-...
_PROVIDER_KEY = re.compile(r"\b(?:sk|pk|rk)-([A-Za-z0-9_\-]{8,})")
_KEY_TAIL_LEN = 20
_KEY_SEGMENT_LEN = 16
_KEY_LONG_TAIL_LEN = 32
# scheme://user:password@ (the password is group "password"; the user may be empty).
# Bounded, possessive repeats: log lines and tool errors can be long, and a line full of
# "://" must not make the search quadratic.
_URL_PASSWORD = re.compile(
    r"\b(?P<head>[A-Za-z][A-Za-z0-9+.\-]{0,30}+://[^\s/?#@:]{0,128}+:)"
    r"(?P<password>[^\s@]{1,256}+)@"
)
_BEARER = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/\-]{8,}=*")
# key=value and "key": "value" pairs whose key names a secret.
_SECRET_PAIR = re.compile(
    r"(?i)((?:api[_-]?key|access[_-]?key|secret[_-]?key|token|secret|password|authorization)"
    r"[\"']?\s*[:=]\s*[\"']?)([^\s\"',}&]{4,})"
)
# Values shaped like credentials whatever they are called.
_VALUE_PATTERNS = (
    _BEARER,
    _SECRET_PAIR,
    _URL_PASSWORD,
    re.compile(r"(?i)\bbasic\s+[A-Za-z0-9+/]{8,}=*"),
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key ids
    re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\."),  # JWTs
    re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|xox[abprs]-[A-Za-z0-9\-]{10,})"),
    re.compile(r"\bAIza[0-9A-Za-z_\-]{30,}"),  # Google API keys
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
)

_lock = threading.Lock()
_secrets: set[str] = set()
_env_scanned = False
# Shell variables named like a secret that hold the working directory.
_SHELL_VARIABLES = frozenset({"PWD", "OLDPWD"})


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


def _is_random_key_tail(tail: str) -> bool:
    """Whether the part after ``sk-`` looks random (a key), not words (``rk-2024-nightly``):
    20+ characters mixing letters and digits, with a 16-character run or 32+ in all."""
    if len(tail) < _KEY_TAIL_LEN:
        return False
    if not (any(c.isdigit() for c in tail) and any(c.isalpha() for c in tail)):
        return False
    longest = max(len(segment) for segment in re.split(r"[-_]", tail))
    return longest >= _KEY_SEGMENT_LEN or len(tail) >= _KEY_LONG_TAIL_LEN


def is_secret_value(value: str) -> bool:
    """Whether ``value`` looks like a credential (a provider key such as ``sk-proj-...``,
    ``Bearer ...``, an AWS key id, a JWT, ``password=...``, a password in a URL such as
    ``postgres://user:password@host``), or is a value registered as secret (alone or after a
    scheme word, as in ``Token <secret>``)."""
    if any(pattern.search(value) for pattern in _VALUE_PATTERNS):
        return True
    if any(_is_random_key_tail(match[1]) for match in _PROVIDER_KEY.finditer(value)):
        return True
    _scan_environment()
    words = value.strip().split()
    candidates = {value.strip(), words[-1]} if words else set()
    with _lock:
        return any(candidate in _secrets for candidate in candidates)


def _scan_environment() -> None:
    global _env_scanned
    if _env_scanned:
        return
    _env_scanned = True
    for name, value in os.environ.items():
        if name in _SHELL_VARIABLES or not is_secret_name(name):
            continue
        if not is_credentials_path(name, value):
            register_secret(value)


# --- URLs --------------------------------------------------------------------------------------

_SCHEME_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_QUERY_PARAMETER = re.compile(r"(^|[&;])([^=&;#]*)=([^&;#]*)")
#: Schemes whose URL is a path after ``://``, where a ``@`` is part of a file name.
PATH_SCHEMES = frozenset(("sqlite", "lancedb", "file"))


def _userinfo(url: str, path_schemes: Collection[str]) -> tuple[str, str | None, str]:
    """``url`` as (what comes before the user information, the user information or ``None``,
    ``@`` and what follows it).

    Errs on the side of finding one: the last ``@`` ends the user information, so that a
    password with an unescaped ``/``, ``?`` or ``#`` is still found; so is a
    ``user:password@`` after a ``scheme:`` without ``//``, or after ``:///``.
    """
    head, sep, rest = url.partition("://")
    if not sep:
        scheme = _SCHEME_PREFIX.match(url)
        start = scheme.end() if scheme else 0
        at = url.rfind("@")
        return (url[:start], url[start:at], url[at:]) if at >= start else (url, None, "")
    at = rest.rfind("@")
    if at < 0:
        return url, None, ""
    slashes = len(rest) - len(rest.lstrip("/"))
    # A path after the slashes (sqlite:///data/me@home.db) keeps its '@'; in any other
    # scheme, or with a ':' before it, it is "user:password@" one slash too far.
    if slashes and head.lower() in path_schemes and ":" not in rest[slashes:at]:
        return url, None, ""
    return f"{head}://{rest[:slashes]}", rest[slashes:at], rest[at:]


def _password(userinfo: str) -> str | None:
    """The password of ``user:password`` (``None`` for a user alone). A ``/`` before the first
    ``:`` makes the split unsure (a path, or a password with an unescaped ``/``): then all of
    it counts as the password."""
    user, colon, password = userinfo.partition(":")
    if "/" in user:
        return userinfo
    return password if colon else None


def _mask_query(text: str) -> str:
    """``text`` (a URL's tail) with the values of secret-named query parameters masked."""
    before, question, query = text.partition("?")
    if not question:
        return text

    def mask(match: re.Match[str]) -> str:
        secret = match[3] and is_secret_name(unquote_plus(match[2]))
        return f"{match[1]}{match[2]}={MASK if secret else match[3]}"

    return f"{before}?{_QUERY_PARAMETER.sub(mask, query)}"


def mask_url(
    url: str, *, path_schemes: Collection[str] = PATH_SCHEMES, keep_user: bool = True
) -> str:
    """``url`` with its user information masked (``redis://user:***@host/0``, or
    ``redis://***@host`` for a user alone, which may be a token) and the values of query
    parameters named like secrets (``?password=***``), for messages and logs.

    ``path_schemes``: schemes whose ``scheme:///path`` may hold a ``@`` that is part of a file
    name (``sqlite:///data/me@home.db`` is shown as it is); pass ``()`` where a raw ``@`` can
    only be a credential. ``keep_user=False`` masks the user too (an AWS key id before the
    password of an ``s3://`` URI).
    """
    before, userinfo, after = _userinfo(url, path_schemes)
    if userinfo is None:
        return _mask_query(url)
    user, colon, _ = userinfo.partition(":")
    masked = f"{user}:{MASK}" if keep_user and colon and "/" not in user else MASK
    return f"{before}{masked}{_mask_query(after)}"


def url_holds_secret(url: str, *, path_schemes: Collection[str] = PATH_SCHEMES) -> bool:
    """Whether ``url`` carries a credential: a password (``user:password@``), a query parameter
    named like a secret (``?token=...``), or a credential-shaped part (``sk-...``). A user name
    alone (``redis://alice@host``) is not one, unless it is shaped like a credential."""
    _, userinfo, after = _userinfo(url, path_schemes)
    if userinfo is not None and _password(userinfo):
        return True
    tail = after if userinfo is not None else url
    query = tail.partition("?")[2].partition("#")[0]
    names = [m[2] for m in _QUERY_PARAMETER.finditer(query)]
    return any(is_secret_name(unquote_plus(name)) for name in names) or is_secret_value(url)


# --- masking text ------------------------------------------------------------------------------


def redact(text: str) -> str:
    """Return ``text`` with every known or credential-shaped secret replaced by ``***``."""
    if not text:
        return text
    _scan_environment()
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    text = _PROVIDER_KEY.sub(MASK, text)
    text = _BEARER.sub(f"Bearer {MASK}", text)
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", text)
    return _SECRET_PAIR.sub(lambda m: m.group(1) + MASK, text)
