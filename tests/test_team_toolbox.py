"""The Ray actor layer: teams of agent actors, toolbox actors, and crashes of either.

Everything that runs inside an actor (model reply functions, tools, a session store) is built
by a factory function here, so cloudpickle ships it by value: a Ray worker never has to
import this test module. Timing is observed from inside the actors (replies carry
``time.time()`` stamps and process ids) and asserted as overlap, ordering and counts, never
as wall-clock thresholds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from ray.exceptions import GetTimeoutError, RayActorError

from gecko_actors import (
    Agent,
    InMemorySessionStore,
    ModelError,
    RemoteToolBox,
    ScriptedModel,
    Team,
    TeamError,
    ToolCall,
    UserError,
    tool,
)
from gecko_actors.stores import SQLiteSessionStore

pytestmark = pytest.mark.usefixtures("ray_session")

NAMESPACE = "gecko"
# Agents keep their (unused) sessions in their own process: no shared memory actor is spawned.
IN_PROCESS: dict[str, Any] = {"session_store": InMemorySessionStore()}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_until(predicate: Callable[[], Any], *, timeout: float = 30.0, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.05)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The largest number of [start, end] intervals open at one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    # At equal times the end (-1) sorts before the start (+1): touching is not overlapping.
    open_now = peak = 0
    for _, step in events:
        open_now += step
        peak = max(peak, open_now)
    return peak


def replica_handle(box_name: str, index: int = 0) -> Any:
    return ray.get_actor(f"toolbox/{box_name}/{index}", namespace=NAMESPACE)


def replica_pid(box_name: str, index: int = 0, timeout: float = 10.0) -> int | None:
    """The replica's process id, or None while it is dead or restarting."""
    try:
        return ray.get(replica_handle(box_name, index).pid.remote(), timeout=timeout)
    except (RayActorError, GetTimeoutError):
        return None


def call(name: str, **arguments: Any) -> ToolCall:
    return ToolCall(id=f"call_{uuid.uuid4().hex[:6]}", name=name, arguments=json.dumps(arguments))


# --- what runs inside the actors (built here, shipped by value) ----------------------------


def programmable_model(member: str) -> ScriptedModel:
    """A model driven by its input, a JSON order: ``delay`` (seconds, or ``delays`` per
    member), ``fail`` / ``model_error`` (members that raise), ``tag`` (echoed). It replies
    JSON with the member's name and the start/end times of the call.

    With ``log`` (a folder), the call touches ``<member>.started``, then ``<member>.done``,
    ``.failed`` or ``.cancelled`` there (what happened, seen from inside the member); with
    ``after`` ({member: [file, ...]}) the member first waits until those files exist in
    ``log``, so a test orders members by facts instead of by delays."""

    async def reply(messages, tools):
        import asyncio
        import json
        import pathlib
        import time

        from gecko_actors import ModelError

        start = time.time()
        order = json.loads(messages[-1].text)
        log = order.get("log")

        def mark(what: str) -> None:
            if log:
                pathlib.Path(log, f"{member}.{what}").touch()

        async def wait_for_files(names: list[str]) -> None:
            deadline = time.monotonic() + 60  # fails the member, never decides an order
            while not all(pathlib.Path(log, n).exists() for n in names):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{member} waited in vain for {names}")
                await asyncio.sleep(0.01)

        mark("started")
        try:
            await wait_for_files(order.get("after", {}).get(member, []))
            await asyncio.sleep(order.get("delays", {}).get(member, order.get("delay", 0.0)))
        except asyncio.CancelledError:
            mark("cancelled")
            raise
        if member in order.get("fail", []):
            mark("failed")
            raise RuntimeError(f"boom from {member}")
        if member in order.get("model_error", []):
            raise ModelError(f"provider down for {member}", model=member)
        mark("done")
        return json.dumps(
            {"name": member, "start": start, "end": time.time(), "tag": order.get("tag")}
        )

    return ScriptedModel(reply, name=member)


