"""Tests for :class:`PromptTemplate` (sandboxed jinja2) and :class:`EventBus`."""

from __future__ import annotations

import asyncio
import dataclasses
import pickle

import pytest

from gecko_actors import Event, EventBus, PromptTemplate, TemplateError, UserError, tool
from gecko_actors.core.prompt import DEFAULT_SYSTEM_TEMPLATE

# --- PromptTemplate -------------------------------------------------------------------------


def test_renders_variables_loops_and_filters():
    template = PromptTemplate(
        "Hello {{ name }}!{% for item in items %} [{{ item | upper }}]{% endfor %}"
    )
    assert template.render(name="Ada", items=["a", "b"]) == "Hello Ada! [A] [B]"
    assert template.render(name="Bob", items=[]) == "Hello Bob!"


def test_builtin_globals_are_not_required_variables():
    template = PromptTemplate("{% for i in range(3) %}{{ i }}{% endfor %}")
    assert template.variables == frozenset()
    assert template.render() == "012"


def test_variables_lists_undeclared_names_only():
    template = PromptTemplate(
        "{{ a }}{% if b %}{{ c.d }}{% endif %}{% set e = 1 %}{{ e }}"
        "{% for x in items %}{{ x }}{% endfor %}"
    )
    assert template.variables == frozenset({"a", "b", "c", "items"})


def test_missing_variable_is_named():
    template = PromptTemplate("Hello {{ name }}")
    with pytest.raises(TemplateError) as info:
        template.render()
    assert "'name'" in str(info.value)
    assert info.value.missing == ["name"]
    assert isinstance(info.value, UserError)


def test_several_missing_variables_are_listed_sorted():
    template = PromptTemplate("{{ zeta }} {{ alpha }} {{ passed }} {{ mid }}")
    with pytest.raises(TemplateError) as info:
        template.render(passed=1)
    assert info.value.missing == ["alpha", "mid", "zeta"]
    assert "'alpha', 'mid', 'zeta'" in str(info.value)
    assert "passed" not in info.value.message


def test_variable_used_only_in_a_branch_is_still_required():
    template = PromptTemplate("{% if flag %}{{ detail }}{% endif %}")
    with pytest.raises(TemplateError) as info:
        template.render(flag=False)
    assert info.value.missing == ["detail"]
    assert template.render(flag=False, detail="x") == ""


def test_missing_attribute_of_a_given_variable_is_a_template_error():
    template = PromptTemplate("{{ user.name }}")
    with pytest.raises(TemplateError, match="'name'"):
        template.render(user={})
    assert template.render(user={"name": "Ada"}) == "Ada"


def test_syntax_error_reports_the_line():
    with pytest.raises(TemplateError) as info:
        PromptTemplate("line one\n{{ ok }}\n{% if x %}never closed")
    assert "line 3" in str(info.value)
    assert "syntax error" in str(info.value)
    with pytest.raises(TemplateError, match="line 2"):
        PromptTemplate("fine\n{{ broken }")


@pytest.mark.parametrize(
    "source",
    [
        "{{ x.__class__.__mro__ }}",
        "{{ ''.__class__.__subclasses__() }}",
        "{{ x.__class__ }}",
        "{{ '{0.__class__}'.format(x) }}",
        "{{ lipsum.__globals__ }}",
        "{{ cycler.__init__.__globals__['os'] }}",
        "{{ x.__init__.__globals__ }}",
    ],
)
def test_sandbox_blocks_python_internals(source):
    template = PromptTemplate(source)
    with pytest.raises(TemplateError) as info:
        template.render(x=1)
    text = str(info.value)
    assert "unsafe" in text
    assert "<class" not in text
    assert "subprocess" not in text
    assert "built-in" not in text


def test_sandbox_allows_ordinary_methods():
    template = PromptTemplate("{{ ', '.join(names) }} {{ word.title() }}")
    assert template.render(names=["a", "b"], word="hello") == "a, b Hello"


