"""Embedders: turn texts into vectors for a vector store.

:class:`HashEmbedder` is deterministic and offline (feature hashing, no model to download): good
for tests, demos and keyword-ish recall. :class:`LiteLLMEmbedder` calls any LiteLLM embedding
model. Both satisfy the :class:`Embedder` protocol and pickle, so they can travel to a Ray actor.
Nothing here imports Ray or lancedb.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from gecko_actors.core.litellm_model import _litellm, pause_or_raise
from gecko_actors.core.secret_args import (
    env_arguments,
    read_key,
    refuse_secret_arguments,
    register_extra_secrets,
    resolve_env_arguments,
    secret_leaves,
    url_holds_secret,
)
from gecko_actors.exceptions import ModelError, UserError
from gecko_actors.logging import get_logger
from gecko_actors.settings import load_settings

__all__ = ["Embedder", "HashEmbedder", "LiteLLMEmbedder"]

_log = get_logger("gecko_actors.embedders")


@runtime_checkable
class Embedder(Protocol):
    """Anything that turns texts into vectors of one fixed size.

    Attributes:
        dimensions: the length of every vector. An embedder that only learns it from its first
            answer (:class:`LiteLLMEmbedder` without ``dimensions=``) holds ``None`` until then.
    """

    dimensions: int

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order."""
        ...


def check_texts(texts: Sequence[str], call: str = "embed") -> list[str]:
    """``texts`` as a list of str; a lone string or a non-str item is a UserError naming
    ``call()`` (shared by embedders and the vector store)."""
    if isinstance(texts, str):
        raise UserError(
            f"{call}() takes a sequence of texts, not a single string",
            hint=f"wrap the text in a list: {call}([text])",
        )
    items = list(texts)
    for index, text in enumerate(items):
        if not isinstance(text, str):
            raise UserError(
                f"text #{index} to {call} is a {type(text).__name__}, not a str",
                hint="convert every item to a string before passing it",
            )
    return items


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{name} must be a positive integer, got {value!r}")
    return value


# --- HashEmbedder ---------------------------------------------------------------------------

_WORD = re.compile(r"\w+")
_WORD_WEIGHT = 1.0
_TRIGRAM_WEIGHT = 0.5
_EMPTY_FEATURE = "e:<empty>"
_INLINE_BATCH = 64  # larger batches are hashed in a worker thread, off the event loop


class HashEmbedder:
    """A deterministic, offline embedder based on feature hashing.

    Each text is lowercased and split into words (``\\w+``). Every word contributes a unigram
    feature (weight 1.0) and the character trigrams of ``<word>`` (weight 0.5 each), so
    inflections and typos still overlap. Each feature is hashed with blake2b into an index and a
    sign, the weights are summed, and the vector is L2-normalised: texts that share words are
    close in cosine similarity, texts that share nothing are near 0. A text with no word at all
    (``""``, ``"!!!"``) maps to one fixed unit vector, so no vector is ever zero.

    The same text gives the same vector in every process and every Python version (no reliance
    on ``hash()`` or its per-process seed). It captures vocabulary overlap, not meaning: use a
    real model (:class:`LiteLLMEmbedder`) for semantic search.

    Args:
        dimensions: the vector length (256 by default); more dimensions mean fewer collisions.
    """

    def __init__(self, dimensions: int = 256) -> None:
        self.dimensions = _check_positive_int("dimensions", dimensions)

    def __repr__(self) -> str:
        return f"HashEmbedder(dimensions={self.dimensions})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HashEmbedder) and other.dimensions == self.dimensions

    def __hash__(self) -> int:
        return hash((HashEmbedder, self.dimensions))

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        items = check_texts(texts)
        if len(items) > _INLINE_BATCH:
            return await asyncio.to_thread(self.embed_sync, items)
        return self.embed_sync(items)

    def embed_sync(self, texts: Sequence[str]) -> list[list[float]]:
        """The same vectors as :meth:`embed`, computed in the calling thread."""
        items = check_texts(texts)
        return [self._vector(text).tolist() for text in items]

    def _vector(self, text: str) -> np.ndarray:
        vector = np.zeros(self.dimensions, dtype=np.float64)
        words = _WORD.findall(text.lower())
        for word in words:
            self._add(vector, f"w:{word}", _WORD_WEIGHT)
            padded = f"<{word}>"
            for start in range(len(padded) - 2):
                self._add(vector, f"c:{padded[start : start + 3]}", _TRIGRAM_WEIGHT)
        norm = float(np.linalg.norm(vector))
        if norm == 0.0:  # no feature, or features that cancelled out exactly
            vector[:] = 0.0
            self._add(vector, _EMPTY_FEATURE, 1.0)
            norm = 1.0
        return (vector / norm).astype(np.float32)

    def _add(self, vector: np.ndarray, feature: str, weight: float) -> None:
        digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest()
        value = int.from_bytes(digest, "little")
        index = (value & 0x7FFF_FFFF_FFFF_FFFF) % self.dimensions
        vector[index] += weight if value >> 63 else -weight