def tool_then_echo(tool_name: str, **arguments: Any) -> ScriptedModel:
    """First call ``tool_name``; then answer with the last tool message's text."""
    scripted_call = ScriptedModel.call(tool_name, **arguments)

    def reply(messages, tools):
        last = messages[-1]
        if last.role == "tool":
            return f"tool said: {last.text}"
        return scripted_call

    return ScriptedModel(reply)


def make_cpu_tool():
    def cpu_burn(seconds: float = 0.5) -> dict:
        """Burn `seconds` of CPU time in a busy loop; report the process and the times."""
        import os
        import time

        start = time.time()
        deadline = time.thread_time() + seconds
        spins = 0
        while time.thread_time() < deadline:
            spins += 1
        return {"pid": os.getpid(), "start": start, "end": time.time(), "spins": spins}

    return tool(cpu_burn)


def make_hang_tool():
    def hang(seconds: float = 30.0) -> str:
        """Sleep (blocking) for `seconds`."""
        import time

        time.sleep(seconds)
        return "woke up"

    return tool(hang)


def make_quick_tool():
    def quick(seconds: float = 0.0) -> dict:
        """Answer (after `seconds` of blocking sleep) with the process id."""
        import os
        import time

        time.sleep(seconds)
        return {"ok": True, "pid": os.getpid()}

    return tool(quick)


def make_side_effect_tool(timeout: float | None = None):
    def side_effect(marker: str, seconds: float = 3.0) -> str:
        """Append a line with the process id to `marker`, then sleep `seconds`."""
        import os
        import time

        with open(marker, "a") as fh:
            fh.write(f"started in {os.getpid()}\n")
        time.sleep(seconds)
        return "finished"

    return tool(side_effect, timeout=timeout)


def make_gated_tool():
    def gated(marker: str, gate: str) -> dict:
        """Append a line with the process id to `marker`, then wait until the file `gate`
        exists (blocking, past the box's 0.5 s: this tool has a timeout of its own)."""
        import os
        import time

        with open(marker, "a") as fh:
            fh.write(f"started in {os.getpid()}\n")
        deadline = time.monotonic() + 60
        while not os.path.exists(gate):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gate {gate} never opened")
            time.sleep(0.01)
        return {"pid": os.getpid()}

    return tool(gated, timeout=90.0)


def session_model(marker_dir: str, delay: float) -> ScriptedModel:
    """Touch ``<input>.<pid>.<nonce>`` in ``marker_dir`` when called, sleep, answer."""

    async def reply(messages, tools):
        import asyncio
        import os
        import pathlib
        import uuid

        text = messages[-1].text
        pathlib.Path(marker_dir, f"{text}.{os.getpid()}.{uuid.uuid4().hex}").touch()
        await asyncio.sleep(delay)
        return f"done: {text}"

    return ScriptedModel(reply)


def slow_ack_store(path: Path, marker_dir: Path):
    """A SQLite store that, after a first (non-duplicate) append, touches ``saved-<session>``
    and takes 3 s to acknowledge it: a crash in that window loses the reply, not the write."""

    class SlowAckStore(SQLiteSessionStore):
        def __init__(self, path, marker_dir):
            super().__init__(path)
            self.marker_dir = str(marker_dir)

        def __getstate__(self):
            return {**super().__getstate__(), "marker_dir": self.marker_dir}

        def __setstate__(self, state):
            super().__setstate__(state)
            self.marker_dir = state["marker_dir"]

        async def append(self, session_id, records, *, key=None):
            import asyncio
            import pathlib

            added = await super().append(session_id, records, key=key)
            if added:
                pathlib.Path(self.marker_dir, f"saved-{session_id}").touch()
                await asyncio.sleep(3.0)
            return added

    return SlowAckStore(path, marker_dir)


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["hosted", "dedicated"])
def crew(ray_session, request) -> Iterator[list[Agent]]:
    """Three agents with programmable models, shared by the Team tests: hosted (a round is
    one call to their host) or dedicated (one call per member)."""
    names = [unique(f"crew{i}") for i in range(3)]
    agents: list[Agent] = []
    dedicated = request.param == "dedicated"
    try:
        for name in names:
            model = programmable_model(name)
            agents.append(Agent.spawn(name, model=model, dedicated=dedicated, **IN_PROCESS))
        # Warm up: an agent's first run pays one-off costs (imports, tokenizer) that would
        # stagger the start of the first parallel runs.
        warm = ray.get([a.submit(order(tag="warm-up")) for a in agents], timeout=60)
        assert [parse(o)["name"] for o in warm] == names
        yield agents
    finally:
        for agent in agents:
            agent.kill()


