"""LiteLLMModel: any LiteLLM provider behind the :class:`~gecko_actors.core.models.ChatModel`
protocol.

Every setting travels with each call; litellm's module globals (``litellm.api_base``,
``litellm.api_key``, ...) are never touched, so two models never see each other's
configuration. litellm is imported lazily, after the offline environment is prepared.

Retries are ours, not litellm's: litellm is called with ``num_retries=0`` and ``max_retries=0``
and this module retries rate limits (honouring ``Retry-After``), 5xx answers, timeouts and
connection errors with exponential back-off. That keeps the number of attempts exact and
observable, and it is the same policy the cluster-wide gateway applies later.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any

from pydantic import SecretStr

from gecko_actors._redact import register_secret
from gecko_actors.core.messages import Message, Usage
from gecko_actors.core.models import ModelResponse, ToolChoice, ToolSchema
from gecko_actors.core.secret_args import (
    env_arguments,
    read_key,
    refuse_secret_arguments,
    register_extra_secrets,
    resolve_env_arguments,
    secret_leaves,
    url_holds_secret,
)
from gecko_actors.exceptions import (
    ConfigurationError,
    GeckoError,
    ModelError,
    ModelTimeoutError,
    UserError,
)
from gecko_actors.logging import get_logger
from gecko_actors.settings import (
    API_KEY_VARIABLE,
    load_settings,
    prepare_offline_environment,
)

_RESERVED = {
    "model",
    "messages",
    "tools",
    "tool_choice",
    "stream",
    "api_key",
    "api_base",
    "num_retries",
    "max_retries",
    "timeout",
    "response_format",
}
_RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529}
_MAX_RETRY_AFTER = 60.0
_log = get_logger("gecko_actors.model")


def _litellm() -> Any:
    prepare_offline_environment()
    import litellm

    # The one global we set: litellm otherwise prints "Give Feedback / Get Help" banners to
    # stdout on every exception, into the user's program output. It carries no configuration.
    litellm.suppress_debug_info = True
    return litellm


class LiteLLMModel:
    """A chat model served by any LiteLLM provider (``"openai/gpt-4o-mini"``, ...).

    Args:
        model: the LiteLLM model name, with its provider prefix.
        api_base: an OpenAI-compatible base URL (a proxy, vLLM, a local server).
        api_key: the key, as a ``SecretStr`` or str; kept secret, never logged or repr'd.
            When omitted, ``api_key_env`` is read at call time, then litellm's own provider
            variables (``OPENAI_API_KEY``, ...).
        api_key_env: the name of an environment variable holding the key. Prefer this on a
            cluster: the name travels, the key is read inside the process that calls.
        temperature, max_tokens: sampling settings (``None``: the provider default).
        timeout: seconds for one attempt.
        num_retries: retries after the first attempt, for rate limits, 5xx, timeouts and
            connection errors.
        extra_env: other litellm arguments read from environment variables at call time, as
            ``{argument: VARIABLE}``: ``extra_env={"aws_secret_access_key":
            "AWS_SECRET_ACCESS_KEY"}``. Only the names travel to a gateway.
        headers_env: HTTP headers read from environment variables at call time, as
            ``{header: VARIABLE}``: ``headers_env={"Authorization": "MY_AUTH_HEADER"}``, the
            variable holding the header's whole value (``Bearer ...``); merged into
            ``extra_headers``.
        **extra: other litellm completion arguments (``top_p``, ``seed``, ``extra_headers``...).
            Values travel as they are: on Ray (:class:`~gecko_actors.ModelGateway`,
            ``Agent.spawn``) an argument that holds a secret (by its name, such as
            ``aws_secret_access_key`` or an ``Authorization`` header, or by its shape, such as
            ``Bearer ...``) is refused: pass it through ``extra_env`` / ``headers_env``.

    The ``GECKO_API_KEY`` setting (environment or ``.env``) is used when neither ``api_key``
    nor ``api_key_env`` is given; on Ray only its name travels and the gateway reads it.
    """

    supports_tools = True
    supports_stream = True

    def __init__(
        self,
        model: str | None = None,
        *,
        api_base: str | None = None,
        api_key: str | SecretStr | None = None,
        api_key_env: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        timeout: float | None = None,
        num_retries: int | None = None,
        retry_backoff: float = 0.5,
        extra_env: Mapping[str, str] | None = None,
        headers_env: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        settings = load_settings()
        clash = sorted(_RESERVED & extra.keys())
        if clash:
            raise UserError(
                f"LiteLLMModel does not take {clash} as extra arguments",
                hint="use the named parameters of LiteLLMModel instead",
            )
        self.model = model or settings.default_model
        self.api_base = api_base if api_base is not None else settings.api_base
        # A key from the settings is known by its variable's name: on Ray the name travels.
        self._key_from_settings = False
        if api_key is None and api_key_env is None and settings.api_key is not None:
            api_key, self._key_from_settings = settings.api_key, True
        self._api_key = SecretStr(api_key) if isinstance(api_key, str) else api_key
        if self._api_key is not None:
            register_secret(self._api_key.get_secret_value())
        self.api_key_env = api_key_env
        self.temperature = temperature if temperature is not None else settings.temperature
        self.max_tokens = max_tokens if max_tokens is not None else settings.max_tokens
        self.timeout = timeout if timeout is not None else settings.model_timeout
        self.num_retries = num_retries if num_retries is not None else settings.model_retries
        self.retry_backoff = retry_backoff
        self.extra = extra
        self.extra_env, self.headers_env = env_arguments(
            self.model, extra, extra_env, headers_env, reserved=_RESERVED
        )
        register_extra_secrets(extra)
        self.before_attempt: Callable[[Sequence[Message]], Any] | None = None
        """Awaited before every attempt, retries included (the gateway asks its limiter)."""
        self.on_rate_limited: Callable[[float], Any] | None = None
        """Called with the seconds the provider asked to wait after a 429 (the gateway uses it
        to pause every replica, not just this call)."""

    def __repr__(self) -> str:
        key = "***" if self._api_key is not None else None
        return (
            f"LiteLLMModel(model={self.model!r}, api_base={self.api_base!r}, api_key={key}, "
            f"timeout={self.timeout}, num_retries={self.num_retries})"
        )

    @classmethod
    def zhipu(cls, model: str = "glm-4-flash", **kwargs: Any) -> LiteLLMModel:
        """A Zhipu GLM model (open.bigmodel.cn), streaming included; the key comes from
        ``BIGMODEL_API_KEY`` unless ``api_key=`` or ``api_key_env=`` says otherwise."""
        if "api_key" not in kwargs:
            kwargs.setdefault("api_key_env", "BIGMODEL_API_KEY")
        return cls(f"bigmodel/{model}", **kwargs)

    def config(self) -> dict[str, Any]:
        """The constructor arguments, without any key value: enough to rebuild this model in
        another process (which reads its key from ``api_key_env`` or the provider's variable)."""
        key_env = self.api_key_env or (API_KEY_VARIABLE if self._key_from_settings else None)
        return {
            "model": self.model,
            "api_base": self.api_base,
            "api_key_env": key_env,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "timeout": self.timeout,
            "num_retries": self.num_retries,
            "retry_backoff": self.retry_backoff,
            "extra_env": dict(self.extra_env),
            "headers_env": dict(self.headers_env),
            **self.extra,
        }

    @property
    def holds_key_value(self) -> bool:
        """Whether an API key value (not a variable name) was given to this model; a key from
        the ``GECKO_API_KEY`` setting is known by that name and does not count."""
        return self._api_key is not None and not self._key_from_settings

    def secret_arguments(self) -> list[str]:
        """The arguments that hold a secret value (names only, never values): ``api_key``,
        credentials in ``api_base``, and extras secret by name or by shape."""
        found = ["api_key"] if self.holds_key_value else []
        if self.api_base and url_holds_secret(self.api_base):
            found.append("api_base")
        return found + [path for path, _ in secret_leaves(self.extra)]

    def check_shippable(self) -> None:
        """Raise :class:`UserError` naming every argument that would carry a secret value to
        another process (a gateway actor, whose arguments Ray keeps in its actor table)."""
        refuse_secret_arguments("model", self.model, self.secret_arguments())

    # --- configuration ------------------------------------------------------------------

    def _resolve_key(self) -> str | None:
        if self._api_key is not None:
            return self._api_key.get_secret_value()
        return read_key(self.api_key_env, self.model) if self.api_key_env else None

    def validate_environment(self) -> None:
        """Raise :class:`ConfigurationError` naming the variable when the key, or a variable
        of ``extra_env`` / ``headers_env``, is missing."""
        for variable in [*self.extra_env.values(), *self.headers_env.values()]:
            read_key(variable, self.model)
        if self.api_key_env:
            self._resolve_key()
            return
        if self._api_key is not None or self.api_base:
            return
        missing = _litellm().validate_environment(model=self.model).get("missing_keys") or []
        if missing:
            raise ConfigurationError(
                f"model {self.model!r} needs {', '.join(missing)} in the environment",
                hint=f"export the key as {missing[0]}, or pass api_key= / api_key_env=",
                model=self.model,
            )

    def _request(self, messages, tools, tool_choice, response_format) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.model,
            "messages": [m.to_openai() for m in messages],
            "timeout": self.timeout,
            "num_retries": 0,
            "max_retries": 0,
            **self.extra,
        }
        optional = {
            "api_base": self.api_base,
            "api_key": self._resolve_key(),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "response_format": response_format,
            "tool_choice": tool_choice if tools else None,
            "tools": list(tools) if tools else None,
        }
        request.update({k: v for k, v in optional.items() if v is not None})
        resolve_env_arguments(request, self.extra_env, self.headers_env, self.model)
        return request

    # --- the protocol -------------------------------------------------------------------

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSchema] | None = None,
        tool_choice: ToolChoice | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> ModelResponse:
        request = self._request(messages, tools, tool_choice, response_format)
        litellm = _litellm()
        for attempt in range(self.num_retries + 1):
            await self._before_attempt(messages)
            try:
                raw = await asyncio.wait_for(litellm.acompletion(**request), self.timeout + 1.0)
                return self._to_response(raw)
            except Exception as exc:
                await self._before_retry(exc, attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    async def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSchema] | None = None,
        tool_choice: ToolChoice | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> AsyncIterator[str | ModelResponse]:
        request = self._request(messages, tools, tool_choice, response_format)
        request.update(stream=True, stream_options={"include_usage": True})
        litellm = _litellm()
        for attempt in range(self.num_retries + 1):
            await self._before_attempt(messages)
            chunks: list[Any] = []
            try:
                async for chunk in self._chunks(litellm, request):
                    chunks.append(chunk)
                    text = _delta_text(chunk)
                    if text:
                        yield text
                break
            except Exception as exc:
                if chunks:  # text already went out: a retry would repeat it
                    raise self._wrap(exc, attempt) from None
                await self._before_retry(exc, attempt)
        yield self._to_response(litellm.stream_chunk_builder(chunks, messages=request["messages"]))

    async def _chunks(self, litellm: Any, request: dict[str, Any]) -> AsyncIterator[Any]:
        stream = await asyncio.wait_for(litellm.acompletion(**request), self.timeout + 1.0)
        iterator = stream.__aiter__()
        while True:
            try:
                yield await asyncio.wait_for(iterator.__anext__(), self.timeout)
            except StopAsyncIteration:
                return

    async def _before_attempt(self, messages: Sequence[Message]) -> None:
        if self.before_attempt is not None:
            result = self.before_attempt(messages)
            if inspect.isawaitable(result):
                await result

    # --- errors and retries -------------------------------------------------------------

    async def _before_retry(self, exc: Exception, attempt: int) -> None:
        """Sleep before the next attempt, or raise the wrapped error if there is none."""
        if getattr(exc, "status_code", None) == 429 and self.on_rate_limited is not None:
            wait = _retry_after(exc)
            result = self.on_rate_limited(self.retry_backoff if wait is None else wait)
            if inspect.isawaitable(result):
                await result
        await pause_or_raise(
            exc,
            attempt,
            self.num_retries,
            self.retry_backoff,
            model=self.model,
            timeout=self.timeout,
        )

    def _wrap(self, exc: Exception, attempt: int) -> GeckoError:
        return wrap_error(exc, attempt, model=self.model, timeout=self.timeout)

    def _to_response(self, raw: Any) -> ModelResponse:
        choice = raw.choices[0]
        message = Message.from_openai(_message_dict(choice.message))
        return ModelResponse(
            message=message,
            usage=self._usage(raw),
            finish_reason=choice.finish_reason,
            model=getattr(raw, "model", None),
        )

    def _usage(self, raw: Any) -> Usage:
        usage = getattr(raw, "usage", None)
        if usage is None:
            return Usage(requests=1)
        # litellm prices every response it returns (in its hidden params): pricing it again
        # costs as much CPU as the rest of the call's handling here.
        hidden = getattr(raw, "_hidden_params", None)
        if isinstance(hidden, dict) and "response_cost" in hidden:
            cost = hidden["response_cost"]  # None: litellm knows no price for the model
        else:
            try:
                cost = _litellm().completion_cost(completion_response=raw, model=self.model)
            except Exception:  # unknown price (local or fake models): cost stays unknown
                cost = None
        return Usage(
            requests=1,
            prompt_tokens=usage.prompt_tokens or 0,
            completion_tokens=usage.completion_tokens or 0,
            total_tokens=usage.total_tokens or 0,
            cost=cost or None,
        )


