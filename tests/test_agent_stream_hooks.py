"""Streaming from agent actors, and hooks and event buses for them.

``Agent.stream`` / ``astream`` give what ``LocalAgent.stream`` gives (the text chunks, then
``output``), raise the library's own errors, and cancel the run in the actor when the caller
leaves early. ``Agent.spawn(hooks=...)`` runs importable hooks inside the actor; an event bus
given to a handle stays in this process and receives the actor's events, in order.

The Ray tests share one agent actor (a process costs seconds on a loaded machine) on the
session's Ray; the actor-shell and validation tests need no Ray.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

import gecko_actors.agents.handle as agent_module
from gecko_actors import Agent, Hooks, ModelError, ScriptedModel, UserError
from gecko_actors.agents.dedicated import AgentActor, AgentSpec
from gecko_actors.core.agent import LocalAgent
from gecko_actors.core.events import Event, EventBus
from gecko_actors.core.messages import AgentOutput, Message, ToolCall
from gecko_actors.core.sessions import InMemorySessionStore
from gecko_actors.core.toolbox import ToolBox

FAIL = "fail"
WAIT = "wait:"  # followed by the path the waiting tool reports to
RUN_EVENTS = [
    "run_started",
    "turn_started",
    "tool_started",
    "tool_finished",
    "turn_started",
    "run_finished",
]


# --- what runs inside the agent actor: module level, so its workers import it by name ------


def script(messages: list[Message], tools: list[dict[str, Any]]) -> Any:
    """Say a few words and call `lookup` (or `wait_for_cancel`), then report the result; the
    input ``fail`` makes the model fail."""
    last = messages[-1]
    if last.role == "tool":
        return f"The tool said {last.text}."
    if last.text == FAIL:
        return ModelError("the scripted model failed", hint="nothing to fix: a test")
    if last.text.startswith(WAIT):
        arguments = json.dumps({"path": last.text[len(WAIT) :]})
        return Message.assistant(
            "Working on it.", [ToolCall(id="w1", name="wait_for_cancel", arguments=arguments)]
        )
    lookup_call = ToolCall(id="l1", name="lookup", arguments=json.dumps({"key": "answer"}))
    return Message.assistant("Let me look.", [lookup_call])


def lookup(key: str) -> str:
    """Look a key up.

    Args:
        key: what to look up.
    """
    return "42"


async def wait_for_cancel(path: str) -> str:
    """Write "started" to ``path``, wait until cancelled, then write "cancelled".

    Args:
        path: the file to report to.
    """
    Path(path).write_text("started")
    try:
        await asyncio.sleep(600)
    except asyncio.CancelledError:
        Path(path).write_text("cancelled")
        raise
    return "never cancelled"


_TURNS: list[int] = []  # the turns seen by note_turn, in the process that runs the hooks


async def note_turn(turn: int, messages: list[Message]) -> None:
    """An async hook recording each turn (in the process it runs in)."""
    _TURNS.append(turn)


def tag_tool_result(call: ToolCall, result: Any) -> None:
    """A hook changing each tool result: it names the process and turn it ran in."""
    result.content = f"{result.content} (pid {os.getpid()}, turn {_TURNS[-1]})"


HOOKS = Hooks(on_turn_start=note_turn, on_tool_execute=tag_tool_result)


# --- helpers -------------------------------------------------------------------------------


class Recorder:
    """Chunks and events in the order this process saw them."""

    def __init__(self) -> None:
        self.items: list[tuple[str, Any]] = []

    def on_event(self, event: Event) -> None:
        self.items.append(("event", event))

    def kinds(self) -> list[str]:
        """Each event's type, and ``chunk`` for each chunk."""
        return [value.type if kind == "event" else kind for kind, value in self.items]

    def events(self) -> list[Event]:
        return [value for kind, value in self.items if kind == "event"]


def bus_for(recorder: Recorder) -> EventBus:
    bus = EventBus()
    bus.subscribe("*", recorder.on_event)
    return bus


def wait_for_text(path: Path, text: str, timeout: float = 60.0) -> None:
    """Poll until ``path`` holds ``text`` (a guard against a hang, not a timing assertion)."""
    for _ in range(int(timeout / 0.05)):
        if path.exists() and path.read_text() == text:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never held {text!r}")


