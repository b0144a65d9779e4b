"""Tests of gecko_actors.testing.fake_server (FakeLLMServer) and its pytest plugin.

Everything runs offline against 127.0.0.1: first with a plain httpx client (exact wire format),
then through litellm, which is the path users take (aiohttp transport by default, httpx too).
"""

import os

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # before litellm is imported: no network

import base64
import json
import math
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import litellm
import pytest

import gecko_actors
from gecko_actors.testing.fake_server import FakeLLMServer, FakeReply

MESSAGES = [{"role": "user", "content": "Hello?"}]


# -- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    srv = FakeLLMServer().start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as c:
        yield c


def chat(client: httpx.Client, srv: FakeLLMServer, **body: Any) -> httpx.Response:
    body.setdefault("model", "test-model")
    body.setdefault("messages", MESSAGES)
    return client.post(f"{srv.url}/chat/completions", json=body)


# Longer than any test may run: a delayed reply that is not cut short by stop() shows as a hang.
FOREVER = 3600.0


def stop_without_waiting_out_delays(srv: FakeLLMServer) -> None:
    """``srv.stop()``, failing the test if it hangs on a reply delayed by :data:`FOREVER` (the
    deadline only catches such a hang: a working stop wakes the delayed replies at once)."""
    stopper = threading.Thread(target=srv.stop, daemon=True)
    stopper.start()
    stopper.join(timeout=60)
    assert not stopper.is_alive(), "stop() waited for a delayed reply"


def sse_events(lines: list[str]) -> list[str]:
    """The ``data:`` payloads of an SSE body, asserting the framing is exactly data + blank."""
    payloads = [line[len("data: ") :] for line in lines if line.startswith("data: ")]
    assert all(line == "" or line.startswith("data: ") for line in lines), lines
    return payloads


def stream_chat(
    client: httpx.Client, srv: FakeLLMServer, **body: Any
) -> tuple[httpx.Response, list[str]]:
    body.setdefault("model", "test-model")
    body.setdefault("messages", MESSAGES)
    body["stream"] = True
    with client.stream("POST", f"{srv.url}/chat/completions", json=body) as response:
        lines = list(response.iter_lines())
    return response, sse_events(lines)


def port_accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# -- chat completions over plain HTTP ----------------------------------------------------------


def test_text_reply_has_openai_shape(server: FakeLLMServer, client: httpx.Client) -> None:
    server.push(FakeReply.text("Hello, world!", usage=(11, 3)))

    response = chat(client, server, model="my-model")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.content)
    body = response.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "my-model"
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "stop"
    assert choice["message"] == {"role": "assistant", "content": "Hello, world!"}
    assert body["usage"] == {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}


