"""RecursiveSplitter: cut documents into overlapping chunks of bounded size.

The classic recursive algorithm: a span that is too long is split on the coarsest separator it
contains (paragraphs, then lines, sentences, words), pieces that are still too long are split on
the next separator, and a piece with no separator left is cut at the longest prefix that fits.
The pieces are then merged back, in order, into chunks as long as the limit allows, each chunk
starting with up to ``overlap`` of the previous chunk's tail.

Every chunk is an exact slice of the text (stripped of surrounding whitespace), so its start
offset is known, and its size is measured on the very text emitted: no chunk is ever longer
than ``chunk_size`` characters or tokens.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gecko_actors.exceptions import UserError
from gecko_actors.knowledge.documents import Document

__all__ = ["RecursiveSplitter"]

Span = tuple[int, int]
Measure = Callable[[str], int]
DEFAULT_SEPARATORS = ("\n\n", "\n", ". ", " ", "")


@dataclass(frozen=True)
class RecursiveSplitter:
    """Splits documents into chunks of at most ``chunk_size`` characters or tokens.

    Args:
        chunk_size: the largest chunk, in characters (``by="chars"``) or tokens.
        overlap: the most of a chunk's tail (cut at a separator, so no word is halved) that
            starts the next chunk, so that text cut by a boundary keeps some context.
        by: ``"chars"``, or ``"tokens"`` counted with tiktoken (offline, the same encoding
            loader as :class:`~gecko_actors.TokenMemory`).
        separators: split points from coarsest to finest; ``""`` means "anywhere". A piece
            longer than ``chunk_size`` with no separator left is cut anywhere too.
        model_name: picks the tiktoken encoding when ``by="tokens"`` (``cl100k_base`` if
            unknown).

    Chunks are Documents with id ``"<document id>#<n>"`` and the parent's metadata plus
    ``document_id``, ``chunk_index`` and ``start_index`` (the chunk's offset in the parent
    text); a parent's ``page_starts`` (a pdf's) becomes each chunk's ``page`` (1-based). The
    same input always gives the same chunks. The splitter holds only its settings, so it is
    cheap to build and to pickle into a Ray task.

    Example:
        >>> splitter = RecursiveSplitter(chunk_size=24, overlap=10)
        >>> splitter.split_text("one two three four five six seven eight nine ten")
        ['one two three four five', 'four five six seven', 'six seven eight nine ten']
    """

    chunk_size: int = 1000
    overlap: int = 200
    by: Literal["chars", "tokens"] = "chars"
    separators: Sequence[str] = DEFAULT_SEPARATORS
    model_name: str = "gpt-4o-mini"

    def __post_init__(self) -> None:
        _check_int("chunk_size", self.chunk_size, minimum=1)
        _check_int("overlap", self.overlap, minimum=0)
        if self.overlap >= self.chunk_size:
            raise UserError(
                f"overlap ({self.overlap}) must be smaller than chunk_size ({self.chunk_size})",
                hint="a chunk must hold something new: lower overlap, e.g. chunk_size // 5",
            )
        if self.by not in ("chars", "tokens"):
            raise UserError(f'by must be "chars" or "tokens", got {self.by!r}')
        object.__setattr__(self, "separators", _check_separators(self.separators))
        if not isinstance(self.model_name, str) or not self.model_name:
            raise UserError(f"model_name must be a non-empty string, got {self.model_name!r}")

    def split(self, document: Document) -> list[Document]:
        """The chunks of ``document``, in order; none for an empty or blank text."""
        if not isinstance(document, Document):
            raise UserError(
                f"split() takes a Document, got {type(document).__name__}",
                hint="use split_text() for a plain string",
            )
        return [
            _chunk(document, index, start, text)
            for index, (start, text) in enumerate(self._chunks(document.text))
        ]

    def split_text(self, text: str) -> list[str]:
        """The chunks of a plain string."""
        if not isinstance(text, str):
            raise UserError(f"split_text() takes a str, got {type(text).__name__}")
        return [chunk for _, chunk in self._chunks(text)]

    def _chunks(self, text: str) -> list[tuple[int, str]]:
        separators = tuple(self.separators)
        cutter = _Cutter(text, self._measure(), self.chunk_size, self.overlap, separators)
        atoms = cutter.atoms((0, len(text)), separators)
        return [chunk for span in cutter.merge(atoms) if (chunk := _stripped(text, span))[1]]

    def _measure(self) -> Measure:
        if self.by == "chars":
            return len
        # The loader TokenMemory uses: offline files, one cached encoding per model.
        from gecko_actors.core.memory import _encoding

        encoding = _encoding(self.model_name)
        if encoding is None:  # tiktoken unusable: bytes bound tokens from above, so still safe
            return lambda text: len(text.encode("utf-8"))
        return lambda text: len(encoding.encode(text, disallowed_special=()))


class _Cutter:
    """One text being split: atoms (pieces that fit) and their merging into chunks."""

    def __init__(
        self, text: str, measure: Measure, size: int, overlap: int, separators: tuple[str, ...]
    ) -> None:
        self.text = text
        self.measure = measure
        self.size = size
        self.overlap = overlap
        self.separators = separators

    def length(self, start: int, end: int) -> int:
        # Measured stripped, as emitted: surrounding whitespace never counts against the limit.
        return self.measure(self.text[start:end].strip())

    def fits(self, start: int, end: int) -> bool:
        return self.length(start, end) <= self.size

    def atoms(self, span: Span, separators: tuple[str, ...]) -> list[Span]:
        """Contiguous spans covering ``span``, each fitting on its own."""
        if self.fits(*span):
            return [span]
        for index, separator in enumerate(separators):
            if separator == "":
                break
            if self.text.find(separator, *span) != -1:
                finer = separators[index + 1 :]
                return [atom for piece in self._split_on(separator, span)
                        for atom in self.atoms(piece, finer)]  # fmt: skip
        return self._hard_cut(span)

    def _split_on(self, separator: str, span: Span) -> list[Span]:
        """Pieces ending just after each occurrence of ``separator`` (kept, so that the pieces
        still tile the text exactly)."""
        start, end = span
        pieces = []
        found = self.text.find(separator, start, end)
        while found != -1:
            cut = found + len(separator)
            pieces.append((start, cut))
            start = cut
            found = self.text.find(separator, start, end)
        if start < end:
            pieces.append((start, end))
        return pieces

    def _hard_cut(self, span: Span) -> list[Span]:
        start, end = span
        pieces = []
        while start < end:
            cut = self._longest_fit(start, end)
            pieces.append((start, cut))
            start = cut
        return pieces

    def _longest_fit(self, start: int, end: int) -> int:
        """The furthest ``cut`` with ``text[start:cut]`` fitting: gallop, then bisect, so the
        cost follows the chunk's length rather than the whole remaining text."""
        if self.fits(start, end):
            return end
        low, step = start, self.size
        high = min(start + step, end)
        while self.fits(start, high):
            low, step = high, step * 2
            high = min(start + step, end)
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if self.fits(start, middle) else (low, middle)
        if low == start:
            raise UserError(
                f"chunk_size={self.size} is smaller than the single character "
                f"{self.text[start]!r} at offset {start}",
                hint="use a larger chunk_size",
            )
        return low

    def merge(self, atoms: list[Span]) -> list[Span]:
        """Consecutive atoms joined into chunks that fit, each after the first starting with
        up to ``overlap`` of the previous chunk's tail."""
        chunks: list[Span] = []
        starts = [atom[0] for atom in atoms]
        start, stop = 0, 0
        while stop < len(atoms):
            stop = self._extend(atoms, start, stop)
            chunks.append((start, atoms[stop - 1][1]))
            if stop < len(atoms):
                start = self._overlap_start(starts, start, atoms[stop])
        return chunks

    def _extend(self, atoms: list[Span], start: int, stop: int) -> int:
        """Past the last atom that fits in a chunk from ``start``; atom ``stop`` always fits
        (alone, or after an overlap chosen to leave room for it)."""
        stop += 1
        while stop < len(atoms) and self.fits(start, atoms[stop][1]):
            stop += 1
        return stop

    def _overlap_start(self, starts: list[int], start: int, new: Span) -> int:
        """Where the chunk holding atom ``new`` starts: the earliest boundary (after a
        separator, or between atoms) whose tail up to ``new`` is within ``overlap`` and which
        leaves room for ``new``. Boundaries inside atoms count, so a long last sentence still
        lends its last words rather than nothing."""
        bounds = self._boundaries(starts, start, new[0])
        # Bisect (the tail grows as the boundary moves back); ``high`` always carries a tail
        # within overlap, ``len(bounds)`` standing for no overlap at all.
        low, high = -1, len(bounds)
        while high - low > 1:
            middle = (low + high) // 2
            if self.length(bounds[middle], new[0]) <= self.overlap:
                high = middle
            else:
                low = middle
        for position in bounds[high:]:
            if self.fits(position, new[1]):
                return position
        return new[0]

    def _boundaries(self, starts: list[int], start: int, end: int) -> list[int]:
        """Every boundary strictly between ``start`` and ``end``, sorted."""
        found = set(starts[bisect.bisect_right(starts, start) : bisect.bisect_left(starts, end)])
        for separator in self.separators:
            if not separator:
                continue
            index = self.text.find(separator, start, end)
            while index != -1:
                found.add(index + len(separator))
                index = self.text.find(separator, index + 1, end)
        return sorted(position for position in found if start < position < end)


