"""Reading a file someone else chose, with a size cap: documents for ingestion, a run's input.

The cap is checked on the opened file before anything is read, and again while reading (a file
may grow meanwhile, and ``/dev/zero`` has no size), so a 10 GB file is refused, never loaded.
Only regular files are read: a FIFO is opened without blocking and refused, as are devices and
sockets.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from gecko_actors.exceptions import UserError

__all__ = ["read_capped", "size_text"]


def size_text(n: int) -> str:
    """``n`` bytes, for people: ``10737418240 bytes (10.0 GiB)``."""
    value, unit = float(n), "bytes"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{n} bytes" if unit == "bytes" else f"{n} bytes ({value:.1f} {unit})"


def read_capped(path: str | Path, cap: int, *, label: str, hint: str) -> bytes:
    """The bytes of the regular file ``path``, at most ``cap`` of them.

    Args:
        path: the file.
        cap: the most bytes read; a larger file is a :class:`UserError` (``hint`` says how to
            raise the cap).
        label: how error messages name the file, e.g. ``"the input file 'x.json'"``.
        hint: how to raise the cap.

    Raises:
        UserError: no such file, a folder, not a regular file, over the cap, or unreadable;
            it carries ``path`` (and ``size``/``max_bytes`` for a file over the cap).
    """
    try:
        # O_NONBLOCK: opening a FIFO would otherwise wait for a writer, maybe forever. On a
        # regular file it changes nothing, and anything else is refused below.
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
        fd = os.open(path, flags)
    except OSError as exc:
        raise _unreadable(path, label, exc) from None
    except ValueError:  # a NUL in the name
        raise UserError(f"{label} is not a usable file name", path=repr(str(path))) from None
    try:
        # fstat of the open file, not a stat of the name: the name may be swapped meanwhile.
        # Before fdopen, which refuses a folder with an OSError of its own.
        _check_before_reading(path, label, os.fstat(fd), cap, hint)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as src:
        try:
            data = _read_at_most(src, cap + 1)  # never more than one byte past the cap
        except OSError as exc:
            raise _unreadable(path, label, exc) from None
    if len(data) > cap:  # it grew after the size check
        raise UserError(
            f"{label} grew past the cap of {size_text(cap)} while it was read",
            hint=hint,
            path=str(path),
            max_bytes=cap,
        )
    return data


_CHUNK = 1 << 20


def _read_at_most(src: BinaryIO, limit: int) -> bytes:
    """Up to ``limit`` bytes, read in chunks: ``read(limit)`` would reserve ``limit`` bytes
    up front, and a generous cap is far more memory than a small file needs."""
    chunks: list[bytes] = []
    left = limit
    while left > 0 and (chunk := src.read(min(left, _CHUNK))):
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _unreadable(path: str | Path, label: str, exc: OSError) -> UserError:
    reason = exc.strerror or type(exc).__name__
    if isinstance(exc, FileNotFoundError):
        return UserError(f"{label} does not exist ({reason})", path=str(path))
    return UserError(f"cannot read {label}: {reason}", path=str(path))


def _check_before_reading(
    path: str | Path, label: str, info: os.stat_result, cap: int, hint: str
) -> None:
    """Refuse anything but a regular file, and a file over the cap, before reading it."""
    if stat.S_ISDIR(info.st_mode):
        raise UserError(f"{label} is a folder, not a file", path=str(path))
    if not stat.S_ISREG(info.st_mode):
        raise UserError(
            f"{label} is {_kind(info.st_mode)}, not a regular file, and is not read",
            hint="copy the content into a regular file first",
            path=str(path),
        )
    if info.st_size > cap:
        raise UserError(
            f"{label} is {size_text(info.st_size)}, over the cap of {size_text(cap)} on a "
            "file read, so it was not loaded",
            hint=hint,
            path=str(path),
            size=info.st_size,
            max_bytes=cap,
        )


def _kind(mode: int) -> str:
    kinds = [
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ]
    return next((name for test, name in kinds if test(mode)), "a special file")