def test_default_usage_and_model(client: httpx.Client) -> None:
    with FakeLLMServer([FakeReply.text("x" * 40)], model="served-model") as srv:
        body = client.post(f"{srv.url}/chat/completions", json={"messages": MESSAGES}).json()
    usage = body["usage"]
    assert body["model"] == "served-model"  # the request named no model
    assert usage["completion_tokens"] == 10  # ~4 characters per token
    assert usage["prompt_tokens"] >= 1
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_tool_call_shapes(server: FakeLLMServer, client: httpx.Client) -> None:
    args = {"city": "Paris", "days": [1, 2], "unit": "°C"}
    server.push(
        FakeReply.tool_call("get_weather", args),
        FakeReply.tool_call("broken", '{"city": "Par', id="my-id"),
        FakeReply.tool_calls([("a", {"x": 1}), ("b", "not json")]),
    )

    first = chat(client, server).json()["choices"][0]
    second = chat(client, server).json()["choices"][0]
    third = chat(client, server).json()["choices"][0]

    assert first["finish_reason"] == "tool_calls"
    assert first["message"]["content"] is None
    [call] = first["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["id"] == "call_1"
    assert call["function"]["name"] == "get_weather"
    assert call["function"]["arguments"] == json.dumps(args)  # a JSON string, not an object
    assert json.loads(call["function"]["arguments"]) == args

    [raw] = second["message"]["tool_calls"]
    assert raw["id"] == "my-id"
    assert raw["function"]["arguments"] == '{"city": "Par'  # verbatim, malformed on purpose

    calls = third["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["a", "b"]
    assert [c["function"]["arguments"] for c in calls] == ['{"x": 1}', "not json"]
    assert [c["id"] for c in calls] == ["call_2", "call_3"]  # unique across the server


def test_requests_are_recorded_in_order(server: FakeLLMServer, client: httpx.Client) -> None:
    server.push(FakeReply.text("one"), FakeReply.text("two"), FakeReply.text("three"))
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]

    chat(client, server, messages=[{"role": "user", "content": "first"}])
    chat(client, server, messages=[{"role": "user", "content": "second"}], tools=tools)

    assert server.request_count == 2
    assert server.pending == 1
    recorded = server.requests
    assert [r["messages"][0]["content"] for r in recorded] == ["first", "second"]
    assert recorded[1]["tools"] == tools
    assert recorded[1]["model"] == "test-model"
    recorded.clear()  # a copy: the server's record is untouched
    assert server.request_count == 2


def test_script_exhausted_answers_500_saying_so(
    server: FakeLLMServer, client: httpx.Client
) -> None:
    server.push(FakeReply.text("only one"))
    assert chat(client, server).status_code == 200

    response = chat(client, server)

    assert response.status_code == 500
    error = response.json()["error"]
    assert "ran out of scripted replies" in error["message"]
    assert "#2" in error["message"]
    assert "only 1 replies" in error["message"]
    assert error["code"] == "fake_script_exhausted"
    assert server.request_count == 2


def test_rate_limit_reply(server: FakeLLMServer, client: httpx.Client) -> None:
    server.push(FakeReply.rate_limit(2.5), FakeReply.text("after the limit"))

    limited = chat(client, server)
    after = chat(client, server)  # same keep-alive client keeps working

    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "2.5"
    assert limited.headers["retry-after-ms"] == "2500"
    error = limited.json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert set(error) >= {"message", "type", "code"}
    assert after.json()["choices"][0]["message"]["content"] == "after the limit"
    assert FakeReply.rate_limit().headers[0] == ("Retry-After", "1")


def test_server_error_replies(server: FakeLLMServer, client: httpx.Client) -> None:
    server.push(FakeReply.server_error(), FakeReply.server_error(503, "overloaded"))

    default = chat(client, server)
    custom = chat(client, server)

    assert default.status_code == 500
    assert default.json()["error"]["type"] == "server_error"
    assert custom.status_code == 503
    assert custom.json()["error"]["message"] == "overloaded"
    with pytest.raises(ValueError):
        FakeReply.server_error(200)


def test_delay_then_answer(server: FakeLLMServer, client: httpx.Client) -> None:
    server.push(FakeReply.delay(0.3, FakeReply.text("late")))

    started = time.monotonic()
    response = chat(client, server)

    assert time.monotonic() - started >= 0.3
    assert response.json()["choices"][0]["message"]["content"] == "late"


def test_delay_times_out_client_and_stop_is_fast(capfd: pytest.CaptureFixture[str]) -> None:
    srv = FakeLLMServer([FakeReply.delay(FOREVER, FakeReply.text("too late"))]).start()
    try:
        with pytest.raises(httpx.TimeoutException), httpx.Client(timeout=0.3) as c:
            chat(c, srv)
        assert srv.request_count == 1  # the client gave up on the one delayed request
    finally:
        stop_without_waiting_out_delays(srv)
    srv.stop()  # idempotent
    assert capfd.readouterr().err == ""  # no traceback for the vanished client


def test_stop_while_a_delayed_request_is_in_flight() -> None:
    srv = FakeLLMServer([FakeReply.delay(FOREVER, FakeReply.text("never"))]).start()
    outcome: list[BaseException | httpx.Response] = []

    def worker() -> None:
        try:
            with httpx.Client(timeout=FOREVER) as c:
                outcome.append(chat(c, srv))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while srv.request_count == 0:  # the request is in the delay before stop() is called
        assert time.monotonic() < deadline, "the request never reached the server"
        time.sleep(0.01)

    stop_without_waiting_out_delays(srv)
    thread.join(timeout=60)  # a deadline for a hang, not a margin
    assert not thread.is_alive(), "the client is still waiting: stop() left it connected"
    [result] = outcome
    # The server closed the connection: the client neither got an answer nor timed out.
    assert isinstance(result, httpx.TransportError), result
    assert not isinstance(result, httpx.TimeoutException), result


def test_stream_text(client: httpx.Client) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    with FakeLLMServer([FakeReply.text(text, usage=(7, 9))], stream_chunk_chars=5) as srv:
        response, events = stream_chat(
            client, srv, stream_options={"include_usage": True}, model="m"
        )

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert {c["model"] for c in chunks} == {"m"}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    pieces = [c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]]
    assert "".join(pieces) == text
    assert max(len(p) for p in pieces) == 5
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [c["choices"][0]["finish_reason"] for c in finals] == ["stop"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16}