@pytest.fixture
def team(crew) -> Team:
    return Team(crew, name=unique("team"))


@pytest.fixture
def spawned() -> Iterator[list[Any]]:
    """Collects agents and toolboxes a test spawns; kills them all at the end."""
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        with contextlib.suppress(Exception):  # already gone
            thing.kill()


def order(**fields: Any) -> str:
    return json.dumps(fields)


def parse(output) -> dict[str, Any]:
    return json.loads(output.content)


# --- 1. Team.run fan-out ---------------------------------------------------------------------


def test_run_fans_out_in_parallel_and_keeps_member_order(team, crew, tmp_path):
    names = [a.name for a in crew]
    # Each member answers only once all three are inside their model calls: members run one
    # after another would never get there (and fail at their deadline).
    everyone = [f"{n}.started" for n in names]
    result = team.run(order(log=str(tmp_path), after=dict.fromkeys(names, everyone)))

    assert result.ok, result.errors
    assert result.members == names
    replies = [json.loads(text) for text in result.contents]
    assert [r["name"] for r in replies] == result.members
    # All three model calls were running at one instant: max(start) < min(end).
    assert max(r["start"] for r in replies) < min(r["end"] for r in replies)
    assert result.winner is None
    assert result.usage.requests == 3


async def test_arun_is_awaitable(team, crew):
    result = await team.arun(order(delay=0.0, tag="async"))
    assert [parse(o)["tag"] for o in result.outputs] == ["async"] * 3


async def test_arun_first_skips_failures_and_times_out(team, crew, tmp_path):
    fast, medium, slow = (a.name for a in crew)
    result = await team.arun(
        failed_then_answered(tmp_path / "first", fast, medium, slow), strategy="first"
    )
    assert parse(result.winner)["name"] == medium
    assert isinstance(result.errors[0], RuntimeError) and result.outputs[2] is None
    with pytest.raises(TeamError, match="timed out") as info:
        await team.arun(order(delays={fast: 0.0, medium: 60, slow: 60}), timeout=3.0)
    assert parse(info.value.result.outputs[0])["name"] == fast


def failed_then_answered(log: Path, failing: str, answering: str, slow: str) -> str:
    """An order in which ``failing`` raises at once, ``answering`` answers only after that
    failure (plus 0.3 s for it to reach the caller) and ``slow`` would take a minute."""
    log.mkdir()
    return order(
        log=str(log),
        fail=[failing],
        after={answering: [f"{failing}.failed"]},
        delays={failing: 0.0, answering: 0.3, slow: 60},
    )


# --- 2. failure isolation ------------------------------------------------------------------


def test_failing_member_leaves_its_error_in_its_slot(team, crew):
    bad = crew[1].name
    result = team.run(order(delay=0.05, fail=[bad]))

    assert not result.ok
    assert result.errors[0] is None and result.errors[2] is None
    assert isinstance(result.errors[1], RuntimeError)
    assert f"boom from {bad}" in str(result.errors[1])
    assert result.outputs[1] is None
    assert [parse(result.outputs[i])["name"] for i in (0, 2)] == [crew[0].name, crew[2].name]
    assert result.contents[1] is None


