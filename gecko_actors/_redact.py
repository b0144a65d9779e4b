"""One place that decides what a secret is, and one redaction step for log lines and errors.

*Names.* :func:`is_secret_name` says whether an argument, header, query parameter or
environment variable holds a secret by its name; every check in the package (model extras on
Ray, ``runtime_env`` variables, checkpoint and store URLs, ``name=value`` pairs in log lines,
the environment scan below) uses it.

*Values.* :func:`is_secret_value` says whether a value is shaped like a credential (a provider
key, a bearer token, a private key, a password in a URL, ``password=...``) or was registered as
one. The shapes are one list, ``_SHAPES``, which :func:`redact` masks and
:func:`is_secret_value` refuses: what one finds, the other finds.

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
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from urllib.parse import unquote_plus

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
    "bearer",  # AWS_BEARER_TOKEN_BEDROCK
    "connectionstring",  # AZURE_STORAGE_CONNECTION_STRING holds an AccountKey
    "authconfig",  # DOCKER_AUTH_CONFIG holds registry passwords
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


def is_credentials_path(name: str, value: object) -> bool:
    """Whether ``value`` is a filesystem path under a credentials name, such as
    ``GOOGLE_APPLICATION_CREDENTIALS=/etc/sa.json``: the path is not the secret."""
    return (
        isinstance(value, str)
        and "credential" in "".join(_words(name))
        and len(value) <= _MAX_PATH_LEN
        and _PATH_VALUE.fullmatch(value) is not None
        and not _has_secret_shape(value)
    )


def is_secret_setting(name: str, value: object) -> bool:
    """Whether the pair ``name=value`` (an environment variable, a keyword argument) carries
    a secret: by its name (unless the value is empty, a flag such as ``1`` or ``false``, or a
    path to credentials) or by its value."""
    if is_secret_name(name) and not is_credentials_path(name, value):
        return value is not None and value != "" and not is_flag_value(value)
    return isinstance(value, str) and is_secret_value(value)


# Names met in log lines repeat (event, level, agent...): decide each once.
@functools.lru_cache(maxsize=4096)
def _cached_pair_kind(name: str) -> int:
    return _pair_kind(name)


_NOT_SECRET, _SECRET, _FREE_TEXT_SECRET = 0, 1, 2
_MAX_CACHED_NAME = 128


def _pair_kind(name: str) -> int:
    """How the value after ``name=`` / ``name:`` is masked: not at all, up to the next
    separator, or (Authorization, Cookie) to the end of the line or the closing quote."""
    if not is_secret_name(name):
        return _NOT_SECRET
    joined = "".join(_words(name))
    return _FREE_TEXT_SECRET if any(s in joined for s in _FREE_TEXT_STEMS) else _SECRET


def _name_kind(name: str) -> int:
    return _cached_pair_kind(name) if len(name) <= _MAX_CACHED_NAME else _pair_kind(name)


# --- values ------------------------------------------------------------------------------------

_KEY_TAIL_LEN = 20
_KEY_SEGMENT_LEN = 16
_KEY_LONG_TAIL_LEN = 32
_TOKEN_LEN = 8
_TOKEN_CHARACTERS = frozenset("._~+/=-")
_PAIR_VALUE_LEN = 4


def _is_random_key_tail(tail: str) -> bool:
    """Whether the part after ``sk-`` looks random (a key), not words (``rk-2024-nightly``):
    20+ characters mixing letters and digits, with a 16-character run or 32+ in all."""
    if len(tail) < _KEY_TAIL_LEN:
        return False
    if not (any(c.isdigit() for c in tail) and any(c.isalpha() for c in tail)):
        return False
    longest = max(len(segment) for segment in re.split(r"[-_]", tail))
    return longest >= _KEY_SEGMENT_LEN or len(tail) >= _KEY_LONG_TAIL_LEN


def _is_token_shaped(text: str) -> bool:
    """Whether ``text`` looks like a token rather than a word (``Bearer authentication``):
    8+ characters, no space, and a digit, a token character (``._~+/=-``) or a capital
    after the first letter."""
    if len(text) < _TOKEN_LEN or any(c.isspace() for c in text):
        return False
    return any(c.isdigit() or c in _TOKEN_CHARACTERS for c in text) or any(
        c.isupper() for c in text[1:]
    )


@dataclass(frozen=True)
class _Shape:
    """A credential shape, found the same way by :func:`redact` and :func:`is_secret_value`.

    ``pattern`` finds it; its group ``keep`` (a scheme word such as ``Bearer ``) stays in front
    of the mask and its group ``tail`` (default: the whole match) is what ``valid`` and
    ``refuse`` judge. ``valid`` must hold for a match to count at all; ``refuse`` must also
    hold for :func:`is_secret_value`, which is stricter than masking. ``hints``: lower-case
    strings one of which the text must contain for the pattern to run (a cheap test first, as
    most log lines hold none). ``until``: the shape is a block (a PEM key) masked through this
    end marker, or to the closing quote or the end of the text when the marker is missing.
    """

    pattern: re.Pattern[str]
    hints: tuple[str, ...]
    valid: Callable[[str], bool] | None = None
    refuse: Callable[[str], bool] | None = None
    until: re.Pattern[str] | None = None

    def matches(self, text: str) -> Iterator[re.Match[str]]:
        """The matches of this shape in ``text`` that pass ``valid``."""
        for match in self.pattern.finditer(text):
            if self.valid is None or self.valid(_tail(match)):
                yield match

    def refused(self, text: str, lowered: str) -> bool:
        """Whether ``text`` holds this shape strongly enough to be refused as a secret."""
        if not any(hint in lowered for hint in self.hints):
            return False
        return any(self.refuse is None or self.refuse(_tail(m)) for m in self.matches(text))

    def mask(self, text: str, lowered: str) -> str:
        """``text`` with this shape masked."""
        if not any(hint in lowered for hint in self.hints):
            return text
        if self.until is not None:
            return self._mask_blocks(text)

        def replace(match: re.Match[str]) -> str:
            if self.valid is not None and not self.valid(_tail(match)):
                return match[0]
            keep = match.groupdict().get("keep")
            return f"{keep}{MASK}" if keep else MASK

        return self.pattern.sub(replace, text)

    def _mask_blocks(self, text: str) -> str:
        # Each BEGIN masks through the next END. An END found serves every BEGIN before it,
        # and none is searched for again once one is missing: a text full of BEGINs is still
        # one pass.
        assert self.until is not None
        pieces: list[str] = []
        position = 0
        end: re.Match[str] | None = None
        ends_left = True
        while begin := self.pattern.search(text, position):
            if ends_left and (end is None or end.start() < begin.end()):
                end = self.until.search(text, begin.end())
                ends_left = end is not None
            limit = end.start() if end is not None else len(text)
            # The block also stops at a closing quote: a key cut short inside a JSON string
            # must not swallow the other fields of the line.
            inside = _UNTIL_QUOTE.match(text, begin.end(), limit)
            stop = inside.end() if inside is not None else begin.end()
            if end is not None and stop == limit:
                stop = end.end()
            pieces += [text[position : begin.start()], MASK]
            position = stop
        pieces.append(text[position:])
        return "".join(pieces)


def _tail(match: re.Match[str]) -> str:
    groups = match.groupdict()
    return groups["tail"] if groups.get("tail") is not None else match[0]


# Up to (not including) a quote, or a backslash escaping one: the end of a quoted string.
_UNTIL_QUOTE = re.compile(r"(?:[^\"'\\]|\\[^\"'])*+")
# Key characters must not be able to precede a match: a shape can then start only at the
# beginning of a run of them, which keeps a text full of "sk-sk-sk-..." linear.
_START = r"(?<![A-Za-z0-9_\-])"
_PRIVATE_KEY_LABEL = r"(?:[A-Z0-9]++ ){0,3}PRIVATE KEY(?: BLOCK)?-----"

_SHAPES: tuple[_Shape, ...] = (
    # A PEM private key, masked through its END line (literal or JSON-escaped newlines).
    _Shape(
        re.compile(rf"-----BEGIN {_PRIVATE_KEY_LABEL}"),
        ("-----begin ",),
        until=re.compile(rf"-----END {_PRIVATE_KEY_LABEL}"),
    ),
    # Schemes of the Authorization header: Bearer <token>, Basic <base64>.
    _Shape(
        re.compile(r"(?i)(?P<keep>\bbearer\s++)(?P<tail>[A-Za-z0-9._~+/\-]{8,}+=*+)"),
        ("bearer",),
        valid=_is_token_shaped,
    ),
    _Shape(
        re.compile(r"(?i)(?P<keep>\bbasic\s++)(?P<tail>[A-Za-z0-9+/]{8,}+=*+)"),
        ("basic",),
        valid=_is_token_shaped,
    ),
    # OpenAI/Anthropic-style keys: sk-..., sk-proj-..., sk-ant-api03-..., rk-..., pk-...
    _Shape(
        re.compile(rf"{_START}(?:sk|pk|rk)-(?P<tail>[A-Za-z0-9_\-]{{8,}}+)"),
        ("sk-", "pk-", "rk-"),
        refuse=_is_random_key_tail,
    ),
    _Shape(re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), ("akia", "asia")),  # AWS key ids
    _Shape(  # Amazon Bedrock API keys, long-term and short-term
        re.compile(rf"{_START}(?:ABSK|bedrock-api-key-)[A-Za-z0-9+/]{{20,}}+=*+"),
        ("absk", "bedrock-api-key-"),
    ),
    _Shape(  # JWTs: header.payload.signature
        re.compile(rf"{_START}eyJ[A-Za-z0-9_\-]{{8,}}+\.[A-Za-z0-9_\-]{{8,}}+\.[A-Za-z0-9_\-]*+"),
        ("eyj",),
    ),
    _Shape(  # GitHub and GitLab tokens
        re.compile(
            rf"{_START}(?:gh[pousr]_[A-Za-z0-9]{{20,}}+|github_pat_[A-Za-z0-9_]{{20,}}+"
            r"|glpat-[A-Za-z0-9_\-]{20,}+)"
        ),
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "glpat-"),
    ),
    _Shape(re.compile(rf"{_START}xox[abeoprs]-[A-Za-z0-9\-]{{10,}}+"), ("xox",)),  # Slack
    _Shape(re.compile(rf"{_START}AIza[0-9A-Za-z_\-]{{30,}}+"), ("aiza",)),  # Google API keys
    _Shape(re.compile(rf"{_START}hf_[A-Za-z0-9]{{30,}}+"), ("hf_",)),  # Hugging Face
    _Shape(  # Stripe secret and restricted keys
        re.compile(rf"{_START}(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{{16,}}+"),
        ("_live_", "_test_"),
    ),
    _Shape(  # Groq, xAI
        re.compile(rf"{_START}(?:gsk_|xai-)[A-Za-z0-9]{{20,}}+"),
        ("gsk_", "xai-"),
    ),
)


# --- name=value pairs --------------------------------------------------------------------------

# name, then = or : (with the name's closing quote, maybe JSON-escaped, and spaces around).
# A name can start only where no name character precedes it, so every position is tried
# once; leading dashes are allowed for command-line flags (--password=...).
_PAIR_HEAD = re.compile(
    r"(?<![A-Za-z0-9_.\-])-*+(?P<name>[A-Za-z_][A-Za-z0-9_.\-]*+)"
    r"\\?[\"']?[ \t]*+[:=][ \t]*+"
)
# A quoted value runs to its closing quote; escapes are whole units, so a mask never leaves a
# lone backslash behind (a JSON line stays valid).
_QUOTED_VALUES = {
    '\\"': re.compile(r'(?:[^"\\\r\n]|\\[^"\r\n])*+'),  # \"...\" inside a JSON string
    '"': re.compile(r'(?:[^"\\\r\n]|\\.)*+'),
    "'": re.compile(r"(?:[^'\\\r\n]|\\.)*+"),
}
# An unquoted value runs to a space or a separator; the value of an Authorization or Cookie
# (Basic ..., a=1; b=2) to the end of the line, a quote or an escaped newline.
_BARE_VALUE = re.compile(r"(?:[^\s\"',}&\\]|\\\S)++")
_FREE_TEXT_VALUE = re.compile(r"(?:[^\r\n\"'\\]|\\[^\r\n\"'nr])++")
# A double quote that no backslash escapes (an escaped backslash may come before it).
_UNESCAPED_QUOTE = re.compile(r'(?<!\\)(?:\\\\)*+"')


@dataclass(frozen=True)
class _Pair:
    """Where the value of a secret-named ``name=value`` pair is in a text."""

    start: int
    end: int
    quoted: bool
    equals: bool  # name=value rather than name: value


def _secret_pairs(text: str) -> Iterator[_Pair]:
    """The values of ``name=value``, ``name: value``, ``"name": "value"`` pairs in ``text``
    whose name is secret (:func:`is_secret_name`), left to right."""
    position = 0
    quotes = _QuoteCounter(text)
    while head := _PAIR_HEAD.search(text, position):
        position = head.end()
        kind = _name_kind(head["name"])
        if kind == _NOT_SECRET:
            continue  # its value may hold pairs of its own: go on from there
        quote = '\\"' if text.startswith('\\"', position) else text[position : position + 1]
        if quote == '"' and quotes.inside_string(position):
            # This quote closes the string the name is in ({"event": "token:", ...} in a JSON
            # line): what follows is the line's structure, not a value.
            continue
        if quote in _QUOTED_VALUES:
            value = _QUOTED_VALUES[quote].match(text, position + len(quote))
        else:
            value = (_FREE_TEXT_VALUE if kind == _FREE_TEXT_SECRET else _BARE_VALUE).match(
                text, position
            )
        if value is None or value.end() == value.start():
            continue
        yield _Pair(value.start(), value.end(), quote in _QUOTED_VALUES, "=" in head[0])
        position = value.end()


class _QuoteCounter:
    """Counts a text's unescaped double quotes from its start, incrementally (the positions
    asked about only grow), to tell whether a position is inside a double-quoted string."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._counted_to = 0
        self._count = 0

    def inside_string(self, position: int) -> bool:
        """Whether an odd number of unescaped ``"`` come before ``position``."""
        self._count += len(_UNESCAPED_QUOTE.findall(self._text, self._counted_to, position))
        self._counted_to = position
        return self._count % 2 == 1


