"""An OpenAI-compatible HTTP server that answers from a script, for offline tests.

:class:`FakeLLMServer` listens on ``127.0.0.1`` (a free port by default) and speaks enough of the
OpenAI REST API for litellm, the ``openai`` SDK, httpx or aiohttp clients pointed at
:attr:`FakeLLMServer.url`:

* ``POST /v1/chat/completions`` answers each request with the next scripted :class:`FakeReply`
  (plain or ``"stream": true`` server-sent events, with tool calls, usage, errors, delays and
  connections cut mid-stream);
* ``POST /v1/embeddings`` returns deterministic embeddings computed from a hash of each text;
* ``GET /v1/models`` lists the server's model.

The same paths are also served without the ``/v1`` prefix. Only the standard library is used.

Example:
    >>> import httpx
    >>> with FakeLLMServer([FakeReply.text("Hello!")]) as server:
    ...     response = httpx.post(
    ...         f"{server.url}/chat/completions",
    ...         json={"model": "m", "messages": [{"role": "user", "content": "Hi"}]},
    ...     )
    ...     response.json()["choices"][0]["message"]["content"]
    'Hello!'

With litellm, use ``model="openai/<anything>"``, ``api_base=server.url`` and any ``api_key``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import math
import socket
import struct
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal

__all__ = ["FakeLLMServer", "FakeReply", "FakeToolCall"]

_logger = logging.getLogger(__name__)

ReplyKind = Literal["message", "error", "delay", "cut"]

#: Dimension of the vectors returned by ``/v1/embeddings`` unless the request asks for
#: ``dimensions``.
DEFAULT_EMBEDDING_DIMENSIONS = 8

_MAX_EMBEDDING_DIMENSIONS = 4096


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


def _estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def _error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    ).encode()


def _split(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _embedding(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector derived from the sha256 of ``text``."""
    raw = b""
    counter = 0
    while len(raw) < 4 * dimensions:
        raw += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    values = [
        (n / 0xFFFFFFFF) * 2.0 - 1.0 for (n,) in struct.iter_unpack("<I", raw[: 4 * dimensions])
    ]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


class _ClientGone(Exception):
    """The connection must be dropped without (or without finishing) a response."""


