"""MCP servers behind toolbox actors (``RemoteToolBox.from_mcp``): each replica owns its
session, agents on Ray call the server's tools through it, and a session whose server died
mid-call is started again for the next call."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
import ray
from test_mcp_tools import SHOP, http_shop  # noqa: F401  (a fixture)

from gecko_actors import Agent, RemoteToolBox, ScriptedModel
from gecko_actors.core.messages import ToolCall
from gecko_actors.exceptions import ConfigurationError, UserError
from gecko_actors.runtime import namespace

pytest.importorskip("mcp")
pytestmark = pytest.mark.usefixtures("ray_session")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def call(box: RemoteToolBox, name: str, **arguments: Any) -> Any:
    found = ToolCall(id="c", name=name, arguments=json.dumps(arguments))
    return asyncio.run(box.execute_call(found))


def adder(messages: list[Any], tools: Any) -> Any:
    if messages[-1].role != "tool":
        return ScriptedModel.call("add", a=40, b=2)
    return f"the sum is {messages[-1].text}"


def test_a_hosted_agent_uses_an_mcp_server_through_a_toolbox_actor() -> None:
    box = RemoteToolBox.from_mcp(unique("shop"), SHOP, replicas=2)
    agent = Agent.spawn(unique("clerk"), model=ScriptedModel(adder), tools=box)
    try:
        assert {"add", "stock_lookup", "refuse", "crash"} <= set(box.names())
        assert agent.run("add them").content == "the sum is 42"
        assert box.stats()["add"]["executions"] == 1
        assert "refused: no" in call(box, "refuse", reason="no").content
    finally:
        agent.kill()
        box.kill()


def test_a_server_that_dies_mid_call_is_started_again_for_the_next_call() -> None:
    box = RemoteToolBox.from_mcp(unique("shop"), SHOP, replicas=1)
    try:
        crashed = call(box, "crash")
        assert crashed.is_error and "crash" in crashed.content
        assert call(box, "add", a=1, b=2).content == "3"  # a new session, a new server
        replica = ray.get_actor(box.replica_names[0], namespace=namespace())
        assert ray.get(replica.describe.remote())["sessions"] == 2
    finally:
        box.kill()


def test_a_server_that_cannot_start_is_a_configuration_error_and_frees_the_name() -> None:
    name = unique("broken")
    with pytest.raises(ConfigurationError, match="could not start: no such config"):
        RemoteToolBox.from_mcp(name, ["python3", "-c", "import sys; sys.exit('no such config')"])
    with pytest.raises(ConfigurationError, match="GECKO_TEST_MISSING_TOKEN"):
        RemoteToolBox.from_mcp(name, SHOP, env_from=["GECKO_TEST_MISSING_TOKEN"])
    box = RemoteToolBox.from_mcp(name, SHOP)  # the name is free again
    box.kill()
    with pytest.raises(UserError, match="names a secret"):
        RemoteToolBox.from_mcp(unique("leaky"), SHOP, env={"API_KEY": "sk-x"})


def test_a_toolbox_reaches_an_http_server(http_shop: str) -> None:  # noqa: F811
    box = RemoteToolBox.from_mcp(unique("web-shop"), url=http_shop)
    try:
        assert call(box, "add", a=20, b=22).content == "42"
    finally:
        box.kill()


def test_a_server_that_dies_while_idle_is_started_again_before_the_next_call() -> None:
    import os
    import signal
    import time

    box = RemoteToolBox.from_mcp(unique("shop"), SHOP, keepalive=0.3)
    try:
        first = int(call(box, "pid").content)
        os.kill(first, signal.SIGKILL)  # no call in flight: only the keepalive can see it
        replica = ray.get_actor(box.replica_names[0], namespace=namespace())
        deadline = time.monotonic() + 60
        while not ray.get(replica.__ray_call__.remote(lambda self: self._holder.done())):
            assert time.monotonic() < deadline, "the keepalive did not notice"
            time.sleep(0.1)
        answer = call(box, "pid")
        assert not answer.is_error and int(answer.content) != first  # no failed call first
    finally:
        box.kill()