def test_model_error_keeps_its_type_in_the_slot(team, crew):
    bad = crew[2].name
    result = team.run(order(model_error=[bad]))

    assert result.errors[:2] == [None, None]
    assert isinstance(result.errors[2], ModelError)
    assert f"provider down for {bad}" in str(result.errors[2])


def test_raise_on_error_raises_team_error_carrying_the_successes(team, crew):
    bad = crew[0].name
    with pytest.raises(TeamError) as info:
        team.run(order(fail=[bad]), raise_on_error=True)

    err = info.value
    assert bad in str(err)
    assert "boom" in str(err)
    assert err.result.outputs[0] is None
    assert isinstance(err.result.errors[0], RuntimeError)
    assert [parse(err.result.outputs[i])["name"] for i in (1, 2)] == [
        crew[1].name,
        crew[2].name,
    ]


# --- 3. strategy="first" ---------------------------------------------------------------------


def test_first_returns_the_fast_member_without_waiting_for_the_slow(team, crew):
    fast, slow1, slow2 = (a.name for a in crew)
    result = team.run(order(delays={fast: 0.05, slow1: 60, slow2: 60}), strategy="first")

    assert result.winner is not None
    assert parse(result.winner)["name"] == fast
    assert result.outputs[0] is result.winner
    # The slow members had not answered when the result came back: their slots are empty.
    assert result.outputs[1:] == [None, None]
    assert result.errors == [None, None, None]
    assert result.ok


@pytest.mark.parametrize("call", ["run", "arun"])
def test_first_cancels_the_other_members_and_waits_for_them(team, crew, tmp_path, call):
    fast, slow1, slow2 = (a.name for a in crew)
    # The fast member answers once both slow ones are inside their model calls, so the
    # cancellation has something running to stop; they would sleep for a minute.
    started = [f"{slow1}.started", f"{slow2}.started"]
    work = order(log=str(tmp_path), after={fast: started}, delays={slow1: 60, slow2: 60})
    if call == "run":
        result = team.run(work, strategy="first")
    else:
        result = asyncio.run(team.arun(work, strategy="first"))

    assert parse(result.winner)["name"] == fast and result.outputs[1:] == [None, None]
    # Seen from inside the members, and already when the team returned: the slow model
    # calls were cancelled (not left running, not finished).
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{fast}.started", f"{fast}.done", *started, f"{slow1}.cancelled", f"{slow2}.cancelled"]
    )


def test_first_with_accept_skips_a_rejected_answer(team, crew, tmp_path):
    fast, medium, slow = (a.name for a in crew)

    def accept(output) -> bool:
        name = parse(output)["name"]
        (tmp_path / f"judged-{name}").touch()
        return name != fast

    # The medium member answers only once the team has judged (and rejected) the fast one.
    work = order(log=str(tmp_path), after={medium: [f"judged-{fast}"]}, delays={slow: 60})
    result = team.run(work, strategy="first", accept=accept)

    assert parse(result.winner)["name"] == medium
    assert result.outputs[1] is result.winner
    # The rejected answer stays in its slot; the slow member's slot is empty.
    assert parse(result.outputs[0])["name"] == fast
    assert result.outputs[2] is None


def test_first_skips_a_failed_member(team, crew, tmp_path):
    fast, medium, slow = (a.name for a in crew)
    result = team.run(
        failed_then_answered(tmp_path / "first", fast, medium, slow), strategy="first"
    )

    assert parse(result.winner)["name"] == medium
    assert isinstance(result.errors[0], RuntimeError)
    assert result.outputs[2] is None


def test_first_with_every_answer_rejected_raises(team, crew):
    with pytest.raises(TeamError) as info:
        team.run(order(delay=0.0), strategy="first", accept=lambda output: False)

    result = info.value.result
    assert result.winner is None
    # Every member did answer; none was acceptable.
    assert sorted(parse(o)["name"] for o in result.outputs) == sorted(a.name for a in crew)