class _HTTPServer(ThreadingHTTPServer):
    """A quiet threading HTTP server that tracks its open connections."""

    daemon_threads = True
    allow_reuse_address = True
    fake: FakeLLMServer

    def __init__(self, address: tuple[str, int], fake: FakeLLMServer) -> None:
        self.fake = fake
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut down every open connection, unblocking handler threads (keep-alive reads)."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Client disconnects (timeouts, cut streams) are expected: never print tracebacks.
        _logger.debug("FakeLLMServer: error while handling %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    """Routes one connection's requests to the owning :class:`FakeLLMServer`."""

    protocol_version = "HTTP/1.1"
    server_version = "FakeLLMServer/1.0"
    server: _HTTPServer

    # -- plumbing ---------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        _logger.debug("FakeLLMServer: " + format, *args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Answer malformed HTTP or unsupported methods with an OpenAI-style JSON error."""
        self.close_connection = True
        text = message or self.responses.get(code, ("Error",))[0]
        body = _error_body(f"FakeLLMServer: {text}", "invalid_request_error", None)
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")
        if code >= 200 and code not in (204, 304) and getattr(self, "command", None) != "HEAD":
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.end_headers()

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (_ClientGone, OSError):  # client went away, or we dropped the connection
            self.close_connection = True

    def _route(self) -> str | None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path.startswith("/v1/"):
            path = path[3:]
        return path or None

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size_line = self.rfile.readline(65537)
                if not size_line:
                    raise _ClientGone
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _read_json(self) -> dict[str, Any] | None:
        """Read the request body as a JSON object, or answer 400 and return ``None``."""
        raw = self._read_body()
        try:
            body = json.loads(raw or b"null")
        except ValueError as exc:
            self._send_error(400, f"FakeLLMServer: request body is not valid JSON ({exc})")
            return None
        if not isinstance(body, dict):
            self._send_error(400, "FakeLLMServer: request body must be a JSON object")
            return None
        return body

    def _send_json(
        self, status: int, payload: bytes, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()

    def _send_error(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        self._send_json(status, _error_body(message, type_, code), headers)

    def _drop(self) -> None:
        """Close the connection at once, without (finishing) a response."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        raise _ClientGone

    # -- routes -----------------------------------------------------------------------------

    def do_GET(self) -> None:
        route = self._route()
        fake = self.server.fake
        if route == "/models":
            self._send_json(200, json.dumps(fake._models_payload()).encode())
        elif route is not None and route.startswith("/models/"):
            model_id = route[len("/models/") :]
            self._send_json(200, json.dumps(fake._model_entry(model_id)).encode())
        else:
            self._not_found()

    def do_POST(self) -> None:
        route = self._route()
        if route not in ("/chat/completions", "/embeddings"):
            self._read_body()
            self._not_found()
            return
        body = self._read_json()
        if body is None:
            return
        try:
            if route == "/chat/completions":
                self._chat(body)
            else:
                self._send_json(200, json.dumps(self.server.fake._embeddings(body)).encode())
        except (_ClientGone, OSError):
            raise
        except _BadRequest as exc:
            self._send_error(400, str(exc))
        except Exception as exc:
            # A bug in a handler callback (or in this server): answer 500 instead of hanging.
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            self._send_error(
                500,
                f"FakeLLMServer: unexpected error while answering: {detail}",
                type_="server_error",
                code="fake_server_error",
            )

    def _not_found(self) -> None:
        self._send_error(
            404,
            f"FakeLLMServer: unknown endpoint {self.command} {self.path}",
            code="unknown_url",
        )

    def _chat(self, body: dict[str, Any]) -> None:
        fake = self.server.fake
        if not isinstance(body.get("messages"), list):
            raise _BadRequest("Missing required parameter: 'messages' (must be a list).")
        reply, number, scripted = fake._next_reply(body)
        if reply is None:
            self._send_error(
                500,
                f"FakeLLMServer ran out of scripted replies: chat request #{number} arrived "
                f"but the script had only {scripted} replies, all used by the previous "
                "requests. Push more replies with FakeLLMServer.push() or pass handler=... "
                "to answer the rest.",
                type_="server_error",
                code="fake_script_exhausted",
            )
            return
        self._answer(body, reply)

    def _answer(self, body: dict[str, Any], reply: FakeReply) -> None:
        fake = self.server.fake
        stream = bool(body.get("stream"))
        if reply.kind == "delay":
            assert reply.then is not None
            if fake._stop_event.wait(reply.seconds):
                self._drop()
            self._answer(body, reply.then)
        elif reply.kind == "error":
            self._send_error(
                reply.status,
                reply.error_message or "",
                type_=reply.error_type or "server_error",
                code=reply.error_code,
                headers=reply.headers,
            )
        elif reply.kind == "cut":
            assert reply.then is not None
            if not stream:
                self._drop()
            self._stream(body, reply.then, max_chunks=reply.after_chunks)
            self._drop()
        elif stream:
            self._stream(body, reply)
        else:
            payload = fake._completion(body, reply)
            self._send_json(200, json.dumps(payload).encode())

    def _stream(
        self, body: dict[str, Any], reply: FakeReply, max_chunks: int | None = None
    ) -> None:
        fake = self.server.fake
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.flush()
        for sent, chunk in enumerate(fake._chunks(body, reply)):
            if max_chunks is not None and sent >= max_chunks:
                return
            self._write_chunk(f"data: {json.dumps(chunk)}\n\n".encode())
        if max_chunks is not None:
            return
        self._write_chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


class _BadRequest(Exception):
    """The request is invalid: answered with HTTP 400."""


class FakeLLMServer:
    """An OpenAI-compatible HTTP server answering chat requests from a script.

    Chat requests consume the scripted replies in order, one per request. When the script is
    empty, ``handler(request_body)`` answers if given; otherwise the server answers HTTP 500
    with a message saying the script ran out of replies.

    Use it as a context manager (or call :meth:`start` and :meth:`stop`) and point clients at
    :attr:`url`::

        with FakeLLMServer([FakeReply.tool_call("search", {"q": "x"}),
                            FakeReply.text("done")]) as server:
            await litellm.acompletion(model="openai/fake-model", api_base=server.url,
                                      api_key="test", messages=[...])
            assert server.requests[0]["messages"][-1]["content"] == ...

    Args:
        replies: the scripted replies, in order.
        handler: called with the JSON body of a chat request when no scripted reply is left;
            returns the reply. It runs on the server's handler threads. If it raises, the request
            is answered HTTP 500 with the exception in the message.
        host: interface to listen on.
        port: port to listen on; 0 picks a free port.
        model: model name reported when a request has no ``model`` and listed by ``/v1/models``.
        stream_chunk_chars: characters of content (or tool-call arguments) per stream chunk.

    Raises:
        ValueError: if ``stream_chunk_chars`` is below 1.
    """

    def __init__(
        self,
        replies: Iterable[FakeReply] = (),
        *,
        handler: Callable[[dict[str, Any]], FakeReply] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        model: str = "fake-model",
        stream_chunk_chars: int = 4,
    ) -> None:
        if stream_chunk_chars < 1:
            raise ValueError(f"stream_chunk_chars must be >= 1, got {stream_chunk_chars!r}")
        self._replies: deque[FakeReply] = deque(replies)
        for reply in self._replies:
            _check_reply(reply)
        self._handler = handler
        self._host = host
        self._requested_port = port
        self.model = model
        self.stream_chunk_chars = stream_chunk_chars
        self._lock = threading.Lock()
        self._requests: list[dict[str, Any]] = []
        self._embedding_requests: list[dict[str, Any]] = []
        self._consumed = 0
        self._call_counter = 0
        self._stop_event = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> FakeLLMServer:
        """Bind the socket and serve in a background daemon thread.

        Calling it again while the server runs does nothing.

        Returns:
            The server itself, so ``server = FakeLLMServer(...).start()`` works.

        Raises:
            RuntimeError: if the server was already stopped (a server cannot be restarted).
            OSError: if the address cannot be bound.
        """
        with self._lock:
            if self._stopped:
                raise RuntimeError(
                    "FakeLLMServer cannot be restarted after stop(); create a new one"
                )
            if self._httpd is not None:
                return self
            httpd = _HTTPServer((self._host, self._requested_port), self)
            self._httpd = httpd
            self._thread = threading.Thread(
                target=httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"FakeLLMServer:{httpd.server_address[1]}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the listening socket and every open connection.

        Idempotent and fast: replies waiting in :meth:`FakeReply.delay` are woken up and their
        connections closed without an answer.
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            httpd, thread = self._httpd, self._thread
        self._stop_event.set()
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        httpd.close_connections()
        if thread is not None:
            thread.join(timeout=1.0)

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the server is started and not stopped."""
        return self._httpd is not None and not self._stopped

    @property
    def port(self) -> int:
        """The port the server listens on.

        Raises:
            RuntimeError: if the server is not started.
        """
        if self._httpd is None:
            raise RuntimeError("FakeLLMServer is not started: call start() or use `with`")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` without the ``/v1`` suffix."""
        host = self._host
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """``http://HOST:PORT/v1``: the ``api_base`` / ``base_url`` to give clients."""
        return f"{self.base_url}/v1"

    # -- script -----------------------------------------------------------------------------

    def push(self, *replies: FakeReply) -> None:
        """Append replies to the script (thread-safe; works while the server runs).

        Args:
            *replies: replies to append, in order.
        """
        for reply in replies:
            _check_reply(reply)
        with self._lock:
            self._replies.extend(replies)

    @property
    def pending(self) -> int:
        """Number of scripted replies not used yet."""
        with self._lock:
            return len(self._replies)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """JSON bodies of every chat request received, in order (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        """Number of chat requests received."""
        with self._lock:
            return len(self._requests)

    @property
    def embedding_requests(self) -> list[dict[str, Any]]:
        """JSON bodies of every embeddings request received, in order (a copy)."""
        with self._lock:
            return list(self._embedding_requests)

    # -- internals used by the handler -------------------------------------------------------

    def _next_reply(self, body: dict[str, Any]) -> tuple[FakeReply | None, int, int]:
        """Record a chat request and pick its reply.

        Returns:
            ``(reply, request_number, scripted_replies_used)``; ``reply`` is ``None`` when the
            script is exhausted and there is no handler.
        """
        with self._lock:
            self._requests.append(body)
            number = len(self._requests)
            if self._replies:
                self._consumed += 1
                return self._replies.popleft(), number, self._consumed
            handler, consumed = self._handler, self._consumed
        if handler is None:
            return None, number, consumed
        reply = handler(body)
        if not isinstance(reply, FakeReply):
            raise TypeError(f"handler must return a FakeReply, got {type(reply).__name__}")
        return reply, number, consumed

    def _call_ids(self, reply: FakeReply) -> list[str]:
        ids = []
        with self._lock:
            for call in reply.calls:
                if call.id is None:
                    self._call_counter += 1
                    ids.append(f"call_{self._call_counter}")
                else:
                    ids.append(call.id)
        return ids

    def _usage(self, body: dict[str, Any], reply: FakeReply) -> dict[str, int]:
        if reply.usage is not None:
            prompt, completion = reply.usage
        else:
            prompt = _estimate_tokens(json.dumps(body.get("messages", [])))
            produced = (reply.content or "") + "".join(
                call.name + call.arguments_json for call in reply.calls
            )
            completion = _estimate_tokens(produced)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def _response_model(self, body: dict[str, Any]) -> str:
        model = body.get("model")
        return model if isinstance(model, str) and model else self.model

    def _completion(self, body: dict[str, Any], reply: FakeReply) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.calls:
            message["tool_calls"] = [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments_json},
                }
                for call, call_id in zip(reply.calls, self._call_ids(reply), strict=True)
            ]
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self._response_model(body),
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": "tool_calls" if reply.calls else "stop",
                }
            ],
            "usage": self._usage(body, reply),
        }

    def _chunks(self, body: dict[str, Any], reply: FakeReply) -> Iterator[dict[str, Any]]:
        """The ``chat.completion.chunk`` objects of a streamed reply (without ``[DONE]``)."""
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        base: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self._response_model(body),
        }

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            out = {
                **base,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                ],
            }
            if include_usage:
                out["usage"] = None
            return out

        size = self.stream_chunk_chars
        yield chunk({"role": "assistant", "content": "" if reply.content is not None else None})
        for piece in _split(reply.content or "", size):
            yield chunk({"content": piece})
        for index, (call, call_id) in enumerate(
            zip(reply.calls, self._call_ids(reply), strict=True)
        ):
            yield chunk(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": call_id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": ""},
                        }
                    ]
                }
            )
            for piece in _split(call.arguments_json, size):
                yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
        yield chunk({}, "tool_calls" if reply.calls else "stop")
        if include_usage:
            yield {**base, "choices": [], "usage": self._usage(body, reply)}

    def _embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._embedding_requests.append(body)
        raw_input = body.get("input")
        if isinstance(raw_input, str):
            texts = [raw_input]
        elif isinstance(raw_input, list) and raw_input:
            if all(isinstance(item, int) for item in raw_input):  # one token array
                texts = [json.dumps(raw_input)]
            else:
                texts = [item if isinstance(item, str) else json.dumps(item) for item in raw_input]
        else:
            raise _BadRequest("'input' must be a non-empty string or list of strings.")
        dimensions = body.get("dimensions") or DEFAULT_EMBEDDING_DIMENSIONS
        if not isinstance(dimensions, int) or not 1 <= dimensions <= _MAX_EMBEDDING_DIMENSIONS:
            raise _BadRequest(f"'dimensions' must be an integer in 1..{_MAX_EMBEDDING_DIMENSIONS}.")
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(texts):
            vector = _embedding(text, dimensions)
            embedding: list[float] | str = (
                base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
                if as_base64
                else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(_estimate_tokens(text) for text in texts)
        return {
            "object": "list",
            "data": data,
            "model": self._response_model(body),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def _model_entry(self, model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": 0, "owned_by": "fake-llm-server"}

    def _models_payload(self) -> dict[str, Any]:
        return {"object": "list", "data": [self._model_entry(self.model)]}


def _check_reply(reply: object) -> None:
    if not isinstance(reply, FakeReply):
        raise TypeError(f"expected a FakeReply, got {type(reply).__name__}: {reply!r}")
