"""The durable store of workflow runs: plain msgpack records through ``pyarrow.fs``.

A run is a folder under the store's root (a local directory, ``s3://bucket/prefix`` or
``gs://bucket/prefix``)::

    <root>/<run_id>/manifest.msgpack            workflow, graph fingerprint, input, created time
    <root>/<run_id>/status.msgpack              the latest status (small; rewritten on change)
    <root>/<run_id>/steps/00000000.msgpack      one record per finished node (seq 0) ...
    <root>/<run_id>/steps/00000000.commit       ... then its commit marker (sha256 and size)

Each step is written data-first and then committed by its marker, so a step whose writer died
between the two writes (a torn write) is never loaded; a step costs the same bytes however long
the run is, because history is never rewritten.

Checkpoints are data, never code: every object is a msgpack map with a ``type`` and a
``version``, decoded with no extension types, and only known record types, versions and value
tags are accepted. Pydantic models and dataclasses other than gecko_actors' own messages come
back as plain dicts: nothing is imported or executed from a checkpoint. A tampered, truncated or
unknown object is a :class:`~gecko_actors.exceptions.CheckpointError` naming it.

Credentials come from the standard environment (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, or Google's default credentials such as
``GOOGLE_APPLICATION_CREDENTIALS``); a URI carrying them is refused, since URIs end up in logs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import msgpack
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python

from gecko_actors.core.messages import AgentOutput, Message, ToolCall, Usage
from gecko_actors.exceptions import CheckpointError, UserError
from gecko_actors.logging import get_logger

if TYPE_CHECKING:
    from pyarrow.fs import FileInfo, FileSystem

__all__ = [
    "RECORD_VERSION",
    "CheckpointStore",
    "Manifest",
    "StepRecord",
    "decode_value",
    "encode_value",
]

RECORD_VERSION = 1
STATUSES = ("running", "succeeded", "failed", "cancelled")
_TERMINAL = frozenset(("succeeded", "failed", "cancelled"))

_log = get_logger("gecko_actors.checkpoint")
_T = TypeVar("_T")

_TAG = "__gecko__"
_MODELS: dict[str, type[BaseModel]] = {
    "AgentOutput": AgentOutput,
    "Message": Message,
    "ToolCall": ToolCall,
    "Usage": Usage,
}
_MODEL_TAGS = {cls: tag for tag, cls in _MODELS.items()}
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
_ALLOWED_TYPES = (
    "None, bool, int, float, str, bytes, lists/tuples and dicts with str keys of these, "
    "AgentOutput, Message, ToolCall, Usage, and pydantic models or dataclasses (which come back "
    "from a checkpoint as plain dicts)"
)
_RUN_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}")
_STEP_NAME = re.compile(r"(\d{8})\.(msgpack|commit)")
_MAX_SEQ = 10**8 - 1
_MANIFEST = "manifest.msgpack"
_STATUS = "status.msgpack"
_STEPS = "steps"
# Query parameters and user-info that would put a credential into the URI.
_SECRET_PARAM = re.compile(r"(secret|token|password|passwd|credential|access_?key)", re.I)
_READ_THREADS = 16


# --- values ----------------------------------------------------------------------------------


def encode_value(value: Any) -> Any:
    """``value`` as msgpack-able plain data; gecko_actors' own types are tagged so that
    :func:`decode_value` rebuilds them. Anything else is a :class:`UserError`."""
    return _encode_at(value, "value")


class _Unencodable(Exception):
    """Raised deep inside :func:`_encode`; each container on the way up adds its key, so the
    path costs nothing unless something fails."""

    def __init__(self, problem: str, hint: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.hint = hint
        self.path: list[str] = []


def _encode_at(value: Any, where: str, **context: Any) -> Any:
    at = ", ".join(f"{k} {v!r}" for k, v in context.items() if v is not None)
    at = f" ({at})" if at else ""
    try:
        return _encode(value)
    except _Unencodable as exc:
        path = where + "".join(reversed(exc.path))
        raise UserError(
            f"cannot checkpoint {path}{exc.problem}{at}", hint=exc.hint, **context
        ) from None
    except RecursionError:
        raise UserError(
            f"cannot checkpoint {where}{at}: it is nested too deeply (or contains itself)",
            hint="return plain data of reasonable depth from workflow nodes",
            **context,
        ) from None


def _encode(value: Any) -> Any:
    kind = type(value)
    if value is None or kind is bool or kind is float or kind is str or kind is bytes:
        return value
    if kind is int:
        if not _INT_MIN <= value <= _INT_MAX:
            raise _Unencodable(
                f": the int {value} does not fit in 64 bits", "return very large integers as str"
            )
        return value
    if kind is list or kind is tuple or isinstance(value, (list, tuple)):
        out_list = []
        for i, item in enumerate(value):
            try:
                out_list.append(_encode(item))
            except _Unencodable as exc:
                exc.path.append(f"[{i}]")
                raise
        return out_list
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Unencodable(
                    f": it has a {type(key).__name__} key {key!r:.60}",
                    "dict keys must be str in what a workflow node returns or stores",
                )
            try:
                out[str.__str__(key)] = _encode(item)
            except _Unencodable as exc:
                exc.path.append(f"[{key!r}]")
                raise
        # A user dict that happens to use our tag key is escaped, so it is never mistaken for
        # a tagged value.
        return {_TAG: "dict", "data": out} if _TAG in out else out
    if isinstance(value, int):  # IntEnum and friends: stored as the plain value
        return _encode(int(value))
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if kind in _MODEL_TAGS:
        return {_TAG: _MODEL_TAGS[kind], "data": _dump_model(value)}
    if isinstance(value, BaseModel) or (
        dataclasses.is_dataclass(value) and not isinstance(value, type)
    ):
        return {_TAG: "json", "type": _qualname(value), "data": _dump_json(value)}
    raise _Unencodable(
        f" of type {_qualname(value)}",
        f"a workflow node may return (and store in its state) {_ALLOWED_TYPES}",
    )


def _qualname(value: Any) -> str:
    cls = type(value)
    return f"{cls.__module__}.{cls.__qualname__}"


def _dump_model(value: BaseModel) -> Any:
    try:
        if isinstance(value, AgentOutput):
            data = value.model_dump(mode="json", exclude_none=True, exclude={"structured"})
            if value.structured is not None:
                data["structured"] = to_jsonable_python(value.structured)
            return data
        return value.model_dump(mode="json", exclude_none=True)
    except (PydanticSerializationError, ValueError, TypeError) as exc:
        raise _Unencodable(
            f" ({_qualname(value)}): {exc}",
            "structured outputs must be JSON-serialisable pydantic models",
        ) from None


def _dump_json(value: Any) -> Any:
    try:
        if isinstance(value, BaseModel):
            return value.model_dump(mode="json")
        return to_jsonable_python(value)
    except (PydanticSerializationError, ValueError, TypeError) as exc:
        raise _Unencodable(
            f" ({_qualname(value)}): {exc}",
            "pydantic models and dataclasses are stored as JSON data; make their fields "
            "JSON-serialisable",
        ) from None


def decode_value(data: Any) -> Any:
    """The inverse of :func:`encode_value`; an unknown tag is a :class:`CheckpointError`."""
    try:
        return _decode(data)
    except RecursionError:
        raise CheckpointError("a checkpointed value is nested too deeply") from None


def _decode(data: Any) -> Any:
    if data is None or type(data) in (bool, int, float, str, bytes):
        return data
    if type(data) is list:
        return [_decode(item) for item in data]
    if type(data) is not dict:
        raise CheckpointError(f"a checkpointed value has the unexpected type {type(data).__name__}")
    if _TAG not in data:
        return {_key(k): _decode(v) for k, v in data.items()}
    tag = data[_TAG]
    if tag == "json":
        if set(data) != {_TAG, "type", "data"} or type(data["type"]) is not str:
            raise CheckpointError("a checkpointed 'json' value is malformed")
        _check_plain(data["data"])
        return data["data"]
    if set(data) != {_TAG, "data"}:
        raise CheckpointError(f"a checkpointed value tagged {tag!r:.40} is malformed")
    if tag == "dict":
        if type(data["data"]) is not dict:
            raise CheckpointError("a checkpointed 'dict' value is malformed")
        return {_key(k): _decode(v) for k, v in data["data"].items()}
    model = _MODELS.get(tag) if type(tag) is str else None
    if model is None:
        raise CheckpointError(
            f"a checkpointed value has the unknown tag {tag!r:.60}",
            hint="it was written by a newer gecko_actors, or the checkpoint was tampered with",
        )
    _check_plain(data["data"])
    try:
        return model.model_validate(data["data"])
    except ValidationError as exc:
        raise CheckpointError(f"a checkpointed {tag} is invalid: {exc}") from None


def _key(key: Any) -> str:
    if type(key) is not str:
        raise CheckpointError(f"a checkpointed dict has a {type(key).__name__} key")
    return key


def _check_plain(data: Any) -> None:
    if data is None or type(data) in (bool, int, float, str, bytes):
        return
    if type(data) is list:
        for item in data:
            _check_plain(item)
        return
    if type(data) is dict:
        for key, item in data.items():
            _key(key)
            _check_plain(item)
        return
    raise CheckpointError(f"a checkpointed value has the unexpected type {type(data).__name__}")


# --- records ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What a run is: written once when it starts. Its status lives in a separate small
    object (see :meth:`CheckpointStore.update_status`), merged in by
    :meth:`CheckpointStore.read_manifest`."""

    run_id: str
    workflow: str
    fingerprint: str
    input: Any
    created_at: float
    status: str = "running"  # running | succeeded | failed | cancelled
    result: Any = None
    error: str | None = None
    finished_at: float | None = None