async def local_reference(input: str) -> tuple[list[str], AgentOutput]:
    """What LocalAgent.stream gives for ``input``: the kinds in order, and the output."""
    recorder = Recorder()
    agent = LocalAgent(ScriptedModel(script), [lookup], event_bus=bus_for(recorder), hooks=HOOKS)
    stream = agent.stream(input)
    async for chunk in stream:
        recorder.items.append(("chunk", chunk))
    assert stream.output is not None
    return recorder.kinds(), stream.output


def shell() -> AgentActor:
    """The agent actor's class, run in this process (no Ray)."""
    spec = AgentSpec(
        name="shell",
        model=ScriptedModel(script),
        tools=ToolBox([lookup, wait_for_cancel]),
        session_store=InMemorySessionStore(),
        hooks=HOOKS,
    )
    return AgentActor(spec)


# --- the actor shell, without Ray ---------------------------------------------------------


async def test_actor_stream_sends_events_between_chunks_then_the_output() -> None:
    expected, reference = await local_reference("go")
    items = [item async for item in shell().stream("go", None, "r1", True)]

    kinds = [item.type if isinstance(item, Event) else "chunk" for item in items[:-1]]
    assert kinds == expected  # the same interleaving LocalAgent's own bus sees
    assert isinstance(items[-1], AgentOutput)
    assert items[-1].content == reference.content
    assert all(item.data["run_id"] == "r1" for item in items if isinstance(item, Event))


async def test_actor_redacts_the_events_it_sends() -> None:
    key = "sk-" + "a1b2c3d4e5f6g7h8"
    items = [item async for item in shell().stream(f"my key is {key}", None, "r1", True)]
    started = next(item for item in items if isinstance(item, Event))
    assert started.type == "run_started"
    assert key not in started.data["input"] and "my key is" in started.data["input"]


async def test_actor_stream_without_events_sends_only_chunks_and_output() -> None:
    items = [item async for item in shell().stream("go", None, "r1")]
    assert not any(isinstance(item, Event) for item in items)
    assert all(isinstance(item, str) for item in items[:-1])
    assert isinstance(items[-1], AgentOutput)


async def test_actor_run_relayed_sends_a_failed_runs_events_then_its_error() -> None:
    stream = shell().run_relayed(FAIL, None, None, "r2", None)
    seen: list[str] = []
    with pytest.raises(ModelError, match="scripted model failed"):
        async for item in stream:
            seen.append(item.type)
    assert seen == ["run_started", "turn_started", "run_failed"]


async def test_closing_the_actor_stream_cancels_the_run(tmp_path: Path) -> None:
    path = tmp_path / "tool.txt"
    stream = shell().stream(f"{WAIT}{path}", None, "r3")
    assert await stream.__anext__() == "Working "
    while not path.exists():  # the run goes on without the consumer, up to the tool
        await asyncio.sleep(0.01)
    await stream.aclose()
    assert path.read_text() == "cancelled"  # stopped before aclose() returned


async def test_stop_stream_stops_a_run_whose_stream_is_left_suspended(tmp_path: Path) -> None:
    # Ray may cancel a generator task while Ray, not the generator, is running (sending the
    # last item): the generator stays suspended and is closed only later. stop_stream, which
    # the handle calls whenever it leaves a stream early, stops the run all the same.
    path, other = tmp_path / "tool.txt", tmp_path / "other.txt"
    actor = shell()
    stream = actor.stream(f"{WAIT}{path}", None, "r4", False, "token-a")
    # Another call reusing the run id: a caller may, and it must not be stopped with the first.
    second = actor.stream(f"{WAIT}{other}", None, "r4", False, "token-b")
    assert await stream.__anext__() == "Working "
    assert await second.__anext__() == "Working "
    while not (path.exists() and other.exists()):
        await asyncio.sleep(0.01)
    await actor.stop_stream("token-a")  # the generator is never closed here
    assert path.read_text() == "cancelled"
    assert other.read_text() == "started"
    await actor.stop_stream("token-a")  # already stopped: nothing to do
    await stream.aclose()
    await second.aclose()
    assert other.read_text() == "cancelled"
    assert actor._streamed == {}  # nothing kept once the streams have gone


async def test_a_stream_stopped_before_it_began_does_not_run(tmp_path: Path) -> None:
    path = tmp_path / "tool.txt"
    actor = shell()
    await actor.stop_stream("late")  # the caller left; its stream had not reached the actor
    items = [item async for item in actor.stream(f"{WAIT}{path}", None, "r5", False, "late")]
    assert items == [] and not path.exists()
    # Remembered once: the same token is not refused forever.
    assert [item async for item in actor.stream("go", None, "r6", False, "late")]


