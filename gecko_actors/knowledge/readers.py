"""Readers: turn files under allowed roots into :class:`Document` objects.

Every path is resolved (``..`` and symlinks included) before anything is opened, and must lie
inside one of the roots the caller allowed; anything else is refused with a :class:`UserError`.
A reader is chosen by the file's extension; :func:`register_reader` adds more.

Every read is capped (``max_bytes``, 50 MiB by default): the size is checked on the opened
file before anything is loaded, and the read itself stops one byte past the cap, so a file
that grows while it is read is refused too. Only regular files are read: a FIFO, a device such
as ``/dev/zero`` or a socket is refused without blocking on it.

A reader is a function of the file's bytes that returns its text, or ``(text, metadata)``.
Readers are pure and module-level, so :func:`read_document` pickles into a Ray task; note that
:func:`register_reader` changes one process only, so a Ray task either imports the module that
registers, or receives its readers through ``readers=``.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from gecko_actors.core.files import read_capped
from gecko_actors.exceptions import ConfigurationError, GeckoError, UserError
from gecko_actors.knowledge.documents import Document
from gecko_actors.logging import get_logger

__all__ = [
    "DEFAULT_MAX_FILE_BYTES",
    "Reader",
    "expand_paths",
    "known_extensions",
    "read_document",
    "read_documents",
    "register_reader",
    "resolve_roots",
    # the built-in readers, for reuse in custom ones
    "read_html",
    "read_json",
    "read_markdown",
    "read_pdf",
    "read_text",
]

ReaderResult = str | tuple[str, dict[str, Any]]
Reader = Callable[[bytes], ReaderResult]
"""A function of a file's bytes returning its text, or ``(text, extra_metadata)``."""
PathLike = str | os.PathLike[str]
Roots = PathLike | Iterable[PathLike]

_log = get_logger("gecko_actors.knowledge")
_GLOB_CHARS = re.compile(r"[*?\[]")
PDF_HINT = 'pip install "gecko-actors[pdf]"'

DEFAULT_MAX_FILE_BYTES = 50 * 1024 * 1024
"""The largest file a reader loads unless ``max_bytes`` says otherwise (50 MiB)."""
_CAP_HINT = (
    "if the file is meant to be read, raise the cap: max_bytes= on read_document and "
    "read_documents, max_file_bytes= on ingest; otherwise split the file or leave it out"
)


# --- roots and paths ----------------------------------------------------------------------


def resolve_roots(roots: Roots) -> tuple[Path, ...]:
    """The allowed roots, resolved; a UserError when none is given or one does not exist."""
    items = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
    if not items:
        raise UserError(
            "no roots given, so no file may be read",
            hint="pass roots=[folder, ...] naming the folders documents may be read from",
        )
    resolved = []
    for item in items:
        root = Path(item).expanduser().resolve()
        if not root.exists():
            raise UserError(f"root {str(item)!r} does not exist", hint="create it or fix roots=")
        resolved.append(root)
    return tuple(resolved)


def _locate(path: PathLike, roots: tuple[Path, ...]) -> tuple[Path, Path]:
    """``path`` resolved, and the innermost root holding it; a UserError when it escapes."""
    resolved = Path(path).expanduser().resolve()
    holders = [root for root in roots if resolved.is_relative_to(root)]
    if not holders:
        raise UserError(
            f"{str(path)!r} resolves to {str(resolved)!r}, which is outside the allowed roots "
            f"{[str(root) for root in roots]}",
            hint="move the file under a root or add its folder to roots= "
            "(paths are checked after resolving '..' and symlinks)",
            path=str(path),
            roots=[str(root) for root in roots],
        )
    # The innermost root wins, so nested roots give the same id whatever their order.
    return resolved, max(holders, key=lambda root: len(root.parts))


def _relative_id(resolved: Path, root: Path) -> str:
    relative = resolved.relative_to(root).as_posix()
    return resolved.name if relative == "." else relative  # a root may be the file itself


# --- the registry -------------------------------------------------------------------------

_READERS: dict[str, Reader] = {}


def _normalise_extension(extension: str) -> str:
    if not isinstance(extension, str) or not re.fullmatch(r"\.[A-Za-z0-9_.+-]+", extension):
        raise UserError(
            f"extension {extension!r} is not of the form '.ext'",
            hint='write the extension with its leading dot, e.g. ".md"',
        )
    return extension.lower()


