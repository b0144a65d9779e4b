"""The Ray actor layer: agent and toolbox actors, model gateways, limits, metrics.

Every test runs on the session's local Ray (``ray_session`` in conftest.py) and spawns actors under
unique names, killed when the test ends (or, for the few shared module fixtures, when the module
ends). No test asserts a wall-clock threshold: ordering, overlap and counts only (lower bounds
that a sleep guarantees are fine, since noise only adds to them).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest
import ray
from ray import cloudpickle
from ray.util.state import list_actors

from gecko_actors import (
    Agent,
    ConfigurationError,
    LiteLLMModel,
    Message,
    ModelGateway,
    ScriptedModel,
    UserError,
    calculator,
    tool,
)
from gecko_actors.gateway import gateway_label
from gecko_actors.testing import FakeLLMServer, FakeReply

pytestmark = pytest.mark.usefixtures("ray_session")

NAMESPACE = "gecko"
# The reply functions, tool and remote task below run in Ray workers: ship them by value, so
# that no worker has to import this test module (whatever its sys.path).
cloudpickle.register_pickle_by_value(sys.modules[__name__])
# The gateway reads `api_key_env` inside its own process, so the variable must exist in the
# Ray workers' environment, which was fixed when Ray started. PATH is always set there and is
# harmless as a "key" for the fake server, which ignores it.
PRESENT_ENV = "PATH"
MISSING_ENV = "GECKO_TEST_SURELY_NOT_SET_XYZ"
LIMIT = 4  # requests per window of the limited gateway
WINDOW = 1.0  # seconds


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def kill_named(*actor_names: str) -> None:
    """Kill the named actors that are alive (missing ones are fine)."""
    for actor_name in actor_names:
        try:
            handle = ray.get_actor(actor_name, namespace=NAMESPACE)
        except ValueError:
            continue
        ray.kill(handle, no_restart=True)


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def named_alive(actor_name: str) -> bool:
    return actor_name in ray.util.list_named_actors()


def alive_actors() -> list[Any]:
    """The cluster's ALIVE actors, from the state API of *this* Ray (the machine may run
    other Ray instances, so the address is never left to auto-detection)."""
    address = ray.get_runtime_context().gcs_address
    return list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=10_000)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The largest number of intervals open at the same instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = current = 0
    for _, step in events:
        current += step
        best = max(best, current)
    return best


# --- model scripts (they run inside the agent actors) -----------------------------------------


def calc_then_answer(messages: list[Message], tools: list[dict[str, Any]]) -> Any:
    """Ask the calculator for 6*7, then answer with its result."""
    last = messages[-1]
    if last.role == "tool":
        return f"The answer is {last.text} indeed."
    return ScriptedModel.call("calculator", expression="6*7")


async def timed_reply(messages: list[Message], tools: list[dict[str, Any]]) -> str:
    """Sleep 0.2 s and report when the call ran and how many user messages it saw."""
    start = time.monotonic()
    await asyncio.sleep(0.2)
    users = sum(1 for m in messages if m.role == "user")
    return json.dumps({"start": start, "end": time.monotonic(), "users": users})


@tool
def shout(text: str) -> str:
    """Repeat the text in capitals.

    Args:
        text: what to shout.
    """
    return text.upper()


@ray.remote
def run_agent_in_task(agent: Agent, text: str) -> tuple[str, int]:
    return agent.run(text).content, os.getpid()


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def spawn_agent() -> Iterator[Callable[..., Agent]]:
    """``Agent.spawn`` that kills the agent and its toolbox after the test."""
    names: list[str] = []

    def spawn(name: str, **kwargs: Any) -> Agent:
        names.append(name)
        return Agent.spawn(name, **kwargs)

    yield spawn
    for name in names:
        if name in Agent.list():
            Agent.get(name).kill()
        kill_named(f"agent/{name}", f"toolbox/{name}/0")


@pytest.fixture(scope="module", autouse=True)
def default_memory_cleanup(ray_session: Any) -> Iterator[None]:
    """Agents keep their conversations in the shared ``memory/default`` actor, which the first
    Agent.spawn creates: kill it at the end of the module if this module created it."""
    existed = named_alive("memory/default")
    yield
    if not existed:
        kill_named("memory/default")


@pytest.fixture(scope="module")
def timed_agent(ray_session: Any) -> Iterator[Agent]:
    """One agent answering with `timed_reply`, shared by the tests that only need some live
    agent (each uses its own sessions); killed at the end of the module."""
    name = unique("timed")
    agent = Agent.spawn(name, model=ScriptedModel(timed_reply))
    try:
        agent.info()  # alive before any test relies on it
        yield agent
    finally:
        kill_named(f"agent/{name}")


class FakeLLM:
    """The module's FakeLLMServer. Every answer comes from a handler (in this process, on the
    server's threads) that records the arrival time, then pops a queued reply if a test queued
    one, else answers by the conversation: a tool result is echoed, "compute" asks for the
    calculator, anything else gets "pong" (10 prompt + 2 completion tokens)."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []
        self.queue: deque[FakeReply] = deque()
        self._lock = threading.Lock()
        self.server = FakeLLMServer(handler=self._handle)

    @property
    def url(self) -> str:
        return self.server.url

    def _handle(self, body: dict[str, Any]) -> FakeReply:
        with self._lock:
            self.arrivals.append(time.monotonic())
            if self.queue:
                return self.queue.popleft()
        last = body["messages"][-1]
        if last["role"] == "tool":
            return FakeReply.text(f"The tool said {last['content']}.", usage=(20, 6))
        if "compute" in json.dumps(last.get("content")):
            return FakeReply.tool_call("calculator", {"expression": "6*7"})
        return FakeReply.text("pong", usage=(10, 2))


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLM]:
    fake = FakeLLM()
    with fake.server:
        yield fake


