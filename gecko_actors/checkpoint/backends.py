"""The few I/O primitives the checkpoint store needs, one class per kind of storage.

Every backend offers ``put`` (replace an object whole), ``put_if_absent`` (create an object
only if no object has that name: the fence of a commit), ``get``, ``list`` (one folder) and
``delete`` (a folder and everything below it), on paths relative to the store's root. A
transient failure is an ``OSError`` (or a pyarrow ``ArrowException``), which the store retries.

How each creates an object only if absent, atomically:

- ``file://``: write a temporary file and fsync it, then ``os.link`` it to the final name
  (fails if the name exists; a reader never sees a partial file), then fsync the folder, so
  that after a power loss a name never points at data that did not reach the disk;
- ``memory://``: under a process-wide lock;
- ``s3://``: a conditional PUT (``If-None-Match: *``) through boto3, since pyarrow's
  S3FileSystem has none (see :mod:`gecko_actors.checkpoint.s3`); the client is built from the
  same options as pyarrow's (endpoint, scheme, region, timeouts, role) and the standard AWS
  credentials. Before its first conditional PUT, each backend checks once that the server
  honours the condition (some S3-compatible servers ignore it, which would lose the fence);
- ``gs://``: an upload with ``if_generation_match=0`` through google-cloud-storage, which
  also lists folders (see :mod:`gecko_actors.checkpoint.gcs`, imported at the first ``gs://``
  store). It is optional: without it the first write or listing is a ConfigurationError
  saying to ``pip install google-cloud-storage``.

Everything else on S3 and GCS goes through ``pyarrow.fs``. Object stores publish whatever a
stream held when it is closed, even by an exception: every write is one call with all its bytes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gecko_actors.checkpoint import s3
from gecko_actors.checkpoint.location import Location

if TYPE_CHECKING:
    from pyarrow.fs import FileSystem

__all__ = ["ArrowBackend", "Backend", "Entry", "open_backend"]


@dataclass(frozen=True)
class Entry:
    """One name in a listed folder: a file (with its size, where the backend knows it) or a
    folder."""

    name: str
    size: int | None
    is_dir: bool


class Backend(ABC):
    """Storage under one root; paths are ``/``-separated and relative to the root."""

    #: Whether reads are slow enough (network round trips) to be worth overlapping.
    parallel_reads = False

    def __init__(self, location: Location) -> None:
        self.location = location

    @abstractmethod
    def put(self, path: str, data: bytes) -> None:
        """Create or replace the object at ``path`` with ``data``, whole."""

    @abstractmethod
    def put_if_absent(self, path: str, data: bytes) -> bool:
        """Create the object at ``path`` unless one exists; False (and nothing written) if
        it does. Atomic: of two concurrent callers, exactly one gets True."""

    @abstractmethod
    def get(self, path: str) -> bytes | None:
        """The object's bytes, or None if there is no object at ``path``."""

    @abstractmethod
    def list(self, folder: str) -> list[Entry]:
        """The files and folders directly inside ``folder`` ([] if it does not exist)."""

    @abstractmethod
    def delete(self, folder: str) -> None:
        """Delete ``folder`` and everything in it (nothing happens if it does not exist)."""

    @abstractmethod
    def remove(self, path: str) -> None:
        """Delete the object at ``path`` (nothing happens if there is none)."""


def open_backend(location: Location) -> Backend:
    """The backend for a parsed location; clients are made lazily, at first use."""
    if location.scheme == "gs":
        # Imported here: the GCS module builds on this one (ArrowBackend, Entry).
        from gecko_actors.checkpoint.gcs import GcsBackend

        return GcsBackend(location)
    kinds: dict[str, type[Backend]] = {
        "file": FileBackend,
        "memory": MemoryBackend,
        "s3": S3Backend,
    }
    return kinds[location.scheme](location)


# --- file:// ---------------------------------------------------------------------------------