def test_first_with_every_member_failing_raises(team, crew):
    with pytest.raises(TeamError) as info:
        team.run(order(fail=[a.name for a in crew]), strategy="first")
    assert all(isinstance(e, RuntimeError) for e in info.value.result.errors)


def test_run_timeout_raises_team_error_with_what_finished(team, crew, tmp_path):
    fast, slow1, slow2 = (a.name for a in crew)
    with pytest.raises(TeamError, match="timed out") as info:
        team.run(order(log=str(tmp_path), delays={fast: 0.0, slow1: 60, slow2: 60}), timeout=3.0)

    result = info.value.result
    assert parse(result.outputs[0])["name"] == fast
    assert result.outputs[1:] == [None, None]
    # The members still running at the deadline were cancelled before the error came out.
    assert (tmp_path / f"{slow1}.cancelled").exists() and (tmp_path / f"{slow2}.cancelled").exists()


def test_run_timeout_bounds_the_whole_run(team, crew):
    a, b, c = (m.name for m in crew)
    with pytest.raises(TeamError, match="timed out") as info:
        team.run(order(delays={a: 0.0, b: 1.2, c: 2.4}), timeout=1.8)
    assert info.value.result.outputs[2] is None


# --- 4. Team.map -----------------------------------------------------------------------------


def test_map_keeps_input_order_spreads_work_and_bounds_in_flight(team, crew, capsys):
    inputs = [order(delay=0.15, tag=i) for i in range(20)]
    results = team.map(inputs, max_in_flight=4, progress=False)

    replies = [parse(r) for r in results]
    assert [r["tag"] for r in replies] == list(range(20))
    assert {r["name"] for r in replies} == {a.name for a in crew}
    # A new input is dispatched only after a run finished, so no more than 4 model calls
    # were ever running at one instant; and with 4 allowed, some did run together.
    peak = max_overlap([(r["start"], r["end"]) for r in replies])
    assert 2 <= peak <= 4
    assert team.name not in capsys.readouterr().err  # progress=False: no bar


def test_map_with_one_in_flight_runs_strictly_in_sequence(team):
    inputs = [order(delay=0.05, tag=i) for i in range(6)]
    replies = [parse(r) for r in team.map(inputs, max_in_flight=1, progress=False)]

    assert [r["tag"] for r in replies] == list(range(6))
    for before, after in itertools.pairwise(replies):
        assert before["end"] <= after["start"]
    assert max_overlap([(r["start"], r["end"]) for r in replies]) == 1


def test_map_leaves_errors_in_their_slots(team, crew):
    everyone = [a.name for a in crew]
    inputs = [order(tag=i, fail=everyone if i % 3 == 0 else []) for i in range(7)]
    results = team.map(inputs, max_in_flight=3, progress=False)

    for i, result in enumerate(results):
        if i % 3 == 0:
            assert isinstance(result, RuntimeError), result
            assert "boom" in str(result)
        else:
            assert parse(result)["tag"] == i

    with pytest.raises(TeamError) as info:
        team.map(inputs, max_in_flight=3, progress=False, raise_on_error=True)
    assert "3 of 7" in str(info.value)
    assert [isinstance(r, BaseException) for r in info.value.result] == [
        i % 3 == 0 for i in range(7)
    ]


def test_map_progress_bar_shows_when_asked(team, capsys):
    results = team.map([order(tag=i) for i in range(3)], progress=True)
    assert len(results) == 3
    assert team.name in capsys.readouterr().err


def test_map_of_nothing_is_empty(team):
    assert team.map([], progress=False) == []


def test_team_rejects_bad_members_and_arguments(team):
    with pytest.raises(UserError, match="at least one member"):
        Team([])
    with pytest.raises(UserError, match="Agent handles"):
        Team(["not an agent"])  # type: ignore[list-item]
    with pytest.raises(UserError, match="unknown team strategy"):
        team.run("hi", strategy="fastest")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="max_in_flight"):
        team.map(["hi"], max_in_flight=-1)