def register_reader(extension: str, reader: Reader) -> None:
    """Read files ending in ``extension`` (``".csv"``, case-insensitive) with ``reader``.

    A registration replaces any earlier reader for the extension, built-in ones included.
    """
    key = _normalise_extension(extension)
    if not callable(reader):
        raise UserError(
            f"the reader for {key!r} is not callable: {reader!r}",
            hint="pass a function of the file's bytes returning its text or (text, metadata)",
        )
    _READERS[key] = reader


def _table(readers: Mapping[str, Reader] | None) -> dict[str, Reader]:
    extra = {_normalise_extension(ext): fn for ext, fn in (readers or {}).items()}
    return {**_READERS, **extra}


def known_extensions(readers: Mapping[str, Reader] | None = None) -> list[str]:
    """The extensions a reader exists for (registered, plus ``readers``), sorted."""
    return sorted(_table(readers))


# --- reading ------------------------------------------------------------------------------


def read_document(
    path: PathLike,
    *,
    roots: Roots,
    readers: Mapping[str, Reader] | None = None,
    max_bytes: int | None = None,
) -> Document:
    """Read one file under ``roots`` into a :class:`Document`.

    Args:
        path: the file; a relative path is relative to the current directory.
        roots: the folders (or files) that may be read; ``path`` must resolve inside one.
        readers: extension → reader, used on top of the registered readers.
        max_bytes: the largest file that is read, in bytes (default
            :data:`DEFAULT_MAX_FILE_BYTES`, 50 MiB); a larger one is refused before it is
            loaded.

    Returns:
        A Document whose id is the path relative to its root, with metadata ``source`` (the
        same relative path), ``type`` (the extension), ``content_hash`` (sha256 of the bytes)
        and whatever the reader adds.

    Raises:
        UserError: the path is outside the roots, missing, a folder or another file that is
            not a regular one, larger than ``max_bytes``, of an unknown extension, or its
            content is not valid for its type.
        ConfigurationError: a pdf was given and pypdf is not installed.
    """
    cap = _cap(max_bytes)
    resolved, root = _locate(path, resolve_roots(roots))
    reader = _reader_for(path, resolved, _table(readers))
    data = _read_bytes(path, resolved, cap)
    text, extra = _run_reader(reader, data, path)
    doc_id = _relative_id(resolved, root)
    metadata = {
        **extra,
        "source": doc_id,
        "type": resolved.suffix.lower().lstrip("."),
        "content_hash": hashlib.sha256(data).hexdigest(),
    }
    return Document(id=doc_id, text=text, metadata=metadata)


def read_documents(
    patterns: PathLike | Iterable[PathLike] | None = None,
    *,
    roots: Roots,
    readers: Mapping[str, Reader] | None = None,
    max_bytes: int | None = None,
) -> list[Document]:
    """Read every file :func:`expand_paths` finds, in its (sorted) order; ``max_bytes``
    caps each file as in :func:`read_document`."""
    cap = _cap(max_bytes)  # a bad cap is refused before any file is looked at
    paths = expand_paths(patterns, roots=roots, extensions=known_extensions(readers))
    return [read_document(path, roots=roots, readers=readers, max_bytes=cap) for path in paths]


def _reader_for(path: PathLike, resolved: Path, table: dict[str, Reader]) -> Reader:
    extension = resolved.suffix.lower()
    reader = table.get(extension)
    if reader is None:
        raise UserError(
            f"no reader for {str(path)!r}: extension {extension or '(none)'!r} is not one of "
            f"{sorted(table)}",
            hint='register one with register_reader(".ext", fn), or pass readers=',
            path=str(path),
            extension=extension,
        )
    return reader


def _cap(max_bytes: int | None) -> int:
    """The cap to apply: ``max_bytes``, or the default; a UserError unless a positive int."""
    if max_bytes is None:
        return DEFAULT_MAX_FILE_BYTES
    if type(max_bytes) is not int or max_bytes < 1:  # bool is an int: refuse it by type
        raise UserError(
            f"max_bytes must be a positive int (a size in bytes), got {max_bytes!r}",
            hint=f"e.g. max_bytes=200 * 1024 * 1024; the default is {DEFAULT_MAX_FILE_BYTES}",
        )
    return max_bytes