def test_prompt_template_pickles():
    template = PromptTemplate("Dear {{ who }},\n{{ body }}")
    restored = pickle.loads(pickle.dumps(template))
    assert restored.source == template.source
    assert restored.variables == frozenset({"who", "body"})
    assert restored.render(who="Ada", body="hi") == "Dear Ada,\nhi"


@tool
def lookup(key: str) -> str:
    """Look a key up in the registry."""
    return key


@tool(name="send_mail", description="Send an email to someone.")
def send_mail(to: str) -> str:
    return to


def test_default_system_template_lists_tools():
    rendered = PromptTemplate(DEFAULT_SYSTEM_TEMPLATE).render(
        instructions="You are a helpful bot.", tools=[lookup, send_mail]
    )
    assert rendered.startswith("You are a helpful bot.")
    assert "- lookup: Look a key up in the registry." in rendered
    assert "- send_mail: Send an email to someone." in rendered
    assert "You can use these tools:" in rendered
    assert rendered.index("lookup") < rendered.index("send_mail")


def test_default_system_template_without_tools_has_no_tools_section():
    template = PromptTemplate(DEFAULT_SYSTEM_TEMPLATE)
    for empty in ([], None):
        rendered = template.render(instructions="You are a helpful bot.", tools=empty)
        assert rendered == "You are a helpful bot."
        assert "tool" not in rendered.lower()


# --- Event ----------------------------------------------------------------------------------


def test_event_with_data_returns_a_new_event():
    event = Event("tool_finished", {"tool": "add"})
    changed = event.with_data(result=3)
    assert changed.data == {"tool": "add", "result": 3}
    assert event.data == {"tool": "add"}
    assert changed.type == event.type
    assert changed.timestamp == event.timestamp
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.type = "other"  # type: ignore[misc]


# --- EventBus: subscribers ------------------------------------------------------------------


async def test_handlers_per_type_and_wildcard():
    bus = EventBus()
    seen: list[tuple[str, str]] = []
    bus.subscribe("a", lambda e: seen.append(("a-handler", e.type)))
    bus.subscribe("b", lambda e: seen.append(("b-handler", e.type)))
    bus.subscribe("*", lambda e: seen.append(("star", e.type)))

    await bus.publish(Event("a"))
    assert sorted(seen) == [("a-handler", "a"), ("star", "a")]
    seen.clear()
    await bus.publish(Event("c"))
    assert seen == [("star", "c")]


async def test_sync_and_async_handlers_are_both_called():
    bus = EventBus()
    seen = []

    def sync_handler(event):
        seen.append(("sync", event.data["n"]))

    async def async_handler(event):
        await asyncio.sleep(0.01)
        seen.append(("async", event.data["n"]))

    bus.subscribe("tick", sync_handler)
    bus.subscribe("tick", async_handler)
    result = await bus.publish(Event("tick", {"n": 1}))
    assert sorted(seen) == [("async", 1), ("sync", 1)]  # wait=True waited for both
    assert result is not None and result.data == {"n": 1}


async def test_unsubscribe():
    bus = EventBus()
    seen = []

    def handler(event):
        seen.append(event.type)

    bus.subscribe("x", handler)
    assert bus.unsubscribe("x", handler) is True
    assert bus.unsubscribe("x", handler) is False
    assert bus.unsubscribe("never", handler) is False
    await bus.publish(Event("x"))
    assert seen == []


async def test_failing_handler_is_ignored_and_others_still_run():
    bus = EventBus()
    seen = []

    def bad_sync(event):
        raise RuntimeError("sync handler broke")

    async def bad_async(event):
        raise ValueError("async handler broke")

    bus.subscribe("e", bad_sync)
    bus.subscribe("e", bad_async)
    bus.subscribe("e", lambda e: seen.append("after"))
    bus.subscribe("*", lambda e: seen.append("star"))
    result = await bus.publish(Event("e", {"k": 1}))
    assert sorted(seen) == ["after", "star"]
    assert result is not None and result.data == {"k": 1}


# --- EventBus: middlewares ------------------------------------------------------------------