def test_map_rejects_zero_in_flight(team):
    with pytest.raises(UserError, match="max_in_flight"):
        team.map([order(tag=0)], max_in_flight=0, progress=False)


# --- 5. RemoteToolBox ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cpu_box(ray_session) -> Iterator[RemoteToolBox]:
    """Two replicas of a CPU-bound tool, one CPU each (the whole local Ray)."""
    box = RemoteToolBox.spawn(unique("cpu"), [make_cpu_tool()], replicas=2, num_cpus=1)
    try:
        yield box
    finally:
        box.kill()


async def test_remote_toolbox_runs_cpu_tools_in_parallel_processes(cpu_box):
    assert cpu_box.names() == ["cpu_burn"]
    assert cpu_box.replica_names == [f"toolbox/{cpu_box.name}/{i}" for i in (0, 1)]
    executions = cpu_box.stats()["cpu_burn"]["executions"]

    results = await cpu_box.execute_many([call("cpu_burn"), call("cpu_burn")])

    assert not any(r.is_error for r in results), results
    first, second = (json.loads(r.content) for r in results)
    assert first["pid"] != second["pid"]  # two replicas, two processes
    assert {first["pid"], second["pid"]} == {replica_pid(cpu_box.name, i) for i in (0, 1)}
    # Both busy loops were running at one instant: parallel processes, not threads.
    assert max(first["start"], second["start"]) < min(first["end"], second["end"])
    # Stats are merged over the replicas.
    stats = cpu_box.stats()["cpu_burn"]
    assert stats["executions"] == executions + 2
    assert stats["errors"] == 0
    assert stats["success_rate"] == 1.0


async def test_remote_toolbox_get_reattaches(cpu_box):
    again = RemoteToolBox.get(cpu_box.name)

    assert again.schemas() == cpu_box.schemas()
    assert again.names() == ["cpu_burn"]
    assert again.replica_names == cpu_box.replica_names
    assert again.timeout == cpu_box.timeout
    executions = cpu_box.stats()["cpu_burn"]["executions"]
    result = await again.execute_call(call("cpu_burn", seconds=0.01))
    assert json.loads(result.content)["pid"] in {replica_pid(cpu_box.name, i) for i in (0, 1)}
    assert cpu_box.stats()["cpu_burn"]["executions"] == executions + 1


def test_remote_toolbox_get_unknown_lists_the_known(cpu_box):
    missing = unique("nope")
    with pytest.raises(UserError) as info:
        RemoteToolBox.get(missing)
    assert missing in str(info.value)
    assert cpu_box.name in str(info.value)


def test_agent_uses_a_remote_toolbox(cpu_box, spawned):
    agent = Agent.spawn(
        unique("user"), model=tool_then_echo("cpu_burn", seconds=0.01), tools=cpu_box, **IN_PROCESS
    )
    spawned.append(agent)

    output = agent.run("use your tool", timeout=60)

    assert agent.info()["tools"] == ["cpu_burn"]
    assert output.content.startswith("tool said: ")
    reply = json.loads(output.content.removeprefix("tool said: "))
    assert reply["pid"] in {replica_pid(cpu_box.name, i) for i in (0, 1)}
    assert reply["pid"] != agent.info()["pid"]  # the tool ran in the toolbox, not the agent
    assert [c.name for c in output.tool_calls] == ["cpu_burn"]


# --- 6. a hung tool ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fragile(ray_session) -> Iterator[RemoteToolBox]:
    """One replica whose calls time out after 0.5 s (``side_effect`` has 10 s, ``gated`` 90 s),
    shared by the tests that hang, recycle and kill it: each starts from a healthy replica."""
    tools = [
        make_hang_tool(),
        make_quick_tool(),
        make_side_effect_tool(timeout=10.0),
        make_gated_tool(),
    ]
    box = RemoteToolBox.spawn(unique("fragile"), tools, timeout=0.5)
    try:
        yield box
    finally:
        box.kill()


