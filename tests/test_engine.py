"""The ReAct engine, LocalAgent and ScriptedModel, all offline and Ray-free."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from pydantic import BaseModel

from gecko_actors import (
    MAX_TURNS_REACHED,
    AgentBuilder,
    EventBus,
    Hooks,
    InMemorySessionStore,
    LocalAgent,
    Message,
    ModelError,
    PromptTemplate,
    ScriptedModel,
    ScriptExhaustedError,
    StructuredOutputError,
    TokenMemory,
    ToolBox,
    ToolCall,
    ToolContext,
    UserError,
    calculator,
    tool,
)
from gecko_actors.core.structured import OUTPUT_TOOL

call = ScriptedModel.call


@tool
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: first.
        b: second.
    """
    return a + b


class City(BaseModel):
    name: str
    population: int


def tool_messages(model: ScriptedModel, index: int) -> list[Message]:
    return [m for m in model.calls[index].messages if m.role == "tool"]


# --- the loop --------------------------------------------------------------------------------


async def test_plain_answer_and_usage() -> None:
    model = ScriptedModel(["Hello there."])
    out = await LocalAgent(model).arun("hi")
    assert out.content == "Hello there."
    assert out.finish_reason == "stop"
    assert out.usage.requests == 1 and out.usage.total_tokens > 0
    assert [m.role for m in out.messages] == ["assistant"]


async def test_tool_call_then_answer_sees_the_result() -> None:
    model = ScriptedModel([call("add", a=2, b=40), "The sum is 42."])
    out = await LocalAgent(model, [add]).arun("add 2 and 40")
    assert out.content == "The sum is 42."
    assert [c.name for c in out.tool_calls] == ["add"]
    # The second model call carried the tool result, linked to the call id.
    results = tool_messages(model, 1)
    assert [(m.text, m.tool_call_id) for m in results] == [("42", out.tool_calls[0].id)]
    # Tools were offered with their schema and tool_choice auto.
    first = model.calls[0]
    assert first.tool_choice == "auto"
    assert first.tools[0]["function"]["name"] == "add"
    assert out.usage.requests == 2


async def test_several_tool_calls_in_one_turn_keep_their_order() -> None:
    model = ScriptedModel([[call("add", a=1, b=1), call("add", a=2, b=2)], "done"])
    await LocalAgent(model, [add]).arun("go")
    assert [m.text for m in tool_messages(model, 1)] == ["2", "4"]


@pytest.mark.parametrize(
    ("bad_call", "expected"),
    [
        (ScriptedModel.raw_call("add", '{"a": 1, "b":'), "not valid JSON"),
        (ScriptedModel.raw_call("add", "[1, 2]"), "must be a JSON object"),
        (call("add", a="x", b=1), "invalid arguments"),
        (call("nope", a=1), "not registered"),
    ],
)
async def test_bad_tool_calls_are_fed_back_and_never_executed(bad_call, expected) -> None:
    executed = []

    @tool
    def add(a: int, b: int) -> int:
        """Add."""
        executed.append((a, b))
        return a + b

    model = ScriptedModel([bad_call, "recovered"])
    out = await LocalAgent(model, [add]).arun("go")
    assert out.content == "recovered"
    assert executed == []
    (result,) = tool_messages(model, 1)
    assert expected in result.text


async def test_tool_exception_and_timeout_are_fed_back() -> None:
    @tool
    def broken() -> str:
        """Always fails."""
        raise RuntimeError("disk on fire")

    @tool(timeout=0.1)
    async def slow() -> str:
        """Never finishes in time."""
        await asyncio.sleep(10)
        return "late"

    model = ScriptedModel([[call("broken"), call("slow")], "re-planned"])
    out = await LocalAgent(model, [broken, slow]).arun("go")
    assert out.content == "re-planned"
    failed, timed_out = tool_messages(model, 1)
    assert "RuntimeError: disk on fire" in failed.text
    assert "did not finish within 0.1s" in timed_out.text


