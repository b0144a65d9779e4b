"""An agent's spec as plain data: what is data, what is live code, and hosted agents recorded
either way (the directory keeps data where it can, a pickled copy only where it must)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import msgpack
import pytest
import ray
from pydantic import BaseModel

from gecko_actors import (
    Agent,
    Hooks,
    LiteLLMModel,
    ModelGateway,
    PromptTemplate,
    ScriptedModel,
    TokenMemory,
    ToolBox,
    UserError,
    calculator,
    tool,
)
from gecko_actors._actors.gateway import GatewayModel
from gecko_actors._actors.toolbox import MeteredToolBox
from gecko_actors.agents import directory, host, placement
from gecko_actors.agents import spec as spec_module
from gecko_actors.agents.spec import AgentSpec, LiveCode, foreign_modules, from_data, to_data
from gecko_actors.core.messages import Message
from gecko_actors.core.sessions import InMemorySessionStore
from gecko_actors.core.tools import Tool
from gecko_actors.stores.shared import SharedSessionStore
from gecko_actors.testing import FakeReply

# --- module-level code a spec can name --------------------------------------------------------


class Query(BaseModel):
    text: str


@tool(timeout=3.0)
def shout(text: str) -> str:
    """Say it louder."""
    return text.upper() + "!"


def count_words(text: str) -> int:
    """Count the words of a text."""
    return len(text.split())


def lookup(query: Query) -> str:
    """Look a query up."""
    return f"found {query.text}"


def turn_started(turn: int, messages: list[Message]) -> None:
    """A hook that does nothing."""


def echo(messages: list[Message], tools: list[Any]) -> str:
    return f"echo: {messages[-1].text}"


def full_spec(**changes: Any) -> AgentSpec:
    """A spec with every part set to data."""
    box = MeteredToolBox([calculator, shout, count_words], timeout=7.0, max_concurrency=3)
    box.register(tool(name="lookup", description="Find it.")(lookup))
    fields: dict[str, Any] = {
        "name": "writer",
        "model": ScriptedModel(
            ["one", "two"], name="script", stream_chunk_words=2, price=(1e-6, 2e-6)
        ),
        "tools": box,
        "system_prompt": PromptTemplate("You write about {{ topic }}."),
        "prompt_vars": {"topic": "otters", "limits": [1, 2]},
        "memory": TokenMemory(1200, cache_size=64),
        "session_store": SharedSessionStore("sqlite:///tmp/never-opened.db", "writer"),
        "engine_options": {"max_retries": 1, "max_turns": 4},
        "hooks": Hooks(on_turn_start=turn_started),
    }
    fields.update(changes)
    return AgentSpec(**fields)


# --- to data and back -------------------------------------------------------------------------


def test_a_spec_of_data_round_trips_through_msgpack() -> None:
    data = to_data(full_spec())
    rebuilt = from_data(msgpack.unpackb(msgpack.packb(data)))
    assert to_data(rebuilt) == data
    assert rebuilt.model.config() == {
        "replies": ["one", "two"],
        "name": "script",
        "stream_chunk_words": 2,
        "price": [1e-06, 2e-06],
    }
    assert isinstance(rebuilt.tools, MeteredToolBox)
    assert (rebuilt.tools.timeout, rebuilt.tools.max_concurrency) == (7.0, 3)
    assert rebuilt.tools.get("shout").timeout == 3.0
    assert rebuilt.tools.get("lookup").description == "Find it."
    assert rebuilt.tools.get("lookup").custom_args_model is None
    assert rebuilt.system_prompt.render(topic="seals") == "You write about seals."
    assert rebuilt.memory.max_tokens == 1200 and rebuilt.memory.cache_size == 64
    assert rebuilt.session_store.url == "sqlite:///tmp/never-opened.db"
    assert rebuilt.hooks.on_turn_start is turn_started and rebuilt.hooks.on_turn_end is None


def test_rebuilt_tools_run() -> None:
    box = from_data(to_data(full_spec())).tools

    async def call(name: str, arguments: dict[str, Any]) -> str:
        return (await box.execute(name, arguments)).content

    assert asyncio.run(call("shout", {"text": "hi"})) == "HI!"
    assert asyncio.run(call("count_words", {"text": "a b c"})) == "3"
    assert asyncio.run(call("calculator", {"expression": "6*7"})) == "42"
    assert asyncio.run(call("lookup", {"query": {"text": "otters"}})) == "found otters"


def test_a_custom_arguments_model_and_a_function_script_are_named() -> None:
    box = ToolBox([Tool(lookup, args_model=Query)])
    data = to_data(full_spec(tools=box, model=ScriptedModel(echo)))
    assert data["model"]["function"] == {"ref": f"{__name__}:echo"}
    assert data["tools"]["tools"][0]["args_model"] == {"ref": f"{__name__}:Query"}
    assert data["tools"]["metered"] is False
    rebuilt = from_data(data)
    assert rebuilt.tools.get("lookup").custom_args_model is Query
    assert asyncio.run(rebuilt.model.complete([Message.user("hi")])).message.text == "echo: hi"


def test_only_code_outside_the_package_is_foreign() -> None:
    builtin = full_spec(tools=MeteredToolBox([calculator]), hooks=None)
    assert foreign_modules(to_data(builtin)) == set()
    assert foreign_modules(to_data(full_spec())) == {__name__}


def test_a_gateway_model_is_its_names_and_configuration() -> None:
    origin = {"model": LiteLLMModel("openai/x", api_key_env="X_KEY").config(), "limits": None}
    model = GatewayModel("openai-x-1234", ["gateway/openai-x-1234/0"], "gecko", origin)
    data = to_data(full_spec(model=model))["model"]
    assert data == {"kind": "gateway", "label": "openai-x-1234",
                    "replicas": ["gateway/openai-x-1234/0"], "namespace": "gecko",
                    "origin": origin}  # fmt: skip
    assert data["origin"]["model"]["api_key_env"] == "X_KEY"


@pytest.mark.parametrize(
    ("changes", "part"),
    [
        ({"model": ScriptedModel(lambda messages, tools: "hi")}, "model"),
        ({"model": ScriptedModel([ScriptedModel.call("shout", text="a")])}, "model"),
        ({"model": object()}, "model"),
        ({"tools": MeteredToolBox([tool(name="anon")(lambda text: text)])}, "tool 'anon'"),
        ({"hooks": Hooks(on_turn_end=lambda turn, message: None)}, "hook 'on_turn_end'"),
        ({"prompt_vars": {"when": object()}}, "prompt_vars"),
        ({"session_store": InMemorySessionStore()}, "session_store"),
    ],
)
def test_live_code_is_named(changes: dict[str, Any], part: str) -> None:
    with pytest.raises(LiveCode) as caught:
        to_data(full_spec(**changes))
    assert caught.value.part == part


def test_a_closure_tool_is_live_code() -> None:
    def local(text: str) -> str:
        """A function of this test only."""
        return text

    with pytest.raises(LiveCode, match="not a module-level name"):
        to_data(full_spec(tools=ToolBox([local])))


def test_a_module_that_cannot_be_imported_is_a_user_error_naming_it() -> None:
    data = to_data(full_spec())
    data["tools"]["tools"][1]["ref"] = "no_such_module_here:shout"
    with pytest.raises(UserError, match="no_such_module_here") as caught:
        from_data(data)
    assert "runtime_env" in caught.value.hint
    data["tools"]["tools"][1]["ref"] = f"{__name__}:gone"
    with pytest.raises(UserError, match="no longer defines"):
        from_data(data)


def test_a_spec_of_another_version_is_refused() -> None:
    data = to_data(full_spec()) | {"v": 99}
    with pytest.raises(UserError, match="another version"):
        from_data(data)


def test_a_host_uses_the_pickled_copy_when_it_cannot_import_the_data() -> None:
    spec = full_spec()
    data, code = placement.recorded(spec)
    assert data is not None and code  # names this test module: both are kept
    data["hooks"]["on_turn_start"] = {"ref": "no_such_module_here:hook"}
    rebuilt = host._spec(directory.Entry("agents/host/0", data, code, 0.0))
    assert rebuilt.hooks.on_turn_start is turn_started
    with pytest.raises(UserError, match="no_such_module_here"):
        host._spec(directory.Entry("agents/host/0", data, b"", 0.0))


def test_live_code_is_pickled_only() -> None:
    data, code = placement.recorded(full_spec(model=ScriptedModel(lambda m, t: "hi")))
    assert data is None and code
    data, code = placement.recorded(full_spec(tools=None, hooks=None))
    assert data is not None and code == b""


def test_live_code_that_cannot_be_pickled_is_a_user_error() -> None:
    import threading

    lock = threading.Lock()
    spec = full_spec(model=ScriptedModel(lambda m, t: str(lock)))
    with pytest.raises(UserError, match="cannot be sent to an agent host"):
        placement.recorded(spec)


# --- on Ray -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("ray_session")
def test_a_hosted_agent_of_data_is_recorded_without_pickle_and_answers() -> None:
    name = f"data-{uuid.uuid4().hex[:8]}"
    agent = Agent.spawn(name, model=ScriptedModel(["hello"]), tools=[calculator],
                        system_prompt=PromptTemplate("Be {{ mood }}."),
                        prompt_vars={"mood": "brief"})  # fmt: skip
    try:
        entry = directory.find(name)
        assert entry.code == b"" and entry.data["model"]["replies"] == ["hello"]
        assert entry.data["tools"]["tools"][0]["ref"] == "gecko_actors.core.calculator:calculator"
        assert agent.run("hi").content == "hello"
    finally:
        agent.kill()


@pytest.mark.usefixtures("ray_session")
def test_a_hosted_agent_of_live_code_is_pickled_and_answers() -> None:
    name = f"live-{uuid.uuid4().hex[:8]}"
    agent = Agent.spawn(name, model=ScriptedModel(lambda messages, tools: "from a lambda"))
    try:
        entry = directory.find(name)
        assert entry.data is None and entry.code
        assert agent.run("hi").content == "from a lambda"
    finally:
        agent.kill()


@pytest.mark.usefixtures("ray_session")
def test_a_gateway_gone_with_its_cluster_is_made_again_from_the_spec(fake_llm_server) -> None:
    fake_llm_server.push(FakeReply.text("made again"))
    model = LiteLLMModel("openai/fake-model", api_base=fake_llm_server.url,
                         api_key_env="GECKO_EXAMPLE_KEY", num_retries=0)  # fmt: skip
    gateway = ModelGateway.spawn(model, replicas=1, requests_per_minute=600)
    data = to_data(full_spec(model=gateway.as_model(), tools=None, hooks=None))
    gateway.kill()  # as the loss of the whole cluster would
    deadline = time.monotonic() + 60
    while _alive(gateway.replica_names[0]) and time.monotonic() < deadline:
        time.sleep(0.05)  # a killed actor's name is freed shortly after
    spec_module._GATEWAYS.pop(gateway.label, None)  # what a fresh process has found: none
    try:
        rebuilt = from_data(data).model
        reply = asyncio.run(rebuilt.complete([Message.user("hi")]))
        assert reply.message.text == "made again"
        # Its limits were made again too.
        assert ray.get_actor(gateway.limiter_name, namespace=rebuilt.namespace) is not None
    finally:
        gateway.kill()


def _alive(name: str) -> bool:
    try:
        ray.get_actor(name, namespace=ray.get_runtime_context().namespace)
    except ValueError:
        return False
    return True


@pytest.mark.usefixtures("ray_session")
def test_init_starts_every_agent_host_of_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[str] = []
    monkeypatch.setattr(placement.pools, "handle", lambda name, cls: made.append(name))
    placement.warm()
    env = placement.pools.code_env()
    size = placement.pools.pool_size("agents")
    assert size >= 2 and made == [f"agents/host/{env}/{i}" for i in range(size)]
