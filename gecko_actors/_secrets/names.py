"""Whether a name says its value is a secret.

:func:`is_secret_name` decides it for an argument, header, query parameter, environment
variable or the name of a ``name=value`` pair in a log line; every check in the package goes
through it. Beside it: :func:`is_flag_value` (a yes/no or a number, never a secret),
:func:`looks_like_credentials_path` (a path under a credentials name, such as
``GOOGLE_APPLICATION_CREDENTIALS=/etc/sa.json``) and :func:`name_kind`, how far the value
after a secret name is masked. Judging by name alone, this module depends on no other part of
the secret handling; the checks that also look at the value
(:func:`gecko_actors._redact.is_credentials_path`,
:func:`gecko_actors._redact.is_secret_setting`) are in :mod:`gecko_actors._redact`.
"""

from __future__ import annotations

import functools
import re

__all__ = [
    "FREE_TEXT_SECRET",
    "NOT_SECRET",
    "SECRET",
    "is_flag_value",
    "is_secret_name",
    "looks_like_credentials_path",
    "name_kind",
]

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
    "bearer",  # AWS_BEARER_TOKEN_BEDROCK
    "connectionstring",  # AZURE_STORAGE_CONNECTION_STRING holds an AccountKey
    "authconfig",  # DOCKER_AUTH_CONFIG holds registry passwords
    "oldkeys",  # GECKO_CHECKPOINT_OLD_KEYS: keys that still decrypt (plural: no "key" rule)
)
# ...or one of its words is one of these...
_SECRET_WORDS = frozenset({"pwd"})
# ...or its last word is one of these: HF_TOKEN, x-api-key, DB_PASS, basic_auth, a SAS "sig",
# SENTRY_DSN (its user part is the key), but not token_budget, pass_through or auth_mode.
_SECRET_LAST_WORDS = frozenset({"key", "token", "pass", "auth", "sig", "signature", "dsn"})
# Known names that are not secrets although a rule above matches them.
_NOT_SECRET_NAMES = frozenset(
    {
        "bos_token",
        "eos_token",
        "pad_token",
        "bearer_format",  # OpenAPI's bearerFormat: "JWT", in tool schemas
    }
)
# "<kind>_key" names a key that locates or identifies something, not one that opens it:
# prompt_cache_key (OpenAI's prompt caching), routing_key (AMQP), public_key, partition_key...
_NOT_SECRET_KEY_KINDS = frozenset(
    {
        "cache",
        "composite",
        "dedup",
        "dedupe",
        "deduplication",
        "foreign",
        "idempotency",
        "lookup",
        "object",
        "partition",
        "primary",
        "public",
        "publishable",
        "routing",
        "row",
        "shard",
        "sort",
        "unique",
    }
)
# Names of where a secret is, not of the secret: SSL_KEY_FILE, private_key_path, a key's id,
# api_key_env (the name of the variable that holds the key).
_NOT_SECRET_LAST_WORDS = frozenset({"file", "filename", "path", "dir", "env"})
# The shell's working-directory variables, spelled as the shell sets them: "PWD" is not a
# password, although "pwd=" in a log line or DB_PWD is one.
_SHELL_VARIABLES = frozenset({"PWD", "OLDPWD"})
# Names whose values have spaces (Authorization: Basic ..., Cookie: a=1; b=2): their value
# runs to the end of the line or the closing quote.
_FREE_TEXT_STEMS = ("authorization", "cookie", "connectionstring")
_PATH_VALUE = re.compile(r"(?:~|\.{1,2})?/[^\x00-\x1f]*|[A-Za-z]:[\\/][^\x00-\x1f]*")
_MAX_PATH_LEN = 4096
# Values that say yes or no: HF_HUB_DISABLE_IMPLICIT_TOKEN=1 carries no secret.
_FLAG_VALUES = frozenset({"0", "1", "true", "false", "yes", "no", "on", "off"})