# --- LiteLLMEmbedder ------------------------------------------------------------------------

_RESERVED = {
    "model",
    "input",
    "api_base",
    "api_key",
    "timeout",
    "num_retries",
    "max_retries",
    "dimensions",
}


class LiteLLMEmbedder:
    """An embedding model served by any LiteLLM provider (``"openai/text-embedding-3-small"``).

    Texts are sent in batches of ``batch_size``, one request per batch, in order. Every setting
    travels with each call; litellm's module globals are never touched. litellm is imported
    lazily (after :func:`~gecko_actors.settings.prepare_offline_environment`), so the object is
    cheap to build and to pickle: only the settings travel, and the key is read from
    ``api_key_env`` inside the process that calls.

    Args:
        model: the LiteLLM model name, with its provider prefix.
        api_base: an OpenAI-compatible base URL (a proxy, vLLM, a local server).
        api_key_env: the name of an environment variable holding the key; when omitted,
            litellm's own provider variables (``OPENAI_API_KEY``, ...) apply.
        dimensions: the expected vector length, checked against every answer. It is not sent
            to the provider (many models and servers reject that parameter), so it must match
            what the model returns. When omitted, it is learned from the first answer and then
            enforced.
        batch_size: texts per request.
        timeout: seconds for one request.
        num_retries: retries after the first attempt, for rate limits, 5xx, timeouts and
            connection errors (default: ``GECKO_MODEL_RETRIES``).
        retry_backoff: base of the exponential back-off, in seconds.
        extra_env: other arguments read from environment variables at call time, as
            ``{argument: VARIABLE}`` (only the names travel to an embedding gateway).
        headers_env: HTTP headers read from environment variables at call time, as
            ``{header: VARIABLE}`` (merged into ``extra_headers``).
        **extra: other ``litellm.aembedding`` arguments (``encoding_format``, ``extra_headers``).
            On Ray (an embedding gateway) an argument holding a secret, by its name or its
            shape, is refused: pass it through ``extra_env`` / ``headers_env``.

    Raises:
        ModelError: (from :meth:`embed`) the provider failed, naming the model.
        ConfigurationError: (from :meth:`embed`) ``api_key_env`` names an unset variable.
    """

    def __init__(
        self,
        model: str,
        *,
        api_base: str | None = None,
        api_key_env: str | None = None,
        dimensions: int | None = None,
        batch_size: int = 128,
        timeout: float = 30.0,
        num_retries: int | None = None,
        retry_backoff: float = 0.5,
        extra_env: Mapping[str, str] | None = None,
        headers_env: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        if not isinstance(model, str) or not model.strip():
            raise UserError(
                f"LiteLLMEmbedder needs a model name, got {model!r}",
                hint='pass e.g. model="openai/text-embedding-3-small"',
            )
        clash = sorted(_RESERVED & extra.keys())
        if clash:
            raise UserError(
                f"LiteLLMEmbedder does not take {clash} as extra arguments",
                hint="use the named parameters of LiteLLMEmbedder instead",
                model=model,
            )
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
            raise UserError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.model = model
        self.api_base = api_base
        self.api_key_env = api_key_env
        self.dimensions: int | None = (
            None if dimensions is None else _check_positive_int("dimensions", dimensions)
        )
        self.batch_size = _check_positive_int("batch_size", batch_size)
        self.timeout = float(timeout)
        if num_retries is None:
            num_retries = load_settings().model_retries
        if isinstance(num_retries, bool) or not isinstance(num_retries, int) or num_retries < 0:
            raise UserError(f"num_retries must be an integer >= 0, got {num_retries!r}")
        self.num_retries = num_retries
        self.retry_backoff = retry_backoff
        self.extra = extra
        self.extra_env, self.headers_env = env_arguments(
            model, extra, extra_env, headers_env, reserved=_RESERVED
        )
        register_extra_secrets(extra)

    def __repr__(self) -> str:
        return (
            f"LiteLLMEmbedder(model={self.model!r}, api_base={self.api_base!r}, "
            f"dimensions={self.dimensions}, batch_size={self.batch_size})"
        )

    def _resolve_key(self) -> str | None:
        return read_key(self.api_key_env, self.model) if self.api_key_env else None

    def validate_environment(self) -> None:
        """Raise :class:`~gecko_actors.exceptions.ConfigurationError` naming the variable when
        ``api_key_env`` or a variable of ``extra_env`` / ``headers_env`` is not set here."""
        for variable in [*self.extra_env.values(), *self.headers_env.values()]:
            read_key(variable, self.model)
        self._resolve_key()

    def secret_arguments(self) -> list[str]:
        """The arguments that hold a secret value (names only): credentials in ``api_base``
        and extras secret by name or by shape."""
        found = ["api_base"] if self.api_base and url_holds_secret(self.api_base) else []
        return found + [path for path, _ in secret_leaves(self.extra)]

    def check_shippable(self) -> None:
        """Raise :class:`~gecko_actors.exceptions.UserError` naming every argument that would
        carry a secret value to an embedding gateway actor (Ray keeps its arguments)."""
        refuse_secret_arguments("embedding model", self.model, self.secret_arguments())

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order; ``[]`` for no text (without calling the provider)."""
        items = check_texts(texts)
        if not items:
            return []
        request: dict[str, Any] = {
            "model": self.model,
            "timeout": self.timeout,
            "num_retries": 0,
            "max_retries": 0,
            **self.extra,
        }
        if self.api_base is not None:
            request["api_base"] = self.api_base
        key = self._resolve_key()
        if key is not None:
            request["api_key"] = key
        resolve_env_arguments(request, self.extra_env, self.headers_env, self.model)
        litellm = _litellm()  # the shared loader: offline environment, no debug banners
        vectors: list[list[float]] = []
        for start in range(0, len(items), self.batch_size):
            batch = items[start : start + self.batch_size]
            vectors.extend(await self._embed_batch(litellm, request, batch))
        return vectors

    async def _embed_batch(
        self, litellm: Any, request: dict[str, Any], batch: list[str]
    ) -> list[list[float]]:
        for attempt in range(self.num_retries + 1):
            try:
                raw = await asyncio.wait_for(
                    litellm.aembedding(**request, input=batch), self.timeout + 1.0
                )
            except Exception as exc:
                await self._before_retry(exc, attempt)
                continue
            return self._vectors(raw, len(batch))
        raise AssertionError("unreachable")  # pragma: no cover

    def _vectors(self, raw: Any, expected: int) -> list[list[float]]:
        data = raw.get("data") if isinstance(raw, dict) else getattr(raw, "data", None)
        if not isinstance(data, list) or len(data) != expected:
            got = len(data) if isinstance(data, list) else "no"
            raise ModelError(
                f"embedding model {self.model!r} returned {got} vectors for {expected} texts",
                hint="check that api_base serves an OpenAI-compatible /embeddings endpoint",
                model=self.model,
            )
        items = [item if isinstance(item, dict) else dict(item) for item in data]
        items.sort(key=lambda item: item.get("index", 0))
        vectors: list[list[float]] = []
        for item in items:
            vector = item.get("embedding")
            if not isinstance(vector, list) or not vector:
                raise ModelError(
                    f"embedding model {self.model!r} returned an invalid embedding "
                    f"({type(vector).__name__})",
                    hint="use the default float encoding_format",
                    model=self.model,
                )
            if self.dimensions is None:
                self.dimensions = len(vector)
            elif len(vector) != self.dimensions:
                raise ModelError(
                    f"embedding model {self.model!r} returned vectors of {len(vector)} "
                    f"dimensions, expected {self.dimensions}",
                    hint="set dimensions= to the model's size, or use one embedder per model",
                    model=self.model,
                )
            vectors.append([float(x) for x in vector])
        return vectors

    async def _before_retry(self, exc: Exception, attempt: int) -> None:
        await pause_or_raise(
            exc,
            attempt,
            self.num_retries,
            self.retry_backoff,
            model=self.model,
            timeout=self.timeout,
            what="embedding model",
        )