@dataclasses.dataclass(frozen=True)
class StepRecord:
    """One finished visit of a node. Its idempotency key is ``f"{run_id}/{node}/{visit}"``.

    ``seq`` is the commit order (0-based, assigned by the coordinator); ``state`` holds the
    state changes the node made (not the whole state); ``next`` is a ``Next(node, input)``
    jump the node returned, as ``{"node": ..., "input": ...}``; ``routes`` maps each outgoing
    edge's target to its condition's outcome, so that a resumed run replays the decisions
    instead of evaluating the conditions again.
    """

    seq: int
    node: str
    visit: int
    output: Any
    state: dict[str, Any]
    attempts: int
    duration: float
    usage: dict[str, Any] | None = None
    next: dict[str, Any] | None = None
    finished_at: float = 0.0
    routes: dict[str, bool] | None = None


_MANIFEST_KEYS = frozenset(["type", "version", *(f.name for f in dataclasses.fields(Manifest))])
_STATUS_KEYS = frozenset(
    ("type", "version", "run_id", "status", "result", "error", "updated_at", "finished_at")
)
_STEP_KEYS = frozenset(
    ["type", "version", "run_id", *(f.name for f in dataclasses.fields(StepRecord))]
)
_COMMIT_KEYS = frozenset(("type", "version", "run_id", "seq", "object", "size", "sha256"))
_RECORD_KEYS = {
    "manifest": _MANIFEST_KEYS,
    "status": _STATUS_KEYS,
    "step": _STEP_KEYS,
    "commit": _COMMIT_KEYS,
}