async def test_max_turns_stops_a_looping_model() -> None:
    model = ScriptedModel(lambda messages, tools: call("add", a=1, b=1))
    out = await LocalAgent(model, [add], max_turns=3).arun("loop forever")
    assert out.content == MAX_TURNS_REACHED
    assert out.finish_reason == "max_turns"
    assert len(model.calls) == 3
    assert len(out.tool_calls) == 3


async def test_model_errors_propagate() -> None:
    model = ScriptedModel([ModelError("provider down", model="m")])
    with pytest.raises(ModelError, match="provider down"):
        await LocalAgent(model).arun("hi")


async def test_script_exhausted_is_a_clear_error() -> None:
    model = ScriptedModel([call("add", a=1, b=2)], name="short")
    with pytest.raises(ScriptExhaustedError, match="'short' ran out of replies: it had 1"):
        await LocalAgent(model, [add]).arun("go")


# --- context and history ---------------------------------------------------------------------


async def test_system_prompt_lists_tools_and_input_system_messages_go_first() -> None:
    model = ScriptedModel(["ok"])
    agent = LocalAgent(model, [add], system_prompt="Be terse.")
    await agent.arun([Message.user("question"), Message.system("Answer in French.")])
    messages = model.calls[0].messages
    assert [m.role for m in messages] == ["system", "user"]
    system = messages[0].text
    assert system.index("Answer in French.") < system.index("Be terse.")
    assert "- add: Add two integers." in system


async def test_prompt_template_with_variables() -> None:
    model = ScriptedModel(["ok"])
    template = PromptTemplate(
        "You help {{ user }}. Tools: {{ tools | map(attribute='name') | join(',') }}"
    )
    agent = LocalAgent(
        model, [add, calculator], system_prompt=template, prompt_vars={"user": "Ada"}
    )
    await agent.arun("hi")
    assert model.calls[0].messages[0].text == "You help Ada. Tools: add,calculator"


async def test_history_is_saved_and_reloaded_per_session() -> None:
    store = InMemorySessionStore()
    model = ScriptedModel([call("add", a=1, b=2), "3", "You asked about 1+2.", "fresh"])
    agent = LocalAgent(model, [add], session_store=store)
    await agent.arun("what is 1+2?", session_id="s1")
    saved = await store.load("s1")
    assert [r["role"] for r in saved] == ["user", "assistant", "tool", "assistant"]
    await agent.arun("what did I ask?", session_id="s1")
    roles = [m.role for m in model.calls[2].messages]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "user"]
    await agent.arun("new topic", session_id="s2")
    assert [m.role for m in model.calls[3].messages] == ["system", "user"]
    # Appending, not rewriting: the first session grew by exactly the second run's messages.
    assert len(await store.load("s1")) == 6


async def test_history_is_trimmed_to_the_memory_budget() -> None:
    store = InMemorySessionStore()
    await store.append(
        "s", [{"role": "user", "content": f"old message {i} " * 20} for i in range(50)]
    )
    model = ScriptedModel(["ok"])
    memory = TokenMemory(max_tokens=300)
    agent = LocalAgent(model, session_store=store, memory=memory)
    await agent.arun("latest", session_id="s")
    sent = model.calls[0].messages
    assert memory.total(sent) <= 300
    assert sent[-1].text == "latest"
    assert "old message 49" in sent[-2].text  # the newest history survives


async def test_runs_on_one_session_are_serialised_others_run_concurrently() -> None:
    active: dict[str, int] = {"now": 0, "max": 0}

    async def reply(messages, tools):
        active["now"] += 1
        active["max"] = max(active["max"], active["now"])
        await asyncio.sleep(0.05)
        active["now"] -= 1
        return f"seen {sum(m.role == 'user' for m in messages)} user messages"

    agent = LocalAgent(ScriptedModel(reply))
    outs = await asyncio.gather(*(agent.arun(f"q{i}", session_id="same") for i in range(4)))
    assert active["max"] == 1
    # Each run saw the ones before it: no interleaving, nothing lost.
    assert sorted(o.content for o in outs) == [f"seen {n} user messages" for n in range(1, 5)]
    active["max"] = 0
    await asyncio.gather(*(agent.arun("q", session_id=f"s{i}") for i in range(4)))
    assert active["max"] == 4


