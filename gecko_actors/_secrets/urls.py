"""URLs that carry credentials: finding their user information and masking it for display.

:func:`mask_url` masks a URL's password (or a user alone, which may be a token) and the
values of secret-named query parameters; :func:`mask_urls` does it for every URL in a log
line, :func:`holds_url_password` and :func:`url_has_credentials` tell whether a URL carries
one. Finding the user information errs on the side of finding one, since a password may hold
an unescaped ``/``, ``?``, ``#`` or ``@``; only the :data:`PATH_SCHEMES` keep a ``@`` that is
part of a file name. Whether a URL holds a secret at all, credential-shaped or registered
parts included, is :func:`gecko_actors._redact.url_holds_secret`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from urllib.parse import unquote_plus

from gecko_actors._secrets.names import is_secret_name
from gecko_actors._secrets.shapes import MASK

__all__ = [
    "PATH_SCHEMES",
    "holds_url_password",
    "mask_url",
    "mask_urls",
    "url_has_credentials",
]

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


def url_has_credentials(url: str, *, path_schemes: Collection[str] = PATH_SCHEMES) -> bool:
    """Whether ``url`` carries a password (``user:password@``) or a query parameter named
    like a secret (``?token=...``). A user name alone (``redis://alice@host``) is not one.
    :func:`gecko_actors._redact.url_holds_secret` also looks for credential-shaped parts."""
    _, userinfo, after = _userinfo(url, path_schemes)
    if userinfo is not None and _password(userinfo):
        return True
    tail = after if userinfo is not None else url
    query = tail.partition("?")[2].partition("#")[0]
    names = [m[2] for m in _QUERY_PARAMETER.finditer(query)]
    return any(is_secret_name(unquote_plus(name)) for name in names)


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


def holds_url_password(text: str) -> bool:
    """Whether a URL in ``text`` carries a password (``scheme://user:password@``, however long
    the password and whatever ``@`` or ``/`` it holds). A user alone is not one."""
    return any(userinfo.partition(":")[2] for _, userinfo in _urls_with_userinfo(text))


def mask_urls(text: str) -> str:
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