class _RefusedExtension(Exception):
    pass


def _refuse_ext(code: int, data: bytes) -> Any:
    raise _RefusedExtension(code)


def _pack(record: dict[str, Any]) -> bytes:
    try:
        return msgpack.packb(record, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:  # encode_value should prevent this
        raise UserError(f"cannot serialise a checkpoint record: {exc}") from None


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _validate_run_id(run_id: Any) -> str:
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise UserError(
            f"invalid run_id {run_id!r:.80}",
            hint="a run_id is 1-200 letters, digits, '_', '-' or '.', not starting with '.'",
        )
    return run_id


def _validate_status(status: Any) -> str:
    if status not in STATUSES:
        raise UserError(f"invalid run status {status!r:.40}", hint=f"use one of {STATUSES}")
    return status


# --- where the store lives --------------------------------------------------------------------


def _as_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r:.40}")


def _as_scheme(value: str) -> str:
    if value not in ("http", "https"):
        raise ValueError(f"expected http or https, got {value!r:.40}")
    return value


_S3_OPTIONS: dict[str, Callable[[str], Any]] = {
    "region": str,
    "endpoint_override": str,
    "scheme": _as_scheme,
    "allow_delayed_open": _as_bool,
    "allow_bucket_creation": _as_bool,
    "allow_bucket_deletion": _as_bool,
    "check_directory_existence_before_creation": _as_bool,
    "force_virtual_addressing": _as_bool,
    "background_writes": _as_bool,
    "anonymous": _as_bool,
    "connect_timeout": float,
    "request_timeout": float,
    "load_frequency": int,
    "tls_ca_file_path": str,
    "role_arn": str,
    "session_name": str,
    "external_id": str,
}


@dataclasses.dataclass(frozen=True)
class _Location:
    scheme: str  # file | s3 | gs
    root: str  # the root folder's path in the filesystem (for s3/gs: "bucket/prefix")
    options: tuple[tuple[str, Any], ...] = ()

    def display(self, path: str) -> str:
        """The URI of an object, without query parameters."""
        return f"file://{path}" if self.scheme == "file" else f"{self.scheme}://{path}"

    def build(self) -> FileSystem:
        from pyarrow import fs

        if self.scheme == "file":
            return fs.LocalFileSystem()
        if self.scheme == "gs":
            query = f"?{urlencode(self.options)}" if self.options else ""
            return fs.FileSystem.from_uri(f"gs://{self.root}{query}")[0]
        kwargs = dict(self.options)
        if "region" not in kwargs:
            if "endpoint_override" in kwargs:
                kwargs["region"] = (
                    os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
                )
            else:  # as FileSystem.from_uri does: ask S3 where the bucket lives
                kwargs["region"] = fs.resolve_s3_region(self.root.split("/", 1)[0])
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


def _credentials_error(safe_uri: str, what: str) -> UserError:
    return UserError(
        f"the checkpoint URI {safe_uri!r} carries credentials ({what}); they are not accepted "
        "in a URI, which ends up in logs, events and job entrypoints",
        hint="remove them and set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus "
        "AWS_SESSION_TOKEN for temporary credentials) in the environment, or use an AWS "
        "profile or role; for gs:// use GOOGLE_APPLICATION_CREDENTIALS",
    )


