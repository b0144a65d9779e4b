"""Knowledge: documents, the readers that make them from files, and the splitter that chunks
them for a vector store.

Pure Python, no Ray: ingestion runs :func:`read_document` and :meth:`RecursiveSplitter.split`
inside Ray tasks, so everything here pickles and is cheap to build.
"""

from gecko_actors.knowledge.documents import Document
from gecko_actors.knowledge.readers import (
    DEFAULT_MAX_FILE_BYTES,
    Reader,
    expand_paths,
    known_extensions,
    read_document,
    read_documents,
    register_reader,
)
from gecko_actors.knowledge.splitter import RecursiveSplitter

__all__ = [
    # documents
    "Document",
    # readers
    "DEFAULT_MAX_FILE_BYTES",
    "Reader",
    "expand_paths",
    "known_extensions",
    "read_document",
    "read_documents",
    "register_reader",
    # splitting
    "RecursiveSplitter",
]
