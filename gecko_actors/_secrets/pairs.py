"""Where the values of secret-named ``name=value`` pairs are in a text, to mask or refuse them.

:func:`secret_pairs` finds ``name=value``, ``name: value`` and ``"name": "value"`` (also in
a JSON-escaped string, and ``--password=...`` on a command line) whose name
:func:`gecko_actors._secrets.names.is_secret_name` calls secret; :func:`mask_pairs` masks
their values in a log line, :func:`is_refusable_pair` tells a value to refuse from prose
(``Token: required``). The finding is one left-to-right pass: it runs on every log line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from gecko_actors._secrets.names import FREE_TEXT_SECRET, NOT_SECRET, is_flag_value, name_kind
from gecko_actors._secrets.shapes import MASK, is_token_shaped

__all__ = ["Pair", "is_refusable_pair", "mask_pairs", "secret_pairs"]

_PAIR_VALUE_LEN = 4

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
class Pair:
    """Where the value of a secret-named ``name=value`` pair is in a text."""

    start: int
    end: int
    quoted: bool
    equals: bool  # name=value rather than name: value


def secret_pairs(text: str) -> Iterator[Pair]:
    """The values of ``name=value``, ``name: value``, ``"name": "value"`` pairs in ``text``
    whose name is secret (:func:`is_secret_name`), left to right."""
    position = 0
    quotes = _QuoteCounter(text)
    while head := _PAIR_HEAD.search(text, position):
        position = head.end()
        kind = name_kind(head["name"])
        if kind == NOT_SECRET:
            continue  # its value may hold pairs of its own: go on from there
        quote = '\\"' if text.startswith('\\"', position) else text[position : position + 1]
        if quote == '"' and quotes.inside_string(position):
            # This quote closes the string the name is in ({"event": "token:", ...} in a JSON
            # line): what follows is the line's structure, not a value.
            continue
        if quote in _QUOTED_VALUES:
            value = _QUOTED_VALUES[quote].match(text, position + len(quote))
        else:
            value = (_FREE_TEXT_VALUE if kind == FREE_TEXT_SECRET else _BARE_VALUE).match(
                text, position
            )
        if value is None or value.end() == value.start():
            continue
        yield Pair(value.start(), value.end(), quote in _QUOTED_VALUES, "=" in head[0])
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


def _is_maskable_pair(text: str, pair: Pair) -> bool:
    """Whether a pair's value is masked in a log line: quoted, or 4+ characters that are not
    a flag (``token: on Ray``, ``use_token=true`` say nothing secret)."""
    if pair.quoted:
        return True
    value = text[pair.start : pair.end].strip()
    return len(value) >= _PAIR_VALUE_LEN and not is_flag_value(value)


def is_refusable_pair(text: str, pair: Pair) -> bool:
    """Whether a pair's value is clearly a value, not prose (``Token: required``): 4+
    characters, not a flag, and after ``=``, in quotes, or shaped like a token."""
    value = text[pair.start : pair.end].strip()
    if len(value) < _PAIR_VALUE_LEN or is_flag_value(value):
        return False
    return pair.equals or pair.quoted or is_token_shaped(value.split()[-1])


def mask_pairs(text: str) -> str:
    """``text`` with the values of its secret-named pairs masked (see :func:`secret_pairs`)."""
    pieces: list[str] = []
    position = 0
    for pair in secret_pairs(text):
        if _is_maskable_pair(text, pair):
            pieces += [text[position : pair.start], MASK]
            position = pair.end
    if not pieces:
        return text
    pieces.append(text[position:])
    return "".join(pieces)