async def test_tools_receive_the_run_context() -> None:
    seen: list[ToolContext] = []

    @tool
    def whoami(ctx: ToolContext) -> str:
        """Report the context."""
        seen.append(ctx)
        return "ok"

    model = ScriptedModel([call("whoami"), "done"])
    agent = LocalAgent(model, [whoami], name="clerk")
    await agent.arun("go", session_id="sess", run_id="run-1")
    (ctx,) = seen
    assert (ctx.agent, ctx.session_id, ctx.run_id) == ("clerk", "sess", "run-1")
    assert ctx.tool_call_id == "call_1"
    assert "ctx" not in model.calls[0].tools[0]["function"]["parameters"].get("properties", {})


# --- hooks and events ------------------------------------------------------------------------


async def test_hooks_sync_and_async_and_failures_ignored() -> None:
    log: list[str] = []

    async def on_turn_start(turn, messages):
        log.append(f"start {turn} ({len(messages)} msgs)")

    def on_tool_execute(call: ToolCall, result):
        log.append(f"tool {call.name} -> {result.content}")

    def on_turn_end(turn, message):
        raise RuntimeError("hook bug")

    model = ScriptedModel([call("add", a=2, b=3), "5"])
    hooks = Hooks(
        on_turn_start=on_turn_start, on_turn_end=on_turn_end, on_tool_execute=on_tool_execute
    )
    out = await LocalAgent(model, [add], hooks=hooks).arun("go")
    assert out.content == "5"
    assert log == ["start 1 (2 msgs)", "tool add -> 5", "start 2 (4 msgs)"]


async def test_events_are_published() -> None:
    bus = EventBus()
    events: list[tuple[str, dict]] = []
    bus.subscribe("*", lambda e: events.append((e.type, e.data)))
    model = ScriptedModel([call("add", a=2, b=3), "5"])
    await LocalAgent(model, [add], event_bus=bus, name="a1").arun("go", run_id="r9")
    types = [t for t, _ in events]
    assert types == [
        "run_started",
        "turn_started",
        "tool_started",
        "tool_finished",
        "turn_started",
        "run_finished",
    ]
    assert all(d["agent"] == "a1" and d["run_id"] == "r9" for _, d in events)
    assert events[3][1]["tool"] == "add" and events[3][1]["is_error"] is False


async def test_failed_run_emits_run_failed() -> None:
    bus = EventBus()
    types: list[str] = []
    bus.subscribe("*", lambda e: types.append(e.type))
    with pytest.raises(ScriptExhaustedError):
        await LocalAgent(ScriptedModel([]), event_bus=bus).arun("go")
    assert types[-1] == "run_failed"


# --- structured output -----------------------------------------------------------------------


async def test_structured_output_through_the_output_tool() -> None:
    model = ScriptedModel([call(OUTPUT_TOOL, name="Lyon", population=522000)])
    out = await LocalAgent(model).arun("biggest city?", response_model=City)
    assert out.structured == City(name="Lyon", population=522000)
    assert json.loads(out.content) == {"name": "Lyon", "population": 522000}
    # Without other tools the output tool is forced.
    sent = model.calls[0]
    assert sent.tool_choice == {"type": "function", "function": {"name": OUTPUT_TOOL}}
    assert sent.tools[0]["function"]["parameters"]["required"] == ["name", "population"]


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "Lyon", "population": 522000}',
        'Sure:\n```json\n{"name": "Lyon", "population": 522000}\n```',
        'The answer is {"name": "Lyon", "population": 522000} as requested.',
        'Here {"name": "Ly{on}\\"", "population": 1} then {"x": 1}',
    ],
)
async def test_structured_output_parsed_from_text(text: str) -> None:
    out = await LocalAgent(ScriptedModel([text])).arun("q", response_model=City)
    assert isinstance(out.structured, City)
    assert out.structured.name in ("Lyon", 'Ly{on}"')