async def pause_or_raise(
    exc: Exception,
    attempt: int,
    num_retries: int,
    backoff: float,
    *,
    model: str,
    timeout: float,
    what: str = "model",
) -> None:
    """The retry policy shared by chat and embedding calls: raise the wrapped error when no
    attempt is left or the error is not worth retrying, else wait (``Retry-After`` if the
    provider sent one, else exponential back-off with jitter)."""
    if attempt >= num_retries or not _retryable(exc):
        raise wrap_error(exc, attempt, model=model, timeout=timeout, what=what) from None
    delay = _retry_after(exc)
    if delay is None:
        delay = backoff * (2**attempt) * (0.5 + random.random())
    _log.warning(
        f"{what} call failed, retrying",
        model=model,
        attempt=attempt + 1,
        error=type(exc).__name__,
        retry_in=round(delay, 3),
    )
    await asyncio.sleep(delay)


def wrap_error(
    exc: Exception, attempt: int, *, model: str, timeout: float, what: str = "model"
) -> GeckoError:
    """A provider's exception as a :class:`ModelError` naming the model and the attempts."""
    if isinstance(exc, ModelError | ConfigurationError):
        return exc
    status = getattr(exc, "status_code", None)
    context = {"model": model, "attempts": attempt + 1, "status_code": status}
    name = type(exc).__name__
    if isinstance(exc, asyncio.TimeoutError) or "Timeout" in name:
        return ModelTimeoutError(
            f"{what} {model!r} did not answer within {timeout}s ({attempt + 1} attempt(s))",
            hint="raise timeout= or num_retries=, or check the provider's status",
            **context,
        )
    return ModelError(
        f"{what} {model!r} failed after {attempt + 1} attempt(s): {name}: {exc}",
        hint=_hint_for(status),
        **context,
    )


