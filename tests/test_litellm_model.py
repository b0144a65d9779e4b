"""The real HTTP path: LiteLLMModel → litellm → FakeLLMServer on 127.0.0.1."""

from __future__ import annotations

import io
import pickle
import time

import pytest

from gecko_actors import (
    ConfigurationError,
    LiteLLMModel,
    LocalAgent,
    Message,
    ModelError,
    ModelTimeoutError,
    UserError,
    configure_logging,
    tool,
)
from gecko_actors.core.litellm_model import _retry_after
from gecko_actors.core.models import ModelResponse
from gecko_actors.testing import FakeLLMServer, FakeReply
from gecko_actors.testing.chaos import provider_faults

KEY = "sk" + "-test-0123456789abcdefghijklmnop"


def model_for(server: FakeLLMServer, **kwargs) -> LiteLLMModel:
    kwargs.setdefault("num_retries", 0)
    kwargs.setdefault("timeout", 10)
    return LiteLLMModel("openai/fake-model", api_base=server.url, api_key="test-key", **kwargs)


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


async def test_plain_reply(fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.push(FakeReply.text("Bonjour!", usage=(12, 3)))
    out = await LocalAgent(model_for(fake_llm_server)).arun("Say hello in French")
    assert out.content == "Bonjour!"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.requests) == (12, 3, 1)
    sent = fake_llm_server.requests[0]
    assert sent["model"] == "fake-model"
    assert sent["messages"][-1] == {"role": "user", "content": "Say hello in French"}
    assert "tools" not in sent


