"""Encryption at rest of checkpoint payloads: AES-256-GCM, keys from the environment. Ray-free.

What a run's records hold that came from its users or its models (a step's output, its state
writes' values, its jump input and input summary; a run's input, result and error; a fork's
state values and input; a waiting node's payload; every journal entry's value) is *sealed*
when ``GECKO_CHECKPOINT_KEY`` is set in the writing process: replaced, in the record, by ::

    {"__gecko__": "sealed", "key": "<key id>", "nonce": <12 bytes>, "data": <ciphertext+tag>}

where the plaintext is the payload's msgpack bytes, the nonce is random for each payload, and
the associated data names the payload's place (run id, record kind, seq or journal key, field),
so a sealed payload copied into another place does not decrypt (a user's dict that uses the
tag key is escaped by the codec: it is never taken for a sealed payload). The rest of each
record (run id, node, visit, seq, epoch, status, times, token usage, state keys, commit
markers, owner claims, the run index) stays clear: listing, ``gecko-actors list``, ``gc`` and
the index work without the key.

Keys: ``GECKO_CHECKPOINT_KEY`` (standard base64 of 32 random bytes) seals and opens;
``GECKO_CHECKPOINT_OLD_KEYS`` (comma separated, same form) only open. A key's id is the first
8 hex digits of the sha256 of its 32 bytes; it is stored with each sealed payload to pick the
key. Keys are never logged, stored or sent anywhere (they are registered for redaction).
``cryptography`` is imported only once a key is set: without one, nothing here needs it.

Reading a sealed payload whose key this process lacks raises :class:`CheckpointError` naming
the key id, unless the reader asked for markers (``mark=True``: listing and display), which
read it as the text ``<encrypted: key 1a2b3c4d>``. A payload that does not decrypt with its
key (tampered with, or moved) is always an error. Plain payloads read as they are, key or not.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack

from gecko_actors._redact import register_secret
from gecko_actors.checkpoint.codec import TAG, check_plain
from gecko_actors.checkpoint.records import corrupt
from gecko_actors.exceptions import CheckpointError, ConfigurationError

__all__ = [
    "KEY_VARIABLE",
    "OLD_KEYS_VARIABLE",
    "SEALED",
    "Keyring",
    "is_marker",
    "key_id",
    "keyring",
    "marker",
    "open_record",
    "seal_record",
]

#: The variable holding the key that encrypts (and decrypts).
KEY_VARIABLE = "GECKO_CHECKPOINT_KEY"
#: The variable holding older keys that may still decrypt, comma separated.
OLD_KEYS_VARIABLE = "GECKO_CHECKPOINT_OLD_KEYS"
#: The codec tag of a sealed payload.
SEALED = "sealed"
_MAKE_KEY = 'python -c "import os,base64;print(base64.b64encode(os.urandom(32)).decode())"'
_SEALED_KEYS = frozenset((TAG, "key", "nonce", "data"))
_KEY_ID = re.compile(r"[0-9a-f]{8}")
_NONCE_BYTES = 12
_TAG_BYTES = 16
_AAD_DOMAIN = "gecko_actors/checkpoint/sealed/v1"
_MARK_PREFIX = "<encrypted: key "


@dataclass(frozen=True)
class Keyring:
    """This process's checkpoint keys: ``sealing`` is the id of the key that encrypts (None:
    payloads are written in clear); ``ciphers`` maps every usable key id to its cipher."""

    sealing: str | None = None
    ciphers: dict[str, Any] = field(default_factory=dict, repr=False)


def key_id(key: bytes) -> str:
    """The id of a 32-byte key: the first 8 hex digits of its sha256 (stored beside each
    payload it seals; it says nothing useful about the key)."""
    return hashlib.sha256(key).hexdigest()[:8]


def keyring() -> Keyring:
    """The keys in this process's environment (read at each call, parsed once per value):
    a malformed key is a :class:`ConfigurationError` naming its variable."""
    return _keyring(os.environ.get(KEY_VARIABLE) or None, os.environ.get(OLD_KEYS_VARIABLE) or None)


@functools.lru_cache(maxsize=8)
def _keyring(current: str | None, old: str | None) -> Keyring:
    if current is None and old is None:
        return Keyring()
    aesgcm = _aesgcm()
    keys = [] if current is None else [_parse_key(current, KEY_VARIABLE)]
    items = [] if old is None else [item for item in old.split(",") if item.strip()]
    keys += [
        _parse_key(item, f"{OLD_KEYS_VARIABLE} (item {i + 1})") for i, item in enumerate(items)
    ]
    ciphers = {key_id(key): aesgcm(key) for key in keys}
    return Keyring(None if current is None else key_id(keys[0]), ciphers)


def _aesgcm() -> Any:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        raise ConfigurationError(
            f"{KEY_VARIABLE} or {OLD_KEYS_VARIABLE} is set, but the 'cryptography' package "
            "that encrypts checkpoints is not installed",
            hint="pip install 'gecko-actors[encryption]'",
        ) from None
    return AESGCM


def _parse_key(text: str, name: str) -> bytes:
    """The 32 bytes of a standard-base64 key (never echoed in errors)."""
    text = text.strip()
    register_secret(text)
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        problem = "it is not standard base64"
    else:
        if len(key) == 32:
            return key
        problem = f"it decodes to {len(key)} bytes, not 32"
        if re.fullmatch(r"[0-9a-fA-F]{64}", text):
            problem += " (it looks like hex, which is not accepted: use base64)"
    raise ConfigurationError(
        f"{name} is not a checkpoint key: {problem}",
        hint=f"a key is 32 random bytes in standard base64 (44 characters); make one with: "
        f"{_MAKE_KEY}",
        variable=name.split(" ")[0],
    )


def marker(kid: str) -> str:
    """What a payload sealed with key ``kid`` reads as for a reader without that key that
    asked for markers (listing and display)."""
    return f"{_MARK_PREFIX}{kid}>"


def is_marker(value: Any) -> bool:
    """Whether ``value`` is the marker of a payload read without its key."""
    return type(value) is str and value.startswith(_MARK_PREFIX) and value.endswith(">")


# --- records -----------------------------------------------------------------------------------


def seal_record(rec: dict[str, Any], ring: Keyring | None = None) -> dict[str, Any]:
    """``rec`` (a manifest, status, step or journal record map, just built) with its payloads
    sealed by the current key, in place; unchanged without a key. ``None`` is not sealed."""
    ring = keyring() if ring is None else ring
    if ring.sealing is None:
        return rec
    cipher = ring.ciphers[ring.sealing]
    for holder, slot, place in _slots(rec):
        if holder.get(slot) is not None:
            plain = msgpack.packb(holder[slot], use_bin_type=True)
            nonce = os.urandom(_NONCE_BYTES)
            data = cipher.encrypt(nonce, plain, _aad(rec, place))
            holder[slot] = {TAG: SEALED, "key": ring.sealing, "nonce": nonce, "data": data}
    return rec


def open_record(rec: dict[str, Any], where: str, *, mark: bool = False) -> dict[str, Any]:
    """``rec`` (an unpacked record map, stored at ``where``) with its sealed payloads
    decrypted, in place; plain payloads stay as they are. A payload whose key this process
    lacks raises :class:`CheckpointError` (``mark=True``: reads as :func:`marker`); one that
    is malformed or does not decrypt (tampered with, moved from another place) always raises.
    """
    ring: Keyring | None = None
    for holder, slot, place in _slots(rec):
        sealed = holder.get(slot)
        if type(sealed) is not dict or sealed.get(TAG) != SEALED:
            continue
        kid = _checked(sealed, where, rec)
        ring = keyring() if ring is None else ring
        cipher = ring.ciphers.get(kid)
        if cipher is None:
            if not mark:
                raise _no_key(kid, ring, where, rec.get("run_id"))
            holder[slot] = marker(kid)
            continue
        aad = _aad(rec, place)
        holder[slot] = _decrypted(cipher, sealed, aad, where, rec.get("run_id"), kid)
    return rec


def _slots(rec: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str, tuple[Any, ...]]]:
    """Each payload of a record: (the map holding it, its key there, its place). Tolerant of
    malformed records (it skips what is not where it should be: the record's own checks
    name the problem)."""
    kind = rec.get("type")
    if kind == "step":
        seq = rec.get("seq")
        yield from _present(rec, "output", (seq, "output"))
        yield from _present(rec, "input_summary", (seq, "input_summary"))
        jump = rec.get("next")
        if type(jump) is dict:
            yield from _present(jump, "input", (seq, "next"))
        writes = rec.get("writes")
        for i, write in enumerate(writes if type(writes) is list else ()):
            if type(write) is dict:
                yield from _present(write, "value", (seq, "writes", i))
    elif kind in ("manifest", "status"):
        yield from _present(rec, "result", ("result",))
        yield from _present(rec, "error", ("error",))
        if kind == "manifest":
            yield from _present(rec, "input", ("input",))
            fork = rec.get("fork")
            if type(fork) is dict:
                yield from _present(fork, "input", ("fork", "input"))
                state = _user_map(fork.get("state"))
                for key in list(state):
                    yield state, key, ("fork", "state", key)
        else:
            waiting = _user_map(rec.get("waiting"))
            for node, entry in list(waiting.items()):
                if type(entry) is dict:
                    yield from _present(entry, "payload", ("waiting", node))
    elif kind == "journal":
        yield from _present(rec, "value", ("journal", rec.get("key")))
    elif kind == "schedule":  # a schedule's input: what each of its runs starts with
        yield from _present(rec, "input", ("schedule", rec.get("name")))


def _present(
    holder: dict[str, Any], slot: str, place: tuple[Any, ...]
) -> Iterator[tuple[dict[str, Any], str, tuple[Any, ...]]]:
    if slot in holder:
        yield holder, slot, place


def _user_map(encoded: Any) -> dict[str, Any]:
    """The map of a user's dict as the codec encodes it (escaped when it uses the tag key)."""
    if type(encoded) is not dict:
        return {}
    if TAG not in encoded:
        return encoded
    inner = encoded.get("data")
    return inner if encoded.get(TAG) == "dict" and type(inner) is dict else {}