def _words(name: str) -> list[str]:
    """``name`` split into lower-case words on ``_``, ``-``, dots, digits and camelCase."""
    return [word.lower() for word in _NAME_WORD.findall(name)]


def is_secret_name(name: str) -> bool:
    """Whether an argument, header, query parameter or variable called ``name`` holds a secret.

    Split into words (on ``_``, ``-`` and camelCase), ``name`` is secret when it contains
    secret, password, passwd, passphrase, credential(s), authorization, cookie, apikey,
    privatekey, bearer, connection string or auth config (``aws_secret_access_key``,
    ``x-api-key``, ``Set-Cookie``, ``AWS_BEARER_TOKEN_BEDROCK``), has the word pwd, or ends in
    key, token, pass, auth, sig, signature or dsn (``HF_TOKEN``, ``DB_PASS``, ``SENTRY_DSN``).
    Not secret: ``token_budget``, ``pass_through``, ``max_tokens``, names of where a secret is
    (ending in file, path, dir or env: ``*_key_id``, ``api_key_env``), keys that locate or
    identify something (``prompt_cache_key``, ``routing_key``, ``public_key``,
    ``idempotency_key``), the shell's ``PWD`` and ``OLDPWD``, and a few known names
    (``eos_token``, ``bearer_format``). When unsure it says yes: a false positive only makes
    the user pass the value by variable name, a false negative leaks it.
    """
    if name in _SHELL_VARIABLES:
        return False
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
        or (
            len(meaningful) > 1
            and meaningful[-1] == "key"
            and meaningful[-2] in _NOT_SECRET_KEY_KINDS
        )
    ):
        return False
    joined = "".join(words)
    return (
        any(stem in joined for stem in _SECRET_STEMS)
        or any(word in _SECRET_WORDS for word in words)
        or bool(meaningful and meaningful[-1] in _SECRET_LAST_WORDS)
    )


def is_flag_value(value: object) -> bool:
    """Whether ``value`` is a yes/no or a number rather than something that can be secret:
    ``True``, ``0``, ``"1"``, ``"false"``, ``"on"`` (as in ``HF_HUB_DISABLE_IMPLICIT_TOKEN=1``)."""
    if isinstance(value, bool | int | float):
        return True
    return isinstance(value, str) and value.strip().lower() in _FLAG_VALUES


def looks_like_credentials_path(name: str, value: object) -> bool:
    """Whether ``value`` is, by its form, a filesystem path under a credentials name, such as
    ``GOOGLE_APPLICATION_CREDENTIALS=/etc/sa.json``. The value is not checked for credential
    shapes here: :func:`gecko_actors._redact.is_credentials_path` adds that."""
    return (
        isinstance(value, str)
        and "credential" in "".join(_words(name))
        and len(value) <= _MAX_PATH_LEN
        and _PATH_VALUE.fullmatch(value) is not None
    )


# Names met in log lines repeat (event, level, agent...): decide each once.
@functools.lru_cache(maxsize=4096)
def _cached_pair_kind(name: str) -> int:
    return _pair_kind(name)


# What name_kind returns: the value is not masked, masked up to the next separator, or
# masked to the end of the line or the closing quote.
NOT_SECRET, SECRET, FREE_TEXT_SECRET = 0, 1, 2
_MAX_CACHED_NAME = 128


def _pair_kind(name: str) -> int:
    """How the value after ``name=`` / ``name:`` is masked: not at all, up to the next
    separator, or (Authorization, Cookie) to the end of the line or the closing quote."""
    if not is_secret_name(name):
        return NOT_SECRET
    joined = "".join(_words(name))
    return FREE_TEXT_SECRET if any(s in joined for s in _FREE_TEXT_STEMS) else SECRET


def name_kind(name: str) -> int:
    """How the value after ``name=`` / ``name:`` is masked (:data:`NOT_SECRET`,
    :data:`SECRET` or :data:`FREE_TEXT_SECRET`), decided once per name of a usual length."""
    return _cached_pair_kind(name) if len(name) <= _MAX_CACHED_NAME else _pair_kind(name)
