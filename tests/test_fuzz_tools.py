"""Fuzzing the path from a model's tool call to execution, and the calculator, with hypothesis.

A model's tool call is hostile input: its name and its arguments text are whatever the model
produced. Whatever it sends, the toolbox must answer with an error result naming the bad part
(never raise, never grow its statistics), the tool must be called only with the arguments the
model sent (pydantic's documented lax reading of numeric strings aside), and the agent loop must
carry on. Every property runs derandomized, without an example database, so CI is deterministic.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import sys
import tracemalloc
import typing
from collections import deque
from collections.abc import Iterable, Mapping, MutableMapping, MutableSequence, MutableSet, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, Literal, NewType

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from gecko_actors import LocalAgent, Message, ScriptedModel, ToolBox, ToolCall, tool
from gecko_actors.core.calculator import calculator, evaluate
from gecko_actors.core.messages import MAX_ARGUMENT_DEPTH
from gecko_actors.core.structured import OUTPUT_TOOL, ParseFailure, parse_reply
from gecko_actors.core.tools import MAX_ERROR_CHARS
from gecko_actors.exceptions import CalculatorError, ToolArgumentsError

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FIELDS = {"count", "ratio", "label", "flag", "tags", "extra"}
REQUIRED = {"count", "ratio", "label"}
# Whatever the model sent, the error text it gets back, hint included, is at most this long.
ERROR_BOUND = MAX_ERROR_CHARS


def make_probe():
    """A tool that records every call it gets, and the list it records them in."""
    calls: list[dict[str, Any]] = []

    @tool
    def probe(
        count: int,
        ratio: float,
        label: str,
        flag: bool = False,
        tags: list[int] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """Record the call.

        Args:
            count: a whole number.
            ratio: a number.
            label: some text.
            flag: a switch.
            tags: whole numbers.
            extra: anything.
        """
        calls.append(
            {"count": count, "ratio": ratio, "label": label, "flag": flag}
            | {"tags": tags, "extra": extra}
        )
        return "ok"

    return probe, calls


# --- strategies ------------------------------------------------------------------------------

SPECIALS = ["NaN", "Infinity", "-Infinity", "1e400", "-1e999", str(10**400), "9" * 5000]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
good_values = {
    "count": st.integers() | st.integers(-99, 99).map(str),
    "ratio": st.floats(allow_nan=False, allow_infinity=False) | st.integers(),
    "label": st.text(max_size=20),
    "flag": st.booleans(),
    "tags": st.none() | st.lists(st.integers(), max_size=3),
    "extra": st.none() | st.dictionaries(st.text(max_size=6), json_values, max_size=3),
}
well_typed = st.fixed_dictionaries(
    {name: good_values[name] for name in sorted(REQUIRED)},
    optional={name: good_values[name] for name in sorted(FIELDS - REQUIRED)},
)


def _mutated(drawn: tuple[dict[str, Any], str, str, Any]) -> dict[str, Any]:
    """A well-typed object with one thing wrong: a field dropped, retyped, or one too many."""
    obj, how, key, value = drawn
    if how == "drop":
        obj.pop(key, None)
    elif how == "retype":
        obj[key] = value
    else:  # "add": a key the tool does not declare (or, by chance, one it does)
        obj[f"{key}_x" if value is None else str(value)[:8]] = value
    return obj


objects = st.one_of(
    well_typed,
    st.tuples(
        well_typed,
        st.sampled_from(["drop", "retype", "add"]),
        st.sampled_from(sorted(FIELDS)),
        json_values,
    ).map(_mutated),
    st.fixed_dictionaries(
        {}, optional={name: good | json_values for name, good in good_values.items()}
    ).flatmap(
        lambda known: st.dictionaries(st.text(max_size=8), json_values, max_size=2).map(
            lambda extra_keys: {**extra_keys, **known}
        )
    ),
)


def _with_special(pair: tuple[dict[str, Any], str, str]) -> str:
    """An object whose value under ``key`` is a raw literal JSON cannot express (NaN, ...)."""
    obj, key, literal = pair
    return json.dumps({**obj, key: "\x00SPECIAL"}).replace('"\\u0000SPECIAL"', literal)


def _truncated(pair: tuple[str, int]) -> str:
    text, cut = pair
    return text[: cut % max(len(text), 1)]


def _deep(pair: tuple[int, str]) -> str:
    """A valid call whose ``extra`` (or the whole arguments text) nests ``depth`` levels."""
    depth, where = pair
    if where == "top":
        return "[" * depth + "]" * depth
    inner = '{"a":' * depth + "1" + "}" * depth
    return '{"count": 1, "ratio": 0.5, "label": "x", "extra": ' + inner + "}"


def _big_string(size: int) -> str:
    return json.dumps({"count": 1, "ratio": 2.5, "label": "é" * size}, ensure_ascii=False)


arguments_texts = st.one_of(
    well_typed.map(json.dumps),
    objects.map(json.dumps),
    st.tuples(objects.map(json.dumps), st.integers(0, 10**6)).map(_truncated),
    st.tuples(objects, st.sampled_from(sorted(FIELDS | {"zzz"})), st.sampled_from(SPECIALS)).map(
        _with_special
    ),
    json_values.filter(lambda v: not isinstance(v, dict)).map(json.dumps),
    st.tuples(
        st.sampled_from([1, 50, MAX_ARGUMENT_DEPTH - 1, MAX_ARGUMENT_DEPTH, 900, 10_000]),
        st.sampled_from(["top", "extra"]),
    ).map(_deep),
    st.sampled_from([1, 1_000_000]).map(_big_string),
    st.text(max_size=40),
)
tool_names = st.one_of(
    st.text(max_size=30),
    st.just(""),
    st.integers(100, 1_000_000).map(lambda n: "n" * n),
    st.sampled_from(["probé", "探针", "\ud800", "probe\x00", "PROBE", "probe ", "🔧" * 500]),
)


# --- the oracle ------------------------------------------------------------------------------


def _refuse(text: str) -> Any:
    raise ValueError(text)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def sent(arguments: str) -> dict[str, Any] | None:
    """What the model sent, read strictly: a JSON object of finite numbers, else None."""
    try:
        value = json.loads(arguments.strip() or "{}", parse_constant=_refuse, parse_float=_finite)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def depth(value: Any) -> int:
    stack, deepest = [(value, 1)], 0
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return is_number(value) and abs(value) <= sys.float_info.max


def exactly_right(args: dict[str, Any]) -> bool:
    """Arguments of exactly the declared types (no coercion needed), within the limits."""
    checks = {
        "count": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "ratio": is_finite_number,
        "label": lambda v: isinstance(v, str),
        "flag": lambda v: isinstance(v, bool),
        "tags": lambda v: v is None or (isinstance(v, list) and all(type(t) is int for t in v)),
        "extra": lambda v: v is None or isinstance(v, dict),
    }
    return (
        set(args) <= FIELDS
        and set(args) >= REQUIRED
        and all(checks[k](v) for k, v in args.items())
        and depth(args) <= MAX_ARGUMENT_DEPTH
    )


def finite_everywhere(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return False
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def same_number(model_sent: Any, got: Any) -> bool:
    """``got`` is the number ``model_sent`` is, or spells (pydantic reads "3" as 3)."""
    if isinstance(model_sent, bool):
        return False
    return (float(model_sent) if isinstance(model_sent, str) else model_sent) == got


def assert_received_what_was_sent(model_sent: dict[str, Any], got: dict[str, Any]) -> None:
    """The tool got the model's values: of the declared types, no bool read as a number, no
    NaN, numeric strings read as the number they spell, nothing else changed."""
    assert set(model_sent) <= FIELDS and set(model_sent) >= REQUIRED, model_sent
    assert type(got["count"]) is int and same_number(model_sent["count"], got["count"])
    assert type(got["ratio"]) is float and math.isfinite(got["ratio"])
    assert same_number(model_sent["ratio"], got["ratio"])
    assert type(got["label"]) is str and got["label"] == model_sent["label"]
    assert isinstance(got["flag"], bool)
    tags = model_sent.get("tags")
    assert (got["tags"] is None) == (tags is None)
    if tags is not None:
        assert all(type(t) is int for t in got["tags"])
        assert all(same_number(s, g) for s, g in zip(tags, got["tags"], strict=True))
    assert finite_everywhere(got["extra"])
    assert got["extra"] == model_sent.get("extra")


def assert_bounded_error(result, call_id: str) -> None:
    assert result.is_error is True
    assert result.tool_call_id == call_id
    assert len(result.content) <= ERROR_BOUND
    result.content.encode("utf-8")  # sendable: no lone surrogates
    assert result.metadata.get("error") in {"tool_arguments", "tool_not_found"}


# --- the toolbox -----------------------------------------------------------------------------


@FUZZ
@given(arguments_texts)
def test_any_arguments_text_gives_the_tool_exactly_what_was_sent_or_an_error(arguments) -> None:
    probe, calls = make_probe()
    box = ToolBox([probe])
    result = asyncio.run(box.execute_call(ToolCall(id="c1", name="probe", arguments=arguments)))
    model_sent = sent(arguments)
    assert set(box.stats()) == {"probe"}
    if calls:
        assert result.is_error is False and result.content == "ok"
        assert model_sent is not None and depth(model_sent) <= MAX_ARGUMENT_DEPTH
        assert_received_what_was_sent(model_sent, calls[0])
        return
    assert_bounded_error(result, "c1")
    assert box.stats()["probe"]["errors"] == 1
    if model_sent is not None and exactly_right(model_sent):
        pytest.fail(f"well-typed arguments were refused: {result.content}")
    if model_sent is None:
        assert any(
            phrase in result.content
            for phrase in ("not valid JSON", "JSON object", "not finite", "nested", "too long")
        ), result.content
    elif depth(model_sent) > MAX_ARGUMENT_DEPTH:
        assert "nested too deeply" in result.content
    else:
        # The error names where the problem is, and every missing field (they come first).
        assert re.search(r"invalid arguments for tool 'probe': [^:]+: ", result.content)
        for field in REQUIRED - set(model_sent):
            assert f"{field}: Field required" in result.content, result.content


@FUZZ
@given(tool_names, arguments_texts)
def test_unknown_tool_names_are_errors_that_leave_the_stats_alone(name, arguments) -> None:
    probe, calls = make_probe()
    box = ToolBox([probe])
    result = asyncio.run(box.execute_call(ToolCall(id="u1", name=name, arguments=arguments)))
    assert calls == []
    assert_bounded_error(result, "u1")
    assert result.metadata["error"] == "tool_not_found"
    assert "is not registered" in result.content and "probe" in result.content
    assert set(box.stats()) == {"probe"}
    assert box.stats()["probe"]["executions"] == 0


@pytest.mark.parametrize(
    "literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e999", '"nan"', '"-inf"', '"1e999"']
)
async def test_non_finite_numbers_never_reach_a_tool(literal: str) -> None:
    probe, calls = make_probe()
    box = ToolBox([probe])
    for field in ("ratio", "extra"):
        value = literal if field == "ratio" else '{"x": [' + literal + "]}"
        arguments = f'{{"count": 1, "ratio": 1.5, "label": "x", "{field}": {value}}}'
        result = await box.execute_call(ToolCall(id="n", name="probe", arguments=arguments))
        if field == "extra" and literal.startswith('"'):
            assert not result.is_error  # a string is a string in an Any field
            continue
        assert result.is_error, arguments
        assert "finite" in result.content
    assert all(finite_everywhere(c["extra"]) for c in calls)
    assert all(not isinstance(c["ratio"], str) for c in calls)


async def test_non_finite_numbers_are_refused_when_tools_are_called_from_python() -> None:
    probe, calls = make_probe()
    for arguments in (
        {"count": 1, "ratio": float("nan"), "label": "x"},
        {"count": 1, "ratio": 1.0, "label": "x", "extra": {"deep": [float("-inf")]}},
    ):
        result = await probe.execute(arguments)
        assert result.is_error and "finite" in result.content
        assert result.metadata["error"] == "tool_arguments"
    assert calls == []


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ('{"count": true, "ratio": 1, "label": "x"}', "count"),
        ('{"count": 1, "ratio": false, "label": "x"}', "ratio"),
        ('{"count": 1, "ratio": 1, "label": "x", "tags": [1, true]}', "tags.1"),
    ],
)
async def test_a_boolean_is_not_read_as_a_number(arguments: str, field: str) -> None:
    probe, calls = make_probe()
    result = await ToolBox([probe]).execute_call(
        ToolCall(id="b", name="probe", arguments=arguments)
    )
    assert calls == []
    assert result.is_error and f"{field}:" in result.content and "boolean" in result.content


Count = NewType("Count", int)


@pytest.mark.parametrize(
    ("annotation", "value", "where"),
    [
        (Sequence[int], [1, True], "x.1"),
        (typing.Sequence[float], [False], "x.0"),
        (MutableSequence[int], [True], "x.0"),
        (Mapping[str, float], {"a": 1.5, "b": True}, "x.b"),
        (MutableMapping[str, int], {"a": False}, "x.a"),
        (Iterable[int], [2, True], "x.1"),
        (typing.Iterable[float], [True], "x.0"),
        (AbstractSet[int], [True], "x.0"),
        (MutableSet[float], [False], "x.0"),
        (deque[int], [True], "x.0"),
        (Sequence[Mapping[str, Sequence[int]]], [{"a": [1, True]}], "x.0.a.1"),
        (Sequence[int] | None, [True], "x.0"),
        (Literal[1, 2], True, "x"),
        (Count, True, "x"),
    ],
)
async def test_a_boolean_is_not_read_as_a_number_in_any_container(
    annotation: Any, value: Any, where: str
) -> None:
    # Sequence[int] and the other collections.abc containers read [true] as [1] when only the
    # built-in containers were checked; a lazily checked Iterable failed inside the tool.
    calls: list[Any] = []

    def numbers(x):
        """Record what arrived."""
        calls.append(list(x) if isinstance(x, Iterable) and not isinstance(x, Mapping) else x)
        return "ok"

    numbers.__annotations__ = {"x": annotation}
    box = ToolBox([tool(numbers)])
    arguments = json.dumps({"x": value})
    result = await box.execute_call(ToolCall(id="b", name="numbers", arguments=arguments))
    assert calls == [], f"{annotation} let a boolean through as {calls}"
    assert result.is_error and result.metadata["error"] == "tool_arguments", result.content
    assert f"{where}" in result.content and "boolean" in result.content, result.content
    # The same value with numbers for the booleans is accepted, as the numbers that were sent.
    numbers_only = json.loads(json.dumps(value).replace("true", "1").replace("false", "2"))
    arguments = json.dumps({"x": numbers_only})
    ok = await box.execute_call(ToolCall(id="n", name="numbers", arguments=arguments))
    assert ok.content == "ok" and calls == [numbers_only], ok.content


@pytest.mark.parametrize("levels", [MAX_ARGUMENT_DEPTH + 1, 900, 10_000])
async def test_deep_nesting_is_an_error_not_a_recursion_error(levels: int) -> None:
    probe, calls = make_probe()
    box = ToolBox([probe])
    top = await box.execute_call(ToolCall(id="d", name="probe", arguments=_deep((levels, "top"))))
    assert top.is_error and ("nested too deeply" in top.content or "JSON object" in top.content)
    inside = await box.execute_call(
        ToolCall(id="d", name="probe", arguments=_deep((levels, "extra")))
    )
    assert inside.is_error and "nested too deeply" in inside.content
    assert calls == []


async def test_integers_too_long_to_read_are_an_error() -> None:
    probe, calls = make_probe()
    arguments = '{"count": %s, "ratio": 1, "label": "x"}' % ("7" * 5000)
    result = await ToolBox([probe]).execute_call(
        ToolCall(id="i", name="probe", arguments=arguments)
    )
    assert calls == [] and result.is_error and "integer too long" in result.content
    huge = '{"count": ' + str(10**400) + ', "ratio": 1, "label": "x"}'  # readable: it is sent
    assert not (await probe.execute(json.loads(huge))).is_error
    assert calls[0]["count"] == 10**400


async def test_error_texts_stay_short_whatever_the_model_sends() -> None:
    probe, calls = make_probe()
    box = ToolBox([probe])
    megabyte_key = "k" * 1_000_000
    arguments = json.dumps(
        {"count": 1, "ratio": 1, "label": "x", megabyte_key: 1}
        | {f"extra_{i}": i for i in range(1000)}
    )
    result = await box.execute_call(ToolCall(id="e", name="probe", arguments=arguments))
    assert calls == [] and result.is_error
    assert len(result.content) <= ERROR_BOUND
    assert "kkkkkkkk" in result.content and "more errors" in result.content
    named = await box.execute_call(ToolCall(id="e2", name="x" * 1_000_000, arguments="{"))
    assert len(named.content) <= ERROR_BOUND and "is not registered" in named.content


# --- the agent loop --------------------------------------------------------------------------


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(st.tuples(st.just("probe") | tool_names, arguments_texts), min_size=1, max_size=4))
def test_the_agent_loop_answers_every_bad_call_and_carries_on(batch) -> None:
    probe, calls = make_probe()
    script = [[ScriptedModel.raw_call(name, arguments) for name, arguments in batch], "done"]
    model = ScriptedModel(script)
    out = asyncio.run(LocalAgent(model, [probe]).arun("go"))
    assert out.content == "done" and out.finish_reason == "stop"
    results = [m for m in model.calls[1].messages if m.role == "tool"]
    assert [m.tool_call_id for m in results] == [c.id for c in out.tool_calls]
    for (name, arguments), message in zip(batch, results, strict=True):
        msgpack.packb(message.model_dump(mode="json"))  # storable in a session as it is
        model_sent = sent(arguments)
        if message.text == "ok":
            assert name == "probe" and model_sent is not None
            continue
        assert len(message.text) <= ERROR_BOUND
        assert message.text.startswith("Error:") or "invalid arguments" in message.text
        assert not (name == "probe" and model_sent is not None and exactly_right(model_sent))
    assert len(calls) == sum(m.text == "ok" for m in results)


async def test_a_tool_call_without_an_id_is_answered_instead_of_crashing_the_run() -> None:
    probe, calls = make_probe()
    reply = Message.assistant(None, [ToolCall(id="", name="probe", arguments="{NaN")])
    model = ScriptedModel([reply, "done"])
    out = await LocalAgent(model, [probe]).arun("go")
    assert out.content == "done"
    (result,) = [m for m in model.calls[1].messages if m.role == "tool"]
    (assistant,) = [m for m in model.calls[1].messages if m.role == "assistant"]
    assert result.tool_call_id and result.tool_call_id == assistant.tool_calls[0].id
    assert "not valid JSON" in result.text and calls == []


async def test_odd_tool_call_shapes_from_a_provider_become_error_results() -> None:
    probe, calls = make_probe()
    box = ToolBox([probe])
    shapes = [
        {"id": 7, "function": {"name": "probe", "arguments": {"count": float("nan")}}},
        {"id": "a", "function": {"name": 12, "arguments": "{}"}},
        {"id": None, "function": {"name": None, "arguments": [1, 2]}},
        {"id": "b", "function": "probe"},
        {"id": "c", "function": {"name": "probe", "arguments": {"when": object()}}},
    ]
    for shape in shapes:
        message = Message.from_openai({"role": "assistant", "tool_calls": [shape]})
        (call,) = message.tool_calls
        result = await box.execute_call(call)
        assert result.is_error and result.metadata["error"] in {"tool_arguments", "tool_not_found"}
    assert calls == [] and set(box.stats()) == {"probe"}


def test_parse_arguments_raises_only_tool_arguments_errors() -> None:
    for arguments in ("{", "NaN", '{"a": NaN}', "[" * 10_000, '{"a": %s}' % ("1" * 5000)):
        with pytest.raises(ToolArgumentsError) as info:
            ToolCall(id="p", name="t", arguments=arguments).parse_arguments()
        assert info.value.tool == "t"


# --- the calculator --------------------------------------------------------------------------

numbers = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.sampled_from(["0", "1", "2", "9", "10", "0.5", "1e308", "1e-308", "1e309", "7.0", "0x1f"]),
    st.sampled_from(["10**999", "99999999999999999999", "2**1000", "1_000"]),
)
expressions = st.recursive(
    numbers,
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "//", "%", "**"]), inner).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        st.tuples(st.sampled_from(["-", "+", "--"]), inner).map("".join),
        st.tuples(inner, inner).map(lambda t: f"{t[0]}**{t[1]}"),  # right-associative towers
    ),
    max_leaves=40,
)


def assert_number_or_refused(expression: str) -> None:
    try:
        value = evaluate(expression)
    except CalculatorError as exc:
        assert len(str(exc)) < 1000
        return
    assert type(value) in (int, float)
    assert type(value) is int or math.isfinite(value)


@FUZZ
@given(expressions)
def test_calculator_arithmetic_is_a_finite_number_or_a_calculator_error(expression) -> None:
    assert_number_or_refused(expression)


@FUZZ
@given(st.text(alphabet="0123456789.+-*/%()e_xj ", max_size=600) | st.text(max_size=600))
def test_calculator_on_any_text_is_a_number_or_a_calculator_error(expression) -> None:
    assert_number_or_refused(expression)


@pytest.mark.parametrize(
    "expression",
    [
        "9**9**9**9",
        "10**10**10",
        "(2**1000)**1000",
        "(10**999) * (10**999)",
        "2**1000*2**1000*2**1000*2**1000",
        "(" * 100 + "9" + ")" * 100 + "**9**9",
        "-" * 499 + "1",
        "+".join(["9**999"] * 50),
        "1" * 500,
        "1e308 * 10",
    ],
)
def test_calculator_bombs_are_refused_cheaply(expression: str) -> None:
    # Memory, not time: a peak is deterministic where a duration is not.
    tracemalloc.start()
    try:
        assert_number_or_refused(expression)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000


@FUZZ
@given(expressions | st.text(max_size=50))
def test_calculator_tool_answers_every_expression_with_a_result(expression) -> None:
    box = ToolBox([calculator])
    arguments = json.dumps({"expression": expression})
    result = asyncio.run(box.execute_call(ToolCall(id="k", name="calculator", arguments=arguments)))
    if result.is_error:
        assert "CalculatorError" in result.content, result.content
    else:
        float(result.content)  # a number, as text


# --- structured output: the final answer is model-written JSON too -----------------------------


class _Answer(BaseModel):
    value: float


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"value": NaN}', "not finite"),
        ('{"value": 1e400}', "not finite"),
        ("[" * 10_000 + "]" * 10_000, "nested too deeply"),
        ('{"value": ' + "9" * 5000 + "}", "integer too long"),
    ],
)
def test_structured_answers_refuse_what_tool_arguments_refuse(text: str, expected: str) -> None:
    for message in (
        Message.assistant(text),
        Message.assistant(None, tool_calls=[ToolCall(id="c", name=OUTPUT_TOOL, arguments=text)]),
    ):
        with pytest.raises(ParseFailure, match=expected):
            parse_reply(message, _Answer)


@pytest.mark.parametrize("unit", ["{", '{"', '"{'])
def test_a_megabyte_of_open_braces_is_scanned_a_bounded_number_of_times(unit: str) -> None:
    # Rescanning from every brace made this quadratic (8,000 braces took seconds, a megabyte
    # would not end); one pass finds there is no object.
    with pytest.raises(ParseFailure):
        parse_reply(Message.assistant(unit * (1_000_000 // len(unit))), _Answer)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('The answer: {"value": 2} and more {"value": 3}', 2.0),
        ('{ unclosed {"value": 4} ', 4.0),
        ('noise {"value": 5, "note": "a } in a string"} tail', 5.0),
        ('```json\n{"value": 6}\n```', 6.0),
        ('I used "{" in the template; answer: {"value": 7}', 7.0),
    ],
)
def test_structured_answers_are_found_in_prose(text: str, value: float) -> None:
    assert parse_reply(Message.assistant(text), _Answer).value == value
