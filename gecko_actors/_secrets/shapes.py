"""What a credential looks like by its value, and :data:`MASK`, what replaces one.

:data:`SHAPES` lists the credential shapes (a PEM private key, ``Bearer``/``Basic`` tokens,
provider keys, JWTs...). It is one list so that what :func:`gecko_actors._redact.redact`
masks and what :func:`gecko_actors._redact.is_secret_value` refuses cannot drift apart: each
:class:`Shape` masks widely and refuses only a random-looking key. :func:`is_token_shaped`
tells a token from a word, here and for the values of ``name=value`` pairs.

Every pattern runs in time linear in the text (bounded or possessive repeats, and no match
that can start inside a run it would scan): redaction runs on every log line, and a line can
be megabytes of attacker-chosen text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["MASK", "SHAPES", "Shape", "is_token_shaped"]

MASK = "***"

_KEY_TAIL_LEN = 20
_KEY_SEGMENT_LEN = 16
_KEY_LONG_TAIL_LEN = 32
_TOKEN_LEN = 8
_TOKEN_CHARACTERS = frozenset("._~+/=-")


def _is_random_key_tail(tail: str) -> bool:
    """Whether the part after ``sk-`` looks random (a key), not words (``rk-2024-nightly``):
    20+ characters mixing letters and digits, with a 16-character run or 32+ in all."""
    if len(tail) < _KEY_TAIL_LEN:
        return False
    if not (any(c.isdigit() for c in tail) and any(c.isalpha() for c in tail)):
        return False
    longest = max(len(segment) for segment in re.split(r"[-_]", tail))
    return longest >= _KEY_SEGMENT_LEN or len(tail) >= _KEY_LONG_TAIL_LEN


def is_token_shaped(text: str) -> bool:
    """Whether ``text`` looks like a token rather than a word (``Bearer authentication``):
    8+ characters, no space, and a digit, a token character (``._~+/=-``) or a capital
    after the first letter."""
    if len(text) < _TOKEN_LEN or any(c.isspace() for c in text):
        return False
    return any(c.isdigit() or c in _TOKEN_CHARACTERS for c in text) or any(
        c.isupper() for c in text[1:]
    )


@dataclass(frozen=True)
class Shape:
    """A credential shape, found the same way by :func:`gecko_actors._redact.redact` and
    :func:`gecko_actors._redact.is_secret_value`.

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

SHAPES: tuple[Shape, ...] = (
    # A PEM private key, masked through its END line (literal or JSON-escaped newlines).
    Shape(
        re.compile(rf"-----BEGIN {_PRIVATE_KEY_LABEL}"),
        ("-----begin ",),
        until=re.compile(rf"-----END {_PRIVATE_KEY_LABEL}"),
    ),
    # Schemes of the Authorization header: Bearer <token>, Basic <base64>.
    Shape(
        re.compile(r"(?i)(?P<keep>\bbearer\s++)(?P<tail>[A-Za-z0-9._~+/\-]{8,}+=*+)"),
        ("bearer",),
        valid=is_token_shaped,
    ),
    Shape(
        re.compile(r"(?i)(?P<keep>\bbasic\s++)(?P<tail>[A-Za-z0-9+/]{8,}+=*+)"),
        ("basic",),
        valid=is_token_shaped,
    ),
    # OpenAI/Anthropic-style keys: sk-..., sk-proj-..., sk-ant-api03-..., rk-..., pk-...
    Shape(
        re.compile(rf"{_START}(?:sk|pk|rk)-(?P<tail>[A-Za-z0-9_\-]{{8,}}+)"),
        ("sk-", "pk-", "rk-"),
        refuse=_is_random_key_tail,
    ),
    Shape(re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), ("akia", "asia")),  # AWS key ids
    Shape(  # Amazon Bedrock API keys, long-term and short-term
        re.compile(rf"{_START}(?:ABSK|bedrock-api-key-)[A-Za-z0-9+/]{{20,}}+=*+"),
        ("absk", "bedrock-api-key-"),
    ),
    Shape(  # JWTs: header.payload.signature
        re.compile(rf"{_START}eyJ[A-Za-z0-9_\-]{{8,}}+\.[A-Za-z0-9_\-]{{8,}}+\.[A-Za-z0-9_\-]*+"),
        ("eyj",),
    ),
    Shape(  # GitHub and GitLab tokens
        re.compile(
            rf"{_START}(?:gh[pousr]_[A-Za-z0-9]{{20,}}+|github_pat_[A-Za-z0-9_]{{20,}}+"
            r"|glpat-[A-Za-z0-9_\-]{20,}+)"
        ),
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "glpat-"),
    ),
    Shape(re.compile(rf"{_START}xox[abeoprs]-[A-Za-z0-9\-]{{10,}}+"), ("xox",)),  # Slack
    Shape(re.compile(rf"{_START}AIza[0-9A-Za-z_\-]{{30,}}+"), ("aiza",)),  # Google API keys
    Shape(re.compile(rf"{_START}hf_[A-Za-z0-9]{{30,}}+"), ("hf_",)),  # Hugging Face
    Shape(  # Stripe secret and restricted keys
        re.compile(rf"{_START}(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{{16,}}+"),
        ("_live_", "_test_"),
    ),
    Shape(  # Groq, xAI
        re.compile(rf"{_START}(?:gsk_|xai-)[A-Za-z0-9]{{20,}}+"),
        ("gsk_", "xai-"),
    ),
)