def _parse_uri(uri: Any) -> _Location:
    if not isinstance(uri, str) or not uri.strip():
        raise UserError(
            f"invalid checkpoint location {uri!r:.80}",
            hint="give an absolute path or a file:///abs/dir, s3://bucket/prefix or "
            "gs://bucket/prefix URI",
        )
    uri = uri.strip()
    if "://" not in uri:
        if not os.path.isabs(uri):
            raise UserError(
                f"the checkpoint location {uri!r} is a relative path",
                hint="give an absolute path or file:///abs/dir (a relative path would depend "
                "on the working directory of whichever process opens it)",
            )
        return _Location("file", os.path.normpath(uri))
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise UserError(f"invalid checkpoint URI: {exc}") from None
    scheme = parts.scheme.lower()
    host = parts.netloc.rpartition("@")[2]
    safe = f"{scheme}://{host}{parts.path}"
    query = parse_qsl(parts.query, keep_blank_values=True)
    if "@" in parts.netloc:
        raise _credentials_error(safe, "user:password@")
    secret = sorted({name for name, _ in query if _SECRET_PARAM.search(name)})
    if secret:
        raise _credentials_error(safe, "query parameters " + ", ".join(secret))
    if parts.fragment:
        raise UserError(f"the checkpoint URI {safe!r} has a '#' fragment", hint="remove it")
    if scheme == "file":
        path = unquote(parts.path)
        if parts.netloc not in ("", "localhost") or not os.path.isabs(path):
            raise UserError(
                f"the checkpoint URI {uri!r} does not name an absolute path",
                hint="write file:///abs/dir (three slashes), or give the absolute path itself",
            )
        if query:
            raise UserError(f"the checkpoint URI {uri!r} has query parameters; file:// takes none")
        return _Location("file", os.path.normpath(path))
    if scheme in ("gs", "gcs"):
        scheme = "gs"
    elif scheme != "s3":
        raise UserError(
            f"unsupported checkpoint URI scheme {scheme!r} in {safe!r}",
            hint="use an absolute path, file:///abs/dir, s3://bucket/prefix or gs://bucket/prefix",
        )
    prefix = unquote(parts.path).strip("/")
    if not host or any(seg in ("", ".", "..") for seg in prefix.split("/") if prefix):
        raise UserError(f"invalid checkpoint URI {safe!r}", hint=f"write {scheme}://bucket/prefix")
    root = f"{host}/{prefix}" if prefix else host
    names = [name for name, _ in query]
    if len(set(names)) != len(names):
        raise UserError(f"the checkpoint URI {safe!r} repeats a query parameter")
    if scheme == "gs":  # passed to pyarrow's FileSystem.from_uri, which checks them
        return _Location("gs", root, tuple(query))
    options: list[tuple[str, Any]] = []
    for name, value in query:
        if name not in _S3_OPTIONS:
            raise UserError(
                f"unknown query parameter {name!r} in the checkpoint URI {safe!r}",
                hint=f"s3:// URIs accept {', '.join(sorted(_S3_OPTIONS))}",
            )
        try:
            options.append((name, _S3_OPTIONS[name](value)))
        except ValueError as exc:
            raise UserError(f"invalid {name!r} in the checkpoint URI {safe!r}: {exc}") from None
    return _Location("s3", root, tuple(options))


def _join(*parts: str) -> str:
    return "/".join([parts[0].rstrip("/"), *parts[1:]])


# --- the store -------------------------------------------------------------------------------