# --- validation, without Ray --------------------------------------------------------------


class _CallableHook:
    def __call__(self, turn: int, messages: list[Message]) -> None:
        """A callable object: it would travel by value."""

    def method(self, turn: int, messages: list[Message]) -> None:
        """A bound method: its object would travel by value."""


def _nested() -> Any:
    def on_turn_start(turn: int, messages: list[Message]) -> None:
        """A closure: defined inside a function."""

    return on_turn_start


@pytest.mark.parametrize(
    "hook",
    [lambda turn, messages: None, _nested(), _CallableHook(), _CallableHook().method],
    ids=["lambda", "nested", "callable-object", "bound-method"],
)
def test_hooks_that_ray_can_copy_are_accepted(hook: Any) -> None:
    # Copied by value with what they capture: they run in the actor, on the actor's copies.
    hooks = Hooks(on_turn_start=hook)
    assert agent_module._check_hooks("a", hooks) is hooks


def test_spawn_refuses_a_hook_that_cannot_be_sent_before_touching_ray() -> None:
    lock = threading.Lock()

    def on_turn_start(turn: int, messages: list[Message]) -> None:
        with lock:  # a lock cannot be pickled: neither can this closure
            pass

    with pytest.raises(UserError) as caught:
        Agent.spawn(
            "never-made", model=ScriptedModel(["x"]), hooks=Hooks(on_turn_start=on_turn_start)
        )
    error = caught.value
    assert "'on_turn_start'" in str(error) and "lock" in str(error)
    assert error.hook == "on_turn_start" and error.agent == "never-made"
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is UserError and copy.hook == "on_turn_start"


def test_spawn_refuses_what_is_not_hooks_or_a_bus() -> None:
    with pytest.raises(UserError, match="must be a Hooks object"):
        Agent.spawn("never-made", model=ScriptedModel(["x"]), hooks={"on_turn_start": lookup})
    with pytest.raises(UserError, match="event_bus must be an EventBus"):
        Agent.spawn("never-made", model=ScriptedModel(["x"]), event_bus=[])


def test_publish_blocking_runs_async_handlers_with_or_without_a_running_loop() -> None:
    seen: list[str] = []

    async def handler(event: Event) -> None:
        await asyncio.sleep(0)
        seen.append(event.type)

    bus = EventBus()
    bus.subscribe("*", handler)
    bus.publish_blocking(Event("outside"))

    async def inside_a_loop() -> None:  # a notebook's cell runs inside the kernel's loop
        bus.publish_blocking(Event("inside"))

    asyncio.run(inside_a_loop())
    assert seen == ["outside", "inside"]


# --- through Ray: one agent actor for the module -------------------------------------------


@pytest.fixture(scope="module")
def shared(ray_session: Any) -> Iterator[tuple[Agent, Recorder]]:
    """An agent actor with the hooks, in-process tools and a bus recording its events."""
    recorder = Recorder()
    agent = Agent.spawn(
        f"stream-hooks-{uuid.uuid4().hex[:8]}",
        model=ScriptedModel(script),
        tools=[lookup, wait_for_cancel],
        tools_in_process=True,
        session_store=InMemorySessionStore(),  # no memory actor to start
        hooks=HOOKS,
        event_bus=bus_for(recorder),
    )
    yield agent, recorder
    agent.kill()


@pytest.fixture
def actor(shared: tuple[Agent, Recorder]) -> tuple[Agent, Recorder]:
    """The shared agent, with its recorder emptied."""
    shared[1].items.clear()
    return shared


def test_stream_gives_what_local_agent_stream_gives(actor: tuple[Agent, Recorder]) -> None:
    agent, recorder = actor
    expected, reference = asyncio.run(local_reference("go"))

    stream = agent.stream("go", run_id="s1")
    for chunk in stream:
        recorder.items.append(("chunk", chunk))

    assert recorder.kinds() == expected
    pid = agent.info()["pid"]
    assert pid != os.getpid()  # the hooks ran in the actor: their tag names its process
    assert stream.output is not None
    assert stream.output.content == f"The tool said 42 (pid {pid}, turn 1)."
    assert stream.output.content == reference.content.replace(str(os.getpid()), str(pid))
    chunks = [value for kind, value in recorder.items if kind == "chunk"]
    assert "".join(chunks) == "Let me look." + stream.output.content
    assert [call.name for call in stream.output.tool_calls] == ["lookup"]
    assert {(e.data["agent"], e.data["run_id"]) for e in recorder.events()} == {(agent.name, "s1")}


