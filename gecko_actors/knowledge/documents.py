"""Document: a piece of text with a stable id and JSON-able metadata.

A reader makes one :class:`Document` per file; a splitter makes one per chunk. Documents are
plain frozen dataclasses, so they pickle cheaply into and out of Ray tasks, and
:meth:`Document.to_dict` gives the JSON form a vector store keeps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gecko_actors.exceptions import UserError

__all__ = ["Document"]


@dataclass(frozen=True)
class Document:
    """A text with a stable id and metadata.

    Attributes:
        id: stable across re-ingestion. A file's id is its path relative to the allowed root
            that holds it (``"guide/install.md"``); a chunk's is ``"<document id>#<n>"``.
        text: the text.
        metadata: JSON-able values. Readers set ``source`` (the relative path), ``type`` (the
            extension without its dot) and ``content_hash`` (sha256 of the file's bytes, so
            ingestion can skip unchanged files), plus what the format offers (``title`` for
            html and markdown; ``pages`` and ``page_starts`` for pdf: the text offset at which
            each page begins, turned into a ``page`` number per chunk by the splitter).
    """

    id: str
    text: str
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise UserError(
                f"Document id must be a non-empty string, got {self.id!r}",
                hint="give each document a stable id, such as its path relative to a root",
            )
        if not isinstance(self.text, str):
            raise UserError(
                f"Document {self.id!r} text must be a str, got {type(self.text).__name__}",
                hint="decode bytes before building a Document",
            )
        if not isinstance(self.metadata, Mapping):
            raise UserError(
                f"Document {self.id!r} metadata must be a mapping, "
                f"got {type(self.metadata).__name__}",
            )
        # A private copy: the caller's dict may change later, and frozen should mean frozen.
        object.__setattr__(self, "metadata", dict(self.metadata))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``{"id": ..., "text": ..., "metadata": {...}}``."""
        return {"id": self.id, "text": self.text, "metadata": dict(self.metadata)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Document:
        """Rebuild a Document from :meth:`to_dict`'s form."""
        missing = sorted({"id", "text"} - data.keys())
        if missing:
            raise UserError(
                f"a Document record lacks {missing}",
                hint="pass a dict made by Document.to_dict()",
            )
        return cls(id=data["id"], text=data["text"], metadata=data.get("metadata") or {})