async def test_cost_is_the_price_litellm_put_on_the_response(
    fake_llm_server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import litellm

    fake_llm_server.push(FakeReply.text("priced", usage=(1000, 100)), FakeReply.text("free"))
    model = LiteLLMModel("openai/gpt-4o-mini", api_base=fake_llm_server.url, api_key="k",
                         num_retries=0)  # fmt: skip
    expected = 1000 * 0.15e-6 + 100 * 0.6e-6  # gpt-4o-mini's price per token, in and out
    priced_again: list[object] = []
    monkeypatch.setattr(litellm, "completion_cost", lambda **kw: priced_again.append(kw))
    reply = await model.complete([Message.user("hi")])
    assert reply.usage.cost == pytest.approx(expected)
    unpriced = await model_for(fake_llm_server).complete([Message.user("hi")])
    assert unpriced.usage.cost is None  # a model without a price has no cost
    assert priced_again == []  # what litellm priced is not priced a second time


async def test_tool_call_is_executed_and_answered_next_turn(fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.push(FakeReply.tool_call("multiply", {"a": 6, "b": 7}), FakeReply.text("42"))
    out = await LocalAgent(model_for(fake_llm_server), [multiply]).arun("6 times 7?")
    assert out.content == "42"
    first, second = fake_llm_server.requests
    assert first["tools"][0]["function"]["name"] == "multiply"
    assert first["tool_choice"] == "auto"
    tool_message = second["messages"][-1]
    assert tool_message["role"] == "tool" and tool_message["content"] == "42"
    assert tool_message["tool_call_id"] == second["messages"][-2]["tool_calls"][0]["id"]


async def test_malformed_tool_arguments_are_fed_back(fake_llm_server: FakeLLMServer) -> None:
    calls: list[tuple[int, int]] = []

    @tool
    def multiply(a: int, b: int) -> int:
        """Multiply."""
        calls.append((a, b))
        return a * b

    fake_llm_server.push(
        FakeReply.tool_call("multiply", '{"a": 6, "b": '), FakeReply.text("sorry, retrying")
    )
    out = await LocalAgent(model_for(fake_llm_server), [multiply]).arun("6 times 7?")
    assert out.content == "sorry, retrying"
    assert calls == []
    fed_back = fake_llm_server.requests[1]["messages"][-1]
    assert fed_back["role"] == "tool" and "not valid JSON" in fed_back["content"]


async def test_streaming_chunks(fake_llm_server: FakeLLMServer) -> None:
    text = "Streaming arrives in many small pieces."
    fake_llm_server.push(FakeReply.text(text, usage=(9, 8)))
    model = model_for(fake_llm_server)
    items = [item async for item in model.stream([Message.user("go")])]
    chunks, final = items[:-1], items[-1]
    assert len(chunks) > 3 and all(isinstance(c, str) for c in chunks)
    assert "".join(chunks) == text
    assert isinstance(final, ModelResponse) and final.message.text == text
    assert final.usage.completion_tokens == 8
    assert fake_llm_server.requests[0]["stream"] is True


async def test_streamed_tool_call_then_streamed_answer(fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.push(
        FakeReply.tool_call("multiply", {"a": 12, "b": 12}), FakeReply.text("It is 144.")
    )
    stream = LocalAgent(model_for(fake_llm_server), [multiply]).stream("12 squared?")
    assert await stream.text() == "It is 144."
    assert stream.output is not None
    assert stream.output.tool_calls[0].parse_arguments() == {"a": 12, "b": 12}
    assert fake_llm_server.requests[1]["messages"][-1]["content"] == "144"


async def test_rate_limit_honours_retry_after_then_succeeds(fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.push(FakeReply.rate_limit(retry_after=0.4), FakeReply.text("finally"))
    model = model_for(fake_llm_server, num_retries=2, retry_backoff=0.0)
    start = time.monotonic()
    response = await model.complete([Message.user("hi")])
    assert response.message.text == "finally"
    assert fake_llm_server.request_count == 2
    assert time.monotonic() - start >= 0.4  # it waited as the server asked


async def test_repeated_5xx_ends_in_model_error(fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.push(*provider_faults("503 503 503", then=FakeReply.text("unused")))
    model = model_for(fake_llm_server, num_retries=2, retry_backoff=0.01)
    with pytest.raises(ModelError) as info:
        await model.complete([Message.user("hi")])
    assert fake_llm_server.request_count == 3
    assert info.value.attempts == 3 and info.value.status_code == 503
    assert "after 3 attempt(s)" in str(info.value)


async def test_a_provider_failing_in_a_pattern_is_retried_to_its_answer(
    fake_llm_server: FakeLLMServer,
) -> None:
    fake_llm_server.push(*provider_faults("429, 500, 502, ok", then=FakeReply.text("at last")))
    model = model_for(fake_llm_server, num_retries=3, retry_backoff=0.0)
    response = await model.complete([Message.user("hi")])
    assert response.message.text == "at last" and fake_llm_server.request_count == 4


async def test_client_errors_are_not_retried(fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.push(FakeReply.server_error(400, "bad request"), FakeReply.text("unused"))
    with pytest.raises(ModelError) as info:
        await model_for(fake_llm_server, num_retries=3).complete([Message.user("hi")])
    assert fake_llm_server.request_count == 1
    assert info.value.status_code == 400


async def test_timeout_raises_within_the_timeout(fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.push(FakeReply.delay(10, then=FakeReply.text("too late")))
    model = model_for(fake_llm_server, timeout=0.5)
    with pytest.raises(ModelTimeoutError, match=r"did not answer within 0\.5s"):
        await model.complete([Message.user("hi")])
    assert fake_llm_server.request_count == 1  # it gave up on the one request, before its reply


async def test_stream_cut_midway_is_a_model_error(fake_llm_server: FakeLLMServer) -> None:
    fake_llm_server.push(FakeReply.cut_stream(3, then=FakeReply.text("a long answer " * 10)))
    model = model_for(fake_llm_server, num_retries=2)
    received: list[str] = []
    with pytest.raises(ModelError):
        async for item in model.stream([Message.user("go")]):
            received.append(item)  # type: ignore[arg-type]
    # Text had gone out, so it was not retried (that would repeat it).
    assert fake_llm_server.request_count == 1
    assert received and all(isinstance(r, str) for r in received)


async def test_models_never_share_configuration(make_fake_llm_server) -> None:
    import litellm

    one = make_fake_llm_server([FakeReply.text("from one")])
    two = make_fake_llm_server([FakeReply.text("from two")])
    first, second = model_for(one), model_for(two, temperature=0.3)
    assert (await second.complete([Message.user("x")])).message.text == "from two"
    assert (await first.complete([Message.user("x")])).message.text == "from one"
    assert "temperature" not in one.requests[0] and two.requests[0]["temperature"] == 0.3
    assert litellm.api_base is None and litellm.api_key is None


async def test_api_key_never_leaks(fake_llm_server: FakeLLMServer) -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream=stream)
    try:
        fake_llm_server.push(
            FakeReply.server_error(500, f"Incorrect API key provided: {KEY}"),
            FakeReply.server_error(401, f"Incorrect API key provided: {KEY}"),
        )
        model = LiteLLMModel(
            "openai/fake-model",
            api_base=fake_llm_server.url,
            api_key=KEY,
            num_retries=1,
            retry_backoff=0.01,
            timeout=5,
        )
        with pytest.raises(ModelError) as info:
            await model.complete([Message.user("hi")])
    finally:
        configure_logging()
    err = info.value
    assert fake_llm_server.request_count == 2  # the key was really sent and echoed back
    texts = [
        repr(model),
        str(model.__dict__),
        str(err),
        repr(err),
        str(err.to_dict()),
        str(pickle.loads(pickle.dumps(err))),
        stream.getvalue(),
    ]
    assert "retrying" in stream.getvalue()
    for text in texts:
        assert KEY not in text
        assert "0123456789abcdefghij" not in text


def test_missing_key_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("GECKO_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        LiteLLMModel("openai/gpt-4o-mini").validate_environment()
    with pytest.raises(ConfigurationError, match="'MY_KEY' is not set"):
        LiteLLMModel("openai/gpt-4o-mini", api_key_env="MY_KEY").validate_environment()
    monkeypatch.setenv("MY_KEY", "value-from-env")
    LiteLLMModel("openai/gpt-4o-mini", api_key_env="MY_KEY").validate_environment()


async def test_api_key_env_is_read_at_call_time(
    fake_llm_server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = LiteLLMModel(
        "openai/fake-model", api_base=fake_llm_server.url, api_key_env="FAKE_KEY", num_retries=0
    )
    monkeypatch.setenv("FAKE_KEY", "late-bound-key")
    fake_llm_server.push(FakeReply.text("ok"))
    assert (await model.complete([Message.user("x")])).message.text == "ok"
    assert "late-bound-key" not in repr(model)


def test_reserved_extra_arguments_are_refused() -> None:
    with pytest.raises(UserError, match="'messages'"):
        LiteLLMModel("openai/x", messages=[])


class _Headers(dict):
    pass


class _Err(Exception):
    def __init__(self, headers):
        self.litellm_response_headers = headers


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after": "9999"}, 60.0),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_parsing(headers, expected) -> None:
    assert _retry_after(_Err(_Headers(headers))) == expected


def test_zhipu_preset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BIGMODEL_API_KEY", raising=False)
    model = LiteLLMModel.zhipu("glm-4-plus", temperature=0.1)
    assert (model.model, model.api_key_env, model.temperature) == (
        "bigmodel/glm-4-plus",
        "BIGMODEL_API_KEY",
        0.1,
    )
    with pytest.raises(ConfigurationError, match="BIGMODEL_API_KEY"):
        model.validate_environment()
    monkeypatch.setenv("BIGMODEL_API_KEY", "zhipu-test-key")
    model.validate_environment()
