"""An OpenAI-compatible HTTP server that answers from a script, for offline tests.

:class:`FakeLLMServer` listens on ``127.0.0.1`` (a free port by default) and speaks enough of the
OpenAI REST API for litellm, the ``openai`` SDK, httpx or aiohttp clients pointed at
:attr:`FakeLLMServer.url`:

* ``POST /v1/chat/completions`` answers each request with the next scripted :class:`FakeReply`
  (plain or ``"stream": true`` server-sent events, with tool calls, usage, errors, delays and
  connections cut mid-stream);
* ``POST /v1/embeddings`` returns deterministic embeddings computed from a hash of each text;
* ``GET /v1/models`` lists the server's model.

The same paths are also served without the ``/v1`` prefix. One asyncio loop (aiohttp, which
Ray brings) serves every connection, so the server is not what a throughput test measures.

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
import hashlib
import json
import math
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

from gecko_actors.testing._fake_http import BadRequest, HttpTransport
from gecko_actors.testing.fake_replies import FakeReply, FakeToolCall, check_reply

__all__ = ["FakeLLMServer", "FakeReply", "FakeToolCall"]

#: Dimension of the vectors returned by ``/v1/embeddings`` unless the request asks for
#: ``dimensions``.
DEFAULT_EMBEDDING_DIMENSIONS = 8

_MAX_EMBEDDING_DIMENSIONS = 4096


def _estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


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
            returns the reply. It runs in a thread of the server's pool, so it may block. If
            it raises, the request is answered HTTP 500 with the exception in the message.
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
            check_reply(reply)
        self._handler = handler
        self._host = host
        self._requested_port = port
        self.model = model
        self.stream_chunk_chars = stream_chunk_chars
        self._lock = threading.Lock()
        self._requests: list[dict[str, Any]] = []
        self._arrivals: list[float] = []
        self._embedding_requests: list[dict[str, Any]] = []
        self._consumed = 0
        self._call_counter = 0
        self._http: HttpTransport | None = None
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
            if self._http is not None:
                return self
            http = HttpTransport(self, self._host, self._requested_port)
            http.start()
            self._http = http
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
            http = self._http
        if http is not None:
            http.stop()

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
        return self._http is not None and not self._stopped

    @property
    def port(self) -> int:
        """The port the server listens on.

        Raises:
            RuntimeError: if the server is not started.
        """
        if self._http is None:
            raise RuntimeError("FakeLLMServer is not started: call start() or use `with`")
        return self._http.port

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
            check_reply(reply)
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
    def request_times(self) -> list[float]:
        """When each chat request arrived (``time.monotonic()``), in order (a copy): what a
        provider counts against a rate limit."""
        with self._lock:
            return list(self._arrivals)

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

    def _take_reply(self, body: dict[str, Any]) -> tuple[FakeReply | None, int, int]:
        """Record a chat request and take the next scripted reply.

        Returns:
            ``(reply, request_number, scripted_replies_used)``; ``reply`` is ``None`` when the
            script is empty (then :meth:`_handled` answers).
        """
        with self._lock:
            self._requests.append(body)
            self._arrivals.append(time.monotonic())
            number = len(self._requests)
            if self._replies:
                self._consumed += 1
                return self._replies.popleft(), number, self._consumed
            return None, number, self._consumed

    def _handled(self, body: dict[str, Any]) -> FakeReply | None:
        """The handler's reply to a request the script has no reply for (None: no handler)."""
        if self._handler is None:
            return None
        reply = self._handler(body)
        if not isinstance(reply, FakeReply):
            raise TypeError(f"handler must return a FakeReply, got {type(reply).__name__}")
        return reply

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
            raise BadRequest("'input' must be a non-empty string or list of strings.")
        dimensions = body.get("dimensions") or DEFAULT_EMBEDDING_DIMENSIONS
        if not isinstance(dimensions, int) or not 1 <= dimensions <= _MAX_EMBEDDING_DIMENSIONS:
            raise BadRequest(f"'dimensions' must be an integer in 1..{_MAX_EMBEDDING_DIMENSIONS}.")
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