class FileBackend(Backend):
    """A local (or mounted) directory, through ``os``: ``os.link`` is the atomic
    create-if-absent that ``pyarrow.fs`` does not offer. Names starting with a dot (our
    temporary files) are never listed."""

    def _abs(self, path: str) -> str:
        return os.path.join(self.location.root, *path.split("/"))

    def _make_folder(self, folder: str) -> None:
        """Create ``folder`` and its missing parents, syncing the parent of each new one."""
        if os.path.isdir(folder):
            return
        parent = os.path.dirname(folder)
        if parent != folder:
            self._make_folder(parent)
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder)
        _sync_folder(parent)

    def _write_aside(self, target: str, data: bytes) -> str:
        folder = os.path.dirname(target)
        self._make_folder(folder)
        # A hidden name that no reader of the store parses, in the same folder (so that the
        # rename or link below stays on one filesystem).
        tmp = os.path.join(folder, f".{os.path.basename(target)}.tmp-{uuid.uuid4().hex}")
        try:
            with open(tmp, "xb") as out:
                out.write(data)
                out.flush()
                # On the disk before any name points at it: otherwise a power loss can keep
                # the name (a commit marker's link) and lose the data.
                os.fsync(out.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return tmp

    def put(self, path: str, data: bytes) -> None:
        """Write aside, then rename over the target: a reader sees the old or the new file."""
        target = self._abs(path)
        tmp = self._write_aside(target, data)
        try:
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _sync_folder(os.path.dirname(target))

    def put_if_absent(self, path: str, data: bytes) -> bool:
        """Write aside, then hard-link to the target, which fails if the target exists."""
        target = self._abs(path)
        tmp = self._write_aside(target, data)
        try:
            os.link(tmp, target)
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        _sync_folder(os.path.dirname(target))
        return True

    def get(self, path: str) -> bytes | None:
        """The file's bytes, or None if it does not exist."""
        try:
            with open(self._abs(path), "rb") as src:
                return src.read()
        except FileNotFoundError:
            return None

    def list(self, folder: str) -> list[Entry]:
        """The folder's entries, from one ``scandir``, without dot names (our temporary
        files, which come and go while another thread or process writes)."""
        try:
            it = os.scandir(self._abs(folder))
        except FileNotFoundError:  # only a missing folder is an empty listing
            return []
        entries = []
        with it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                try:
                    if entry.is_dir():
                        entries.append(Entry(entry.name, None, True))
                    else:
                        entries.append(Entry(entry.name, entry.stat().st_size, False))
                except FileNotFoundError:  # deleted since it was listed
                    continue
        return entries

    def delete(self, folder: str) -> None:
        """Remove the folder's tree."""
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self._abs(folder))

    def remove(self, path: str) -> None:
        """Remove one file."""
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._abs(path))


def _sync_folder(folder: str) -> None:
    """fsync a folder, so that the names just created or renamed in it survive a power loss;
    best effort, where the OS cannot open or sync a folder (Windows, some mounts)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- memory:// -------------------------------------------------------------------------------

# Every memory store of this process: store name -> folder -> file name -> bytes. A memory
# store is per process: a copy of the store object sent to another process (a Ray actor) finds
# that process's own, empty, store under the same name.
_MEMORY: dict[str, dict[str, dict[str, bytes]]] = {}
_MEMORY_LOCK = threading.Lock()


class MemoryBackend(Backend):
    """A store held in this process's memory, for tests; one lock guards every memory store,
    which makes ``put_if_absent`` atomic."""

    def _split(self, path: str) -> tuple[dict[str, dict[str, bytes]], str, str]:
        folder, _, name = path.rpartition("/")
        return _MEMORY.setdefault(self.location.root, {}), folder, name

    def put(self, path: str, data: bytes) -> None:
        """Store ``bytes(data)`` under ``path``."""
        with _MEMORY_LOCK:
            folders, folder, name = self._split(path)
            folders.setdefault(folder, {})[name] = bytes(data)

    def put_if_absent(self, path: str, data: bytes) -> bool:
        """Store ``data`` unless ``path`` is taken, under the lock."""
        with _MEMORY_LOCK:
            folders, folder, name = self._split(path)
            files = folders.setdefault(folder, {})
            if name in files:
                return False
            files[name] = bytes(data)
            return True

    def get(self, path: str) -> bytes | None:
        """The stored bytes, or None."""
        with _MEMORY_LOCK:
            folders, folder, name = self._split(path)
            return folders.get(folder, {}).get(name)

    def list(self, folder: str) -> list[Entry]:
        """The folder's files, and the folders that have files somewhere below it."""
        with _MEMORY_LOCK:
            folders = _MEMORY.get(self.location.root, {})
            entries = [Entry(n, len(d), False) for n, d in folders.get(folder, {}).items()]
            prefix = f"{folder}/" if folder else ""
            subdirs = {
                f[len(prefix) :].split("/", 1)[0]
                for f, files in folders.items()
                if files and f.startswith(prefix) and f != folder
            }
        return entries + [Entry(name, None, True) for name in sorted(subdirs)]

    def delete(self, folder: str) -> None:
        """Forget every file at or below ``folder``."""
        with _MEMORY_LOCK:
            folders = _MEMORY.get(self.location.root, {})
            for name in [f for f in folders if f == folder or f.startswith(f"{folder}/")]:
                del folders[name]

    def remove(self, path: str) -> None:
        """Forget one file."""
        with _MEMORY_LOCK:
            folders, folder, name = self._split(path)
            folders.get(folder, {}).pop(name, None)


# --- object stores through pyarrow.fs --------------------------------------------------------