def _stripped(text: str, span: Span) -> tuple[int, str]:
    """The chunk's text without surrounding whitespace, and the offset where it starts."""
    raw = text[span[0] : span[1]]
    body = raw.lstrip()
    return span[0] + len(raw) - len(body), body.rstrip()


def _chunk(parent: Document, index: int, start: int, text: str) -> Document:
    metadata: dict[str, Any] = dict(parent.metadata)
    page_starts = metadata.pop("page_starts", None)  # a list per page: too big for each chunk
    if isinstance(page_starts, list) and page_starts:
        metadata["page"] = bisect.bisect_right(page_starts, start)
    metadata.update(document_id=parent.id, chunk_index=index, start_index=start)
    return Document(id=f"{parent.id}#{index}", text=text, metadata=metadata)


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(
            f"{name} must be an integer >= {minimum}, got {value!r}",
            hint="RecursiveSplitter(chunk_size=1000, overlap=200) is a common start",
        )


def _check_separators(separators: Any) -> tuple[str, ...]:
    # A lone string would be taken as a sequence of one-character separators: refuse it.
    items = separators if isinstance(separators, (list, tuple)) else None
    if items is None or not all(isinstance(item, str) for item in items):
        raise UserError(
            f"separators must be a list or tuple of strings, got {separators!r}",
            hint=f"e.g. separators={DEFAULT_SEPARATORS!r}",
        )
    return tuple(items)
