"""Tests for ``@tool``/:class:`Tool` (schemas, validation, execution) and :class:`ToolBox`."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import threading
import time
from types import SimpleNamespace
from typing import Literal, Optional

import pytest
from pydantic import BaseModel
from ray import cloudpickle

from gecko_actors import (
    Tool,
    ToolBox,
    ToolCall,
    ToolContext,
    ToolNotFoundError,
    ToolResult,
    ToolStats,
    ToolTimeoutError,
    UserError,
    calculator,
    tool,
)
from gecko_actors.core.tools import parse_docstring

# --- module-level tools and models (picklable by reference) --------------------------------


class Point(BaseModel):
    x: int
    y: int = 0


@tool
def add(a: int, b: int = 1) -> int:
    """Add two numbers.

    Args:
        a: the first number.
        b: the second number.
    """
    return a + b


@tool
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@tool(name="slow-async", description="Sleeps asynchronously.")
async def slow_async(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


@tool
def context_probe(label: str, ctx: ToolContext) -> dict:
    """Report what the injected context says."""
    return {
        "label": label,
        "tool_call_id": ctx.tool_call_id,
        "agent": ctx.agent,
        "session_id": ctx.session_id,
    }


def make_recording_nap(
    name: str = "slow-async", timeout: float | None = None
) -> tuple[Tool, list[str]]:
    """An async tool that sleeps and logs ``started``, then ``finished`` or ``cancelled``: a
    timeout that fires cuts the sleep short (``cancelled``) instead of waiting it out."""
    log: list[str] = []

    async def nap(seconds: float) -> str:
        log.append("started")
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            log.append("cancelled")
            raise
        log.append("finished")
        return f"slept {seconds}"

    return tool(nap, name=name, timeout=timeout), log


def make_timed_nap() -> tuple[Tool, list[tuple[float, float]]]:
    """An async tool that sleeps and records its (start, end) interval."""
    intervals: list[tuple[float, float]] = []

    @tool(name="slow-async")
    async def nap(seconds: float) -> str:
        start = time.monotonic()
        await asyncio.sleep(seconds)
        intervals.append((start, time.monotonic()))
        return f"slept {seconds}"

    return nap, intervals


# --- @tool: construction -------------------------------------------------------------------


def test_bare_decorator_on_sync_function_builds_tool():
    assert isinstance(add, Tool)
    assert add.name == "add"
    assert add.description == "Add two numbers."
    assert add.timeout is None
    assert add.is_async is False


def test_decorator_with_arguments_on_async_function():
    assert isinstance(slow_async, Tool)
    assert slow_async.name == "slow-async"
    assert slow_async.description == "Sleeps asynchronously."
    assert slow_async.is_async is True

    @tool(name="custom_name", description="Custom description.", timeout=2.5)
    async def whatever(x: int) -> int:
        """Docstring summary that the explicit description overrides."""
        return x

    assert whatever.name == "custom_name"
    assert whatever.description == "Custom description."
    assert whatever.timeout == 2.5
    assert whatever.is_async is True


def test_description_falls_back_to_name_without_docstring():
    @tool
    def nodoc(x: int) -> int:
        return x

    assert nodoc.description == "nodoc"


def test_multi_paragraph_summary_becomes_description_without_sections():
    @tool
    def documented(q: str) -> str:
        """Search the index.

        Longer explanation here.

        Args:
            q: the query.

        Returns:
            The hits.
        """
        return q

    assert documented.description == "Search the index.\n\nLonger explanation here."
    assert "hits" not in documented.description
    assert "query" not in documented.description


def test_calling_the_tool_object_calls_the_function():
    assert add(2, 3) == 5
    assert add(a=4) == 5
    assert echo("hi") == "hi"
    assert add.__name__ == "add"
    assert add.__doc__.startswith("Add two numbers.")


def test_var_positional_parameter_is_rejected():
    def bad(*items: int) -> int:
        return sum(items)

    with pytest.raises(UserError, match=r"\*items"):
        tool(bad)


def test_var_keyword_parameter_is_rejected():
    def bad(x: int, **options: str) -> int:
        return x

    with pytest.raises(UserError, match="options"):
        tool(bad)


@pytest.mark.parametrize("name", ["has space", "dot.name", "x" * 65, "semi;colon", "é", "a/b"])
def test_invalid_tool_names_are_rejected(name):
    def fn(x: int) -> int:
        return x

    with pytest.raises(UserError, match="invalid"):
        tool(name=name)(fn)
    with pytest.raises(UserError, match="invalid"):
        Tool(fn, name=name)


@pytest.mark.parametrize("name", ["a", "get_weather", "get-weather", "X9", "x" * 64])
def test_valid_tool_names_are_accepted(name):
    def fn(x: int) -> int:
        return x

    assert tool(name=name)(fn).name == name


# --- @tool: JSON schema ---------------------------------------------------------------------


@tool
def search(
    query: str,
    limit: int = 10,
    tags: list[str] | None = None,
    mode: Literal["fast", "slow"] = "fast",
    near: Optional[Point] = None,  # noqa: UP045 -- Optional on purpose
    origin: Point = Point(x=0),
) -> str:
    """Search the index.

    Args:
        query: what to look for,
            continued on a second line.
        limit (int): max results.
        tags: filter tags.
        mode: how hard to try.
    """
    return query


def test_schema_required_list_and_defaults():
    params = search.parameters
    assert params["type"] == "object"
    assert params["required"] == ["query"]
    assert params["additionalProperties"] is False
    assert "title" not in params
    props = params["properties"]
    assert list(props) == ["query", "limit", "tags", "mode", "near", "origin"]
    assert props["query"]["type"] == "string"
    assert props["limit"]["type"] == "integer"
    assert props["limit"]["default"] == 10
    assert props["origin"]["default"] == {"x": 0, "y": 0}


def test_schema_types_list_literal_optional_and_model():
    params = search.parameters
    props = params["properties"]
    assert {"type": "array", "items": {"type": "string"}} in props["tags"]["anyOf"]
    assert {"type": "null"} in props["tags"]["anyOf"]
    assert props["mode"]["enum"] == ["fast", "slow"]
    assert {"type": "null"} in props["near"]["anyOf"]
    assert {"$ref": "#/$defs/Point"} in props["near"]["anyOf"]
    point = params["$defs"]["Point"]
    assert point["required"] == ["x"]
    assert point["properties"]["x"]["type"] == "integer"


def test_schema_descriptions_from_google_docstring():
    props = search.parameters["properties"]
    assert props["query"]["description"] == "what to look for, continued on a second line."
    assert props["limit"]["description"] == "max results."  # "(int)" type is not included
    assert props["tags"]["description"] == "filter tags."
    assert props["mode"]["description"] == "how hard to try."
    assert "description" not in props["near"]  # undocumented
    assert search.description == "Search the index."


def test_schema_descriptions_from_sphinx_docstring():
    @tool
    def fetch(url: str, retries: int = 3) -> str:
        """Fetch a URL.

        :param url: the address to fetch,
            which may be long.
        :param int retries: how many times to retry.
        :returns: the body.
        :rtype: str
        """
        return url

    props = fetch.parameters["properties"]
    assert props["url"]["description"] == "the address to fetch, which may be long."
    assert props["retries"]["description"] == "how many times to retry."
    assert fetch.description == "Fetch a URL."
    assert fetch.parameters["required"] == ["url"]


def test_parse_docstring_ignores_other_sections():
    summary, params = parse_docstring(
        "Do it.\n\nArgs:\n    x: the x.\n\nRaises:\n    ValueError: when bad.\n"
    )
    assert summary == "Do it."
    assert params == {"x": "the x."}


def test_tool_context_parameter_is_hidden_from_schema():
    params = context_probe.parameters
    assert list(params["properties"]) == ["label"]
    assert params["required"] == ["label"]
    assert context_probe.context_param == "ctx"


async def test_tool_context_is_injected():
    result = await context_probe.execute(
        {"label": "x"}, ToolContext(agent="bot", session_id="s1", tool_call_id="c7")
    )
    assert not result.is_error
    assert json.loads(result.content) == {
        "label": "x",
        "tool_call_id": "c7",
        "agent": "bot",
        "session_id": "s1",
    }
    assert result.tool_call_id == "c7"


async def test_tool_context_defaults_when_none_given():
    result = await context_probe.execute({"label": "y"})
    assert json.loads(result.content)["tool_call_id"] is None
    assert result.tool_call_id is None


async def test_model_cannot_pass_the_context_parameter():
    result = await context_probe.execute({"label": "y", "ctx": {"agent": "evil"}})
    assert result.is_error
    assert "ctx" in result.content


def test_openai_schema_shape():
    schema = add.openai_schema()
    assert schema == {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two numbers.",
            "parameters": add.parameters,
        },
    }
    props = schema["function"]["parameters"]["properties"]
    assert props["a"] == {"description": "the first number.", "title": "A", "type": "integer"}
    assert schema["function"]["parameters"]["required"] == ["a"]
    json.dumps(schema)  # JSON-able


def test_custom_args_model_overrides_the_schema():
    class Args(BaseModel):
        a: int
        b: int = 5

    t = Tool(lambda a, b: a * b, name="mul", args_model=Args)
    assert t.parameters["required"] == ["a"]
    assert t.parameters["properties"]["b"]["default"] == 5


# --- Tool.execute ---------------------------------------------------------------------------


def make_flagged():
    calls: list[dict] = []

    @tool
    def flagged(count: int, name: str = "n") -> str:
        """A tool that records its calls."""
        calls.append({"count": count, "name": name})
        return "called"

    return flagged, calls


@pytest.mark.parametrize(
    ("arguments", "field", "needle"),
    [
        ({"count": "not a number"}, "count", "valid integer"),
        ({"count": [1]}, "count", "valid integer"),
        ({}, "count", "Field required"),
        ({"count": 1, "name": 5}, "name", "valid string"),
        ({"count": 1, "surprise": True}, "surprise", "Extra inputs are not permitted"),
    ],
)
async def test_invalid_arguments_become_error_result_and_tool_is_not_called(
    arguments, field, needle
):
    flagged, calls = make_flagged()
    result = await flagged.execute(arguments, ToolContext(tool_call_id="c1"))
    assert isinstance(result, ToolResult)
    assert result.is_error is True
    assert result.tool == "flagged"
    assert result.tool_call_id == "c1"
    assert f"{field}:" in result.content
    assert needle in result.content
    assert "invalid arguments for tool 'flagged'" in result.content
    assert calls == []


async def test_lax_mode_coerces_numeric_strings():
    flagged, calls = make_flagged()
    result = await flagged.execute({"count": "3"})
    assert result.is_error is False
    assert calls == [{"count": 3, "name": "n"}]
    assert isinstance(calls[0]["count"], int)


async def test_pydantic_model_argument_is_validated_into_an_instance():
    seen = []

    @tool
    def locate(where: Point) -> str:
        seen.append(where)
        return f"{where.x},{where.y}"

    result = await locate.execute({"where": {"x": "2"}})
    assert result.content == "2,0"
    assert isinstance(seen[0], Point)
    bad = await locate.execute({"where": {"y": 1}})
    assert bad.is_error
    assert "where.x" in bad.content


async def test_exception_inside_tool_becomes_error_result():
    @tool
    def explode(x: int) -> int:
        raise ValueError(f"cannot handle {x}")

    result = await explode.execute({"x": 7})
    assert result.is_error is True
    assert "ValueError" in result.content
    assert "cannot handle 7" in result.content
    assert result.tool == "explode"


async def test_exception_inside_async_tool_becomes_error_result():
    @tool
    async def aexplode() -> None:
        raise KeyError("missing-key")

    result = await aexplode.execute({})
    assert result.is_error
    assert "KeyError" in result.content
    assert "missing-key" in result.content


async def test_return_values_are_converted_to_text():
    @tool
    def give(kind: str):
        return {
            "str": "plain text",
            "dict": {"a": 1, "é": [1, 2]},
            "list": [1, "two", None],
            "model": Point(x=1, y=2),
            "none": None,
            "int": 42,
        }[kind]

    async def content(kind):
        result = await give.execute({"kind": kind})
        assert not result.is_error
        return result.content

    assert await content("str") == "plain text"
    assert json.loads(await content("dict")) == {"a": 1, "é": [1, 2]}
    assert "é" in await content("dict")  # not ASCII-escaped
    assert json.loads(await content("list")) == [1, "two", None]
    assert json.loads(await content("model")) == {"x": 1, "y": 2}
    assert await content("none") == ""
    assert await content("int") == "42"


async def test_async_tool_execute_and_duration():
    result = await slow_async.execute({"seconds": 0.01})
    assert result.content == "slept 0.01"
    assert result.tool == "slow-async"
    assert result.duration >= 0.0


async def test_sync_tools_run_in_a_worker_thread():
    @tool
    def whoami() -> int:
        return threading.get_ident()

    @tool
    async def awhoami() -> int:
        return threading.get_ident()

    loop_thread = threading.get_ident()
    sync_result = await whoami.execute({})
    async_result = await awhoami.execute({})
    assert int(sync_result.content) != loop_thread
    assert int(async_result.content) == loop_thread


async def test_pickled_module_level_tool_keeps_working():
    # Ray ships tools with cloudpickle, which sends a user's shadowed function by value.
    data = cloudpickle.dumps(add)
    restored = pickle.loads(data)
    assert isinstance(restored, Tool)
    assert restored.name == "add"
    assert restored.parameters == add.parameters
    assert restored.openai_schema() == add.openai_schema()
    result = await restored.execute({"a": 2, "b": 5})
    assert result.content == "7"
    restored_calc = pickle.loads(pickle.dumps(calculator))
    assert (await restored_calc.execute({"expression": "6*7"})).content == "42"


async def test_pickled_tool_with_custom_name_and_timeout():
    restored = pickle.loads(cloudpickle.dumps(slow_async))
    assert restored.name == "slow-async"
    assert restored.description == "Sleeps asynchronously."
    assert restored.parameters["required"] == ["seconds"]


async def test_tool_wrapping_an_unregistered_function_pickles_by_value_of_its_parts():
    # Tool(fn) leaves the module-level function in place, so the function pickles by name.
    t = Tool(_plain_multiply, name="multiply", timeout=3.0)
    restored = pickle.loads(pickle.dumps(t))
    assert restored.name == "multiply"
    assert restored.timeout == 3.0
    assert restored.parameters == t.parameters
    assert (await restored.execute({"a": 3, "b": 4})).content == "12"


def _plain_multiply(a: int, b: int) -> int:
    """Multiply."""
    return a * b


# --- ToolBox: registry ----------------------------------------------------------------------


def test_toolbox_registers_tools_and_wraps_plain_functions():
    box = ToolBox([add, _plain_multiply])
    assert len(box) == 2
    assert box.names() == ["add", "_plain_multiply"]
    wrapped = box.get("_plain_multiply")
    assert isinstance(wrapped, Tool)
    assert wrapped.description == "Multiply."
    assert "add" in box
    assert "missing" not in box
    assert box.has("add") and not box.has("missing")
    assert [t.name for t in box.tools()] == ["add", "_plain_multiply"]


def test_toolbox_rejects_non_callables_and_bad_settings():
    with pytest.raises(UserError):
        ToolBox([42])  # type: ignore[list-item]
    with pytest.raises(UserError):
        ToolBox(timeout=0)
    with pytest.raises(UserError):
        ToolBox(max_concurrency=0)


async def test_same_name_replaces_last_wins():
    box = ToolBox([echo])

    @tool(name="echo")
    def shout(text: str) -> str:
        return text.upper()

    box.register(shout)
    assert len(box) == 1
    assert box.get("echo") is shout
    assert (await box.execute("echo", {"text": "hi"})).content == "HI"


def test_unregister_and_get_unknown_raise_not_found_listing_available():
    box = ToolBox([add, echo])
    removed = box.unregister("add")
    assert removed is add
    assert box.names() == ["echo"]
    with pytest.raises(ToolNotFoundError) as info:
        box.unregister("add")
    assert "echo" in str(info.value)
    assert info.value.tool == "add"
    with pytest.raises(ToolNotFoundError, match=r"available: \['echo'\]"):
        box.get("nope")


def test_schemas_are_openai_schemas_in_order():
    box = ToolBox([add, echo])
    schemas = box.schemas()
    assert [s["function"]["name"] for s in schemas] == ["add", "echo"]
    assert schemas[0] == add.openai_schema()


# --- ToolBox: execution and timeouts --------------------------------------------------------


async def test_execute_runs_the_tool():
    box = ToolBox([add])
    result = await box.execute("add", {"a": 1, "b": 2})
    assert result.content == "3"
    assert not result.is_error


async def test_execute_unknown_tool_raises():
    box = ToolBox([add])
    with pytest.raises(ToolNotFoundError, match="'nope'"):
        await box.execute("nope", {})


async def test_box_default_timeout_raises_tool_timeout():
    nap, log = make_recording_nap()
    box = ToolBox([nap], timeout=0.2)
    with pytest.raises(ToolTimeoutError) as info:
        await box.execute("slow-async", {"seconds": 10})
    assert log == ["started", "cancelled"]  # cut at its timeout, not waited out
    assert info.value.timeout == 0.2
    assert info.value.tool == "slow-async"


async def test_tool_timeout_beats_box_default():
    nap, log = make_recording_nap("nap", timeout=0.2)
    box = ToolBox([nap], timeout=30)
    with pytest.raises(ToolTimeoutError) as info:
        await box.execute("nap", {"seconds": 10})
    assert log == ["started", "cancelled"]  # the tool's 0.2 s, not the box's 30 s
    assert info.value.timeout == 0.2

    # ... and a generous tool timeout wins over a short box default.
    @tool(name="nap2", timeout=5)
    async def nap2(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"

    box2 = ToolBox([nap2], timeout=0.1)
    assert (await box2.execute("nap2", {"seconds": 0.3})).content == "done"


async def test_call_timeout_beats_tool_timeout():
    @tool(timeout=10)
    async def nap(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"

    box = ToolBox([nap], timeout=30)
    with pytest.raises(ToolTimeoutError) as info:
        await box.execute("nap", {"seconds": 5}, timeout=0.2)
    assert info.value.timeout == 0.2

    @tool(name="nap2", timeout=0.1)
    async def nap2(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"

    box.register(nap2)
    assert (await box.execute("nap2", {"seconds": 0.3}, timeout=5)).content == "done"


async def test_execute_call_with_malformed_json_never_calls_the_tool():
    flagged, calls = make_flagged()
    box = ToolBox([flagged])
    for arguments in ('{"count": 1', "[1, 2]", "not json"):
        result = await box.execute_call(ToolCall(id="c1", name="flagged", arguments=arguments))
        assert result.is_error is True
        assert result.tool_call_id == "c1"
        assert result.tool == "flagged"
        assert "JSON" in result.content
    assert calls == []
    stats = box.stats()["flagged"]
    assert stats["executions"] == 3
    assert stats["errors"] == 3


async def test_execute_call_runs_valid_calls():
    flagged, calls = make_flagged()
    box = ToolBox([flagged])
    result = await box.execute_call(ToolCall(id="c2", name="flagged", arguments='{"count": 2}'))
    assert result.content == "called"
    assert result.tool_call_id == "c2"
    assert calls == [{"count": 2, "name": "n"}]
    empty = await box.execute_call(ToolCall(id="c3", name="flagged", arguments="  "))
    assert empty.is_error  # "" means {} and count is required
    assert "count" in empty.content


async def test_execute_call_unknown_tool_is_an_error_result():
    box = ToolBox([add, echo])
    result = await box.execute_call(ToolCall(id="c9", name="nope", arguments="{}"))
    assert result.is_error is True
    assert result.tool_call_id == "c9"
    assert "'nope'" in result.content
    assert "add" in result.content and "echo" in result.content


async def test_execute_call_timeout_is_an_error_result():
    nap, log = make_recording_nap()
    box = ToolBox([nap], timeout=0.2)
    result = await box.execute_call(
        ToolCall(id="t1", name="slow-async", arguments='{"seconds": 10}')
    )
    assert log == ["started", "cancelled"]
    assert result.is_error is True
    assert result.tool_call_id == "t1"
    assert "0.2" in result.content
    assert box.stats()["slow-async"]["timeouts"] == 1


async def test_execute_call_sets_tool_call_id_in_context_and_keeps_the_rest():
    box = ToolBox([context_probe])
    result = await box.execute_call(
        ToolCall(id="call-42", name="context_probe", arguments='{"label": "L"}'),
        ToolContext(agent="bot", session_id="s", tool_call_id="stale"),
    )
    data = json.loads(result.content)
    assert data == {"label": "L", "tool_call_id": "call-42", "agent": "bot", "session_id": "s"}
    assert result.tool_call_id == "call-42"


async def test_execute_many_is_concurrent_and_keeps_input_order():
    nap, intervals = make_timed_nap()
    box = ToolBox([nap], max_concurrency=5, timeout=30)
    delays = [0.3, 0.1, 0.25, 0.05, 0.2]
    calls = [
        ToolCall(id=f"c{i}", name="slow-async", arguments=json.dumps({"seconds": d}))
        for i, d in enumerate(delays)
    ]
    results = await box.execute_many(calls)
    # All five were sleeping at one instant: the last to start started before the first ended.
    assert len(intervals) == 5
    assert max(start for start, _ in intervals) < min(end for _, end in intervals)
    assert [r.tool_call_id for r in results] == ["c0", "c1", "c2", "c3", "c4"]
    assert [r.content for r in results] == [f"slept {d}" for d in delays]


async def test_execute_many_five_async_calls_run_concurrently():
    meeting = asyncio.Barrier(5)

    @tool
    async def meet(i: int) -> int:
        """Return only once all five calls are in here at the same time."""
        # Calls run one after another would wait here for the others forever: the 20 s
        # deadline only turns that into a failure, it does not decide the outcome.
        await asyncio.wait_for(meeting.wait(), 20)
        return i

    box = ToolBox([meet], max_concurrency=5)
    calls = [ToolCall(id=str(i), name="meet", arguments=f'{{"i": {i}}}') for i in range(5)]
    results = await box.execute_many(calls)
    assert [r.content for r in results] == [str(i) for i in range(5)], results


async def test_execute_many_with_sync_tools_runs_them_concurrently():
    # Five threads must be inside the tool at once to pass the barrier; run one after another,
    # the first would wait until the barrier's deadline and fail (BrokenBarrierError).
    meeting = threading.Barrier(5, timeout=20)

    @tool
    def block(i: int) -> str:
        meeting.wait()
        return "ok"

    box = ToolBox([block], max_concurrency=5)
    calls = [ToolCall(id=str(i), name="block", arguments=f'{{"i": {i}}}') for i in range(5)]
    results = await box.execute_many(calls)
    assert [r.content for r in results] == ["ok"] * 5, results


def make_tracker():
    state = {"running": 0, "max": 0}

    @tool
    async def tracked(i: int) -> int:
        state["running"] += 1
        state["max"] = max(state["max"], state["running"])
        await asyncio.sleep(0.05)
        state["running"] -= 1
        return i

    return tracked, state


async def test_execute_many_respects_max_concurrency():
    tracked, state = make_tracker()
    box = ToolBox([tracked], max_concurrency=2)
    calls = [ToolCall(id=str(i), name="tracked", arguments=f'{{"i": {i}}}') for i in range(7)]
    results = await box.execute_many(calls)
    assert [r.content for r in results] == [str(i) for i in range(7)]
    assert state["max"] == 2
    assert state["running"] == 0


async def test_execute_many_mixes_errors_and_successes():
    box = ToolBox([add])
    results = await box.execute_many(
        [
            ToolCall(id="1", name="add", arguments='{"a": 1}'),
            ToolCall(id="2", name="missing", arguments="{}"),
            ToolCall(id="3", name="add", arguments="{oops"),
            ToolCall(id="4", name="add", arguments='{"a": "x"}'),
        ]
    )
    assert [r.is_error for r in results] == [False, True, True, True]
    assert results[0].content == "2"
    assert [r.tool_call_id for r in results] == ["1", "2", "3", "4"]


async def test_per_tool_stats():
    @tool
    async def sometimes(mode: str) -> str:
        if mode == "fail":
            raise RuntimeError("boom")
        if mode == "hang":
            await asyncio.sleep(5)
        return "ok"

    box = ToolBox([sometimes, add], timeout=0.2)
    assert box.stats()["sometimes"] == ToolStats().as_dict()
    assert box.stats()["sometimes"]["success_rate"] == 1.0
    await box.execute("sometimes", {"mode": "ok"})
    await box.execute("sometimes", {"mode": "ok"})
    failed = await box.execute("sometimes", {"mode": "fail"})
    assert failed.is_error
    with pytest.raises(ToolTimeoutError):
        await box.execute("sometimes", {"mode": "hang"})
    stats = box.stats()["sometimes"]
    assert stats["executions"] == 4
    assert stats["errors"] == 2
    assert stats["timeouts"] == 1
    assert stats["success_rate"] == pytest.approx(0.5)
    assert stats["avg_time"] == pytest.approx(stats["total_time"] / 4)
    assert stats["avg_time"] > 0.2 / 4  # the timed-out call counts its time
    assert box.stats()["add"]["executions"] == 0


def test_toolbox_works_across_separate_event_loops():
    tracked, state = make_tracker()
    box = ToolBox([tracked], max_concurrency=1)
    calls = [ToolCall(id=str(i), name="tracked", arguments=f'{{"i": {i}}}') for i in range(3)]
    first = asyncio.run(box.execute_many(calls))
    second = asyncio.run(box.execute_many(calls))
    assert [r.content for r in first] == ["0", "1", "2"]
    assert [r.content for r in second] == ["0", "1", "2"]
    assert not any(r.is_error for r in first + second)
    assert state["max"] == 1


async def test_toolbox_pickles_after_use():
    box = ToolBox([add, calculator, slow_async], timeout=7, max_concurrency=3)
    await box.execute("add", {"a": 1})
    restored = pickle.loads(cloudpickle.dumps(box))
    assert restored.names() == ["add", "calculator", "slow-async"]
    assert restored.timeout == 7
    assert restored.max_concurrency == 3
    assert restored.stats()["add"]["executions"] == 1
    assert (await restored.execute("add", {"a": 5})).content == "6"
    assert restored.schemas() == box.schemas()


# --- the built-in calculator ----------------------------------------------------------------


async def test_calculator_through_toolbox():
    box = ToolBox([calculator])
    result = await box.execute_call(
        ToolCall(id="k1", name="calculator", arguments='{"expression": "2*(3+4)"}')
    )
    assert result.is_error is False
    assert result.content == "14"
    assert result.tool_call_id == "k1"


async def test_calculator_refuses_calls_and_names():
    box = ToolBox([calculator])
    result = await box.execute_call(
        ToolCall(
            id="k2", name="calculator", arguments=json.dumps({"expression": "__import__('os')"})
        )
    )
    assert result.is_error is True
    assert "not allowed" in result.content
    assert "CalculatorError" in result.content
    named = await box.execute("calculator", {"expression": "x + 1"})
    assert named.is_error is True
    assert "not allowed" in named.content


# --- fixes found in review ---------------------------------------------------------------------


def test_empty_tool_name_is_refused() -> None:
    def f() -> None:
        """F."""

    with pytest.raises(UserError, match="invalid"):
        tool(name="")(f)


async def test_optional_tool_context_is_injected_and_hidden() -> None:
    seen = []

    @tool
    def probe(x: int, ctx: ToolContext | None = None) -> int:
        """Probe."""
        seen.append(ctx)
        return x

    assert set(probe.parameters["properties"]) == {"x"}
    result = await probe.execute({"x": 1}, ToolContext(agent="a"))
    assert result.content == "1" and seen[0].agent == "a"


def test_hung_sync_tool_does_not_hold_the_program_at_exit() -> None:
    import subprocess
    import sys

    code = (
        "import asyncio, time\n"
        "from gecko_actors import ToolBox, tool\n"
        "@tool\n"
        "def hang() -> str:\n"
        "    '''Hang.'''\n"
        "    time.sleep(60)\n"
        "    return 'never'\n"
        "box = ToolBox([hang], timeout=0.2)\n"
        "from gecko_actors import ToolCall\n"
        "r = asyncio.run(box.execute_call(ToolCall(id='c', name='hang')))\n"
        "print(r.is_error)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == "True"


# --- a toolbox replica recycling after a hung sync tool (the actor class, without Ray) -------


async def test_a_recycling_replica_exits_only_after_a_call_that_arrived_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gecko_actors._actors import toolbox as replica_module

    history: list[str] = []
    exited = asyncio.Event()

    def fake_exit(code: int) -> None:  # the process would end here
        history.append(f"exit {code}")
        exited.set()

    monkeypatch.setattr(replica_module, "os", SimpleNamespace(getpid=os.getpid, _exit=fake_exit))
    stuck, release, checked = threading.Event(), asyncio.Event(), asyncio.Event()

    @tool
    def hang() -> str:
        """Block past the replica's timeout, until the test ends."""
        stuck.wait(30)
        return "woke up"

    @tool(timeout=30)
    async def follow_up() -> str:
        """Run until the test releases it."""
        await release.wait()
        history.append("follow-up finished")
        return "done"

    replica = replica_module.ToolboxActor("r", [hang, follow_up], timeout=0.1, max_concurrency=5)
    exit_if_idle = replica._exit_if_idle

    def exit_check() -> None:
        history.append(f"exit check, {replica._in_flight} in flight")
        checked.set()
        exit_if_idle()

    replica._exit_if_idle = exit_check  # what the replica schedules once it is idle
    try:
        hung = await replica.execute_call(ToolCall(id="h", name="hang"), None)
        assert "did not finish within 0.1s" in hung.content  # so it recycles: exit scheduled
        # The follow-up's first step runs before any timer of the loop can fire: it arrives
        # while the exit is pending, deterministically.
        follow = asyncio.create_task(replica.execute_call(ToolCall(id="f", name="follow_up"), None))
        await asyncio.wait_for(checked.wait(), 20)  # deadlines here only catch a hang
        release.set()
        result = await asyncio.wait_for(follow, 20)
        await asyncio.wait_for(exited.wait(), 20)
    finally:
        stuck.set()
    assert not result.is_error and result.content == "done"
    assert history == [
        "exit check, 1 in flight",  # busy: it did not exit under the follow-up
        "follow-up finished",
        "exit check, 0 in flight",  # the last call to finish exits
        "exit 1",
    ]