def test_stream_tool_calls(server: FakeLLMServer, client: httpx.Client) -> None:
    args = {"query": "actor model", "limit": 10}
    server.push(FakeReply.tool_calls([("search", args), ("raw", '{"unterminated": ')]))

    _, events = stream_chat(client, server)

    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("usage" not in c for c in chunks)  # include_usage was not asked for
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta_call in chunk["choices"][0]["delta"].get("tool_calls", []):
            entry = calls.setdefault(delta_call["index"], {"arguments": ""})
            if "id" in delta_call:
                assert "id" not in entry  # id, type and name come once, in the first delta
                entry["id"] = delta_call["id"]
                entry["name"] = delta_call["function"]["name"]
                assert delta_call["type"] == "function"
            entry["arguments"] += delta_call["function"]["arguments"]
    assert calls == {
        0: {"id": "call_1", "name": "search", "arguments": json.dumps(args)},
        1: {"id": "call_2", "name": "raw", "arguments": '{"unterminated": '},
    }
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_cut_stream_sends_n_chunks_then_drops(
    server: FakeLLMServer, client: httpx.Client, capfd: pytest.CaptureFixture[str]
) -> None:
    server.push(
        FakeReply.cut_stream(3, FakeReply.text("a long answer that never finishes")),
        FakeReply.text("the server survived"),
    )

    lines: list[str] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream(
            "POST",
            f"{server.url}/chat/completions",
            json={"model": "m", "messages": MESSAGES, "stream": True},
        ) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            lines.append(line)

    events = sse_events(lines)
    assert len(events) == 3
    assert "[DONE]" not in events
    pieces = [json.loads(e)["choices"][0]["delta"].get("content") for e in events]
    assert pieces == ["", "a lo", "ng a"]  # role chunk, then two 4-character pieces
    assert chat(client, server).json()["choices"][0]["message"]["content"] == "the server survived"
    assert capfd.readouterr().err == ""


def test_cut_stream_on_non_stream_request_closes_without_response(
    server: FakeLLMServer, client: httpx.Client
) -> None:
    server.push(FakeReply.cut_stream(2, FakeReply.text("unused")), FakeReply.text("next"))

    with pytest.raises(httpx.RemoteProtocolError):
        chat(client, server)

    assert chat(client, server).json()["choices"][0]["message"]["content"] == "next"
    assert server.request_count == 2


def test_handler_used_after_queue_drains(client: httpx.Client) -> None:
    def handler(body: dict[str, Any]) -> FakeReply:
        return FakeReply.text(f"echo: {body['messages'][-1]['content']}")

    with FakeLLMServer([FakeReply.text("scripted")], handler=handler) as srv:
        answers = [
            chat(client, srv, messages=[{"role": "user", "content": word}]).json()
            for word in ("a", "b", "c")
        ]
        assert srv.pending == 0
        assert srv.request_count == 3

    contents = [a["choices"][0]["message"]["content"] for a in answers]
    assert contents == ["scripted", "echo: b", "echo: c"]