async def test_structured_output_with_tools_then_parse_error_feedback() -> None:
    model = ScriptedModel(
        [
            call("add", a=500000, b=22000),
            call(OUTPUT_TOOL, name="Lyon", population="many"),
            call(OUTPUT_TOOL, name="Lyon", population=522000),
        ]
    )
    out = await LocalAgent(model, [add]).arun("q", response_model=City)
    assert out.structured.population == 522000
    assert model.calls[0].tool_choice == "auto"  # other tools available: not forced yet
    feedback = tool_messages(model, 2)[-1].text
    assert "could not be parsed" in feedback and "population" in feedback
    assert model.calls[2].tool_choice["function"]["name"] == OUTPUT_TOOL


async def test_structured_output_gives_up_after_max_retries() -> None:
    model = ScriptedModel(["not json", "still not", "nope"])
    with pytest.raises(StructuredOutputError, match="after 3 attempts"):
        await LocalAgent(model, max_retries=2).arun("q", response_model=City)
    assert "could not be parsed" in model.calls[1].messages[-1].text


async def test_structured_output_json_mode_for_models_without_tools() -> None:
    model = ScriptedModel(['{"name": "Nice", "population": 340000}'])
    model.supports_tools = False
    out = await LocalAgent(model, [add]).arun("q", response_model=City)
    assert out.structured.name == "Nice"
    sent = model.calls[0]
    assert sent.tools == [] and sent.response_format == {"type": "json_object"}
    assert "JSON schema" in sent.messages[0].text


# --- streaming -------------------------------------------------------------------------------


async def test_stream_yields_chunks_and_runs_tools_between_turns() -> None:
    model = ScriptedModel([call("add", a=20, b=22), "The answer is 42 exactly."])
    stream = LocalAgent(model, [add]).stream("go")
    chunks = [c async for c in stream]
    assert len(chunks) > 1
    assert "".join(chunks) == "The answer is 42 exactly."
    assert stream.output is not None and stream.output.content == "The answer is 42 exactly."
    assert [c.name for c in stream.output.tool_calls] == ["add"]


async def test_stream_falls_back_when_the_model_cannot_stream() -> None:
    model = ScriptedModel(["whole answer"])
    model.supports_stream = False
    stream = LocalAgent(model).stream("go")
    assert await stream.text() == "whole answer"


async def test_stream_saves_the_conversation() -> None:
    store = InMemorySessionStore()
    agent = LocalAgent(ScriptedModel(["streamed reply"]), session_store=store)
    await agent.stream("hello", session_id="s").text()
    assert [r.get("content") for r in await store.load("s")] == ["hello", "streamed reply"]


# --- agent surface ---------------------------------------------------------------------------


def test_sync_run_outside_a_loop() -> None:
    out = LocalAgent(ScriptedModel([call("calculator", expression="6*7"), "42"]), [calculator]).run(
        "6*7?"
    )
    assert out.content == "42"


async def test_sync_run_inside_a_loop_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"await agent\.arun"):
        LocalAgent(ScriptedModel(["x"])).run("hi")


@pytest.mark.parametrize("bad", [[], 42, [{"content": "no role"}]])
async def test_bad_input_is_a_user_error(bad) -> None:
    with pytest.raises(UserError):
        await LocalAgent(ScriptedModel(["x"])).arun(bad)


async def test_input_forms() -> None:
    model = ScriptedModel(lambda messages, tools: messages[-1].text)
    agent = LocalAgent(model)
    assert (await agent.arun({"input": "a"})).content == "a"
    assert (await agent.arun({"role": "user", "content": "b"})).content == "b"
    assert (await agent.arun([Message.user("c")])).content == "c"


