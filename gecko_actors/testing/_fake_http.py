"""The HTTP side of :class:`~gecko_actors.testing.FakeLLMServer`: an aiohttp application
served by an event loop in a thread of its own.

One loop answers every request (thousands per second on one core, where a thread per
connection managed ~90): the server must not be what a throughput benchmark measures. A
request's handler callback, which may block, runs in the loop's thread pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import traceback
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gecko_actors.testing.fake_replies import FakeReply

if TYPE_CHECKING:
    from gecko_actors.testing.fake_server import FakeLLMServer

__all__ = ["BadRequest", "HttpTransport", "error_body"]

_MAX_BODY = 256 * 2**20  # chat bodies carry images inline


class BadRequest(Exception):
    """The request is invalid: answered with HTTP 400."""


class _Dropped(Exception):
    """The connection was closed on purpose, without (finishing) a response."""


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    """An OpenAI-style error payload."""
    error = {"message": message, "type": type_, "param": param, "code": code}
    return json.dumps({"error": error}).encode()


def _json(status: int, payload: bytes, headers: Any = ()) -> web.Response:
    return web.Response(
        status=status, body=payload, content_type="application/json", headers=dict(headers)
    )


def _error(status: int, message: str, type_: str = "invalid_request_error",
           code: str | None = None, headers: Any = ()) -> web.Response:  # fmt: skip
    return _json(status, error_body(message, type_, code), headers)


class HttpTransport:
    """Serves ``fake`` on ``host:port`` (0: a free port) until :meth:`stop`."""

    def __init__(self, fake: FakeLLMServer, host: str, port: int) -> None:
        self.fake = fake
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True, name="FakeLLMServer")

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> int:
        """Listen, in the background; the bound port. Raises OSError if it cannot bind."""
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure
        return self.port

    def stop(self) -> None:
        """Close the listening socket and every connection; delayed replies wake and drop
        their connections unanswered."""
        loop, stopping = self._loop, self._stopping
        if loop is None or stopping is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # its loop closed just now
            loop.call_soon_threadsafe(stopping.set)
        self._thread.join(timeout=10.0)

    def _serve(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._open())
        except BaseException as exc:
            self._failure = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_until_complete(self._until_stopped())
        finally:
            loop.close()

    async def _open(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=_MAX_BODY)
        app.router.add_route("*", "/{path:.*}", self._dispatch)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        server = site._server  # the bound socket tells the port a port of 0 got
        assert server is not None and server.sockets
        self.port = int(server.sockets[0].getsockname()[1])

    async def _until_stopped(self) -> None:
        assert self._stopping is not None and self._runner is not None
        await self._stopping.wait()
        await self._runner.cleanup()  # closes idle keep-alive connections too

    # --- requests ------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        route = "/" + request.match_info["path"].rstrip("/")
        if route.startswith("/v1/"):
            route = route[3:]
        try:
            if request.method == "GET" and route == "/models":
                return _json(200, json.dumps(self.fake._models_payload()).encode())
            if request.method == "GET" and route.startswith("/models/"):
                entry = self.fake._model_entry(route[len("/models/") :])
                return _json(200, json.dumps(entry).encode())
            if request.method == "POST" and route in ("/chat/completions", "/embeddings"):
                body = await _read_json(request)
                if route == "/embeddings":
                    return _json(200, json.dumps(self.fake._embeddings(body)).encode())
                return await self._chat(request, body)
            return _error(
                404,
                f"FakeLLMServer: unknown endpoint {request.method} {request.path_qs}",
                code="unknown_url",
            )
        except BadRequest as exc:
            return _error(400, str(exc))
        except (_Dropped, ConnectionError):
            raise asyncio.CancelledError from None  # nothing more to send on this connection
        except Exception as exc:
            # A bug in a handler callback (or in this server): answer 500 instead of hanging.
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            return _error(500, f"FakeLLMServer: unexpected error while answering: {detail}",
                          type_="server_error", code="fake_server_error")  # fmt: skip

    async def _chat(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        if not isinstance(body.get("messages"), list):
            raise BadRequest("Missing required parameter: 'messages' (must be a list).")
        reply, number, scripted = self.fake._take_reply(body)
        if reply is None:  # the script is empty: the handler (which may block) answers
            reply = await asyncio.get_running_loop().run_in_executor(None, self.fake._handled, body)
        if reply is None:
            return _error(
                500,
                f"FakeLLMServer ran out of scripted replies: chat request #{number} arrived "
                f"but the script had only {scripted} replies, all used by the previous "
                "requests. Push more replies with FakeLLMServer.push() or pass handler=... "
                "to answer the rest.",
                type_="server_error",
                code="fake_script_exhausted",
            )
        return await self._answer(request, body, reply)

    async def _answer(
        self, request: web.Request, body: dict[str, Any], reply: FakeReply
    ) -> web.StreamResponse:
        stream = bool(body.get("stream"))
        if reply.kind == "delay":
            assert reply.then is not None and self._stopping is not None
            stopping = asyncio.ensure_future(self._stopping.wait())
            done, _ = await asyncio.wait([stopping], timeout=reply.seconds)
            stopping.cancel()
            if done:
                _drop(request)
            return await self._answer(request, body, reply.then)
        if reply.kind == "error":
            return _error(reply.status, reply.error_message or "",
                          type_=reply.error_type or "server_error", code=reply.error_code,
                          headers=reply.headers)  # fmt: skip
        if reply.kind == "cut":
            assert reply.then is not None
            if stream:
                await self._stream(request, body, reply.then, max_chunks=reply.after_chunks)
            _drop(request)
        if stream:
            return await self._stream(request, body, reply)
        return _json(200, json.dumps(self.fake._completion(body, reply)).encode())

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        reply: FakeReply,
        max_chunks: int | None = None,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "Connection": "close",
            }
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        for sent, chunk in enumerate(self.fake._chunks(body, reply)):
            if max_chunks is not None and sent >= max_chunks:
                return response
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


async def _read_json(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; anything else is a BadRequest."""
    raw = await request.read()
    try:
        body = json.loads(raw or b"null")
    except ValueError as exc:
        raise BadRequest(f"FakeLLMServer: request body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise BadRequest("FakeLLMServer: request body must be a JSON object")
    return body


def _drop(request: web.Request) -> None:
    """Close the connection now: what was written is sent, nothing more."""
    transport = request.transport
    if transport is not None:
        transport.close()
    raise _Dropped
