"""What a :class:`~gecko_actors.testing.FakeLLMServer` answers: scripted replies
(:class:`FakeReply`) and the tool calls inside them (:class:`FakeToolCall`)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["FakeReply", "FakeToolCall", "ReplyKind", "check_reply"]

ReplyKind = Literal["message", "error", "delay", "cut"]


@dataclass(frozen=True)
class FakeToolCall:
    """One tool call inside a scripted assistant message.

    Attributes:
        name: name of the function the model "calls".
        arguments: the arguments, as a dict (sent JSON-encoded) or a string (sent verbatim, which
            is how to script malformed JSON).
        id: the tool call id; ``None`` lets the server number it ``call_<n>`` (unique per server).
    """

    name: str
    arguments: dict[str, Any] | str
    id: str | None = None

    @property
    def arguments_json(self) -> str:
        """The ``function.arguments`` string exactly as the server sends it."""
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments)


@dataclass(frozen=True)
class FakeReply:
    """One scripted response of a :class:`FakeLLMServer`.

    Build replies with the classmethods (:meth:`text`, :meth:`tool_call`, :meth:`tool_calls`,
    :meth:`rate_limit`, :meth:`server_error`, :meth:`delay`, :meth:`cut_stream`) rather than with
    the constructor.

    Attributes:
        kind: ``"message"`` (an assistant message), ``"error"`` (an HTTP error), ``"delay"``
            (wait, then answer with :attr:`then`) or ``"cut"`` (drop the connection).
        content: text of an assistant message (``None`` for a tool-call-only message).
        calls: tool calls of an assistant message.
        usage: ``(prompt_tokens, completion_tokens)``; ``None`` estimates them from the lengths.
        status: HTTP status of an error reply.
        error_message: ``error.message`` of an error reply.
        error_type: ``error.type`` of an error reply.
        error_code: ``error.code`` of an error reply.
        headers: extra HTTP headers of an error reply.
        seconds: how long a delay reply waits.
        after_chunks: how many stream chunks a cut reply sends before dropping the connection.
        then: the reply sent after a delay, or streamed in part by a cut reply.
    """

    kind: ReplyKind
    content: str | None = None
    calls: tuple[FakeToolCall, ...] = ()
    usage: tuple[int, int] | None = None
    status: int = 200
    error_message: str | None = None
    error_type: str | None = None
    error_code: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    seconds: float = 0.0
    after_chunks: int = 0
    then: FakeReply | None = None

    @classmethod
    def text(cls, content: str, *, usage: tuple[int, int] | None = None) -> FakeReply:
        """An assistant message with text content and ``finish_reason="stop"``.

        Args:
            content: the message text.
            usage: ``(prompt_tokens, completion_tokens)`` to report; by default both are estimated
                from the lengths of the request messages and of ``content`` (about 4 characters
                per token).

        Returns:
            The reply.
        """
        if usage is not None:
            _check_usage(usage)
        return cls(kind="message", content=content, usage=usage)

    @classmethod
    def tool_call(
        cls, name: str, arguments: dict[str, Any] | str, *, id: str | None = None
    ) -> FakeReply:
        """An assistant message with a single tool call and ``finish_reason="tool_calls"``.

        Args:
            name: function name.
            arguments: a dict (sent JSON-encoded) or a string (sent verbatim: use it to script
                malformed JSON).
            id: tool call id; by default the server numbers calls ``call_1``, ``call_2``, ...

        Returns:
            The reply.
        """
        return cls(kind="message", calls=(FakeToolCall(name, arguments, id),))

    @classmethod
    def tool_calls(cls, calls: list[tuple[str, dict[str, Any] | str]]) -> FakeReply:
        """An assistant message with several tool calls (parallel tool calling).

        Args:
            calls: ``(name, arguments)`` pairs, in order; arguments as in :meth:`tool_call`.

        Returns:
            The reply.

        Raises:
            ValueError: if ``calls`` is empty.
        """
        if not calls:
            raise ValueError("FakeReply.tool_calls() needs at least one (name, arguments) pair")
        return cls(kind="message", calls=tuple(FakeToolCall(name, args) for name, args in calls))

    @classmethod
    def rate_limit(cls, retry_after: float = 1.0) -> FakeReply:
        """An HTTP 429 "rate limit reached" error.

        The response carries ``Retry-After`` (seconds, formatted as given, e.g. ``1`` or ``0.5``)
        and ``retry-after-ms`` headers, and an OpenAI-style error body with
        ``code="rate_limit_exceeded"``.

        Args:
            retry_after: seconds the client is told to wait.

        Returns:
            The reply.

        Raises:
            ValueError: if ``retry_after`` is negative or not finite.
        """
        if not math.isfinite(retry_after) or retry_after < 0:
            raise ValueError(f"retry_after must be a finite number >= 0, got {retry_after!r}")
        return cls(
            kind="error",
            status=429,
            error_message=(
                "Rate limit reached for requests (FakeLLMServer scripted rate limit). "
                f"Please try again in {_format_seconds(retry_after)}s."
            ),
            error_type="requests",
            error_code="rate_limit_exceeded",
            headers=(
                ("Retry-After", _format_seconds(retry_after)),
                ("retry-after-ms", str(round(retry_after * 1000))),
            ),
        )

    @classmethod
    def server_error(
        cls,
        status: int = 500,
        message: str = "The server had an error while processing your request.",
    ) -> FakeReply:
        """An HTTP error with an OpenAI-style error body.

        Args:
            status: HTTP status, normally 5xx (4xx codes are accepted too, to script e.g. a 400).
            message: ``error.message`` of the body.

        Returns:
            The reply.

        Raises:
            ValueError: if ``status`` is not in 400..599.
        """
        if not 400 <= status <= 599:
            raise ValueError(f"server_error status must be in 400..599, got {status!r}")
        return cls(
            kind="error",
            status=status,
            error_message=message,
            error_type="server_error" if status >= 500 else "invalid_request_error",
            error_code=None,
        )

    @classmethod
    def delay(cls, seconds: float, then: FakeReply) -> FakeReply:
        """Wait, then answer with another reply.

        The wait is interrupted by :meth:`FakeLLMServer.stop`, which then closes the connection
        without answering. A client with a shorter timeout gives up first, which is the usual
        purpose of this reply.

        Args:
            seconds: how long to wait before answering.
            then: the reply sent after the wait.

        Returns:
            The reply.

        Raises:
            ValueError: if ``seconds`` is negative or not finite.
        """
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"delay seconds must be a finite number >= 0, got {seconds!r}")
        return cls(kind="delay", seconds=seconds, then=then)

    @classmethod
    def cut_stream(cls, after_chunks: int, then: FakeReply) -> FakeReply:
        """Drop the connection part-way through a response.

        For a ``"stream": true`` request, the server sends the first ``after_chunks`` SSE chunks
        (``chat.completion.chunk`` objects, the role chunk included) of ``then`` and closes the
        connection without finishing the chunked body and without ``data: [DONE]``, so clients
        see an incomplete response. For a non-stream request, it closes the connection without
        sending any response.

        Args:
            after_chunks: number of chunks sent before the cut (0 sends only the HTTP headers).
            then: an assistant message reply (:meth:`text`, :meth:`tool_call`,
                :meth:`tool_calls`) whose stream is cut.

        Returns:
            The reply.

        Raises:
            ValueError: if ``after_chunks`` is negative or ``then`` is not a message reply.
        """
        if after_chunks < 0:
            raise ValueError(f"after_chunks must be >= 0, got {after_chunks!r}")
        if then.kind != "message":
            raise ValueError(
                f"cut_stream() needs a text or tool-call reply to stream, got a {then.kind!r} reply"
            )
        return cls(kind="cut", after_chunks=after_chunks, then=then)


def _check_usage(usage: tuple[int, int]) -> None:
    if len(usage) != 2 or any(not isinstance(n, int) or n < 0 for n in usage):
        raise ValueError(f"usage must be (prompt_tokens, completion_tokens) >= 0, got {usage!r}")


def _format_seconds(seconds: float) -> str:
    return format(seconds, "g")


def check_reply(reply: object) -> None:
    if not isinstance(reply, FakeReply):
        raise TypeError(f"expected a FakeReply, got {type(reply).__name__}: {reply!r}")
