"""Values in a checkpoint: plain msgpack data, with gecko_actors' own types tagged.

:func:`encode_value` turns what a workflow node returns (or stores in its state) into plain
data that msgpack packs without extension types; :func:`decode_value` turns it back. Only a
fixed set of tags is known (``AgentOutput``, ``Message``, ``ToolCall``, ``Usage``, an escaped
``dict``, and ``json`` for other pydantic models and dataclasses, which come back as plain
dicts): nothing is imported or executed from a checkpoint, and an unknown tag is a
:class:`~gecko_actors.exceptions.CheckpointError`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python

from gecko_actors.core.messages import AgentOutput, Message, ToolCall, Usage
from gecko_actors.exceptions import CheckpointError, UserError
from gecko_actors.workflow.graph import Next

__all__ = ["MAX_DEPTH", "TAG", "check_plain", "decode_value", "encode_field", "encode_value"]

#: The key that marks a tagged value in encoded data.
TAG = "__gecko__"
_MODELS: dict[str, type[BaseModel]] = {
    "AgentOutput": AgentOutput,
    "Message": Message,
    "ToolCall": ToolCall,
    "Usage": Usage,
}
_MODEL_TAGS = {cls: tag for tag, cls in _MODELS.items()}
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
#: How deeply lists and dicts may nest in a stored value. msgpack refuses to pack past 511
#: levels, and a record adds a few (and an escaped dict one per level), so the limit is
#: checked here, where the error can name the value, not when the record is packed.
MAX_DEPTH = 200
_DEEP_HINT = "return plain data of reasonable depth from workflow nodes"
_ALLOWED_TYPES = (
    "None, bool, int, float, str, bytes, lists/tuples and dicts with str keys of these, "
    "AgentOutput, Message, ToolCall, Usage, and pydantic models or dataclasses (which come back "
    "from a checkpoint as plain dicts)"
)


def encode_value(value: Any) -> Any:
    """``value`` as msgpack-able plain data; gecko_actors' own types are tagged so that
    :func:`decode_value` rebuilds them. Anything else is a :class:`UserError`."""
    return encode_field(value, "value")


class _Unencodable(Exception):
    """Raised deep inside :func:`_encode`; each container on the way up adds its key, so the
    path costs nothing unless something fails."""

    def __init__(self, problem: str, hint: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.hint = hint
        self.path: list[str] = []


def encode_field(value: Any, where: str, **context: Any) -> Any:
    """:func:`encode_value` for a named field of a record: a :class:`UserError` names the path
    inside ``where`` (``output['a'][3]``) and carries ``context`` (``run_id=``, ``node=``)."""
    at = ", ".join(f"{k} {v!r}" for k, v in context.items() if v is not None)
    at = f" ({at})" if at else ""
    try:
        return _encode(value, 0)
    except _Unencodable as exc:
        path = where + "".join(reversed(exc.path))
        path = path if len(path) <= 200 else f"{path[:197]}..."
        raise UserError(
            f"cannot checkpoint {path}{exc.problem}{at}", hint=exc.hint, **context
        ) from None
    except RecursionError:
        raise UserError(
            f"cannot checkpoint {where}{at}: it is nested too deeply (or contains itself)",
            hint=_DEEP_HINT,
            **context,
        ) from None


def _encode(value: Any, depth: int) -> Any:
    kind = type(value)
    if kind is str:
        return _checked_str(value)
    if value is None or kind is bool or kind is float or kind is bytes:
        return value
    if kind is int:
        if not _INT_MIN <= value <= _INT_MAX:
            raise _Unencodable(
                f": the int {value} does not fit in 64 bits", "return very large integers as str"
            )
        return value
    if isinstance(value, (list, tuple, dict)) and depth >= MAX_DEPTH:
        raise _Unencodable(
            f": it is nested too deeply (more than {MAX_DEPTH} levels, or it contains itself)",
            _DEEP_HINT,
        )
    if kind is list or kind is tuple or isinstance(value, (list, tuple)):
        out_list = []
        for i, item in enumerate(value):
            try:
                out_list.append(_encode(item, depth + 1))
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
                out[str.__str__(key)] = _encode(item, depth + 1)
            except _Unencodable as exc:
                exc.path.append(f"[{key!r}]")
                raise
        # A user dict that happens to use our tag key is escaped, so it is never mistaken for
        # a tagged value.
        return {TAG: "dict", "data": out} if TAG in out else out
    if isinstance(value, int):  # IntEnum and friends: stored as the plain value
        return _encode(int(value), depth)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return _checked_str(str.__str__(value))
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if kind is Next:
        # A dataclass, so it would be stored as a plain dict and the jump silently lost.
        raise _Unencodable(
            f": it is a Next({_short(value.node)}, ...) jump inside a value",
            "a node jumps by returning one Next(node, input) itself, not inside a list, a "
            "dict or its state (a map node's items cannot jump)",
        )
    if kind in _MODEL_TAGS:
        return {TAG: _MODEL_TAGS[kind], "data": _dump_model(value)}
    if isinstance(value, BaseModel) or (
        dataclasses.is_dataclass(value) and not isinstance(value, type)
    ):
        return {TAG: "json", "type": _qualname(value), "data": _dump_json(value)}
    raise _Unencodable(
        f" of type {_qualname(value)}",
        f"a workflow node may return (and store in its state) {_ALLOWED_TYPES}",
    )


def _checked_str(value: str) -> str:
    """``value`` if it can be stored as UTF-8 (msgpack's str): a lone surrogate (from a
    ``\\ud800`` JSON escape or a file name decoded with ``surrogateescape``) cannot."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _Unencodable(
                f": the str {_short(value)} holds {value[exc.start]!r} at index {exc.start}, "
                "which is not valid Unicode text (a lone surrogate)",
                "decode bytes with errors='replace', or store them as bytes",
            ) from None
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


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
    if TAG not in data:
        return {_key(k): _decode(v) for k, v in data.items()}
    tag = data[TAG]
    if tag == "sealed":  # crypto.open_record decrypts these before a value is decoded
        raise CheckpointError(
            "a checkpointed value is encrypted and was read without being decrypted",
            hint="read checkpoints through CheckpointStore (and Journal), which decrypt",
        )
    if tag == "json":
        if set(data) != {TAG, "type", "data"} or type(data["type"]) is not str:
            raise CheckpointError("a checkpointed 'json' value is malformed")
        check_plain(data["data"])
        return data["data"]
    if set(data) != {TAG, "data"}:
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
    check_plain(data["data"])
    try:
        return model.model_validate(data["data"])
    except ValidationError as exc:
        raise CheckpointError(f"a checkpointed {tag} is invalid: {exc}") from None


def _key(key: Any) -> str:
    if type(key) is not str:
        raise CheckpointError(f"a checkpointed dict has a {type(key).__name__} key")
    return key


def check_plain(data: Any) -> None:
    """Raise :class:`CheckpointError` unless ``data`` is plain msgpack data (no extension
    types, str keys only), as decoded from untrusted bytes."""
    if data is None or type(data) in (bool, int, float, str, bytes):
        return
    if type(data) is list:
        for item in data:
            check_plain(item)
        return
    if type(data) is dict:
        for key, item in data.items():
            _key(key)
            check_plain(item)
        return
    raise CheckpointError(f"a checkpointed value has the unexpected type {type(data).__name__}")