def test_failing_handler_answers_500(client: httpx.Client) -> None:
    def handler(body: dict[str, Any]) -> FakeReply:
        raise KeyError("no such scenario")

    with FakeLLMServer(handler=handler) as srv:
        response = chat(client, srv)

    assert response.status_code == 500
    assert "no such scenario" in response.json()["error"]["message"]


def test_concurrent_requests_each_get_one_reply() -> None:
    n = 12
    with FakeLLMServer([FakeReply.text(f"reply {i}") for i in range(n)]) as srv:
        results: list[str] = []
        lock = threading.Lock()

        def worker() -> None:
            with httpx.Client(timeout=60.0) as c:  # a loaded machine is slow, not wrong
                content = chat(c, srv).json()["choices"][0]["message"]["content"]
            with lock:
                results.append(content)

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60.0)  # a deadline for a hang, not a margin
            assert not t.is_alive(), "a request got no reply"
        assert srv.pending == 0
        assert srv.request_count == n
    assert sorted(results) == sorted(f"reply {i}" for i in range(n))


def test_push_while_running(server: FakeLLMServer, client: httpx.Client) -> None:
    assert chat(client, server).status_code == 500  # empty script
    server.push(FakeReply.text("pushed"))
    assert server.pending == 1
    assert chat(client, server).json()["choices"][0]["message"]["content"] == "pushed"


# -- other endpoints ---------------------------------------------------------------------------


def test_embeddings_are_deterministic_and_shaped(
    server: FakeLLMServer, client: httpx.Client
) -> None:
    def embed(input_: Any, **extra: Any) -> dict[str, Any]:
        response = client.post(
            f"{server.url}/embeddings", json={"model": "emb", "input": input_, **extra}
        )
        assert response.status_code == 200
        return response.json()

    batch = embed(["alpha", "beta", "alpha"])
    single = embed("alpha")

    assert batch["object"] == "list"
    assert batch["model"] == "emb"
    assert [d["index"] for d in batch["data"]] == [0, 1, 2]
    assert {d["object"] for d in batch["data"]} == {"embedding"}
    vectors = [d["embedding"] for d in batch["data"]]
    assert all(len(v) == 8 for v in vectors)
    assert all(math.isclose(math.hypot(*v), 1.0) for v in vectors)
    assert vectors[0] == vectors[2] == single["data"][0]["embedding"]
    assert vectors[0] != vectors[1]
    assert batch["usage"]["prompt_tokens"] == batch["usage"]["total_tokens"] > 0
    with FakeLLMServer() as other:  # deterministic across servers too
        again = client.post(f"{other.url}/embeddings", json={"model": "e", "input": "alpha"})
    assert again.json()["data"][0]["embedding"] == vectors[0]

    assert len(embed("alpha", dimensions=32)["data"][0]["embedding"]) == 32
    encoded = embed("alpha", encoding_format="base64")["data"][0]["embedding"]
    decoded = struct.unpack("<8f", base64.b64decode(encoded))
    assert all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(decoded, vectors[0], strict=True))
    assert server.request_count == 0  # embeddings are not chat requests
    assert len(server.embedding_requests) == 4


def test_models_endpoint_and_paths_without_v1(client: httpx.Client) -> None:
    with FakeLLMServer([FakeReply.text("no prefix")], model="my-fake") as srv:
        assert srv.url == f"http://127.0.0.1:{srv.port}/v1"
        models = client.get(f"{srv.url}/models").json()
        bare_models = client.get(f"http://127.0.0.1:{srv.port}/models").json()
        bare_chat = client.post(
            f"http://127.0.0.1:{srv.port}/chat/completions",
            json={"model": "m", "messages": MESSAGES},
        )
        missing = client.post(f"{srv.url}/completions", json={"prompt": "x"})

    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["my-fake"]
    assert bare_models == models
    assert bare_chat.json()["choices"][0]["message"]["content"] == "no prefix"
    assert missing.status_code == 404
    assert "unknown endpoint" in missing.json()["error"]["message"]