def _message_dict(message: Any) -> dict[str, Any]:
    data = message.model_dump() if hasattr(message, "model_dump") else dict(message)
    data["role"] = data.get("role") or "assistant"
    return data


def _delta_text(chunk: Any) -> str:
    if not getattr(chunk, "choices", None):
        return ""
    return getattr(chunk.choices[0].delta, "content", None) or ""


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, asyncio.TimeoutError):
        return True
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status in _RETRYABLE_STATUS
    name = type(exc).__name__
    return any(
        word in name
        for word in ("Timeout", "Connection", "RateLimit", "ServiceUnavailable", "InternalServer")
    )


def _retry_after(exc: Exception) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms`` or ``retry-after``)."""
    headers = getattr(exc, "litellm_response_headers", None)
    if headers is None:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
    if not headers:
        return None
    try:
        if headers.get("retry-after-ms"):
            return min(float(headers["retry-after-ms"]) / 1000, _MAX_RETRY_AFTER)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            seconds = float(value)
        except ValueError:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        return min(max(seconds, 0.0), _MAX_RETRY_AFTER)
    except (TypeError, ValueError):
        return None


def _hint_for(status: int | None) -> str:
    if status in (401, 403):
        return "check the API key: pass api_key=/api_key_env= or export the provider's variable"
    if status == 404:
        return "check the model name and api_base"
    if status == 400:
        return "the provider rejected the request: check the model's supported parameters"
    return "retry later or raise num_retries; check the provider's status"