def _aad(rec: dict[str, Any], place: tuple[Any, ...]) -> bytes:
    """The associated data binding a payload to its place: the run, the record kind and
    the payload's position in it."""
    return msgpack.packb([_AAD_DOMAIN, rec.get("run_id"), rec.get("type"), *place])


# --- one payload ---------------------------------------------------------------------------------


def _checked(sealed: dict[str, Any], where: str, rec: dict[str, Any]) -> str:
    """The key id of a well-formed sealed payload; a malformed one is a CheckpointError."""
    if (
        set(sealed) != _SEALED_KEYS
        or type(sealed["key"]) is not str
        or not _KEY_ID.fullmatch(sealed["key"])
        or type(sealed["nonce"]) is not bytes
        or len(sealed["nonce"]) != _NONCE_BYTES
        or type(sealed["data"]) is not bytes
        or len(sealed["data"]) < _TAG_BYTES
    ):
        raise corrupt(where, rec.get("run_id"), "has a malformed encrypted payload")
    return sealed["key"]


def _decrypted(
    cipher: Any, sealed: dict[str, Any], aad: bytes, where: str, run_id: str | None, kid: str
) -> Any:
    from cryptography.exceptions import InvalidTag

    try:
        plain = cipher.decrypt(sealed["nonce"], sealed["data"], aad)
    except InvalidTag:
        raise corrupt(
            where,
            run_id,
            f"has an encrypted payload that does not decrypt with key {kid}: it was tampered "
            "with, or copied from another record",
        ) from None
    try:
        value = msgpack.unpackb(plain, raw=False, strict_map_key=True, ext_hook=_refuse)
        check_plain(value)
    except Exception:  # authenticated, yet not plain msgpack data: not written by us
        raise corrupt(where, run_id, "has an encrypted payload that is not plain data") from None
    return value


def _refuse(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code}")


def _no_key(kid: str, ring: Keyring, where: str, run_id: str | None) -> CheckpointError:
    held = ", ".join(sorted(ring.ciphers))
    held = f"it has key {held}" if held else f"{KEY_VARIABLE} is not set"
    of_run = "" if run_id is None else f" of run {run_id!r}"
    return CheckpointError(
        f"checkpoint object {where!r}{of_run} is encrypted with key {kid}, which "
        f"this process does not have ({held})",
        hint=f"set {KEY_VARIABLE} to that key (or add it to {OLD_KEYS_VARIABLE} when a newer "
        "key encrypts) in the environment of this process and, on a cluster, of every node; "
        "a key's id is the first 8 hex digits of the sha256 of its 32 bytes",
        uri=where,
        run_id=run_id,
        key_id=kid,
    )