def test_invalid_requests_answer_400(server: FakeLLMServer, client: httpx.Client) -> None:
    server.push(FakeReply.text("kept"))

    not_json = client.post(
        f"{server.url}/chat/completions",
        content=b"{oops",
        headers={"Content-Type": "application/json"},
    )
    no_messages = client.post(f"{server.url}/chat/completions", json={"model": "m"})

    assert not_json.status_code == 400
    assert no_messages.status_code == 400
    assert "messages" in no_messages.json()["error"]["message"]
    assert server.request_count == 0
    assert server.pending == 1  # no reply consumed by invalid requests


# -- lifecycle ---------------------------------------------------------------------------------


def test_context_manager_stops_server_and_closes_connections() -> None:
    with httpx.Client(timeout=2.0) as c:
        with FakeLLMServer([FakeReply.text("hi")]) as srv:
            port = srv.port
            assert srv.running
            assert port_accepts(port)
            assert chat(c, srv).status_code == 200  # leaves a keep-alive connection open
        assert not srv.running
        assert not port_accepts(port)
        with pytest.raises(httpx.TransportError):
            chat(c, srv)  # the kept-alive connection was closed too


def test_lifecycle_errors() -> None:
    srv = FakeLLMServer()
    with pytest.raises(RuntimeError, match="not started"):
        _ = srv.url
    assert srv.start() is srv
    assert srv.start() is srv  # no-op while running
    srv.stop()
    srv.stop()
    with pytest.raises(RuntimeError, match="restarted"):
        srv.start()
    FakeLLMServer().stop()  # stopping a never-started server is fine


def test_reply_validation() -> None:
    with pytest.raises(ValueError):
        FakeReply.cut_stream(1, FakeReply.rate_limit())
    with pytest.raises(ValueError):
        FakeReply.cut_stream(-1, FakeReply.text("x"))
    with pytest.raises(ValueError):
        FakeReply.delay(-1, FakeReply.text("x"))
    with pytest.raises(ValueError):
        FakeReply.tool_calls([])
    with pytest.raises(ValueError):
        FakeLLMServer(stream_chunk_chars=0)
    with pytest.raises(TypeError):
        FakeLLMServer().push("not a reply")  # type: ignore[arg-type]
    with pytest.raises(AttributeError):  # frozen
        FakeReply.text("x").content = "y"  # type: ignore[misc]


# -- through litellm ---------------------------------------------------------------------------


