"""The durable store of workflow runs: plain msgpack records, fenced commits.

- :mod:`~gecko_actors.checkpoint.codec`: values as plain msgpack data (never pickle);
- :mod:`~gecko_actors.checkpoint.records`: :class:`Manifest`, :class:`StepRecord`,
  :class:`StateWrite` and their stored form, validated both ways;
- :mod:`~gecko_actors.checkpoint.location`: store URIs (``file://``, ``s3://``, ``gs://``,
  ``memory://``), refusing credentials;
- :mod:`~gecko_actors.checkpoint.backends`: the I/O primitives of each storage;
- :mod:`~gecko_actors.checkpoint.store`: :class:`CheckpointStore`, one writer per run;
- :mod:`~gecko_actors.checkpoint.crypto`: encryption at rest of the records' payloads
  (``GECKO_CHECKPOINT_KEY``).

Checkpoints are data, never code: pydantic models and dataclasses other than gecko_actors' own
messages come back as plain dicts, and a tampered, truncated or unknown object is a
:class:`~gecko_actors.exceptions.CheckpointError` naming it.
"""

from gecko_actors.checkpoint.codec import decode_value, encode_value
from gecko_actors.checkpoint.records import (
    RECORD_VERSION,
    Fork,
    Manifest,
    StateWrite,
    StepRecord,
)
from gecko_actors.checkpoint.store import CheckpointStore

__all__ = [
    "RECORD_VERSION",
    "CheckpointStore",
    "Fork",
    "Manifest",
    "StateWrite",
    "StepRecord",
    "decode_value",
    "encode_value",
]