def _is_maskable_pair(text: str, pair: _Pair) -> bool:
    """Whether a pair's value is masked in a log line: quoted, or 4+ characters that are not
    a flag (``token: on Ray``, ``use_token=true`` say nothing secret)."""
    if pair.quoted:
        return True
    value = text[pair.start : pair.end].strip()
    return len(value) >= _PAIR_VALUE_LEN and not is_flag_value(value)


def _is_refusable_pair(text: str, pair: _Pair) -> bool:
    """Whether a pair's value is clearly a value, not prose (``Token: required``): 4+
    characters, not a flag, and after ``=``, in quotes, or shaped like a token."""
    value = text[pair.start : pair.end].strip()
    if len(value) < _PAIR_VALUE_LEN or is_flag_value(value):
        return False
    return pair.equals or pair.quoted or _is_token_shaped(value.split()[-1])


def _mask_pairs(text: str) -> str:
    pieces: list[str] = []
    position = 0
    for pair in _secret_pairs(text):
        if _is_maskable_pair(text, pair):
            pieces += [text[position : pair.start], MASK]
            position = pair.end
    if not pieces:
        return text
    pieces.append(text[position:])
    return "".join(pieces)


# --- URLs --------------------------------------------------------------------------------------

_SCHEME_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_QUERY_PARAMETER = re.compile(r"(^|[&;])([^=&;#]*)=([^&;#]*)")
_CHUNK = re.compile(r"\S+")  # a URL ends at a space
#: Schemes whose URL is a path after ``://``, where a ``@`` is part of a file name.
PATH_SCHEMES = frozenset(("sqlite", "lancedb", "file"))