@pytest.fixture(scope="module")
def gateways(ray_session: Any, llm: FakeLLM) -> Iterator[SimpleNamespace]:
    """The module's gateways; every replica imports litellm (seconds of CPU), so there are
    few of them, and the failing one starts in a thread while the others start.

    - ``model``: a LiteLLMModel on the fake server (retrying once). It is spawned first
      without limits, as ``Agent.spawn(model=model)`` does, then again as ``limited``:
      two replicas sharing LIMIT requests per WINDOW. Replica 0, started without limits,
      must obey them from then on; agents given ``model`` itself use that replica.
    - ``failed``: a limited gateway whose key variable is not set; its spawn fails.

    Every actor of both is killed at the end of the module.
    """
    model = LiteLLMModel(
        "openai/fake-model", api_base=llm.url, api_key_env=PRESENT_ENV, num_retries=1
    )
    missing = LiteLLMModel("openai/fake-model", api_base=llm.url, api_key_env=MISSING_ENV)
    try:
        with ThreadPoolExecutor(1) as pool:
            failed = pool.submit(
                ModelGateway.spawn, missing, requests_per_minute=10, window_seconds=WINDOW
            )
            unlimited = ModelGateway.spawn(model)
            limited = ModelGateway.spawn(
                model, replicas=2, requests_per_minute=LIMIT, window_seconds=WINDOW
            )
        assert unlimited.replica_names == limited.replica_names[:1]
        yield SimpleNamespace(
            model=model,
            limited=limited,
            failed_error=failed.exception(),
            failed_label=gateway_label(missing),
        )
    finally:
        for config in (model, missing):
            label = gateway_label(config)
            kill_named(f"gateway/{label}/0", f"gateway/{label}/1", f"gateway/{label}/limiter")


@pytest.fixture
def llm_model(gateways: SimpleNamespace) -> LiteLLMModel:
    return gateways.model


@pytest.fixture
def limited_gateway(gateways: SimpleNamespace) -> ModelGateway:
    return gateways.limited


@pytest.fixture
def failed_gateway(gateways: SimpleNamespace) -> SimpleNamespace:
    return SimpleNamespace(error=gateways.failed_error, label=gateways.failed_label)


def granted_since(gateway: ModelGateway, last: int) -> list[float]:
    """The start times the gateway's limiter granted after its grant ``last`` (ids grow),
    on the limiter's own clock, in booking order; permits leased but never used, which
    replicas give back, are not among them."""
    recent = gateway.limiter_reservations()
    return [r.start_at for r in recent if r.id > last]


def last_grant(gateway: ModelGateway) -> int:
    """The id of the latest grant (0: none yet)."""
    return max((r.id for r in gateway.limiter_reservations()), default=0)


def settled_grants(gateway: ModelGateway, last: int, used: int) -> list[float]:
    """``granted_since(gateway, last)`` once the replicas have given back the permits they
    leased ahead and did not use, so that ``used`` remain (they do within a hold)."""
    assert wait_until(lambda: len(granted_since(gateway, last)) == used, timeout=60), granted_since(
        gateway, last
    )
    return granted_since(gateway, last)


