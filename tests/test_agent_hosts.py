"""Hosted agents: many agents per agent host actor, spawned as directory entries, activated
on their first call (once, however many calls arrive together) and again after their host
restarted; dedicated agents beside them."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import ray

from gecko_actors import Agent, Hooks, InMemorySessionStore, ScriptedModel, Team, UserError

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