class CheckpointStore:
    """Workflow runs in a local directory or an object store, through ``pyarrow.fs``.

    Args:
        uri: ``"file:///abs/dir"``, an absolute path, ``"s3://bucket/prefix"`` (query
            parameters such as ``endpoint_override=host:port``, ``scheme=http`` and
            ``region=...`` configure the client) or ``"gs://bucket/prefix"``. Credentials come
            from the environment, never from the URI.
        retries: how many times a failed read or write is tried again before it raises
            :class:`CheckpointError`.
        backoff: seconds before the first retry; doubled for each next one.

    Thread-safe; picklable (only the URI and options travel, the filesystem client is made
    again where it is first used). Every method blocks: call it from a thread
    (``asyncio.to_thread``) inside an async actor.
    """

    def __init__(self, uri: str, *, retries: int = 3, backoff: float = 0.2) -> None:
        if type(retries) is not int or retries < 0:
            raise UserError(f"retries must be an int >= 0, got {retries!r}")
        if not _is_number(backoff) or backoff < 0:
            raise UserError(f"backoff must be a number >= 0, got {backoff!r}")
        self._location = _parse_uri(uri)
        self.uri: str = uri.strip()
        self.retries = retries
        self.backoff = float(backoff)
        self._fs: FileSystem | None = None
        self._lock = threading.Lock()
        self._made_dirs: set[str] = set()

    def __repr__(self) -> str:
        return f"CheckpointStore({self.uri!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.uri, "retries": self.retries, "backoff": self.backoff}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["uri"], retries=state["retries"], backoff=state["backoff"])  # type: ignore[misc]

    # --- manifest and status ------------------------------------------------------------

    def write_manifest(self, manifest: Manifest) -> int:
        """Write the run's manifest; returns the bytes written. A status object already
        there (see :meth:`update_status`) still takes precedence when reading: to reuse a
        run_id from scratch, :meth:`delete_run` first."""
        run_id = _validate_run_id(manifest.run_id)
        _validate_status(manifest.status)
        for name in ("workflow", "fingerprint"):
            if not isinstance(getattr(manifest, name), str):
                raise UserError(f"Manifest.{name} must be a str")
        if not _is_number(manifest.created_at):
            raise UserError("Manifest.created_at must be a number (time.time())")
        if manifest.error is not None and not isinstance(manifest.error, str):
            raise UserError("Manifest.error must be a str or None")
        if manifest.finished_at is not None and not _is_number(manifest.finished_at):
            raise UserError("Manifest.finished_at must be a number or None")
        data = _pack(
            {
                "type": "manifest",
                "version": RECORD_VERSION,
                "run_id": run_id,
                "workflow": manifest.workflow,
                "fingerprint": manifest.fingerprint,
                "input": _encode_at(manifest.input, "input", run_id=run_id),
                "created_at": float(manifest.created_at),
                "status": manifest.status,
                "result": _encode_at(manifest.result, "result", run_id=run_id),
                "error": manifest.error,
                "finished_at": manifest.finished_at,
            }
        )
        self._put(self._path(run_id, _MANIFEST), data, run_id)
        return len(data)

    def read_manifest(self, run_id: str) -> Manifest | None:
        """The run's manifest with its latest status merged in; None if there is no such run."""
        run_id = _validate_run_id(run_id)
        path = self._path(run_id, _MANIFEST)
        raw = self._get(path, run_id)
        if raw is None:
            return None
        rec = self._unpack(raw, path, "manifest", run_id)
        where = self._location.display(path)
        self._expect(rec, where, run_id, workflow=str, fingerprint=str, status=str)
        self._expect(rec, where, run_id, created_at=(int, float))
        self._expect(rec, where, run_id, error=(str, None), finished_at=(int, float, None))
        manifest = Manifest(
            run_id=run_id,
            workflow=rec["workflow"],
            fingerprint=rec["fingerprint"],
            input=self._decode_at(rec["input"], where, run_id),
            created_at=rec["created_at"],
            status=self._status_of(rec, where, run_id),
            result=self._decode_at(rec["result"], where, run_id),
            error=rec["error"],
            finished_at=rec["finished_at"],
        )
        path = self._path(run_id, _STATUS)
        raw = self._get(path, run_id)
        if raw is None:
            return manifest
        rec = self._unpack(raw, path, "status", run_id)
        where = self._location.display(path)
        self._expect(rec, where, run_id, status=str, error=(str, None))
        self._expect(rec, where, run_id, updated_at=(int, float), finished_at=(int, float, None))
        return dataclasses.replace(
            manifest,
            status=self._status_of(rec, where, run_id),
            result=self._decode_at(rec["result"], where, run_id),
            error=rec["error"],
            finished_at=rec["finished_at"],
        )

    def update_status(
        self, run_id: str, status: str, *, result: Any = None, error: str | None = None
    ) -> int:
        """Record the run's status (and its result or error) in a small object of its own —
        the manifest and the steps are not rewritten. Returns the bytes written."""
        run_id = _validate_run_id(run_id)
        _validate_status(status)
        if error is not None and not isinstance(error, str):
            raise UserError("error must be a str or None")
        now = time.time()
        data = _pack(
            {
                "type": "status",
                "version": RECORD_VERSION,
                "run_id": run_id,
                "status": status,
                "result": _encode_at(result, "result", run_id=run_id),
                "error": error,
                "updated_at": now,
                "finished_at": now if status in _TERMINAL else None,
            }
        )
        self._put(self._path(run_id, _STATUS), data, run_id)
        return len(data)

    # --- steps --------------------------------------------------------------------------

    def commit_step(self, run_id: str, record: StepRecord) -> int:
        """Write one finished node: its data object, then its commit marker (the data's
        sha256 and size). Returns the bytes written (0 if this exact step was already
        committed). The same ``seq`` already committed with other content is a
        :class:`CheckpointError`: another coordinator is writing the same run."""
        run_id = _validate_run_id(run_id)
        data = _pack(_step_to_record(run_id, record))  # raises before anything is written
        name = f"{record.seq:08d}.msgpack"
        digest = hashlib.sha256(data).hexdigest()
        marker = _pack(
            {
                "type": "commit",
                "version": RECORD_VERSION,
                "run_id": run_id,
                "seq": record.seq,
                "object": name,
                "size": len(data),
                "sha256": digest,
            }
        )
        data_path = self._path(run_id, _STEPS, name)
        marker_path = self._path(run_id, _STEPS, f"{record.seq:08d}.commit")
        try:
            existing = self._get(marker_path, run_id)
            if existing is None:
                self._put(data_path, data, run_id)
                self._put(marker_path, marker, run_id)
                return len(data) + len(marker)
        except CheckpointError as exc:
            raise CheckpointError(
                f"step {record.seq} of run {run_id!r} (node {record.node!r}) was not "
                f"committed: {exc.message}",
                hint=exc.hint,
                **{**exc.context, "node": record.node},
            ) from exc.__cause__
        old = self._read_marker(existing, marker_path, run_id, record.seq)
        if old["sha256"] == digest and old["size"] == len(data):
            return 0
        raise CheckpointError(
            f"step {record.seq} of run {run_id!r} is already committed with different "
            f"content ({self._location.display(marker_path)!r})",
            hint="two coordinators may be running the same run, or a seq was reused",
            uri=self._location.display(marker_path),
            run_id=run_id,
            node=record.node,
        )

    def load_steps(self, run_id: str) -> list[StepRecord]:
        """The run's committed steps in seq order ([] for an unknown run). A data object
        without its marker (a torn write) is skipped; anything that does not verify or
        decode is a :class:`CheckpointError` naming the object."""
        from pyarrow.fs import FileType

        run_id = _validate_run_id(run_id)
        steps_dir = self._path(run_id, _STEPS)
        markers: dict[int, FileInfo] = {}
        datas: dict[int, FileInfo] = {}
        for info in self._list(steps_dir, run_id):
            match = _STEP_NAME.fullmatch(info.base_name)
            if match is None or info.type != FileType.File:
                continue  # a local write's temporary file, or something not ours
            (markers if match[2] == "commit" else datas)[int(match[1])] = info
        for seq in sorted(set(datas) - set(markers)):
            _log.warning(
                "checkpoint step without commit marker ignored (torn write)",
                run_id=run_id,
                object=self._location.display(datas[seq].path),
            )
        seqs = sorted(markers)
        if seqs != list(range(len(seqs))):
            _log.warning(
                "checkpoint steps are not contiguous", run_id=run_id, seqs=seqs[:20], n=len(seqs)
            )
        raws = self._get_many([markers[seq].path for seq in seqs], run_id)
        expected: list[tuple[int, dict[str, Any]]] = []
        for seq, raw in zip(seqs, raws, strict=True):
            path = markers[seq].path
            if raw is None:
                raise self._corrupt(path, run_id, "disappeared while loading")
            marker = self._read_marker(raw, path, run_id, seq)
            data = datas.get(seq)
            if data is None:
                raise self._corrupt(
                    path, run_id, f"commits {marker['object']!r}, which does not exist"
                )
            if data.size is not None and data.size != marker["size"]:
                raise self._corrupt(
                    data.path,
                    run_id,
                    f"has {data.size} bytes; its commit marker says "
                    f"{marker['size']} (truncated or tampered with)",
                )
            expected.append((seq, marker))
        raws = self._get_many([datas[seq].path for seq, _ in expected], run_id)
        steps = []
        for (seq, marker), raw in zip(expected, raws, strict=True):
            path = datas[seq].path
            if raw is None:
                raise self._corrupt(path, run_id, "disappeared while loading")
            if len(raw) != marker["size"] or hashlib.sha256(raw).hexdigest() != marker["sha256"]:
                raise self._corrupt(
                    path,
                    run_id,
                    "does not match the sha256 and size in its commit marker "
                    "(truncated or tampered with)",
                )
            steps.append(self._read_step(raw, path, run_id, seq))
        return steps

    # --- runs ---------------------------------------------------------------------------

    def list_runs(self) -> list[str]:
        """The run_ids that have a manifest, sorted."""
        from pyarrow.fs import FileType

        root = self._location.root
        names = sorted(
            info.base_name
            for info in self._list(root, None)
            if info.type == FileType.Directory and _RUN_ID.fullmatch(info.base_name)
        )
        if not names:
            return []
        paths = [_join(root, name, _MANIFEST) for name in names]
        infos = self._retry("list", root, None, lambda fs: fs.get_file_info(paths))
        return [n for n, i in zip(names, infos, strict=True) if i.type == FileType.File]

    def delete_run(self, run_id: str) -> None:
        """Delete everything stored for the run (nothing happens for an unknown run)."""
        run_id = _validate_run_id(run_id)
        run_dir = self._path(run_id)

        def delete(fs: FileSystem) -> None:
            with contextlib.suppress(FileNotFoundError):
                fs.delete_dir(run_dir)

        self._retry("delete", run_dir, run_id, delete)
        with self._lock:
            self._made_dirs = {d for d in self._made_dirs if not _within(d, run_dir)}

    # --- I/O ----------------------------------------------------------------------------

    def _path(self, run_id: str, *parts: str) -> str:
        return _join(self._location.root, run_id, *parts)

    def _filesystem(self) -> FileSystem:
        with self._lock:
            if self._fs is None:
                self._fs = self._location.build()
            return self._fs

    def _retry(
        self, action: str, path: str, run_id: str | None, fn: Callable[[FileSystem], _T]
    ) -> _T:
        from pyarrow.lib import ArrowException

        last: BaseException | None = None
        for attempt in range(self.retries + 1):
            try:
                return fn(self._filesystem())
            except (OSError, ArrowException) as exc:
                last = exc
                if attempt < self.retries:
                    time.sleep(self.backoff * 2**attempt)
        where = self._location.display(path)
        raise CheckpointError(
            f"could not {action} checkpoint object {where!r} (store {self.uri!r}) after "
            f"{self.retries + 1} attempt(s): {last}",
            hint="check that the storage is reachable and writable and that credentials are "
            "set in the environment (AWS_* / GOOGLE_*)",
            uri=where,
            run_id=run_id,
        ) from last

    def _put(self, path: str, data: bytes, run_id: str) -> None:
        parent = path.rpartition("/")[0]
        local = self._location.scheme == "file"

        def write(fs: FileSystem) -> None:
            if not local:
                # One call with all the bytes: an object store publishes whatever was written
                # when a stream is closed, even by an exception.
                with fs.open_output_stream(path, compression=None) as out:
                    out.write(data)
                return
            if parent not in self._made_dirs:
                fs.create_dir(parent, recursive=True)
                self._made_dirs.add(parent)
            # Write aside, then rename (atomic on a local filesystem): a reader never sees half.
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            try:
                with fs.open_output_stream(tmp, compression=None) as out:
                    out.write(data)
                fs.move(tmp, path)
            except BaseException:
                self._made_dirs.discard(parent)
                with contextlib.suppress(Exception):  # best effort: the first error matters
                    fs.delete_file(tmp)
                raise

        self._retry("write", path, run_id, write)

    def _get(self, path: str, run_id: str | None) -> bytes | None:
        def read(fs: FileSystem) -> bytes | None:
            try:
                with fs.open_input_stream(path, compression=None) as src:
                    return src.read()
            except FileNotFoundError:
                return None

        return self._retry("read", path, run_id, read)

    def _get_many(self, paths: list[str], run_id: str) -> list[bytes | None]:
        if self._location.scheme == "file" or len(paths) < 2:
            return [self._get(path, run_id) for path in paths]
        # Object stores answer each request in tens of milliseconds: overlap them.
        with ThreadPoolExecutor(min(_READ_THREADS, len(paths))) as pool:
            return list(pool.map(lambda path: self._get(path, run_id), paths))

    def _list(self, path: str, run_id: str | None) -> list[FileInfo]:
        from pyarrow.fs import FileSelector

        selector = FileSelector(path, allow_not_found=True)
        return self._retry("list", path, run_id, lambda fs: fs.get_file_info(selector))

    # --- decoding -----------------------------------------------------------------------

    def _corrupt(self, path: str, run_id: str | None, problem: str) -> CheckpointError:
        where = self._location.display(path)
        return CheckpointError(
            f"checkpoint object {where!r} {problem}",
            hint="the checkpoint is damaged or was written by something else; restore it, or "
            "delete the run and start it again",
            uri=where,
            run_id=run_id,
        )

    def _unpack(self, raw: bytes, path: str, kind: str, run_id: str) -> dict[str, Any]:
        try:
            rec = msgpack.unpackb(
                raw, raw=False, strict_map_key=True, ext_hook=_refuse_ext, use_list=True
            )
        except _RefusedExtension as exc:
            raise self._corrupt(path, run_id, f"holds msgpack extension type {exc}") from None
        except Exception as exc:  # any decoding failure of untrusted bytes
            raise self._corrupt(
                path,
                run_id,
                f"is not a valid msgpack record ({type(exc).__name__}: {exc!s:.200})",
            ) from None
        try:
            _check_plain(rec)
        except (CheckpointError, RecursionError):
            raise self._corrupt(path, run_id, "holds something other than plain data") from None
        if type(rec) is not dict or "type" not in rec or "version" not in rec:
            raise self._corrupt(path, run_id, "is not a gecko_actors checkpoint record")
        if rec["type"] not in _RECORD_KEYS:
            raise self._corrupt(path, run_id, f"holds a record of unknown type {rec['type']!r:.60}")
        if rec["type"] != kind:
            raise self._corrupt(path, run_id, f"holds a {rec['type']!r} record, not a {kind!r}")
        if rec["version"] != RECORD_VERSION:
            error = self._corrupt(
                path,
                run_id,
                f"holds {kind!r} record version {rec['version']!r:.40}; this gecko_actors "
                f"reads version {RECORD_VERSION}",
            )
            error.hint = "it was written by another gecko_actors version: use that version"
            raise error
        keys = set(rec)
        if keys != _RECORD_KEYS[kind]:
            missing, extra = sorted(_RECORD_KEYS[kind] - keys), sorted(keys - _RECORD_KEYS[kind])
            raise self._corrupt(
                path,
                run_id,
                f"is a malformed {kind!r} record (missing {missing}, unexpected {extra})",
            )
        if rec["run_id"] != run_id:
            raise self._corrupt(path, run_id, f"belongs to run {rec['run_id']!r:.80}")
        return rec

    def _expect(self, rec: dict[str, Any], where: str, run_id: str, **types: Any) -> None:
        for key, allowed in types.items():
            allowed = allowed if isinstance(allowed, tuple) else (allowed,)
            if not any(rec[key] is None if t is None else type(rec[key]) is t for t in allowed):
                raise CheckpointError(
                    f"checkpoint object {where!r} has an invalid {key!r}",
                    hint="the checkpoint was tampered with or written by something else",
                    uri=where,
                    run_id=run_id,
                )

    def _status_of(self, rec: dict[str, Any], where: str, run_id: str) -> str:
        if rec["status"] not in STATUSES:
            raise CheckpointError(
                f"checkpoint object {where!r} has the unknown status {rec['status']!r:.40}",
                uri=where,
                run_id=run_id,
            )
        return rec["status"]

    def _decode_at(self, data: Any, where: str, run_id: str) -> Any:
        try:
            return decode_value(data)
        except CheckpointError as exc:
            raise CheckpointError(
                f"checkpoint object {where!r}: {exc.message}",
                hint=exc.hint,
                uri=where,
                run_id=run_id,
            ) from None

    def _read_marker(self, raw: bytes, path: str, run_id: str, seq: int) -> dict[str, Any]:
        rec = self._unpack(raw, path, "commit", run_id)
        where = self._location.display(path)
        self._expect(rec, where, run_id, seq=int, object=str, size=int, sha256=str)
        if (
            rec["seq"] != seq
            or rec["object"] != f"{seq:08d}.msgpack"
            or not re.fullmatch(r"[0-9a-f]{64}", rec["sha256"])
        ):
            raise self._corrupt(path, run_id, "is not the commit marker of its step")
        return rec

    def _read_step(self, raw: bytes, path: str, run_id: str, seq: int) -> StepRecord:
        rec = self._unpack(raw, path, "step", run_id)
        where = self._location.display(path)
        self._expect(rec, where, run_id, seq=int, node=str, visit=int, attempts=int)
        self._expect(rec, where, run_id, duration=(int, float), finished_at=(int, float))
        self._expect(rec, where, run_id, state=dict, usage=(dict, None), next=(dict, None))
        self._expect(rec, where, run_id, routes=(dict, None))
        if rec["seq"] != seq:
            raise self._corrupt(path, run_id, f"holds step {rec['seq']}, not {seq}")
        state = self._decode_at(rec["state"], where, run_id)
        jump = rec["next"]
        if jump is not None:
            if set(jump) != {"node", "input"} or type(jump["node"]) is not str:
                raise self._corrupt(path, run_id, "has a malformed 'next'")
            jump = {"node": jump["node"], "input": self._decode_at(jump["input"], where, run_id)}
        routes = rec["routes"]
        if routes is not None and not all(type(v) is bool for v in routes.values()):
            raise self._corrupt(path, run_id, "has a malformed 'routes'")
        if type(state) is not dict:
            raise self._corrupt(path, run_id, "has a malformed 'state'")
        return StepRecord(
            seq=seq,
            node=rec["node"],
            visit=rec["visit"],
            output=self._decode_at(rec["output"], where, run_id),
            state=state,
            attempts=rec["attempts"],
            duration=rec["duration"],
            usage=rec["usage"],
            next=jump,
            finished_at=rec["finished_at"],
            routes=routes,
        )


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _step_to_record(run_id: str, r: StepRecord) -> dict[str, Any]:
    def bad(field: str, expected: str) -> UserError:
        value = getattr(r, field, None)
        return UserError(
            f"invalid StepRecord.{field} {value!r:.60}: expected {expected}",
            run_id=run_id,
            node=getattr(r, "node", None),
        )

    if not _is_count(r.seq) or r.seq > _MAX_SEQ:
        raise bad("seq", f"an int from 0 to {_MAX_SEQ}")
    if not isinstance(r.node, str) or not r.node:
        raise bad("node", "a non-empty str")
    if not _is_count(r.visit):
        raise bad("visit", "an int >= 0")
    if not _is_count(r.attempts):
        raise bad("attempts", "an int >= 0")
    if not _is_number(r.duration) or r.duration < 0:
        raise bad("duration", "a number of seconds >= 0")
    if not _is_number(r.finished_at):
        raise bad("finished_at", "a number (time.time())")
    if not isinstance(r.state, dict):
        raise bad("state", "a dict of the state changes")
    usage = r.usage
    if isinstance(usage, Usage):
        usage = usage.model_dump(mode="json", exclude_none=True)
    if usage is not None and not isinstance(usage, dict):
        raise bad("usage", "a dict or None")
    jump = r.next
    if jump is not None and not isinstance(jump, dict) and hasattr(jump, "node"):
        jump = {"node": jump.node, "input": getattr(jump, "input", None)}  # a Next
    if jump is not None and (
        not isinstance(jump, dict)
        or not isinstance(jump.get("node"), str)
        or set(jump) - {"node", "input"}
    ):
        raise bad("next", "None or {'node': str, 'input': ...}")
    routes = r.routes
    if routes is not None and (
        not isinstance(routes, dict)
        or not all(isinstance(k, str) and isinstance(v, bool) for k, v in routes.items())
    ):
        raise bad("routes", "None or a dict of target node -> bool")
    at = {"run_id": run_id, "node": r.node}
    return {
        "type": "step",
        "version": RECORD_VERSION,
        "run_id": run_id,
        "seq": r.seq,
        "node": r.node,
        "visit": r.visit,
        "output": _encode_at(r.output, "output", **at),
        "state": _encode_at(r.state, "state", **at),
        "attempts": r.attempts,
        "duration": float(r.duration),
        "usage": _encode_at(usage, "usage", **at),
        "next": None
        if jump is None
        else {
            "node": jump["node"],
            "input": _encode_at(jump.get("input"), "next input", **at),
        },
        "routes": None if routes is None else {str(k): bool(v) for k, v in routes.items()},
        "finished_at": float(r.finished_at),
    }