def _read_bytes(path: PathLike, resolved: Path, cap: int) -> bytes:
    if resolved.is_dir():
        raise UserError(
            f"{str(path)!r} is a folder, not a file",
            hint="use read_documents() or expand_paths() to read the files in a folder",
            path=str(path),
        )
    return read_capped(resolved, cap, label=repr(str(path)), hint=_CAP_HINT)


def _run_reader(reader: Reader, data: bytes, path: PathLike) -> tuple[str, dict[str, Any]]:
    try:
        result = reader(data)
    except GeckoError:
        raise  # already says what to do (e.g. install pypdf)
    except Exception as exc:  # a malformed file: name it rather than surface a bare parser error
        raise UserError(
            f"could not read {str(path)!r}: {exc}",
            hint="fix or convert the file (text must be UTF-8), or register a reader for it",
            path=str(path),
        ) from exc
    if isinstance(result, str):
        return result, {}
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], str):
        return result[0], dict(result[1])
    raise UserError(
        f"the reader for {str(path)!r} returned {type(result).__name__}",
        hint="a reader returns the text, or a (text, metadata) tuple",
        path=str(path),
    )


# --- expanding patterns into files --------------------------------------------------------


def expand_paths(
    patterns: PathLike | Iterable[PathLike] | None = None,
    *,
    roots: Roots,
    extensions: Iterable[str] | None = None,
) -> list[Path]:
    """The files named by ``patterns``, resolved, deduplicated and sorted.

    Args:
        patterns: files, folders (searched recursively) and glob patterns (``**`` recurses);
            all of ``roots`` when omitted. Relative patterns are relative to the current
            directory.
        roots: the allowed roots. A named file or folder, or a glob's fixed prefix, outside
            them is a UserError.
        extensions: which files a folder or glob contributes (default: those with a reader).
            A file named explicitly is always kept, so reading it reports an unknown type.

    Folders are searched without following symlinked sub-folders and without hidden
    (dot) files and folders; a symlinked file found in a search that resolves outside the
    roots is skipped with a warning.
    """
    allowed = resolve_roots(roots)
    chosen = known_extensions() if extensions is None else extensions
    wanted = {_normalise_extension(ext) for ext in chosen}
    items = list(allowed) if patterns is None else _as_list(patterns)
    found: set[Path] = set()
    for item in items:
        found.update(_expand_one(os.fspath(item), allowed, wanted))
    return sorted(found, key=lambda path: path.as_posix())


def _as_list(patterns: PathLike | Iterable[PathLike]) -> list[PathLike]:
    return [patterns] if isinstance(patterns, (str, os.PathLike)) else list(patterns)


def _expand_one(item: str, allowed: tuple[Path, ...], wanted: set[str]) -> list[Path]:
    item = os.path.expanduser(item)
    if not _GLOB_CHARS.search(item):
        resolved, _ = _locate(item, allowed)
        if resolved.is_dir():
            return _walk(resolved, allowed, wanted)
        if not resolved.is_file():
            raise UserError(f"no file or folder at {item!r}", path=item)
        return [resolved]
    _locate(_glob_prefix(item), allowed)  # a glob rooted outside the roots is refused outright
    files: list[Path] = []
    for match in sorted(glob.glob(item, recursive=True)):
        path = _inside_or_none(match, allowed)
        if path is not None and path.is_dir():
            files.extend(_walk(path, allowed, wanted))
        elif path is not None and path.is_file() and path.suffix.lower() in wanted:
            files.append(path)
    return files


def _glob_prefix(pattern: str) -> str:
    """The fixed folder a glob starts from: ``docs/**/*.md`` → ``docs``."""
    fixed = []
    for part in Path(pattern).parts:
        if _GLOB_CHARS.search(part):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else "."