def test_builder_validates_and_dedupes_tools() -> None:
    with pytest.raises(UserError, match="no model"):
        AgentBuilder().build()
    with pytest.raises(UserError, match="not a chat model"):
        AgentBuilder().with_model(object()).build()

    @tool(name="add")
    def add_v2(a: int, b: int) -> int:
        """Add, version 2."""
        return a + b + 1000

    agent = (
        AgentBuilder()
        .with_model(ScriptedModel(["x"]))
        .with_tools([add, calculator])
        .with_tools([add_v2])
        .with_system_prompt("sys")
        .with_session_id("s")
        .with_max_tokens(1000)
        .with_toolbox_config(timeout=3, max_concurrency=2)
        .with_engine(type(LocalAgent(ScriptedModel([])).engine), max_turns=2)
        .build()
    )
    assert agent.toolbox.names() == ["add", "calculator"]
    assert agent.toolbox.get("add").description == "Add, version 2."
    assert (agent.toolbox.timeout, agent.toolbox.max_concurrency) == (3, 2)
    assert agent.engine.max_turns == 2 and agent.engine.memory.max_tokens == 1000
    assert agent.session_id == "s"


def test_engine_rejects_bad_configuration() -> None:
    with pytest.raises(UserError, match="not a chat model"):
        LocalAgent(object())  # type: ignore[arg-type]
    with pytest.raises(UserError, match="max_turns"):
        LocalAgent(ScriptedModel([]), max_turns=0)


# --- ScriptedModel itself --------------------------------------------------------------------


async def test_scripted_model_reply_kinds() -> None:
    async def later(messages, tools):
        return {"tools": [t["function"]["name"] for t in tools]}

    model = ScriptedModel(later)
    response = await model.complete([Message.user("x")], tools=ToolBox([add]).schemas())
    assert json.loads(response.message.text) == {"tools": ["add"]}
    assert model.remaining is None

    model = ScriptedModel(
        [City(name="A", population=1), Message.assistant("m"), [call("add", a=1, b=2)]]
    )
    assert json.loads((await model.complete([])).message.text) == {"name": "A", "population": 1}
    assert (await model.complete([])).message.text == "m"
    calls = (await model.complete([])).message.tool_calls
    assert calls[0].id == "call_1" and calls[0].parse_arguments() == {"a": 1, "b": 2}
    assert model.remaining == 0

    with pytest.raises(UserError, match="cannot reply with a int"):
        await ScriptedModel([7]).complete([])  # type: ignore[list-item]
    with pytest.raises(UserError, match="assistant message"):
        await ScriptedModel([Message.user("u")]).complete([])


async def test_a_retried_run_never_duplicates_its_exchange_nor_sees_it() -> None:
    def count_users(messages: list[Message], tools: Any) -> str:
        return f"seen {sum(m.role == 'user' for m in messages)}"

    store = InMemorySessionStore()
    agent = LocalAgent(ScriptedModel(count_users), session_store=store)
    await agent.arun("before", session_id="s")
    first = await agent.arun("hello", session_id="s", run_id="run-7")
    # e.g. Ray retried the call after its process died, the exchange already stored: the
    # retry sees the conversation as the first attempt did.
    again = await agent.arun("hello", session_id="s", run_id="run-7")
    assert first.content == again.content == "seen 2"
    records = await store.load("s")
    assert [r["content"] for r in records] == ["before", "seen 1", "hello", "seen 2"]
    assert [Message.model_validate(r).text for r in records][2] == "hello"


async def test_short_conversations_never_load_a_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    import gecko_actors.core.memory as memory_module

    def no_tokenizer(model_name: str):
        raise AssertionError("tiktoken was loaded for a conversation that surely fits")

    monkeypatch.setattr(memory_module, "_encoding", no_tokenizer)
    store = InMemorySessionStore()
    agent = LocalAgent(ScriptedModel(["a", "b"]), session_store=store)
    await agent.arun("first", session_id="s")
    out = await agent.arun("second", session_id="s")
    assert out.content == "b"
    assert len(await store.load("s")) == 4


async def test_system_prompt_follows_tools_registered_later() -> None:
    model = ScriptedModel(["a", "b"])
    agent = LocalAgent(model, [add])
    await agent.arun("first")
    agent.toolbox.register(calculator)
    await agent.arun("second")
    first, second = (call.messages[0].text for call in model.calls)
    assert "- calculator:" not in first
    assert "- calculator:" in second and "- add:" in second