def assert_grants_within_limit(starts: list[float], limit: int) -> None:
    """No window ``(t - WINDOW, t]`` holds more than `limit` of the limiter's start times.

    Only windows ending at a start need checking: any window's starts are a subset of those in
    the window ending at its latest start. ``end - WINDOW < start`` is the very comparison the
    limiter makes, on the same floats, so the check needs no slack.
    """
    for end in starts:
        inside = [s for s in starts if end - WINDOW < s <= end]
        assert len(inside) <= limit, (end, [round(s - starts[0], 3) for s in starts])


def assert_arrivals_follow_grants(arrivals: list[float], starts: list[float]) -> None:
    """The k-th arrival at the server came no earlier than the k-th granted start.

    A replica sends a request only after sleeping until its reservation's start, so each
    arrival is later than some start of its own. Which one is unknown (replicas are not in
    step, so arrivals need not come in the order of the grants), but pairing each arrival with
    its own start means at least k starts precede the k-th arrival. Load only delays arrivals,
    so it cannot break this; a replica that sent without waiting would. The limiter runs on
    this machine (the tests' Ray is local), so its monotonic clock is the server's.
    """
    assert len(arrivals) == len(starts), (len(arrivals), len(starts))
    for k, (arrival, start) in enumerate(zip(sorted(arrivals), sorted(starts), strict=True)):
        assert arrival >= start, (k, arrival - start)


# --- 1. spawning, running, finding ------------------------------------------------------------


@pytest.mark.parametrize("dedicated", [False, True], ids=["hosted", "dedicated"])
async def test_agent_with_toolbox_runs_streams_and_is_found(
    spawn_agent: Callable[..., Agent], dedicated: bool
) -> None:
    name = unique("calc")
    agent = spawn_agent(
        name, model=ScriptedModel(calc_then_answer), tools=[calculator], dedicated=dedicated
    )

    out = agent.run("What is 6*7?")
    assert out.content == "The answer is 42 indeed."
    assert [c.name for c in out.tool_calls] == ["calculator"]

    out = await agent.arun("And again, asynchronously?")
    assert out.content == "The answer is 42 indeed."

    chunks = list(agent.stream("Stream it"))
    assert len(chunks) >= 3
    assert "".join(chunks) == "The answer is 42 indeed."

    info = agent.info()
    assert info["name"] == name
    assert info["tools"] == ["calculator"]
    again = Agent.get(name)
    assert again.info()["pid"] == info["pid"]
    assert again.run("Once more").content == "The answer is 42 indeed."
    assert name in Agent.list()

    found = {(a.name, a.ray_namespace) for a in alive_actors()}
    if dedicated:
        # The tool ran in the agent's own toolbox actor, not in the agent.
        assert info["placement"] == "dedicated"
        toolbox = ray.get_actor(f"toolbox/{name}/0", namespace=NAMESPACE)
        stats = ray.get(toolbox.stats.remote())
        assert stats["calculator"]["executions"] == 4  # run, arun, stream, run again
        assert ray.get(toolbox.pid.remote()) != info["pid"]
        assert {(f"agent/{name}", NAMESPACE), (f"toolbox/{name}/0", NAMESPACE)} <= found
    else:
        # No process of its own: the agent and its tools live in a named agent host.
        assert info["placement"] == "hosted" and info["host"].startswith("agents/host/")
        assert (info["host"], NAMESPACE) in found
        assert ray.get(agent.actor.summary.remote())["active"] >= 1
        assert not any(n in (f"agent/{name}", f"toolbox/{name}/0") for n, _ in found)
        assert info["owned_toolbox"] is None


# --- 2. bad input -----------------------------------------------------------------------------


def test_unknown_agent_lists_the_known_ones(timed_agent: Agent) -> None:
    with pytest.raises(UserError) as excinfo:
        Agent.get("unknown")
    assert "'unknown'" in str(excinfo.value)
    assert timed_agent.name in str(excinfo.value)


def test_duplicate_spawn_fails_and_get_if_exists_attaches(timed_agent: Agent) -> None:
    name = timed_agent.name
    pid = timed_agent.info()["pid"]
    with pytest.raises(UserError, match="already exists"):
        Agent.spawn(name, model=ScriptedModel(["second"]))
    same = Agent.spawn(name, model=ScriptedModel(["second"]), get_if_exists=True)
    assert same.info()["pid"] == pid
    # It is the original actor, with the original model.
    assert json.loads(same.run("hi").content)["users"] == 1
    assert Agent.list().count(name) == 1