def _walk(folder: Path, allowed: tuple[Path, ...], wanted: set[str]) -> list[Path]:
    files = []
    # followlinks=False: a symlinked folder could lead anywhere, or loop.
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(name for name in dirnames if not name.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or Path(name).suffix.lower() not in wanted:
                continue
            path = _inside_or_none(os.path.join(dirpath, name), allowed)
            if path is not None and path.is_file():
                files.append(path)
    return files


def _inside_or_none(path: str, allowed: tuple[Path, ...]) -> Path | None:
    try:
        return _locate(path, allowed)[0]
    except UserError:
        _log.warning("skipped a path that resolves outside the roots", path=path)
        return None


# --- built-in readers ---------------------------------------------------------------------


def _decode(data: bytes) -> str:
    # utf-8-sig drops a byte-order mark; one newline convention keeps offsets comparable.
    return data.decode("utf-8-sig").replace("\r\n", "\n").replace("\r", "\n")


def read_text(data: bytes) -> str:
    """Plain text (``.txt``, ``.py``): decoded as UTF-8, newlines normalised to ``\\n``."""
    return _decode(data)


_ATX_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


def read_markdown(data: bytes) -> ReaderResult:
    """Markdown, kept as written; the first heading becomes ``title``."""
    text = _decode(data)
    heading = _ATX_HEADING.search(text)
    return (text, {"title": heading.group(1)}) if heading else text


def read_json(data: bytes) -> str:
    """JSON, re-indented so that a splitter finds line breaks to split on."""
    return json.dumps(json.loads(_decode(data)), indent=2, ensure_ascii=False)


class _VisibleText(HTMLParser):
    """Collects the text a browser shows: no script, style or head content; the title apart."""

    HIDDEN = frozenset({"script", "style", "noscript", "template", "head", "title"})
    LINE = frozenset({"br", "li", "tr", "dt", "dd"})  # a new line where one starts
    CELL = frozenset({"td", "th"})
    BLOCK = frozenset(
        {"p", "div", "section", "article", "header", "footer", "nav", "aside", "main",
         "blockquote", "pre", "table", "ul", "ol", "dl", "hr", "figure", "figcaption", "form",
         "h1", "h2", "h3", "h4", "h5", "h6"}
    )  # fmt: skip

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self._hidden = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_title = self._in_title or tag == "title"
        if tag in self.HIDDEN:
            self._hidden += 1
        self._break(tag)
        if tag in self.LINE:
            self.parts.append("\n")
        elif tag in self.CELL:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if tag in self.HIDDEN and self._hidden:
            self._hidden -= 1
        self._break(tag)

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title.append(data)
        elif not self._hidden:
            self.parts.append(data)

    def _break(self, tag: str) -> None:
        # Blocks are set apart by blank lines on both sides, so the splitter's "\n\n" finds
        # them; _tidy squeezes the runs this leaves.
        if tag in self.BLOCK:
            self.parts.append("\n\n")


def _tidy(text: str) -> str:
    lines = [" ".join(line.split()) for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def read_html(data: bytes) -> ReaderResult:
    """The visible text of an HTML page (no script or style), with ``title`` when present."""
    parser = _VisibleText()
    parser.feed(_decode(data))
    parser.close()
    text = _tidy("".join(parser.parts))
    title = " ".join("".join(parser.title).split())
    return (text, {"title": title}) if title else text


def _import_pypdf() -> Any:
    try:
        import pypdf
    except ImportError:
        raise ConfigurationError(
            "reading .pdf files needs the optional package pypdf, which is not installed",
            hint=PDF_HINT,
        ) from None
    return pypdf


def read_pdf(data: bytes) -> ReaderResult:
    """A PDF's text, pages separated by a blank line; ``pages`` and ``page_starts`` (the
    offset of each page in the text) let the splitter give each chunk its page number."""
    pypdf = _import_pypdf()
    reader = pypdf.PdfReader(io.BytesIO(data))
    pages = [(page.extract_text() or "").strip() for page in reader.pages]
    starts, offset = [], 0
    for page in pages:
        starts.append(offset)
        offset += len(page) + 2
    metadata: dict[str, Any] = {"pages": len(pages), "page_starts": starts}
    title = _pdf_title(reader)
    if title:
        metadata["title"] = title
    return "\n\n".join(pages), metadata


def _pdf_title(reader: Any) -> str | None:
    try:
        info = reader.metadata
        return str(info.title).strip() if info is not None and info.title else None
    except Exception:  # a damaged info dictionary should not cost the text
        return None


for _extension, _reader in {
    ".txt": read_text,
    ".py": read_text,
    ".md": read_markdown,
    ".markdown": read_markdown,
    ".json": read_json,
    ".html": read_html,
    ".htm": read_html,
    ".pdf": read_pdf,
}.items():
    register_reader(_extension, _reader)
