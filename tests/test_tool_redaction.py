"""A tool's error text goes back to the model redacted like the logs, and bounded.

What a tool's exception says is sent to the model provider as the next tool message (and stored
in the session), so a registered secret or a credential-shaped string in it must be masked there
exactly as in a log line: in the exception text, in argument validation errors, in a quoted
snippet of malformed arguments, and on the remote toolbox path.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from pydantic import BaseModel, field_validator

from gecko_actors import (
    Hooks,
    LocalAgent,
    ScriptedModel,
    Tool,
    ToolBox,
    ToolCall,
    ToolResult,
    _redact,
    tool,
)
from gecko_actors._redact import register_secret
from gecko_actors.core.tools import MAX_ERROR_CHARS

# Built in pieces so that no credential-shaped literal sits in the source as one string.
CANARY = "gecko-canary-" + "7f3a9c2e1b5d"
SK_KEY = "sk" + "-live-" + "A1b2C3d4E5f6G7h8"
BEARER_TOKEN = "eyzz" + "Token1234567890"
API_KEY_VALUE = "hunter2" + "hunter2"
LEAKS = (CANARY, SK_KEY, BEARER_TOKEN, API_KEY_VALUE)
MESSAGE = (
    f"login failed for {CANARY} with key {SK_KEY}; "
    f"sent 'Authorization: Bearer {BEARER_TOKEN}' and api_key={API_KEY_VALUE}"
)


@pytest.fixture(autouse=True)
def _canary_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The canary is a registered secret in this process, for this test only."""
    monkeypatch.setattr(_redact, "_secrets", set(_redact._secrets))
    register_secret(CANARY)


def assert_no_leak(text: str) -> None:
    for leak in LEAKS:
        assert leak not in text, (leak, text)
        assert leak[:10] not in text, (leak[:10], text)  # not even half of one
    assert _redact.MASK in text


@tool
def leaky_sync() -> str:
    """Fail, quoting credentials."""
    raise RuntimeError(MESSAGE)


@tool
async def leaky_async() -> str:
    """Fail, quoting credentials."""
    raise RuntimeError(MESSAGE)


@pytest.mark.parametrize("leaky", [leaky_sync, leaky_async], ids=["sync", "async"])
async def test_a_tools_exception_reaches_the_model_redacted(leaky: Tool) -> None:
    seen: list[ToolResult] = []
    model = ScriptedModel([ScriptedModel.call(leaky.name), "sorry"])
    agent = LocalAgent(model, [leaky], hooks=Hooks(on_tool_execute=lambda c, r: seen.append(r)))
    out = await agent.arun("log in")
    assert out.content == "sorry"
    (result,) = [m for m in model.calls[1].messages if m.role == "tool"]
    assert "RuntimeError: login failed for" in result.text  # the useful part stays
    assert_no_leak(result.text)
    assert_no_leak(seen[0].content)
    stored = [m.text for m in out.messages if m.role == "tool"]  # what a session keeps
    assert len(stored) == 1
    assert_no_leak(stored[0])


class Login(BaseModel):
    user: str

    @field_validator("user")
    @classmethod
    def _known(cls, user: str) -> str:
        raise ValueError(f"user {user!r} unknown; server said: {MESSAGE}")


async def test_validation_error_text_is_redacted() -> None:
    called = []
    box = ToolBox([Tool(lambda user: called.append(user), name="login", args_model=Login)])
    result = await box.execute_call(ToolCall(id="v", name="login", arguments='{"user": "ann"}'))
    assert result.is_error and "invalid arguments for tool 'login'" in result.content
    assert "user:" in result.content and called == []
    assert_no_leak(result.content)


async def test_a_secret_at_the_edge_of_a_quoted_malformed_snippet_is_not_half_shown() -> None:
    # The error quotes the first 200 characters of malformed arguments: a secret straddling
    # that edge must be masked, not cut into a visible half.
    arguments = '{"note": "' + "x" * 178 + CANARY + '"'  # 12 of its characters inside
    box = ToolBox([leaky_sync])
    result = await box.execute_call(ToolCall(id="m", name="leaky_sync", arguments=arguments))
    assert result.is_error and "not valid JSON" in result.content
    assert "x" * 178 in result.content and CANARY[:6] not in result.content


async def test_a_huge_exception_message_is_cut_and_still_redacted() -> None:
    @tool
    def verbose() -> str:
        """Fail at length."""
        raise ValueError("x" * 100 + MESSAGE + " " + "y" * 1_000_000)

    result = await ToolBox([verbose]).execute_call(ToolCall(id="h", name="verbose"))
    assert result.is_error and result.content.endswith("(truncated)")
    assert len(result.content) <= MAX_ERROR_CHARS
    assert_no_leak(result.content)


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


async def test_an_exception_whose_text_cannot_be_rendered_is_still_an_error_result() -> None:
    @tool
    def odd() -> str:
        """Fail strangely."""
        raise Unprintable()

    result = await ToolBox([odd]).execute_call(ToolCall(id="o", name="odd"))
    assert result.is_error and "Unprintable" in result.content


# --- the remote toolbox path (Ray) -----------------------------------------------------------


@pytest.fixture
def leaky_box(ray_session) -> Iterator:
    from gecko_actors import RemoteToolBox

    box = RemoteToolBox.spawn(f"leaky-{uuid.uuid4().hex[:8]}", [leaky_sync])
    try:
        yield box
    finally:
        box.kill()


async def test_remote_toolbox_error_results_are_redacted_in_both_processes(leaky_box) -> None:
    # The replica masks what it knows (credential shapes, its own environment's secrets); the
    # canary is registered only here, in the driver, which must mask it on the way back.
    result = await leaky_box.execute_call(ToolCall(id="r", name="leaky_sync"))
    assert result.is_error and "RuntimeError: login failed for" in result.content
    assert_no_leak(result.content)