def test_respawned_agent_gets_its_new_tools(spawn_agent: Callable[..., Agent]) -> None:
    name = unique("respawn")
    old = spawn_agent(name, model=ScriptedModel(["old"]), tools=[calculator])
    assert old.info()["tools"] == ["calculator"]
    old.kill()
    # Both go: the agent and the toolbox made for its tools.
    gone = [f"agent/{name}", f"toolbox/{name}/0"]
    assert wait_until(lambda: not any(named_alive(n) for n in gone), timeout=60)
    new = spawn_agent(name, model=ScriptedModel(["new"]), tools=[shout])
    assert new.info()["tools"] == ["shout"]


@pytest.mark.parametrize("bad", ["a b", "", "x/y"])
def test_invalid_names_are_refused(bad: str) -> None:
    with pytest.raises(UserError, match="invalid"):
        Agent.spawn(bad, model=ScriptedModel(["hi"]))
    with pytest.raises(UserError, match="invalid"):
        Agent.get(bad)
    assert bad not in Agent.list()


# --- 3. litellm stays out of agent processes --------------------------------------------------


def test_litellm_is_imported_by_the_gateway_only(
    spawn_agent: Callable[..., Agent], llm_model: LiteLLMModel, llm: FakeLLM
) -> None:
    name = unique("nolite")
    agent = spawn_agent(name, model=llm_model)
    before = llm.server.request_count
    marker = f"ping {uuid.uuid4().hex}"
    assert agent.run(marker).content == "pong"
    # The run went through the gateway to the fake server.
    sent = [json.dumps(r["messages"]) for r in llm.server.requests[before:]]
    assert [marker in s for s in sent] == [True]
    assert "GatewayModel" in agent.info()["model"]
    assert ray.get(agent._handle.modules.remote(["litellm"])) == {"litellm": False}


# --- 4. concurrency ---------------------------------------------------------------------------


async def test_concurrent_runs_on_different_sessions_overlap(timed_agent: Agent) -> None:
    sessions = [unique("session") for _ in range(8)]
    outputs = await asyncio.gather(*(timed_agent.arun("run", session_id=s) for s in sessions))
    replies = [json.loads(o.content) for o in outputs]
    assert all(r["users"] == 1 for r in replies)
    intervals = [(r["start"], r["end"]) for r in replies]
    # At least two runs were in the model at once: the actor did not serialise them.
    assert max_overlap(intervals) >= 2, intervals


async def test_runs_on_one_session_are_serialised(timed_agent: Agent) -> None:
    session = unique("session")
    outputs = await asyncio.gather(
        timed_agent.arun("first", session_id=session),
        timed_agent.arun("second", session_id=session),
    )
    replies = sorted((json.loads(o.content) for o in outputs), key=lambda r: r["start"])
    assert replies[0]["end"] <= replies[1]["start"], replies
    # The later run sees the earlier run's exchange in its conversation.
    assert [r["users"] for r in replies] == [1, 2]


# --- 5. gateway: limits, usage, Retry-After ---------------------------------------------------


def test_gateway_limit_holds_across_replicas_and_agents(
    spawn_agent: Callable[..., Agent], limited_gateway: ModelGateway, llm: FakeLLM
) -> None:
    gw = limited_gateway
    total_before = gw.usage()
    reservations_before = last_grant(gw)
    names = [unique(f"gw{i}") for i in range(3)]
    agents = [spawn_agent(n, model=gw) for n in names]
    # Warm up both replicas (an agent's calls go round robin), so that first-request costs
    # inside litellm are paid before the burst.
    ray.get([agents[0].submit("warm up") for _ in range(2)])
    settled_grants(gw, reservations_before, 2)  # the warm-up's leftovers given back
    burst_before = last_grant(gw)
    first = len(llm.arrivals)

    run_id = uuid.uuid4().hex
    refs = [agents[0].submit("tagged", run_id=run_id)]
    refs += [agents[0].submit(f"run {i}") for i in range(3)]
    refs += [a.submit(f"run {i}") for a in agents[1:] for i in range(4)]
    outputs = ray.get(refs)
    assert [o.content for o in outputs] == ["pong"] * 12

    # The limit is checked on the start times the limiter granted, on its own clock: when the
    # requests then reached the server depends on how busy the machine was.
    granted = settled_grants(gw, reservations_before, 14)  # the warm-up's and the burst's
    assert_grants_within_limit(granted, LIMIT)
    # A limiter that did not limit would grant each request at its booking time. The 12 are
    # submitted together and book as their agents reach the model, well within one WINDOW of
    # each other, so more than LIMIT grants would share a window and the check above fail.
    # (A stall of the whole machine could spread the bookings out and hide such a bug, but no
    # delay can make a limiting limiter fail.)
    arrivals = llm.arrivals[first:]
    assert len(arrivals) == 12
    assert_arrivals_follow_grants(arrivals, granted_since(gw, burst_before))

    # Usage: every call was one request of 10 prompt + 2 completion tokens.
    per_agent = [gw.usage(agent=n) for n in names]
    assert [u.requests for u in per_agent] == [6, 4, 4]
    assert [u.prompt_tokens for u in per_agent] == [60, 40, 40]
    assert [u.total_tokens for u in per_agent] == [72, 48, 48]
    one_run = gw.usage(run_id=run_id)
    assert (one_run.requests, one_run.prompt_tokens, one_run.completion_tokens) == (1, 10, 2)
    # The gateway is the module's: its total grew by exactly this test's agents' usage.
    total = gw.usage()
    assert total.requests - total_before.requests == sum(u.requests for u in per_agent) == 14
    assert total.total_tokens - total_before.total_tokens == sum(u.total_tokens for u in per_agent)


