"""TokenMemory: count tokens offline and trim a conversation to a token budget."""

from __future__ import annotations

import functools
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from gecko_actors.core.messages import Message
from gecko_actors.exceptions import UserError
from gecko_actors.logging import get_logger
from gecko_actors.settings import prepare_offline_environment

MESSAGE_OVERHEAD = 4
"""Tokens every message costs beyond its content (role, separators), as in OpenAI's guide."""
IMAGE_TOKENS = 85
"""What one image counts for: a placeholder (a low-detail image's cost at OpenAI)."""
TRUNCATION_MARK = " …[truncated]"
_log = get_logger("gecko_actors.memory")


@functools.lru_cache(maxsize=8)
def _encoding(model_name: str) -> Any:
    """tiktoken's encoding for a model, falling back to cl100k_base; ``None`` when tiktoken
    cannot load any encoding (then counts are estimated from characters)."""
    prepare_offline_environment()
    import tiktoken

    name = model_name.rsplit("/", 1)[-1]
    try:
        return tiktoken.encoding_for_model(name)
    except KeyError:
        pass
    except Exception as exc:  # offline without the bundled files
        _log.warning("tiktoken unavailable, estimating tokens", error=str(exc))
        return None
    try:
        return tiktoken.get_encoding("cl100k_base")
    except Exception as exc:
        _log.warning("tiktoken unavailable, estimating tokens", error=str(exc))
        return None


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    size: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class TokenMemory:
    """Token counting with an LRU cache, and budget trimming of conversations.

    Args:
        max_tokens: the budget :meth:`trim` and :meth:`get_history` keep to.
        model_name: picks the tiktoken encoding (``cl100k_base`` if unknown).
        cache_size: how many message counts the LRU cache holds.
        max_message_tokens: longer messages are truncated when history is loaded
            (default: half the budget), so one huge tool result cannot evict everything.
    """

    def __init__(
        self,
        max_tokens: int = 4000,
        model_name: str = "gpt-4o-mini",
        *,
        cache_size: int = 2048,
        max_message_tokens: int | None = None,
    ) -> None:
        if max_tokens <= 0 or cache_size <= 0:
            raise UserError(
                "TokenMemory max_tokens and cache_size must be positive",
                hint=f"got max_tokens={max_tokens}, cache_size={cache_size}",
            )
        self.max_tokens = max_tokens
        self.model_name = model_name
        self.cache_size = cache_size
        self.max_message_tokens = max_message_tokens or max(max_tokens // 2, 1)
        self._cache: OrderedDict[bytes, int] = OrderedDict()
        self._stats = CacheStats()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TokenMemory(max_tokens={self.max_tokens}, model_name={self.model_name!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def cache_stats(self) -> CacheStats:
        return CacheStats(self._stats.hits, self._stats.misses, len(self._cache))

    # --- counting -----------------------------------------------------------------------

    def count_text(self, text: str) -> int:
        encoding = _encoding(self.model_name)
        if encoding is None:
            return (len(text) + 3) // 4
        return len(encoding.encode(text, disallowed_special=()))

    def count(self, message: Message) -> int:
        """Tokens of one message: text, tool calls, images (placeholder) and overhead."""
        return self.count_many([message])[0]

    def count_many(self, messages: Sequence[Message]) -> list[int]:
        """Counts for many messages; cache misses are encoded in one batch."""
        keys = [_key(m) for m in messages]
        counts: list[int | None] = [self._cached(k) for k in keys]
        missing = [i for i, c in enumerate(counts) if c is None]
        if missing:
            texts = [_countable_text(messages[i]) for i in missing]
            for i, tokens in zip(missing, self._encode_batch(texts), strict=True):
                counts[i] = tokens + MESSAGE_OVERHEAD + IMAGE_TOKENS * len(messages[i].images)
                self._store(keys[i], counts[i])  # type: ignore[arg-type]
        return [int(c) for c in counts]  # type: ignore[arg-type]

    def total(self, messages: Sequence[Message]) -> int:
        return sum(self.count_many(messages))

    def _encode_batch(self, texts: list[str]) -> list[int]:
        encoding = _encoding(self.model_name)
        if encoding is None:
            return [(len(t) + 3) // 4 for t in texts]
        return [len(e) for e in encoding.encode_batch(texts, disallowed_special=())]

    def _cached(self, key: bytes) -> int | None:
        with self._lock:
            value = self._cache.get(key)
            if value is None:
                self._stats.misses += 1
                return None
            self._cache.move_to_end(key)
            self._stats.hits += 1
            return value

    def _store(self, key: bytes, value: int) -> None:
        with self._lock:
            self._cache[key] = value
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    # --- trimming -----------------------------------------------------------------------

    def trim(self, messages: Sequence[Message], max_tokens: int | None = None) -> list[Message]:
        """Keep the leading system message(s), then the newest messages that fit the budget.

        A tool result is never kept without the assistant message that asked for it: the
        providers reject such a conversation.
        """
        budget = max_tokens or self.max_tokens
        system = [m for m in messages[:1] if m.role == "system"]
        rest = list(messages[len(system) :])
        if self.fits(messages, budget):
            kept = rest  # certainly within budget: no need to encode anything
        else:
            kept = self._newest_that_fit(rest, budget - self.total(system))
        while kept and kept[0].role == "tool":
            kept.pop(0)
        return system + kept

    def _newest_that_fit(self, messages: list[Message], budget: int) -> list[Message]:
        kept: list[Message] = []
        for message, tokens in zip(
            reversed(messages), reversed(self.count_many(messages)), strict=True
        ):
            if tokens > budget:
                break
            kept.append(message)
            budget -= tokens
        kept.reverse()
        return kept

    def fits(self, messages: Sequence[Message], budget: int | None = None) -> bool:
        """True when ``messages`` surely fit ``budget``, decided without tiktoken.

        A BPE token is at least one byte, so a message's UTF-8 size (plus overhead) bounds its
        token count from above. Short conversations skip encoding altogether — and an agent
        process that never needs to trim never loads an encoding (tens of MB).
        """
        limit = budget or self.max_tokens
        return sum(_upper_bound(m) for m in messages) <= limit

    def get_history(
        self, raw: Iterable[Message | dict[str, Any]], max_tokens: int | None = None
    ) -> list[Message]:
        """Validate stored records (dropping invalid ones), truncate huge messages, and
        trim to the budget."""
        messages: list[Message] = []
        dropped = 0
        for item in raw:
            try:
                message = item if isinstance(item, Message) else Message.model_validate(item)
            except (ValidationError, TypeError):
                dropped += 1
                continue
            messages.append(self.truncate(message))
        if dropped:
            _log.warning("dropped invalid history entries", count=dropped)
        return self.trim(messages, max_tokens)

    def truncate(self, message: Message, max_tokens: int | None = None) -> Message:
        """Cut a text message down to ``max_tokens`` (default ``max_message_tokens``)."""
        limit = max_tokens or self.max_message_tokens
        if not isinstance(message.content, str) or _upper_bound(message) <= limit:
            return message
        if self.count(message) <= limit:
            return message
        encoding = _encoding(self.model_name)
        keep = max(limit - MESSAGE_OVERHEAD - 8, 1)
        if encoding is None:
            text = message.content[: keep * 4]
        else:
            text = encoding.decode(encoding.encode(message.content, disallowed_special=())[:keep])
        return message.model_copy(update={"content": text + TRUNCATION_MARK})


def _countable_text(message: Message) -> str:
    parts = [message.role, message.text]
    if message.name:
        parts.append(message.name)
    for call in message.tool_calls:
        parts += [call.name, call.arguments]
    return "\n".join(parts)


def _upper_bound(message: Message) -> int:
    """A count no smaller than the real one: tokens are at least a byte each."""
    text = _countable_text(message)
    return len(text.encode("utf-8")) + MESSAGE_OVERHEAD + IMAGE_TOKENS * len(message.images)


def _key(message: Message) -> bytes:
    return hashlib.blake2b(message.to_msgpack(), digest_size=16).digest()