class ArrowBackend(Backend):
    """``put``/``get``/``list``/``delete`` through a ``pyarrow.fs`` filesystem; subclasses
    (:class:`S3Backend`, :class:`~gecko_actors.checkpoint.gcs.GcsBackend`) make the
    filesystem and the conditional put."""

    parallel_reads = True

    def __init__(self, location: Location) -> None:
        super().__init__(location)
        # Reentrant: making the filesystem reads the shared settings under the same lock.
        self._lock = threading.RLock()
        self._fs: FileSystem | None = None

    @abstractmethod
    def _make_filesystem(self) -> FileSystem: ...

    def filesystem(self) -> FileSystem:
        """The pyarrow filesystem, made at first use."""
        with self._lock:
            if self._fs is None:
                self._fs = self._make_filesystem()
            return self._fs

    def _abs(self, path: str) -> str:
        return f"{self.location.root.rstrip('/')}/{path}" if path else self.location.root

    def put(self, path: str, data: bytes) -> None:
        """One PUT with all the bytes."""
        with self.filesystem().open_output_stream(self._abs(path), compression=None) as out:
            out.write(data)

    def get(self, path: str) -> bytes | None:
        """One GET; None if the object does not exist."""
        try:
            with self.filesystem().open_input_stream(self._abs(path), compression=None) as src:
                return src.read()
        except FileNotFoundError:
            return None

    def list(self, folder: str) -> list[Entry]:
        """One listing of the folder's objects and sub-folders."""
        from pyarrow.fs import FileSelector, FileType

        selector = FileSelector(self._abs(folder), allow_not_found=True)
        return [
            Entry(info.base_name, info.size, info.type == FileType.Directory)
            for info in self.filesystem().get_file_info(selector)
            if info.type in (FileType.File, FileType.Directory)
        ]

    def delete(self, folder: str) -> None:
        """Delete every object under the folder."""
        with contextlib.suppress(FileNotFoundError):
            self.filesystem().delete_dir(self._abs(folder))

    def remove(self, path: str) -> None:
        """Delete one object."""
        with contextlib.suppress(FileNotFoundError):
            self.filesystem().delete_file(self._abs(path))


class S3Backend(ArrowBackend):
    """S3 (or an S3-compatible server) through pyarrow, plus boto3 for conditional PUTs."""

    def __init__(self, location: Location) -> None:
        super().__init__(location)
        self._settings: dict[str, Any] | None = None
        self._client: Any = None
        self._probe_lock = threading.Lock()
        self._fence_checked = False  # whether the server is known to honour If-None-Match

    def settings(self) -> dict[str, Any]:
        """The URI's options with the region resolved once, shared by both clients."""
        from pyarrow import fs

        with self._lock:
            if self._settings is None:
                options = dict(self.location.options)
                if "region" not in options:
                    if "endpoint_override" in options:
                        region = os.environ.get("AWS_REGION") or os.environ.get(
                            "AWS_DEFAULT_REGION"
                        )
                        options["region"] = region or None
                    else:  # as FileSystem.from_uri does: ask S3 where the bucket lives
                        bucket = self.location.root.split("/", 1)[0]
                        options["region"] = fs.resolve_s3_region(bucket)
                self._settings = options
            return dict(self._settings)

    def _make_filesystem(self) -> FileSystem:
        from pyarrow import fs

        kwargs = self.settings()
        # Our own loop retries (with the store's backoff); the SDK's would multiply it (three
        # attempts of a refused connection take ~6 s).
        kwargs["retry_strategy"] = fs.AwsStandardS3RetryStrategy(max_attempts=1)
        # One PUT per small object instead of a three-request multipart upload.
        kwargs.setdefault("allow_delayed_open", True)
        try:
            return fs.S3FileSystem(**kwargs)
        except TypeError:  # a pyarrow without allow_delayed_open
            kwargs.pop("allow_delayed_open")
            return fs.S3FileSystem(**kwargs)

    def _make_client(self) -> Any:
        return s3.boto3_s3_client(self.settings())

    def put_if_absent(self, path: str, data: bytes) -> bool:
        """A PUT with ``If-None-Match: *``; S3 answers 412 if the key exists. The first one
        checks that the server honours the condition (a ConfigurationError if not)."""
        if self._client is None:
            client = self._make_client()
            with self._lock:
                self._client = self._client or client
        bucket, _, prefix = self.location.root.partition("/")
        prefix = prefix.strip("/")
        if not self._fence_checked:
            with self._probe_lock:  # one probe, even when the first writes come together
                if not self._fence_checked:
                    s3.check_conditional_writes(self._client, bucket, prefix)
                    self._fence_checked = True
        return s3.put_if_absent(self._client, bucket, f"{prefix}/{path}" if prefix else path, data)