async def quick_pid(box: RemoteToolBox, *, not_pid: int | None = None) -> int:
    """Wait until the replica answers a call (from a process other than ``not_pid``); its pid."""
    deadline = time.monotonic() + 30
    while True:
        result = await box.execute_call(call("quick"))
        if not result.is_error and (pid := json.loads(result.content)["pid"]) != not_pid:
            return pid
        if time.monotonic() > deadline:
            pytest.fail(f"toolbox {box.name!r} did not come back: {result.content}")
        await asyncio.sleep(0.1)


async def test_a_tools_own_longer_timeout_is_the_handles_deadline_too(fragile, tmp_path):
    # side_effect has 10 s of its own in a box of 0.5 s. The handle used to give up (and kill
    # the replica, with every call on it) at the box's timeout + 5 s; a 6 s call must finish.
    before = await quick_pid(fragile)
    marker = tmp_path / "marker"
    result = await fragile.execute_call(call("side_effect", marker=str(marker), seconds=6.0))
    assert not result.is_error, result.content
    assert result.content == "finished"
    assert await quick_pid(fragile) == before  # the replica was never killed


async def test_hung_sync_tool_times_out_and_recycles_its_process(fragile):
    before = await quick_pid(fragile)
    assert before == replica_pid(fragile.name)

    hung, quick = await fragile.execute_many([call("hang"), call("quick")])

    assert hung.is_error
    assert "did not finish within 0.5s" in hung.content
    # The other call ran meanwhile, in the same (still healthy) process.
    assert not quick.is_error
    assert json.loads(quick.content) == {"ok": True, "pid": before}
    # The process with the abandoned thread exits; Ray starts a fresh one.
    after = await asyncio.to_thread(
        wait_until,
        lambda: (pid := replica_pid(fragile.name)) not in (None, before) and pid,
        what="the recycled replica",
    )
    # ... which answers calls.
    assert await quick_pid(fragile) == after


def test_call_arriving_while_a_replica_recycles_is_not_killed(fragile, tmp_path):
    """A call that arrives once the replica has decided to recycle still runs to its end
    there. A first call held open by a gate keeps the process up, so the follow-up reaches
    the recycling process for sure (``test_tools.py`` has the Ray-free twin for a call that
    arrives while the exit is already scheduled)."""
    before = asyncio.run(quick_pid(fragile))
    replica = replica_handle(fragile.name)  # the replica itself: no handle-side deadline
    held, follow_log, gate = tmp_path / "held.log", tmp_path / "follow-up.log", tmp_path / "gate"
    try:
        holder = replica.execute_call.remote(call("gated", marker=str(held), gate=str(gate)), None)
        wait_until(held.exists, what="the holding call to start")
        hung = ray.get(replica.execute_call.remote(call("hang"), None), timeout=60)
        assert "did not finish within 0.5s" in hung.content  # the replica now recycles
        follow_up = replica.execute_call.remote(
            call("gated", marker=str(follow_log), gate=str(gate)), None
        )
        wait_until(follow_log.exists, what="the follow-up call to start")
        gate.touch()
        results = ray.get([holder, follow_up], timeout=60)
    finally:
        gate.touch()
        after = asyncio.run(quick_pid(fragile, not_pid=before))  # a recycled, healthy replica

    assert [r.is_error for r in results] == [False, False], results
    assert held.read_text() == follow_log.read_text() == f"started in {before}\n"
    assert after != before  # and then it did recycle


# --- 7. a toolbox replica killed mid-tool ------------------------------------------------------


def test_replica_killed_mid_tool_becomes_an_error_result(fragile, spawned, tmp_path):
    before = asyncio.run(quick_pid(fragile))
    marker = tmp_path / "side-effect.log"
    agent = Agent.spawn(
        unique("victim"),
        model=tool_then_echo("side_effect", marker=str(marker)),
        tools=fragile,
        **IN_PROCESS,
    )
    spawned.append(agent)

    ref = agent.submit("do it")
    wait_until(lambda: marker.exists() and marker.read_text(), what="the tool to start")
    os.kill(before, signal.SIGKILL)
    output = ray.get(ref, timeout=60)

    assert "toolbox process died" in output.content
    assert "not retried" in output.content
    # The toolbox works again, in a new process (Ray restarted it) ...
    assert asyncio.run(quick_pid(fragile)) != before
    # ... and the side effect ran once: the call was not silently retried there.
    assert marker.read_text() == f"started in {before}\n"