def test_retry_after_pauses_the_limiter(
    spawn_agent: Callable[..., Agent], limited_gateway: ModelGateway, llm: FakeLLM
) -> None:
    gw = limited_gateway
    agent = spawn_agent(unique("retry"), model=gw)
    # No pause pending (so the limiter's clock is already past `paused_until`).
    assert wait_until(lambda: gw.limiter_stats()["pause_remaining"] == 0, timeout=60)
    before = gw.limiter_stats()
    before_grant = last_grant(gw)
    first = len(llm.arrivals)
    llm.queue.extend([FakeReply.rate_limit(retry_after=1.0), FakeReply.text("back")])
    assert agent.run("hello").content == "back"
    after = gw.limiter_stats()
    # The 429 came after `before` was read, and paused every replica for 1 s from then on.
    assert after["paused_until"] >= before["paused_until"] + 1.0
    # Both attempts asked the limiter, and it started the retry no earlier than the pause's end
    # (the limiter's own clock and record).
    attempt, retry = settled_grants(gw, before_grant, 2)
    assert attempt < after["paused_until"] <= retry
    # The retry (num_retries=1) honoured Retry-After: the pause began after the 429 left the
    # server, and the retry was sent after it ended. A lower bound that sleeps guarantee
    # (load only adds to it), compared on the one monotonic clock of this machine.
    rejected, retried = llm.arrivals[first:]
    assert_arrivals_follow_grants([rejected, retried], [attempt, retry])
    assert retried - rejected >= 1.0
    # The retry is the gateway's, not a new run: one run, two model attempts, one usage.
    assert gw.usage(agent=agent.name).requests == 1


def test_gateway_retries_count_against_the_limit(
    spawn_agent: Callable[..., Agent], limited_gateway: ModelGateway, llm: FakeLLM
) -> None:
    agent = spawn_agent(unique("burst"), model=limited_gateway)
    time.sleep(WINDOW)  # let earlier tests' requests leave the window: the burst must wait
    before = last_grant(limited_gateway)
    first = len(llm.arrivals)
    # One 429 that asks for no wait: the retry goes out at once.
    llm.queue.append(FakeReply.rate_limit(retry_after=0))
    outputs = ray.get([agent.submit(f"burst {i}") for i in range(LIMIT)])
    assert [o.content for o in outputs] == ["pong"] * LIMIT
    # The retry asked the limiter too: LIMIT + 1 grants, never more than LIMIT in a window
    # (so one of them waited for the window to move on), each before its arrival.
    granted = settled_grants(limited_gateway, before, LIMIT + 1)
    assert_grants_within_limit(granted, LIMIT)
    arrivals = llm.arrivals[first:]
    assert_arrivals_follow_grants(arrivals, granted)


def test_limits_asked_of_a_running_gateway_are_enforced(
    spawn_agent: Callable[..., Agent], llm_model: LiteLLMModel, limited_gateway: ModelGateway
) -> None:
    # `gateways` spawned llm_model without limits (replica 0) before spawning it with limits.
    first_only = ModelGateway.spawn(llm_model)  # what Agent.spawn(model=llm_model) does
    assert first_only.replica_names == limited_gateway.replica_names[:1]
    before = last_grant(limited_gateway)
    agent = spawn_agent(unique("relimit"), model=llm_model)
    assert agent.run("hello").content == "pong"
    assert len(settled_grants(limited_gateway, before, 1)) == 1


