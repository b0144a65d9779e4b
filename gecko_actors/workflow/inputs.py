"""A run's input given on the command line: text, or ``@file.json`` read as strict JSON.

The file is read up to a size cap (``GECKO_MAX_INPUT_BYTES``, 10 MiB by default), checked
before reading and while reading (a FIFO or ``/dev/zero`` has no size); the value must be one a
checkpoint can store. Everything else is a :class:`UserError` naming the file and the problem,
raised before any Ray process starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gecko_actors._text import is_plain_number
from gecko_actors.checkpoint.codec import MAX_DEPTH, encode_value
from gecko_actors.core.files import read_capped
from gecko_actors.core.strict_json import StrictJSONError, loads_strict
from gecko_actors.exceptions import UserError

MAX_INPUT_BYTES = 10 * 1024 * 1024
MAX_INPUT_VARIABLE = "GECKO_MAX_INPUT_BYTES"


def read_input(value: str | None, base: Path | None = None) -> Any:
    """A run's input from ``--input``: the text itself, or the JSON data of ``@file``
    (relative to ``base`` if given). Anything that cannot be read, is not JSON, or cannot be
    checkpointed is a UserError naming the file and the problem."""
    if value is None:
        return None
    if not value.startswith("@"):
        return _checkpointable(value, "--input")
    if not value[1:]:
        raise UserError("--input @ names no file", hint="write --input @path/to/input.json")
    path = Path(value[1:])
    if base is not None and not path.is_absolute():
        path = base / path
    return _checkpointable(_read_json(path), f"the input file {str(path)!r}")


def max_input_bytes() -> int:
    """The cap on an input file, from GECKO_MAX_INPUT_BYTES (a UserError if it is not valid)."""
    raw = os.environ.get(MAX_INPUT_VARIABLE)
    if raw is None:
        return MAX_INPUT_BYTES
    text = raw.strip()
    # 15 digits is far past any memory.
    if not is_plain_number(text, 15) or int(text) <= 0:
        raise UserError(
            f"{MAX_INPUT_VARIABLE}={raw!r:.40} is not a number of bytes above 0",
            hint=f"unset it (the default is {MAX_INPUT_BYTES}) or set e.g. 52428800 for 50 MiB",
        )
    return int(text)


def _read_json(path: Path) -> Any:
    """The JSON data of ``path``, read up to the size cap."""
    hint = (
        f"set {MAX_INPUT_VARIABLE} to raise the cap, or have the workflow read the data "
        "itself (pass its path or URL as the input)"
    )
    label = f"the input file {str(path)!r}"
    raw = read_capped(path, max_input_bytes(), label=label, hint=hint)
    try:
        text = raw.decode("utf-8-sig")  # a BOM is tolerated, as most editors write one
    except UnicodeDecodeError as exc:
        raise UserError(
            f"the input file {str(path)!r} is not UTF-8 text: byte {raw[exc.start]:#04x} at "
            f"offset {exc.start}",
            hint="save it as UTF-8 JSON",
        ) from None
    return _loads(text, path)


def _loads(text: str, path: Path) -> Any:
    try:
        return loads_strict(text, max_depth=MAX_DEPTH)
    except StrictJSONError as exc:
        raise UserError(
            f"the input file {str(path)!r} cannot be used: {exc}",
            hint="write plain JSON (NaN and Infinity cannot be checkpointed portably: use "
            "null or a string)",
        ) from None


def _checkpointable(value: Any, where: str) -> Any:
    """``value`` if a checkpoint can store it; a UserError naming ``where`` if not, before
    any Ray process starts."""
    try:
        encode_value(value)
    except UserError as exc:
        raise UserError(f"{where}: {exc.message}", hint=exc.hint) from None
    return value
