"""Hosted agents: many agents per agent host actor, spawned as directory entries, activated
on their first call (once, however many calls arrive together) and again after their host
restarted; dedicated agents beside them."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import ray

from gecko_actors import (
    Agent,
    Hooks,
    InMemorySessionStore,
    Memory,
    ScriptedModel,
    Team,
    UserError,
)
from gecko_actors.agents import batch
from gecko_actors.testing.chaos import DiesOnCall

pytestmark = pytest.mark.usefixtures("ray_session")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class ActivationCounter:
    """A hook that writes a line each time it is unpickled: once per activation of its
    agent (a host builds the agent from its pickled spec)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        with open(self.path, "a") as out:
            out.write("activated\n")

    def __call__(self, *args: Any) -> None:
        return None


def echo(messages: list[Any], tools: Any) -> str:
    return f"echo: {messages[-1].text}"


def slow_echo(messages: list[Any], tools: Any) -> str:
    time.sleep(0.3)
    return f"echo: {messages[-1].text}"


def activations(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_concurrent_first_calls_activate_an_agent_once_and_a_restart_again(
    tmp_path: Path,
) -> None:
    counted = tmp_path / "activations"
    agent = Agent.spawn(
        unique("once"),
        model=ScriptedModel(echo),
        hooks=Hooks(on_turn_start=ActivationCounter(str(counted))),
        session_store=InMemorySessionStore(),
    )
    try:
        assert activations(counted) == 0  # spawned: an entry, not yet an agent anywhere
        refs = [agent.submit(f"q{i}") for i in range(8)]
        assert [o.content for o in ray.get(refs, timeout=120)] == [f"echo: q{i}" for i in range(8)]
        assert activations(counted) == 1
        info = agent.info()
        assert info["placement"] == "hosted"
        # Its host dies: Ray restarts it, and the agent comes back on its next call.
        ray.kill(agent.actor, no_restart=False)
        deadline = time.monotonic() + 120
        while agent.info()["pid"] == info["pid"]:  # until the kill has landed
            assert time.monotonic() < deadline, "the host was not restarted"
            time.sleep(0.1)
        assert agent.run("after").content == "echo: after"
        assert activations(counted) == 2
    finally:
        agent.kill()


def test_two_simultaneous_spawns_of_one_name_make_one_agent() -> None:
    name = unique("twin")
    barrier = threading.Barrier(4)
    outcomes: list[Any] = []

    def spawn(reply: str, get_if_exists: bool) -> None:
        barrier.wait()
        try:
            model = ScriptedModel(lambda m, t, reply=reply: reply)
            outcomes.append(Agent.spawn(name, model=model, get_if_exists=get_if_exists))
        except UserError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=spawn, args=(f"agent {i}", i % 2 == 0)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        agents = [o for o in outcomes if isinstance(o, Agent)]
        refused = [o for o in outcomes if isinstance(o, UserError)]
        assert len(agents) + len(refused) == 4 and len(agents) >= 2  # both get_if_exists
        assert all("already exists" in str(e) for e in refused)
        replies = {a.run("who?").content for a in agents}
        assert len(replies) == 1  # one agent, whoever made it
        assert Agent.list().count(name) == 1
    finally:
        Agent.get(name).kill()
    assert name not in Agent.list()
    with pytest.raises(UserError, match="no agent named"):
        Agent.get(name)


def test_hosted_and_dedicated_agents_share_one_namespace_and_a_team() -> None:
    hosted = Agent.spawn(unique("h"), model=ScriptedModel(slow_echo))
    dedicated = Agent.spawn(unique("d"), model=ScriptedModel(slow_echo), dedicated=True)
    try:
        assert hosted.info()["placement"] == "hosted"
        assert dedicated.info()["placement"] == "dedicated"
        with pytest.raises(UserError, match="already exists"):
            Agent.spawn(hosted.name, model=ScriptedModel(echo), dedicated=True)
        with pytest.raises(UserError, match="already exists"):
            Agent.spawn(dedicated.name, model=ScriptedModel(echo))
        # get_if_exists attaches to the agent of that name, whichever kind it is.
        same = Agent.spawn(dedicated.name, model=ScriptedModel(echo), get_if_exists=True)
        assert same.info()["placement"] == "dedicated"
        same = Agent.spawn(hosted.name, model=ScriptedModel(echo), get_if_exists=True, num_cpus=0)
        assert same.info()["placement"] == "hosted"
        result = Team([hosted, dedicated]).run("hi", timeout=120)
        assert [o.content for o in result.outputs] == ["echo: hi", "echo: hi"]
        # The handle travels as names: a task reaches the same agent.
        remote = ray.remote(lambda agent: agent.run("from a task").content)
        assert ray.get(remote.remote(hosted), timeout=120) == "echo: from a task"
    finally:
        hosted.kill()
        dedicated.kill()
    assert hosted.name not in Agent.list() and dedicated.name not in Agent.list()


class Gated:
    """An async reply that marks its start (``<question>.<pid>`` in ``folder``), waits for
    the file ``gate`` (if given, and the question is not a warm-up ``...-before``) or a
    random few milliseconds, then answers."""

    def __init__(self, folder: str, gate: str | None) -> None:
        self.folder, self.gate = folder, gate

    async def __call__(self, messages: list[Any], tools: Any) -> str:
        question = messages[-1].text
        Path(self.folder, f"{question}.{os.getpid()}").touch()
        gated = self.gate is not None and not question.endswith("-before")
        if not gated:
            await asyncio.sleep(random.uniform(0, 0.05))
        while gated and not os.path.exists(self.gate):
            await asyncio.sleep(0.05)
        users = sum(m.role == "user" for m in messages)
        return f"done: {question} ({users} user messages)"


def started(folder: Path, pid: int) -> set[str]:
    return {p.name.rsplit(".", 1)[0] for p in folder.iterdir() if p.name.endswith(f".{pid}")}


def host_pids(agents: list[Agent]) -> set[int]:
    return {agent.info()["pid"] for agent in agents}


@pytest.mark.parametrize("when", ["all parked", "while answering"])
def test_a_host_killed_with_100_runs_in_flight_answers_each_once(tmp_path: Path, when: str) -> None:
    """SIGKILL of the agent hosts of 10 agents with 100 runs in flight: Ray restarts them,
    every run is retried there and answers; each exchange is stored once (keyed by run id),
    and a retried run saw its session as its first attempt did."""
    folder, gate = tmp_path / "started", tmp_path / "gate"
    folder.mkdir()
    memory = Memory.spawn(unique("m"), sessions=f"sqlite:///{tmp_path}/s.db")
    model = ScriptedModel(Gated(str(folder), str(gate) if when == "all parked" else None))
    agents = [Agent.spawn(unique(f"a{i}"), model=model, memory=memory) for i in range(10)]
    try:
        for agent in agents:  # each session holds one exchange before the crash
            for session in range(10):
                agent.run(f"{agent.name}-{session}-before", session_id=str(session))
        before = host_pids(agents)  # the pool's hosts these agents were placed on
        questions = [(a, s, f"{a.name}-{s}") for a in agents for s in range(10)]
        refs = [a.submit(q, session_id=str(s)) for a, s, q in questions]
        if when == "all parked":  # every run is in the host, waiting for its model
            deadline = time.monotonic() + 120
            wanted = {q for *_, q in questions}
            while not wanted <= set().union(*(started(folder, pid) for pid in before)):
                assert time.monotonic() < deadline, "the 100 runs did not start"
                time.sleep(0.05)
        else:  # some runs answered and stored, others not yet
            ray.wait(refs, num_returns=30, timeout=120)
        for pid in before:
            os.kill(pid, signal.SIGKILL)
        gate.touch()
        outputs = ray.get(refs, timeout=180)
        assert [o.content for o in outputs] == [
            f"done: {q} (2 user messages)" for *_, q in questions
        ]
        assert not host_pids(agents) & before
        for agent, session, question in questions:
            texts = [m.text for m in memory.history(agent.name, str(session))]
            assert texts[2:] == [question, f"done: {question} (2 user messages)"]
            assert len(texts) == 4
    finally:
        for agent in agents:
            agent.kill()
        memory.kill()


def test_a_host_killed_during_a_call_answers_it_after_its_restart(tmp_path: Path) -> None:
    """The agent's host dies during its second call (``chaos.DiesOnCall``): Ray restarts
    the host and sends the call again, which answers; the exchange is stored once."""
    dies = DiesOnCall(echo, call=2, folder=tmp_path / "calls")
    memory = Memory.spawn(unique("m"), sessions=f"sqlite:///{tmp_path}/s.db")
    agent = Agent.spawn(unique("dies"), model=ScriptedModel(dies), memory=memory)
    try:
        assert agent.run("one", session_id="s").content == "echo: one"
        before = agent.info()["pid"]
        assert agent.run("two", session_id="s", timeout=120).content == "echo: two"
        assert dies.calls == 3 and agent.info()["pid"] != before  # the second call, again
        texts = [m.text for m in memory.history(agent.name, "s")]
        assert texts == ["one", "echo: one", "two", "echo: two"]
    finally:
        agent.kill()
        memory.kill()


def test_a_team_round_is_one_call_per_host_with_each_members_outcome() -> None:
    """A round of hosted members is one Ray call to their host (a chunk of up to
    ``batch.CHUNK`` of them), a dedicated member's one call of its own; each member keeps
    its own output or error, in member order."""
    hosted = [Agent.spawn(unique("b"), model=ScriptedModel(echo)) for _ in range(40)]
    failing = Agent.spawn(unique("f"), model=ScriptedModel([]))  # no reply scripted
    dedicated = Agent.spawn(unique("d"), model=ScriptedModel(echo), dedicated=True)
    members = [*hosted[:20], failing, dedicated, *hosted[20:]]
    try:
        jobs = batch.start(members, "ping", None, None, grouped=True)
        hosts = {agent.host for agent in [*hosted, failing]}
        assert len(jobs) == len(hosts) + 1 and sum(len(job.slots) for job in jobs) == 42
        assert [job.slots for job in jobs if not job.batch] == [[21]]  # the dedicated one
        ray.wait([job.ref for job in jobs], num_returns=len(jobs), timeout=120)
        result = Team(members).run("hi", timeout=120)
        contents = result.contents
        assert contents[:20] == ["echo: hi"] * 20 and contents[21:] == ["echo: hi"] * 21
        assert contents[20] is None and "script" in str(result.errors[20]).lower()
        assert sum(e is not None for e in result.errors) == 1
    finally:
        for agent in members:
            agent.kill()


def test_killing_a_hosted_agent_lets_its_runs_under_way_finish(tmp_path: Path) -> None:
    """``kill()`` frees the name at once; a run already in the host finishes with its
    answer, and a later call through an old handle is a UserError, not a hang."""
    folder, gate = tmp_path / "started", tmp_path / "gate"
    folder.mkdir()
    agent = Agent.spawn(unique("k"), model=ScriptedModel(Gated(str(folder), str(gate))))
    ref = agent.submit("last words")
    deadline = time.monotonic() + 60
    while not any(folder.iterdir()):
        assert time.monotonic() < deadline, "the run did not start"
        time.sleep(0.05)
    agent.kill()
    assert agent.name not in Agent.list()
    gate.touch()
    assert ray.get(ref, timeout=60).content == "done: last words (1 user messages)"
    with pytest.raises(UserError, match="was killed"):
        agent.run("again", timeout=60)