async def test_middleware_can_modify_the_event():
    bus = EventBus()
    seen = []
    bus.add_middleware(lambda e: e.with_data(step1=True))

    async def async_middleware(event):
        return event.with_data(step2=event.data.get("step1"))

    bus.add_middleware(async_middleware)
    bus.subscribe("m", lambda e: seen.append(e.data))
    result = await bus.publish(Event("m", {"orig": 1}))
    assert seen == [{"orig": 1, "step1": True, "step2": True}]
    assert result is not None and result.data == seen[0]


async def test_middleware_can_block_the_event():
    bus = EventBus()
    seen = []
    later = []
    bus.add_middleware(lambda e: None if e.data.get("secret") else e)
    bus.add_middleware(lambda e: later.append(e) or e)
    bus.subscribe("*", lambda e: seen.append(e.type))

    assert await bus.publish(Event("blocked", {"secret": True})) is None
    assert seen == []
    assert later == []  # later middlewares do not see a blocked event
    result = await bus.publish(Event("allowed"))
    assert result is not None and result.type == "allowed"
    assert seen == ["allowed"]


async def test_async_middleware_can_block():
    bus = EventBus()
    seen = []

    async def block_all(event):
        return None

    bus.add_middleware(block_all)
    bus.subscribe("*", seen.append)
    assert await bus.publish(Event("x")) is None
    assert seen == []


async def test_failing_middleware_is_ignored():
    bus = EventBus()
    seen = []

    def broken(event):
        raise RuntimeError("middleware broke")

    async def broken_async(event):
        raise KeyError("nope")

    bus.add_middleware(broken)
    bus.add_middleware(broken_async)
    bus.add_middleware(lambda e: e.with_data(tagged=True))
    bus.subscribe("x", lambda e: seen.append(e.data))
    event = Event("x", {"v": 1})
    result = await bus.publish(event)
    assert seen == [{"v": 1, "tagged": True}]
    assert result is not None and result.data == {"v": 1, "tagged": True}


async def test_failing_only_middleware_passes_the_event_unchanged():
    bus = EventBus()
    seen = []

    def broken(event):
        raise RuntimeError("middleware broke")

    bus.add_middleware(broken)
    bus.subscribe("x", seen.append)
    event = Event("x", {"v": 1})
    assert await bus.publish(event) is event
    assert seen == [event]


# --- EventBus: background handlers ----------------------------------------------------------


async def test_publish_without_waiting_and_drain():
    bus = EventBus()
    done = []
    release = asyncio.Event()

    async def slow(event):
        await release.wait()  # finishes only once publish has returned
        done.append(event.type)

    bus.subscribe("slow", slow)
    # A publish that waited for the handler would wait for ever: the deadline only turns
    # that into a failure.
    result = await asyncio.wait_for(bus.publish(Event("slow"), wait=False), 20)
    assert result is not None and result.type == "slow"
    assert done == []
    release.set()
    await bus.drain()
    assert done == ["slow"]
    await bus.drain()  # nothing left: returns at once


async def test_publish_waits_by_default():
    bus = EventBus()
    done = []

    async def slow(event):
        await asyncio.sleep(0.1)
        done.append(True)

    bus.subscribe("slow", slow)
    await bus.publish(Event("slow"))
    assert done == [True]


async def test_drain_waits_for_several_background_publishes():
    bus = EventBus()
    done = []

    async def slow(event):
        await asyncio.sleep(event.data["delay"])
        done.append(event.data["delay"])

    bus.subscribe("*", slow)
    for delay in (0.15, 0.05, 0.1):
        await bus.publish(Event("e", {"delay": delay}), wait=False)
    assert done == []
    await bus.drain()
    assert sorted(done) == [0.05, 0.1, 0.15]


async def test_middleware_returning_junk_is_ignored() -> None:
    bus = EventBus()
    seen = []
    bus.add_middleware(lambda event: "not an event")
    bus.subscribe("x", seen.append)
    published = await bus.publish(Event("x", {"a": 1}))
    assert published is not None and published.data == {"a": 1}
    assert [e.type for e in seen] == ["x"]
