"""The durable store of workflow runs, with fenced commits: one writer per run.

A run is a folder under the store's root::

    <run_id>/manifest.msgpack                   what the run is (created once, if absent)
    <run_id>/status.msgpack                     its latest status (small; replaced on change)
    <run_id>/owner/00000001.msgpack             owner claims: one per engine that took the run
    <run_id>/steps/00000000-<sha256>.msgpack    a committed node visit's data, named by content
    <run_id>/steps/00000000.commit              its commit marker (object, size, sha256, epoch)

A step is written data-first, then committed by creating its marker *only if absent* (see
:mod:`gecko_actors.checkpoint.backends` for how each storage does that atomically). A small
step (up to ``inline_limit`` bytes packed) travels inside its marker instead: one write, and
one read when loading. So:

- a torn write (data without marker) is never loaded, and a step costs the same bytes however
  long the run is, because history is never rewritten;
- two engines committing the same ``seq`` never overwrite each other's data (it is named by
  its hash), and exactly one creates the marker; the other gets
  :class:`~gecko_actors.exceptions.OwnershipLost` and must stop driving the run. Its data
  object stays behind, named by no marker, and is ignored when loading;
- an engine takes the next owner epoch with :meth:`CheckpointStore.claim` when it starts or
  resumes a run; a commit (or a status update) by an engine whose epoch is older than the
  newest claim is refused with ``OwnershipLost`` before anything is written.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from gecko_actors.checkpoint import crypto
from gecko_actors.checkpoint.backends import Backend, Entry, open_backend
from gecko_actors.checkpoint.location import parse_uri
from gecko_actors.checkpoint.records import (
    MAX_EPOCH,
    MAX_SEQ,
    Fork,
    Manifest,
    Marker,
    StepRecord,
    apply_status,
    corrupt,
    manifest_data,
    manifest_from,
    owner_data,
    pack,
    status_data,
    unpack,
    validate_epoch,
    validate_run_id,
    validate_status,
)
from gecko_actors.checkpoint.steps import (
    data_name,
    marker_data,
    marker_from,
    step_data,
    step_from,
)
from gecko_actors.exceptions import CheckpointError, OwnershipLost, UserError
from gecko_actors.logging import get_logger

__all__ = ["CREATOR_EPOCH", "CheckpointStore"]

_log = get_logger("gecko_actors.checkpoint")
_T = TypeVar("_T")

_RUN_DIR = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}")
_MARKER = re.compile(r"(\d{8})\.commit")
_DATA = re.compile(r"(\d{8})-([0-9a-f]{64})\.msgpack")
_CLAIM = re.compile(r"(\d{8})\.msgpack")
_MANIFEST = "manifest.msgpack"
_STATUS = "status.msgpack"
_STEPS = "steps"
_OWNER = "owner"
_READ_THREADS = 16
INLINE_LIMIT = 64 * 1024
CREATOR_EPOCH = 1


@functools.cache
def _transient() -> tuple[type[BaseException], ...]:
    """The errors a retry may cure: OSError from every backend, and pyarrow's own."""
    from pyarrow.lib import ArrowException

    return (OSError, ArrowException)