def _userinfo(url: str, path_schemes: Collection[str]) -> tuple[str, str | None, str]:
    """``url`` as (what comes before the user information, the user information or ``None``,
    ``@`` and what follows it).

    Errs on the side of finding one: the last ``@`` ends the user information, so that a
    password with an unescaped ``/``, ``?``, ``#`` or ``@`` is still found; so is a
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


def _urls_with_userinfo(text: str) -> Iterator[tuple[re.Match[str], str]]:
    """Each whitespace-separated chunk of ``text`` that holds a URL with user information,
    with that user information (up to the chunk's last ``@``, so that a password holding
    ``@`` or ``/`` is found whole). An ``@`` after a path (``https://host/@alice``, an e-mail
    address in a query) is no user information: a ``/`` comes before any ``:``."""
    if "://" not in text or "@" not in text:
        return
    for chunk in _CHUNK.finditer(text):
        if "://" not in chunk[0] or "@" not in chunk[0]:
            continue
        _, userinfo, _ = _userinfo(chunk[0], PATH_SCHEMES)
        if userinfo is not None and "/" not in userinfo.partition(":")[0]:
            yield chunk, userinfo


def _holds_url_password(text: str) -> bool:
    """Whether a URL in ``text`` carries a password (``scheme://user:password@``, however long
    the password and whatever ``@`` or ``/`` it holds). A user alone is not one."""
    return any(userinfo.partition(":")[2] for _, userinfo in _urls_with_userinfo(text))


def _mask_urls(text: str) -> str:
    """``text`` with the user information of every URL in it masked (:func:`mask_url`)."""
    pieces: list[str] = []
    position = 0
    for chunk, _ in _urls_with_userinfo(text):
        pieces += [text[position : chunk.start()], mask_url(chunk[0])]
        position = chunk.end()
    if not pieces:
        return text
    pieces.append(text[position:])
    return "".join(pieces)


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
        any(shape.refused(value, lowered) for shape in _SHAPES)
        or _holds_url_password(value)
        or any(_is_refusable_pair(value, pair) for pair in _secret_pairs(value))
    )


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
    text = _SHAPES[0].mask(text, lowered)  # a private key first: its body is many lines
    text = _mask_urls(text)
    for shape in _SHAPES[1:]:
        text = shape.mask(text, lowered)
    return _mask_pairs(text)