# --- 6. configuration errors ------------------------------------------------------------------


def test_missing_key_variable_fails_the_gateway_and_leaves_no_replica(
    failed_gateway: SimpleNamespace,
) -> None:
    error = failed_gateway.error
    assert isinstance(error, ConfigurationError), repr(error)
    assert isinstance(error, UserError)
    assert MISSING_ENV in str(error)
    replica = f"gateway/{failed_gateway.label}/0"
    assert wait_until(lambda: not named_alive(replica), timeout=60)
    alive = alive_actors()
    assert replica not in {a.name for a in alive}


def test_failed_gateway_spawn_leaves_no_limiter(failed_gateway: SimpleNamespace) -> None:
    assert isinstance(failed_gateway.error, ConfigurationError)
    assert wait_until(lambda: not named_alive(f"gateway/{failed_gateway.label}/0"), timeout=60)
    limiter = f"gateway/{failed_gateway.label}/limiter"
    assert wait_until(lambda: not named_alive(limiter), timeout=60)


def test_api_key_value_is_refused_without_leaking_it(llm: FakeLLM) -> None:
    secret = "sk" + "-test-" + uuid.uuid4().hex  # split: no key-shaped literal in the source
    name = unique("keyed")
    model = LiteLLMModel("openai/fake-model", api_base=llm.url, api_key=secret)
    try:
        with pytest.raises(UserError) as excinfo:
            Agent.spawn(name, model=model)
        err = excinfo.value
        assert "api_key_env" in str(err)
        for text in (str(err), repr(err), err.message, err.hint or "", json.dumps(err.to_dict())):
            assert secret not in text
        assert name not in Agent.list()
        assert not named_alive(f"gateway/{gateway_label(model)}/0")
    finally:
        kill_named(f"agent/{name}", f"gateway/{gateway_label(model)}/0")


# --- 7. metrics -------------------------------------------------------------------------------


def test_metrics_reach_the_endpoint(
    ray_session: Any, spawn_agent: Callable[..., Agent], llm_model: LiteLLMModel, tmp_path: Any
) -> None:
    from gecko_actors.workflow import Workflow

    name = unique("metered")
    agent = spawn_agent(name, model=llm_model, tools=[calculator])
    out = agent.run("compute 6*7")
    assert out.content == "The tool said 42."
    assert agent.run("hello").content == "pong"
    run = Workflow(unique("gauged")).add_node("a", lambda ctx: 1).start(None, checkpoint=tmp_path)
    assert run.result(timeout=120) == 1

    url = f"http://127.0.0.1:{ray_session.metrics_port}/metrics"
    host = f'host="{agent.info()["host"]}"'  # bounded labels: the agent's host, not its name
    model = f'model="{llm_model.model}"'
    wanted = {
        "agent runs": lambda line: "ray_gecko_agent_runs_total" in line and host in line,
        "llm requests": lambda line: "ray_gecko_llm_requests_total" in line and model in line,
        "llm tokens": lambda line: "ray_gecko_llm_tokens_total" in line and model in line,
        "llm latency": lambda line: "ray_gecko_llm_latency_seconds" in line,
        "tool calls": lambda line: (
            "ray_gecko_tool_calls_total" in line and 'tool="calculator"' in line
        ),
        "runs per host": lambda line: (
            "ray_gecko_runs_active" in line and run.info()["host"] in line
        ),
    }
    gecko_lines: list[str] = []

    def all_present() -> bool:
        nonlocal gecko_lines
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                page = response.read().decode()
        except OSError:
            return False
        gecko_lines = [line for line in page.splitlines() if "gecko" in line]
        samples = [line for line in gecko_lines if not line.startswith("#")]
        return all(any(check(line) for line in samples) for check in wanted.values())

    assert wait_until(all_present, timeout=30), "\n".join(gecko_lines) or "no gecko metrics"
    assert not any(name in line for line in gecko_lines)  # no series per agent


# --- 8. handles travel ------------------------------------------------------------------------


def test_agent_handle_runs_from_a_remote_task(timed_agent: Agent) -> None:
    content, task_pid = ray.get(run_agent_in_task.remote(timed_agent, "Say hello"))
    assert json.loads(content)["users"] == 1  # timed_reply ran: the agent answered the task
    assert task_pid not in (os.getpid(), timed_agent.info()["pid"])