@pytest.fixture(params=["aiohttp", "httpx"])
def litellm_transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a litellm test with each async transport litellm may use."""
    monkeypatch.setattr(litellm, "disable_aiohttp_transport", request.param == "httpx")
    monkeypatch.setattr(litellm, "suppress_debug_info", True)
    return request.param


async def acompletion(srv: FakeLLMServer, **kwargs: Any) -> Any:
    kwargs.setdefault("messages", MESSAGES)
    kwargs.setdefault("num_retries", 0)
    return await litellm.acompletion(
        model="openai/fake-model", api_base=srv.url, api_key="test-key", **kwargs
    )


async def test_litellm_text(litellm_transport: str) -> None:
    with FakeLLMServer([FakeReply.text("Bonjour", usage=(12, 2))]) as srv:
        response = await acompletion(srv)
        [request] = srv.requests

    assert response.choices[0].message.content == "Bonjour"
    assert response.choices[0].finish_reason == "stop"
    assert response.usage.prompt_tokens == 12
    assert response.usage.completion_tokens == 2
    assert request["model"] == "fake-model"
    assert request["messages"] == MESSAGES


async def test_litellm_tool_call(litellm_transport: str) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "parameters": {"type": "object", "properties": {"key": {"type": "string"}}},
            },
        }
    ]
    with FakeLLMServer([FakeReply.tool_call("lookup", {"key": "k1"})]) as srv:
        response = await acompletion(srv, tools=tools, tool_choice="auto")
        assert srv.requests[0]["tools"] == tools

    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.id == "call_1"
    assert call.function.name == "lookup"
    assert call.function.arguments == '{"key": "k1"}'


async def test_litellm_stream(litellm_transport: str) -> None:
    text = "Streaming through litellm works, chunk by chunk."
    with FakeLLMServer([FakeReply.text(text)]) as srv:
        stream = await acompletion(srv, stream=True)
        pieces = [chunk.choices[0].delta.content or "" async for chunk in stream]

    assert "".join(pieces) == text
    assert len(pieces) > 5  # really streamed in pieces


async def test_litellm_stream_tool_call_and_embeddings(litellm_transport: str) -> None:
    args = {"path": "/tmp/x", "mode": "r"}
    with FakeLLMServer([FakeReply.tool_call("open_file", args)]) as srv:
        stream = await acompletion(srv, stream=True)
        chunks = [chunk async for chunk in stream]
        embedding = await litellm.aembedding(
            model="openai/text-embedding-3-small",
            api_base=srv.url,
            api_key="test-key",
            input=["same", "same"],
        )

    rebuilt = litellm.stream_chunk_builder(chunks)
    [call] = rebuilt.choices[0].message.tool_calls
    assert call.function.name == "open_file"
    assert json.loads(call.function.arguments) == args
    first, second = (d["embedding"] for d in embedding.data)
    assert len(first) == 8
    assert first == second


async def test_litellm_errors_with_no_retries(litellm_transport: str) -> None:
    """Pin how litellm surfaces the scripted failures (num_retries=0 means one request)."""
    with FakeLLMServer([FakeReply.rate_limit(5.0)]) as srv:
        with pytest.raises(litellm.RateLimitError):
            await acompletion(srv)
        assert srv.request_count == 1  # no retry, so no Retry-After to wait for

    with FakeLLMServer([FakeReply.server_error()]) as srv:
        with pytest.raises(litellm.InternalServerError):
            await acompletion(srv)
        assert srv.request_count == 1

    with FakeLLMServer([FakeReply.cut_stream(3, FakeReply.text("partial answer here"))]) as srv:
        received: list[str] = []
        stream = await acompletion(srv, stream=True)
        with pytest.raises((litellm.APIConnectionError, litellm.ServiceUnavailableError)):
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")
        assert "".join(received) == "partial "  # the two content chunks sent before the cut
        assert srv.request_count == 1


# -- pytest plugin -----------------------------------------------------------------------------


def test_pytest_plugin_fixtures(tmp_path: Path) -> None:
    """Enable the plugin the way users do (conftest ``pytest_plugins``) in a child pytest."""
    (tmp_path / "conftest.py").write_text(
        'pytest_plugins = ["gecko_actors.testing.pytest_plugin"]\n'
    )
    (tmp_path / "test_user.py").write_text(
        textwrap.dedent(
            """
            import httpx
            from gecko_actors.testing.fake_server import FakeReply

            SEEN = []

            def post(server):
                return httpx.post(
                    f"{server.url}/chat/completions",
                    json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                ).json()["choices"][0]["message"]["content"]

            def test_fixtures(fake_llm_server, make_fake_llm_server):
                fake_llm_server.push(FakeReply.text("from fixture"))
                one = make_fake_llm_server([FakeReply.text("from factory")])
                two = make_fake_llm_server(model="other", stream_chunk_chars=2)
                two.push(FakeReply.text("second factory server"))
                assert post(fake_llm_server) == "from fixture"
                assert post(one) == "from factory"
                assert post(two) == "second factory server"
                assert len({fake_llm_server.port, one.port, two.port}) == 3
                SEEN.extend([fake_llm_server, one, two])

            def test_all_stopped_at_teardown():
                assert len(SEEN) == 3
                assert not any(server.running for server in SEEN)
            """
        )
    )
    package_root = Path(gecko_actors.__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(package_root)}
    env.pop("PYTEST_ADDOPTS", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
