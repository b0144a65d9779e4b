"""OpenTelemetry traces: spans in one process, then one trace across real actors.

The driver's spans are read from the SDK's in-memory exporter; the actors' from the JSON lines
each process writes (``configure_tracing(directory=...)``), one file per process.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gecko_actors import (
    Agent,
    LiteLLMModel,
    LocalAgent,
    ModelGateway,
    RemoteToolBox,
    ScriptedModel,
    ToolContext,
    UserError,
    Workflow,
    configure_tracing,
    shutdown_tracing,
    tool,
    tracing_enabled,
)
from gecko_actors.core import tracing
from gecko_actors.testing import FakeLLMServer, FakeReply

SECRET = "-".join(["sk", "test", uuid.uuid4().hex])  # built: no key-shaped literal in the repo


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    configure_tracing(exporter=exporter)
    yield exporter
    shutdown_tracing()


@tool
def lookup(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def scripted() -> ScriptedModel:
    return ScriptedModel([ScriptedModel.call("lookup", city="Lizardton"), "done"])


def by_name(exporter: InMemorySpanExporter) -> dict[str, Any]:
    return {span.name: span for span in exporter.get_finished_spans()}


def test_off_by_default_nothing_is_recorded_or_carried():
    assert not tracing_enabled()
    context = ToolContext(run_id="r")
    assert tracing.with_trace(context) is context
    assert tracing.carrier() is None
    with tracing.span("nothing") as current:
        assert current is None


def test_an_agent_run_is_a_tree_of_genai_spans(spans):
    result = LocalAgent(scripted(), [lookup], name="weather").run("Weather?", session_id="s1")
    assert result.content == "done"
    found = by_name(spans)
    assert set(found) == {"invoke_agent weather", "chat ScriptedModel", "execute_tool lookup"}
    agent, tool_span = found["invoke_agent weather"], found["execute_tool lookup"]
    chats = [s for s in spans.get_finished_spans() if s.name == "chat ScriptedModel"]
    assert len(chats) == 2  # a call with the tool, then the answer
    assert agent.parent is None
    for child in [*chats, tool_span]:
        assert child.parent.span_id == agent.context.span_id
        assert child.context.trace_id == agent.context.trace_id
    assert agent.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert agent.attributes["gen_ai.agent.name"] == "weather"
    assert agent.attributes["gen_ai.conversation.id"] == "s1"
    assert chats[0].attributes["gen_ai.request.model"] == "ScriptedModel"
    assert chats[0].attributes["gen_ai.response.finish_reasons"] == ("tool_calls",)
    assert tool_span.attributes["gen_ai.tool.name"] == "lookup"
    assert tool_span.attributes["gecko.agent"] == "weather"
    # Without record_content, no prompt, completion, argument or result is recorded.
    for span in spans.get_finished_spans():
        assert not {k for k in span.attributes if "messages" in k or k.endswith(".arguments")}
        assert "Lizardton" not in json.dumps(dict(span.attributes), default=str)


def test_content_is_recorded_on_request_and_redacted():
    exporter = InMemorySpanExporter()
    configure_tracing(exporter=exporter, record_content=True)
    try:
        LocalAgent(scripted(), [lookup], name="weather").run(f"Weather? My key is {SECRET}")
    finally:
        shutdown_tracing()
    found = by_name(exporter)
    arguments = found["execute_tool lookup"].attributes["gen_ai.tool.call.arguments"]
    assert "Lizardton" in arguments
    assert (
        "sunny in Lizardton" in found["execute_tool lookup"].attributes["gen_ai.tool.call.result"]
    )
    assert "Weather?" in found["chat ScriptedModel"].attributes["gen_ai.input.messages"]
    assert all(SECRET not in str(dict(s.attributes)) for s in exporter.get_finished_spans())


def test_a_failed_tool_and_a_failed_run_are_error_spans(spans):
    @tool
    def broken() -> str:
        """Fails."""
        raise RuntimeError(f"no: the key {SECRET} was refused")

    model = ScriptedModel([ScriptedModel.call("broken"), "gave up"])
    LocalAgent(model, [broken], name="a").run("x")
    assert by_name(spans)["execute_tool broken"].status.status_code.name == "ERROR"
    failing = ScriptedModel([])  # runs out of replies: the run fails
    with pytest.raises(Exception):  # noqa: B017  (whatever ScriptedModel raises)
        LocalAgent(failing, name="b").run("x")
    assert by_name(spans)["invoke_agent b"].status.status_code.name == "ERROR"
    recorded = [str(e.attributes) for s in spans.get_finished_spans() for e in s.events]
    recorded += [s.status.description or "" for s in spans.get_finished_spans()]
    recorded += [str(dict(s.attributes)) for s in spans.get_finished_spans()]
    assert recorded and not [text for text in recorded if SECRET in text]


async def test_a_streamed_run_ends_its_chat_spans(spans):
    agent = LocalAgent(scripted(), [lookup], name="streamer")
    chunks = [chunk async for chunk in agent.stream("Weather?")]
    assert "".join(chunks) == "done"
    chats = [s for s in spans.get_finished_spans() if s.name == "chat ScriptedModel"]
    assert len(chats) == 2
    assert [c.attributes["gen_ai.response.finish_reasons"] for c in chats] == [
        ("tool_calls",),
        ("stop",),
    ]


def test_the_environment_turns_tracing_on_in_a_new_process(tmp_path):
    script = (
        "from gecko_actors import LocalAgent, ScriptedModel, tracing_enabled\n"
        "LocalAgent(ScriptedModel(['hi']), name='env').run('x')\n"
        "assert tracing_enabled()\n"
    )
    env = {**os.environ, "GECKO_TRACE_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=120)
    [spans] = read_spans(tmp_path).values()
    assert [span["name"] for span in spans][-1] == "invoke_agent env"
    assert spans[-1]["resource"]["attributes"]["service.name"] == "gecko-actors"


def test_without_the_sdk_the_environment_leaves_tracing_off_and_runs_work(tmp_path):
    script = (
        "import sys\n"
        "sys.modules['opentelemetry.sdk.resources'] = None  # as if the SDK were missing\n"
        "from gecko_actors import LocalAgent, ScriptedModel, tracing_enabled\n"
        "assert LocalAgent(ScriptedModel(['hi']), name='env').run('x').content == 'hi'\n"
        "assert not tracing_enabled()\n"
    )
    env = {**os.environ, "GECKO_TRACE_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, timeout=120, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "tracing stays off" in done.stderr + done.stdout
    assert not list(tmp_path.glob("spans-*"))


def test_bad_configuration_is_refused():
    with pytest.raises(UserError, match="somewhere"):
        configure_tracing()
    with pytest.raises(UserError, match="http"):
        configure_tracing("localhost:4318")
    assert not tracing_enabled()


# --- across actors ------------------------------------------------------------------------------


def read_spans(directory: Path) -> dict[str, list[dict[str, Any]]]:
    """The spans each process wrote, by file (one file per process)."""
    return {
        path.name: [json.loads(line) for line in path.read_text().splitlines() if line]
        for path in directory.glob("spans-*.jsonl")
    }


def reply(body: dict[str, Any]) -> FakeReply:
    """Call the weather tool once, then answer."""
    if body["messages"][-1]["role"] == "tool":
        return FakeReply.text("it is sunny", usage=(7, 3))
    return FakeReply.tool_call("lookup", {"city": "Lizardton"})


def test_one_run_is_one_trace_across_host_agents_gateway_and_toolbox(ray_session, tmp_path):
    tag = uuid.uuid4().hex[:6]
    with FakeLLMServer(handler=reply) as server:
        model = LiteLLMModel(
            "openai/gpt-4o-mini", api_base=server.url, api_key_env="GECKO_EXAMPLE_KEY"
        )
        gateway = ModelGateway.spawn(model)
        box = RemoteToolBox.spawn(f"weather-{tag}", [lookup])
        first = Agent.spawn(f"first-{tag}", model=gateway, tools=box)
        second = Agent.spawn(f"second-{tag}", model=gateway, tools=box)
        wf = Workflow(f"traced-{tag}").add_node("first", first).add_node("second", second)
        wf.add_edge("first", "second")
        checkpoint = str(tmp_path / "ckpt")
        configure_tracing(directory=tmp_path / "spans")
        try:
            run = wf.start("weather?", run_id=f"run-{tag}", checkpoint=checkpoint)
            assert run.result(timeout=120).content == "it is sunny"
            shutdown_tracing()
            # The actors adopted the driver's configuration: they trace traced work only.
            plain = wf.start("weather?", run_id=f"plain-{tag}", checkpoint=checkpoint)
            assert plain.result(timeout=120).content == "it is sunny"
            assert first.run("weather?").content == "it is sunny"
        finally:
            shutdown_tracing()
            for agent in (first, second):
                agent.kill()
            box.kill()
            gateway.kill()
    files = read_spans(tmp_path / "spans")
    every = [span for spans in files.values() for span in spans]
    assert len([s for s in every if s["name"].startswith("invoke_agent ")]) == 2
    assert not [s for s in every if s["attributes"].get("gecko.run_id") == f"plain-{tag}"]
    names = {span["name"] for span in every}
    expected = {
        f"workflow traced-{tag}",
        "node first",
        "node second",
        f"invoke_agent first-{tag}",
        f"invoke_agent second-{tag}",
        "chat openai/gpt-4o-mini",
        "gateway openai/gpt-4o-mini",
        "execute_tool lookup",
    }
    assert expected <= names
    traces = {span["context"]["trace_id"] for span in every if span["name"] in expected}
    # One run, one trace, whatever process each span came from; its id derives from the run's.
    assert traces == {"0x" + hashlib.sha256(f"run-{tag}".encode()).digest()[:16].hex()}
    # The spans come from several processes: the host, the agents' host, the gateway and the
    # toolbox each wrote their own file.
    writers = {
        name
        for name, spans in files.items()
        for span in spans
        if span["name"] in {"node first", "gateway openai/gpt-4o-mini", "execute_tool lookup"}
    }
    assert len(writers) >= 3
    by_id = {span["context"]["span_id"]: span for span in every}
    tool_span = next(s for s in every if s["name"] == "execute_tool lookup")
    agent_span = by_id[tool_span["parent_id"]]
    assert agent_span["name"].startswith("invoke_agent ")
    node_span = by_id[agent_span["parent_id"]]
    assert node_span["name"] in {"node first", "node second"}
    assert node_span["attributes"]["gecko.run_id"] == f"run-{tag}"
    chats = [s["attributes"] for s in every if s["name"] == "chat openai/gpt-4o-mini"]
    assert {c["gen_ai.usage.input_tokens"] for c in chats} >= {7}
    assert {c["gen_ai.provider.name"] for c in chats} == {"openai"}
    gateway_span = next(s for s in every if s["name"] == "gateway openai/gpt-4o-mini")
    assert by_id[gateway_span["parent_id"]]["name"] == "chat openai/gpt-4o-mini"