async def test_astream_gives_what_stream_gives(actor: tuple[Agent, Recorder]) -> None:
    agent, recorder = actor
    expected, _ = await local_reference("go")

    async with agent.astream("go") as stream:
        async for chunk in stream:
            recorder.items.append(("chunk", chunk))

    assert recorder.kinds() == expected
    assert stream.output is not None and stream.output.content.startswith("The tool said 42")


def test_run_and_arun_publish_the_runs_events(actor: tuple[Agent, Recorder]) -> None:
    agent, recorder = actor
    out = agent.run("go", run_id="r1")
    assert out.content == f"The tool said 42 (pid {agent.info()['pid']}, turn 1)."
    assert recorder.kinds() == RUN_EVENTS
    assert all(e.data["run_id"] == "r1" for e in recorder.events())

    recorder.items.clear()
    out = asyncio.run(agent.arun("go", run_id="r2"))
    assert out.content.startswith("The tool said 42")
    assert recorder.kinds() == RUN_EVENTS
    assert all(e.data["run_id"] == "r2" for e in recorder.events())

    # A handle without a bus (another driver's, say) publishes nothing here.
    recorder.items.clear()
    assert Agent.get(agent.name).run("go").content.startswith("The tool said 42")
    assert recorder.items == []


def test_a_failed_run_raises_the_same_error_everywhere(actor: tuple[Agent, Recorder]) -> None:
    agent, recorder = actor
    plain = Agent.get(agent.name)  # no bus: the plain ray.get path

    def failure(call: Any) -> BaseException:
        with pytest.raises(ModelError) as caught:
            call()
        return caught.value

    async def drain_astream() -> None:
        async for _ in agent.astream(FAIL):
            pass

    errors = [
        failure(lambda: plain.run(FAIL)),
        failure(lambda: agent.run(FAIL)),
        failure(lambda: asyncio.run(agent.arun(FAIL))),
        failure(lambda: list(agent.stream(FAIL))),
        failure(lambda: asyncio.run(drain_astream())),
    ]
    # The library's own error, not Ray's wrapper around it (which is a ModelError subclass).
    assert [type(error) for error in errors] == [ModelError] * 5
    assert all("scripted model failed" in str(error) for error in errors)
    assert recorder.kinds().count("run_failed") == 4  # each handle-with-bus call's


def test_breaking_out_of_stream_cancels_the_run(
    actor: tuple[Agent, Recorder], tmp_path: Path
) -> None:
    agent, _ = actor
    path = tmp_path / "tool.txt"
    for chunk in agent.stream(f"{WAIT}{path}"):
        assert chunk == "Working "
        wait_for_text(path, "started")
        break
    # Leaving the loop closed the stream, which returned once the run had stopped.
    assert path.read_text() == "cancelled"
    assert agent.run("go").content.startswith("The tool said 42")  # the agent goes on


def test_run_timeout_with_a_bus_cancels_the_run(
    actor: tuple[Agent, Recorder], tmp_path: Path
) -> None:
    agent, recorder = actor
    path = tmp_path / "tool.txt"
    with pytest.raises(ray.exceptions.GetTimeoutError):
        agent.run(f"{WAIT}{path}", timeout=2)
    assert recorder.kinds()[:2] == ["run_started", "turn_started"]  # published live
    if path.exists():  # the run reached the tool (it does, unless the machine stalls) ...
        assert "tool_started" in recorder.kinds()
        assert path.read_text() == "cancelled"  # ... which was cancelled before run() raised


async def test_cancelling_the_task_iterating_astream_cancels_the_run(
    actor: tuple[Agent, Recorder], tmp_path: Path
) -> None:
    agent, _ = actor
    path = tmp_path / "tool.txt"
    first_chunk = asyncio.Event()

    async def consume() -> None:
        async for _ in agent.astream(f"{WAIT}{path}"):
            first_chunk.set()

    task = asyncio.create_task(consume())
    await first_chunk.wait()
    while not (path.exists() and path.read_text() == "started"):
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert path.read_text() == "cancelled"  # stopped before CancelledError reached us

    # Leaving an `async with` block early does the same.
    path = tmp_path / "again.txt"
    async with agent.astream(f"{WAIT}{path}") as stream:
        assert await stream.__anext__() == "Working "
        while not (path.exists() and path.read_text() == "started"):
            await asyncio.sleep(0.05)
    assert path.read_text() == "cancelled"