def test_agent_does_not_silently_take_a_stale_toolbox_of_its_name(fragile, spawned):
    # `fragile` stands for what a killed agent of this name leaves behind: its toolbox. The
    # clash is refused (Agent.spawn never serves someone else's tools under the agent's name).
    with pytest.raises(UserError, match=rf"'toolbox/{fragile.name}/0' already exists"):
        spawned.append(
            Agent.spawn(
                fragile.name,
                model=ScriptedModel(["hi"]),
                tools=[make_quick_tool()],
                dedicated=True,  # a hosted agent's tools run in its host: no toolbox actor
                **IN_PROCESS,
            )
        )
    assert fragile.name not in Agent.list()  # refused before any agent actor was made
    assert sorted(RemoteToolBox.get(fragile.name).names()) == [
        "gated",
        "hang",
        "quick",
        "side_effect",
    ]


# --- 8. an agent killed mid-run --------------------------------------------------------------


def session_messages(path: Path, session_id: str) -> list[dict[str, Any]]:
    return asyncio.run(SQLiteSessionStore(path).load(session_id))


def test_killed_agent_restarts_and_finishes_every_run_once(spawned, tmp_path):
    db = tmp_path / "s.db"
    markers = tmp_path / "markers"
    markers.mkdir()
    agent = Agent.spawn(
        unique("phoenix"),
        model=session_model(str(markers), delay=1.0),
        session_store=SQLiteSessionStore(db),
    )
    spawned.append(agent)
    before = agent.info()["pid"]
    questions = [f"q{i}" for i in range(4)]

    refs = [agent.submit(q, session_id=f"s{i}") for i, q in enumerate(questions)]

    def started() -> set[str]:
        return {p.name.split(".")[0] for p in markers.iterdir() if f".{before}." in p.name}

    wait_until(lambda: started() == set(questions), what="4 runs in flight")
    os.kill(before, signal.SIGKILL)
    outputs = ray.get(refs, timeout=90)

    assert [o.content for o in outputs] == [f"done: {q}" for q in questions]
    after = agent.info()["pid"]
    assert after != before
    # Every run was retried in the new process.
    retried = {p.name.split(".")[0] for p in markers.iterdir() if f".{after}." in p.name}
    assert retried == set(questions)
    for i, q in enumerate(questions):
        records = session_messages(db, f"s{i}")
        assert [(r["role"], r["content"]) for r in records] == [
            ("user", q),
            ("assistant", f"done: {q}"),
        ]


def test_agent_killed_after_saving_does_not_store_the_exchange_twice(spawned, tmp_path):
    db = tmp_path / "s.db"
    markers = tmp_path / "markers"
    markers.mkdir()
    agent = Agent.spawn(
        unique("phoenix"),
        model=session_model(str(markers), delay=0.0),
        session_store=slow_ack_store(db, markers),
    )
    spawned.append(agent)
    before = agent.info()["pid"]

    ref = agent.submit("remember me", session_id="only")
    wait_until((markers / "saved-only").exists, what="the exchange to be saved")
    os.kill(before, signal.SIGKILL)
    output = ray.get(ref, timeout=90)

    assert output.content == "done: remember me"
    assert agent.info()["pid"] != before
    # The model ran twice (once per process), the exchange was stored once.
    assert len([p for p in markers.iterdir() if p.name.startswith("remember me.")]) == 2
    records = session_messages(db, "only")
    assert [(r["role"], r["content"]) for r in records] == [
        ("user", "remember me"),
        ("assistant", "done: remember me"),
    ]