class CheckpointStore:
    """Workflow runs in a local directory, an object store or this process's memory.

    Args:
        uri: an absolute path or ``"file:///abs/dir"``; ``"s3://bucket/prefix"`` (query
            parameters such as ``endpoint_override=host:port``, ``scheme=http`` and
            ``region=...`` configure the client); ``"gs://bucket/prefix"`` (fenced commits
            need ``pip install google-cloud-storage``); or ``"memory://name"``, held in the
            memory of the current process (for tests: each process has its own). Credentials
            come from the environment, never from the URI.
        retries: how many times a failed read or write is tried again before it raises
            :class:`CheckpointError`.
        backoff: seconds before the first retry; doubled for each next one.
        inline_limit: a step whose packed data is at most this many bytes is written inside
            its commit marker (one write per step instead of two); a larger one gets a data
            object of its own. 0 writes every step as an object. Either way reads both.
        encrypted: what reading a payload encrypted with a key this process lacks does
            (see :mod:`~gecko_actors.checkpoint.crypto`): ``"raise"`` a
            :class:`CheckpointError` naming the key id, or ``"mark"`` it (it reads as
            ``"<encrypted: key 1a2b3c4d>"``), for listing and display without the key.

    Thread-safe; picklable (only the URI and options travel; clients are made again where
    they are first used). Every method blocks: call it from a thread (``asyncio.to_thread``)
    inside an async actor.
    """

    def __init__(
        self,
        uri: str,
        *,
        retries: int = 3,
        backoff: float = 0.2,
        inline_limit: int = INLINE_LIMIT,
        encrypted: str = "raise",
    ) -> None:
        if type(retries) is not int or retries < 0:
            raise UserError(f"retries must be an int >= 0, got {retries!r}")
        if type(backoff) not in (int, float) or backoff < 0:
            raise UserError(f"backoff must be a number >= 0, got {backoff!r}")
        if type(inline_limit) is not int or inline_limit < 0:
            raise UserError(f"inline_limit must be an int >= 0, got {inline_limit!r}")
        if encrypted not in ("raise", "mark"):
            raise UserError(f"encrypted must be 'raise' or 'mark', got {encrypted!r:.40}")
        self._location = parse_uri(uri)
        self.uri: str = uri.strip()
        self.retries = retries
        self.backoff = float(backoff)
        self.inline_limit = inline_limit
        self.encrypted = encrypted
        self._io: Backend | None = None
        self._lock = threading.Lock()
        self._forks: dict[str, Fork | None] = {}  # what each run read is forked from (fixed)

    def __repr__(self) -> str:
        return f"CheckpointStore({self.uri!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "retries": self.retries,
            "backoff": self.backoff,
            "inline_limit": self.inline_limit,
            "encrypted": self.encrypted,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state.pop("uri"), **state)  # type: ignore[misc]

    def marking(self) -> CheckpointStore:
        """This store with ``encrypted="mark"``, sharing its connection: it reads the runs
        whose payloads this process cannot decrypt too (listing, gc, display)."""
        other = CheckpointStore(**{**self.__getstate__(), "encrypted": "mark"})
        other._io = self._backend()
        return other

    # --- manifest and status ------------------------------------------------------------

    def create_manifest(self, manifest: Manifest) -> Manifest:
        """Create the run's manifest unless it exists. Returns the stored manifest: this one
        if it was created, else the existing one (with its latest status merged in), which
        the caller compares (e.g. the graph fingerprint) before driving the run."""
        self._writable("create a run")
        data = pack(crypto.seal_record(manifest_data(manifest)))  # raises before any write
        run_id = manifest.run_id
        if self._put_if_absent(self._path(run_id, _MANIFEST), data, run_id):
            self._forks[run_id] = manifest.fork
            return manifest
        existing = self.read_manifest(run_id)
        if existing is None:  # deleted between our attempt and this read
            raise CheckpointError(
                f"the manifest of run {run_id!r} disappeared while it was being created",
                hint="another process deleted the run; start it again",
                run_id=run_id,
            )
        return existing

    def read_manifest(self, run_id: str) -> Manifest | None:
        """The run's manifest with its latest status merged in; None if there is no such run."""
        run_id = validate_run_id(run_id)
        path = self._path(run_id, _MANIFEST)
        raw = self._get(path, run_id)
        if raw is None:
            return None
        where = self._where(path)
        rec = self._opened(unpack(raw, "manifest", run_id, where), where)
        manifest = manifest_from(rec, where, run_id)
        self._forks[run_id] = manifest.fork
        path = self._path(run_id, _STATUS)
        raw = self._get(path, run_id)
        if raw is None:
            return manifest
        where = self._where(path)
        rec = self._opened(unpack(raw, "status", run_id, where), where)
        return apply_status(manifest, rec, where)

    def update_status(
        self,
        run_id: str,
        status: str,
        *,
        result: Any = None,
        error: str | None = None,
        epoch: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> int:
        """Record the run's status (and its result or error; ``extra``: a budgeted run's
        ``budget`` and ``spent``, a waiting run's parked nodes as ``waiting``) in a small
        object of its own — the manifest and the steps are not rewritten. Returns the bytes
        written.

        With ``epoch`` (the caller's owner epoch), :class:`OwnershipLost` is raised, and
        nothing written, if a newer claim exists. The check and the write are two requests:
        the status is advisory (a resume trusts the committed steps, which are fenced).
        """
        run_id = validate_run_id(run_id)
        validate_status(status)
        if epoch is not None:
            validate_epoch(epoch)
        self._writable("record a status")
        rec = status_data(run_id, status, result, error, epoch, time.time(), extra)
        data = pack(crypto.seal_record(rec))
        if epoch is not None:
            self._check_owner(run_id, epoch, f"set its status to {status!r}")
        self._put(self._path(run_id, _STATUS), data, run_id)
        return len(data)

    # --- ownership ----------------------------------------------------------------------

    def claim(self, run_id: str) -> int:
        """Take the run for the calling engine: returns its owner epoch (2, 3, ...), newer
        than every earlier claim. From now on an engine with an older epoch cannot commit.

        Epoch 1 is never claimed: it is the creator's, the engine whose
        :meth:`create_manifest` made the run (one write less on a run's start path)."""
        run_id = validate_run_id(run_id)
        epoch = max(self.current_epoch(run_id), CREATOR_EPOCH) + 1
        holder = f"{socket.gethostname()} pid {os.getpid()}"
        while True:
            if epoch > MAX_EPOCH:
                raise CheckpointError(f"run {run_id!r} has no owner epoch left", run_id=run_id)
            data = pack(owner_data(run_id, epoch, holder, time.time()))
            if self._put_if_absent(
                self._path(run_id, _OWNER, f"{epoch:08d}.msgpack"), data, run_id
            ):
                return epoch
            epoch += 1  # another engine claimed this number first: take the next one

    def current_epoch(self, run_id: str) -> int:
        """The newest owner epoch of the run (0 if no engine ever claimed it)."""
        run_id = validate_run_id(run_id)
        epochs = [
            int(match[1])
            for entry in self._list(self._path(run_id, _OWNER), run_id)
            if not entry.is_dir and (match := _CLAIM.fullmatch(entry.name))
        ]
        return max(epochs, default=0)

    def _check_owner(self, run_id: str, epoch: int, doing: str, **context: Any) -> None:
        newest = self.current_epoch(run_id)
        if newest > epoch:
            raise OwnershipLost(
                f"run {run_id!r} was taken over by another engine (owner epoch {newest}; "
                f"this engine has epoch {epoch}): it did not {doing}",
                hint="stop driving this run: the engine with the newest epoch continues it",
                run_id=run_id,
                epoch=epoch,
                owner_epoch=newest,
                **context,
            )

    # --- steps --------------------------------------------------------------------------

    def commit_step(self, run_id: str, record: StepRecord) -> int:
        """Commit one node visit: its content-addressed data object (unless the step is small
        enough to go inside the marker), then its commit marker, created only if absent.
        Returns the bytes written, or 0 if this exact step (the same sha256) is already
        committed.

        Raises :class:`OwnershipLost` if a claim newer than ``record.epoch`` exists (checked
        before writing), or if step ``record.seq`` is already committed with other content;
        :class:`UserError` for an invalid record or value (before anything is written).

        The ownership check and the marker are separate requests, so an engine that claimed
        the run can still find a step committed by the engine it replaced, just before that
        one saw the claim (``OwnershipLost.owner_epoch`` older than its own epoch, while
        :meth:`current_epoch` is still its own): that step is valid; reload the steps and
        go on. Any newer epoch means: stop.
        """
        run_id = validate_run_id(run_id)
        self._writable("commit a step")
        data = pack(crypto.seal_record(step_data(run_id, record)))  # raises before any write
        digest = hashlib.sha256(data).hexdigest()
        inline = data if len(data) <= self.inline_limit else None
        name = data_name(record.seq, digest)
        marker = Marker(record.seq, name, len(data), digest, record.epoch, inline)
        marker_bytes = pack(marker_data(run_id, marker))
        marker_path = self._marker_path(run_id, record.seq)
        context = {"seq": record.seq, "node": record.node}
        try:
            self._check_owner(run_id, record.epoch, f"commit step {record.seq}", **context)
            if inline is None:
                self._put(self._path(run_id, _STEPS, name), data, run_id)
            if self._put_if_absent(marker_path, marker_bytes, run_id):
                return len(marker_bytes) + (0 if inline else len(data))
            existing = self._read_marker(run_id, record.seq)
        except OwnershipLost:
            raise
        except CheckpointError as exc:
            raise CheckpointError(
                f"step {record.seq} of run {run_id!r} (node {record.node!r}) was not "
                f"committed: {exc.message}",
                hint=exc.hint,
                **{**exc.context, **context},
            ) from exc.__cause__
        if existing is not None and (existing.sha256, existing.size) == (digest, len(data)):
            return 0
        winner = "a deleted run" if existing is None else f"epoch {existing.epoch}"
        raise OwnershipLost(
            f"step {record.seq} of run {run_id!r} was committed first by another engine "
            f"({winner}) with other content; this engine (epoch {record.epoch}) must stop",
            hint="stop driving this run: another engine is driving it",
            uri=self._where(marker_path),
            run_id=run_id,
            epoch=record.epoch,
            owner_epoch=None if existing is None else existing.epoch,
            **context,
        )

    def read_step(self, run_id: str, seq: int) -> StepRecord:
        """One committed step, verified against its marker (to fetch an output lazily).
        A step that is not committed is a :class:`CheckpointError`."""
        run_id = validate_run_id(run_id)
        if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
            raise UserError(f"invalid seq {seq!r:.40}: expected an int from 0 to {MAX_SEQ}")
        marker = self._read_marker(run_id, seq)
        fork = self._fork_of(run_id) if marker is None else None
        if fork is not None and seq < fork.at_step:  # a step the fork shares with its parent
            return self.read_step(fork.parent, seq)
        if marker is None:
            raise CheckpointError(
                f"step {seq} of run {run_id!r} is not committed",
                uri=self._where(self._marker_path(run_id, seq)),
                run_id=run_id,
                seq=seq,
            )
        if marker.data is not None:
            return self._verified_step(run_id, marker, marker.data)
        path = self._path(run_id, _STEPS, marker.object)
        return self._verified_step(run_id, marker, self._get(path, run_id))

    def load_steps(self, run_id: str) -> list[StepRecord]:
        """The run's committed steps in seq order ([] for an unknown run); a forked run's
        first ones are its parent's. A data object without a marker (a torn write, or a
        losing writer's leftovers) is skipped; anything that does not verify or decode is a
        :class:`CheckpointError` naming the object, and so is a gap in the commit markers
        (naming the first missing seq)."""
        return self._steps(validate_run_id(run_id), None)

    def _fork_of(self, run_id: str) -> Fork | None:
        if run_id not in self._forks:
            self.read_manifest(run_id)  # remembers it
        return self._forks.get(run_id)

    def _steps(self, run_id: str, upto: int | None) -> list[StepRecord]:
        """The run's steps before seq ``upto`` (all: None), its parent's first if forked."""
        listing = self._listing(run_id)
        # A run whose own steps start at 0 shares none: its manifest need not be read.
        fork = None if 0 in listing[0] else self._fork_of(run_id)
        if fork is None or fork.at_step == 0:
            return self._own_steps(run_id, listing, 0, upto)
        shared = self._steps(fork.parent, fork.at_step)
        if len(shared) < fork.at_step:
            raise CheckpointError(
                f"run {run_id!r} is forked from step {fork.at_step} of run {fork.parent!r}, "
                f"which has {len(shared)} steps",
                hint="the parent run was deleted or damaged: restore it, or delete the fork",
                run_id=run_id,
            )
        if upto is not None and upto <= fork.at_step:
            return shared[:upto]
        return shared + self._own_steps(run_id, listing, fork.at_step, upto)

    def _listing(self, run_id: str) -> tuple[dict[int, str], dict[str, int | None]]:
        """The run's own commit markers (seq -> name) and data objects (name -> size)."""
        markers: dict[int, str] = {}
        datas: dict[str, int | None] = {}  # data object name -> size
        data_seqs: set[int] = set()
        for entry in self._list(self._path(run_id, _STEPS), run_id):
            if entry.is_dir:
                continue
            if match := _MARKER.fullmatch(entry.name):
                markers[int(match[1])] = entry.name
            elif match := _DATA.fullmatch(entry.name):
                datas[entry.name] = entry.size
                data_seqs.add(int(match[1]))
            # else: a local write's temporary file, or something not ours
        for seq in sorted(data_seqs - set(markers)):
            _log.warning(
                "checkpoint step without commit marker ignored (torn write)",
                run_id=run_id,
                seq=seq,
            )
        return markers, datas

    def _own_steps(
        self,
        run_id: str,
        listing: tuple[dict[int, str], dict[str, int | None]],
        first: int,
        upto: int | None,
    ) -> list[StepRecord]:
        """The steps committed under ``run_id`` itself, from seq ``first`` (before ``upto``)."""
        markers, datas = listing
        seqs = sorted(markers)
        if seqs != list(range(first, first + len(seqs))):
            # A deleted marker: the engine would count its history short of the stored seqs,
            # and its next commit would collide with a committed step forever.
            missing = next(seq for seq in range(first, first + len(seqs)) if seq not in markers)
            raise CheckpointError(
                f"the checkpoint of run {run_id!r} is damaged: the commit marker of step "
                f"{missing} is missing, while steps up to {seqs[-1]} are committed",
                hint="restore the missing step or delete the run (and start it again)",
                uri=self._where(self._marker_path(run_id, missing)),
                run_id=run_id,
                seq=missing,
            )
        seqs = seqs if upto is None else [seq for seq in seqs if seq < upto]
        paths = [self._path(run_id, _STEPS, markers[seq]) for seq in seqs]
        committed: list[Marker] = []
        for seq, path, raw in zip(seqs, paths, self._get_many(paths, run_id), strict=True):
            if raw is None:
                raise corrupt(self._where(path), run_id, "disappeared while loading")
            marker = self._parse_marker(raw, path, run_id, seq)
            committed.append(marker)
            if marker.data is not None:
                continue
            if marker.object not in datas:
                raise corrupt(
                    self._where(path), run_id, f"commits {marker.object!r}, which does not exist"
                )
            size = datas[marker.object]
            if size is not None and size != marker.size:
                raise corrupt(
                    self._where(self._path(run_id, _STEPS, marker.object)),
                    run_id,
                    f"has {size} bytes; its commit marker says {marker.size} "
                    "(truncated or tampered with)",
                )
        apart = [m for m in committed if m.data is None]
        raws = self._get_many([self._path(run_id, _STEPS, m.object) for m in apart], run_id)
        fetched = dict(zip((m.seq for m in apart), raws, strict=True))
        return [
            self._verified_step(run_id, m, m.data if m.data is not None else fetched[m.seq])
            for m in committed
        ]

    def _marker_path(self, run_id: str, seq: int) -> str:
        return self._path(run_id, _STEPS, f"{seq:08d}.commit")

    def _read_marker(self, run_id: str, seq: int) -> Marker | None:
        path = self._marker_path(run_id, seq)
        raw = self._get(path, run_id)
        return None if raw is None else self._parse_marker(raw, path, run_id, seq)

    def _parse_marker(self, raw: bytes, path: str, run_id: str, seq: int) -> Marker:
        where = self._where(path)
        return marker_from(unpack(raw, "commit", run_id, where), where, run_id, seq)

    def _verified_step(self, run_id: str, marker: Marker, raw: bytes | None) -> StepRecord:
        if marker.data is not None:  # the marker itself holds the step
            where = self._where(self._marker_path(run_id, marker.seq))
        else:
            where = self._where(self._path(run_id, _STEPS, marker.object))
        if raw is None:
            raise corrupt(where, run_id, "does not exist, but its commit marker names it")
        if len(raw) != marker.size or hashlib.sha256(raw).hexdigest() != marker.sha256:
            raise corrupt(
                where,
                run_id,
                "does not match the sha256 and size in its commit marker "
                "(truncated or tampered with)",
            )
        rec = self._opened(unpack(raw, "step", run_id, where), where)
        return step_from(rec, where, run_id, marker.seq)

    # --- runs ---------------------------------------------------------------------------

    def list_runs(self) -> list[str]:
        """The run_ids that have a manifest, sorted."""
        names = sorted(
            e.name for e in self._list("", None) if e.is_dir and _RUN_DIR.fullmatch(e.name)
        )

        def has_manifest(name: str) -> bool:
            return any(e.name == _MANIFEST and not e.is_dir for e in self._list(name, name))

        found = self._map(has_manifest, names)
        return [name for name, ok in zip(names, found, strict=True) if ok]

    def delete_run(self, run_id: str) -> None:
        """Delete everything stored for the run (nothing happens for an unknown run)."""
        run_id = validate_run_id(run_id)
        self._retry("delete", run_id, run_id, lambda io: io.delete(run_id))

    # --- I/O ----------------------------------------------------------------------------

    def _path(self, run_id: str, *parts: str) -> str:
        return "/".join((run_id, *parts))

    def _where(self, path: str) -> str:
        return self._location.display(path)

    def _opened(self, rec: dict[str, Any], where: str) -> dict[str, Any]:
        """An unpacked record with its encrypted payloads decrypted (or marked)."""
        return crypto.open_record(rec, where, mark=self.encrypted == "mark")

    def _writable(self, doing: str) -> None:
        """Refuse to write payloads through a marking store: what it read may be markers."""
        if self.encrypted == "mark":
            raise UserError(
                f"cannot {doing} through a store with encrypted='mark' (it reads payloads "
                "it cannot decrypt as markers, which must never be written back)",
                hint="write through CheckpointStore(uri), with the checkpoint key set",
            )

    def _backend(self) -> Backend:
        with self._lock:
            if self._io is None:
                self._io = open_backend(self._location)
            return self._io

    def _retry(self, action: str, path: str, run_id: str | None, fn: Callable[[Backend], _T]) -> _T:
        last: BaseException | None = None
        for attempt in range(self.retries + 1):
            try:
                return fn(self._backend())
            except _transient() as exc:
                last = exc
                if attempt < self.retries:
                    time.sleep(self.backoff * 2**attempt)
        where = self._where(path)
        raise CheckpointError(
            f"could not {action} checkpoint object {where!r} (store {self.uri!r}) after "
            f"{self.retries + 1} attempt(s): {last}",
            hint="check that the storage is reachable and writable and that credentials are "
            "set in the environment (AWS_* / GOOGLE_*)",
            uri=where,
            run_id=run_id,
        ) from last

    def _put(self, path: str, data: bytes, run_id: str) -> None:
        self._retry("write", path, run_id, lambda io: io.put(path, data))

    def _put_if_absent(self, path: str, data: bytes, run_id: str) -> bool:
        # A retry after a lost reply may find the object our first attempt created: the
        # callers read it back and compare, so that case is told apart from a rival's.
        return self._retry("write", path, run_id, lambda io: io.put_if_absent(path, data))

    def _get(self, path: str, run_id: str | None) -> bytes | None:
        return self._retry("read", path, run_id, lambda io: io.get(path))

    def _list(self, path: str, run_id: str | None) -> list[Entry]:
        return self._retry("list", path, run_id, lambda io: io.list(path))

    def _get_many(self, paths: list[str], run_id: str) -> list[bytes | None]:
        return self._map(lambda path: self._get(path, run_id), paths)

    def _map(self, fn: Callable[[str], _T], items: list[str]) -> list[_T]:
        if not self._backend().parallel_reads or len(items) < 2:
            return [fn(item) for item in items]
        # Object stores answer each request in tens of milliseconds: overlap them.
        with ThreadPoolExecutor(min(_READ_THREADS, len(items))) as pool:
            return list(pool.map(fn, items))
