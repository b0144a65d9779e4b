"""MCP tools in a LocalAgent (``gecko_actors.core.mcp_tools``), against real MCP servers the
tests write with the SDK's MCPServer (tests/mcp_servers/shop.py), over stdio and HTTP."""

from __future__ import annotations

import json
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gecko_actors import LocalAgent, ScriptedModel
from gecko_actors.core.mcp_tools import mcp_tools
from gecko_actors.exceptions import ConfigurationError, UserError

pytest.importorskip("mcp")

SHOP = [sys.executable, str(Path(__file__).parent / "mcp_servers" / "shop.py")]


def calls(*wanted: tuple[str, dict[str, Any]]):
    """A scripted model: make ``wanted`` calls, then answer with every tool result."""

    def reply(messages, tools):
        if messages[-1].role != "tool":
            return [ScriptedModel.call(name, **args) for name, args in wanted]
        return " | ".join(m.text for m in messages if m.role == "tool")

    return ScriptedModel(reply)


async def test_an_agent_uses_a_stdio_server_s_tools_with_their_schemas() -> None:
    async with mcp_tools(command=SHOP) as tools:
        by_name = {t.name: t for t in tools}
        assert set(by_name) == {"add", "stock_lookup", "refuse", "token", "pid", "crash"}
        assert by_name["stock_lookup"].remote_name == "stock.lookup"  # a name models accept
        assert by_name["add"].parameters["required"] == ["a", "b"]
        assert by_name["add"].openai_schema()["function"]["description"] == "Add two numbers."
        model = calls(("add", {"a": 2, "b": 3}), ("stock_lookup", {"item": "pen"}))
        output = await LocalAgent(model, tools).arun("go")
    added, stock = output.content.split(" | ")
    assert added == "5" and json.loads(stock) == {"item": "pen", "count": 3}


async def test_a_server_side_error_goes_back_to_the_model_as_a_tool_error() -> None:
    async with mcp_tools(command=SHOP) as tools:
        output = await LocalAgent(calls(("refuse", {"reason": "no"})), tools).arun("go")
        assert "tool 'refuse' failed" in output.content and "refused: no" in output.content
        # Arguments the server's schema refuses are its error too, not a crash.
        output = await LocalAgent(calls(("add", {"a": "x", "b": 1})), tools).arun("go")
        assert "tool 'add' failed" in output.content


async def test_a_server_that_dies_mid_call_is_a_tool_error_not_a_hang() -> None:
    async with mcp_tools(command=SHOP, timeout=30) as tools:
        output = await LocalAgent(calls(("crash", {})), tools).arun("go")
    assert "tool 'crash' failed" in output.content


async def test_a_server_that_cannot_start_names_its_command_and_last_stderr_line() -> None:
    broken = [sys.executable, "-c", "import sys; print('missing config file', file=sys.stderr)"
              "; sys.exit(3)"]  # fmt: skip
    with pytest.raises(ConfigurationError, match="could not start: missing config file") as info:
        async with mcp_tools(command=broken):
            pass
    assert sys.executable in str(info.value)
    with pytest.raises(ConfigurationError, match="could not start"):
        async with mcp_tools(command=["/nonexistent/mcp-server"]):
            pass


async def test_secrets_reach_the_server_by_name_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GECKO_TEST_MCP_TOKEN", "s3cr3t-value")
    async with mcp_tools(command=SHOP, env_from=["GECKO_TEST_MCP_TOKEN"]) as tools:
        output = await LocalAgent(calls(("token", {})), tools).arun("go")
        assert output.content == "s3cr3t-value"
    async with mcp_tools(command=SHOP) as tools:  # not passed: the server does not see it
        assert (await LocalAgent(calls(("token", {})), tools).arun("go")).content == "none"
    with pytest.raises(UserError, match="names a secret"):
        async with mcp_tools(command=SHOP, env={"GITHUB_TOKEN": "ghp_x"}):
            pass
    monkeypatch.delenv("GECKO_TEST_MCP_TOKEN")
    with pytest.raises(ConfigurationError, match="GECKO_TEST_MCP_TOKEN"):
        async with mcp_tools(command=SHOP, env_from=["GECKO_TEST_MCP_TOKEN"]):
            pass


async def test_an_mcp_tool_refuses_to_travel_to_another_process() -> None:
    async with mcp_tools(command=SHOP) as tools:
        with pytest.raises(UserError, match="RemoteToolBox"):
            pickle.dumps(tools[0])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({}, "not both or neither"),
    ({"command": SHOP, "url": "http://127.0.0.1:1/mcp"}, "not both or neither"),
    ({"command": "python server.py"}, "list of strings"),
])  # fmt: skip
async def test_bad_arguments_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match=message):
        async with mcp_tools(**kwargs):
            pass


@pytest.fixture
def http_shop() -> Any:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([*SHOP, "http", str(port)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert server.poll() is None and time.monotonic() < deadline, "no HTTP MCP server"
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.terminate()
        server.wait(timeout=30)


async def test_an_agent_uses_an_http_server_s_tools(http_shop: str) -> None:
    async with mcp_tools(url=http_shop) as tools:
        output = await LocalAgent(calls(("add", {"a": 20, "b": 22})), tools).arun("go")
    assert output.content == "42"
    with pytest.raises(ConfigurationError, match="could not start"):
        async with mcp_tools(url=http_shop.replace("/mcp", "/nothing-here")):
            pass
