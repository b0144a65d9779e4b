"""Actor-runtime benchmarks: ratios measured side by side in one run (never asserted in tests).

Run: python benchmarks/bench_actors.py [--quick]

1. agent.run with an instant ScriptedModel ÷ a raw Ray async-actor round trip   (goal <= 1.5)
2. a team of N agents, model latency 0.2 s (FakeLLMServer): wall ÷ 0.2 s         (goal <= 1.3)
   and with a 0.2 s ScriptedModel (no HTTP client): the runtime's own share
   and with a 0.1 s CPU-bound tool per member: speed-up ÷ cores                  (goal >= 0.8)
3. unique memory (USS) of an agent actor ÷ an idle Ray actor's                   (goal <= 1.2)
4. LLM calls/s through agents and 2 gateway replicas ÷ raw litellm in one process (goal >= 1.5)
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("GECKO_STORAGE_URL", "memory://")
os.environ.setdefault("BENCH_KEY", "not-a-secret")  # the fake server accepts any key

import ray

import gecko_actors as ga
from gecko_actors import Agent, LiteLLMModel, ModelGateway, RemoteToolBox, ScriptedModel, Team, tool
from gecko_actors.testing import FakeLLMServer, FakeReply

QUICK = "--quick" in sys.argv


def uss(pid: int) -> int:
    """Unique set size (private pages) of a process, from Linux's smaps_rollup."""
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1]) * 1024
    return total


@ray.remote(num_cpus=0)
class Idle:
    async def ping(self) -> int:
        return os.getpid()


async def instant(messages: list[Any], tools: Any) -> str:
    """An instant model: an async reply (a sync one would run in a thread, by design)."""
    return "ok"


def bench_round_trip(calls: int = 200 if QUICK else 1000) -> None:
    idle = Idle.remote()
    agent = Agent.spawn("bench-instant", model=ScriptedModel(instant))
    ray.get(idle.ping.remote())
    agent.run("warm up")
    start = time.perf_counter()
    for _ in range(calls):
        ray.get(idle.ping.remote())
    raw = (time.perf_counter() - start) / calls
    start = time.perf_counter()
    for _ in range(calls):
        agent.run("hi")
    run = (time.perf_counter() - start) / calls
    print(
        f"1. agent.run {run * 1000:.2f} ms vs raw actor round trip {raw * 1000:.2f} ms "
        f"→ ratio {run / raw:.2f} (goal <= 1.5)"
    )
    uss_agent = uss(agent.info()["pid"])
    uss_idle = uss(ray.get(idle.ping.remote()))
    print(
        f"3. USS agent actor {uss_agent / 2**20:.0f} MiB vs idle actor {uss_idle / 2**20:.0f} MiB "
        f"→ ratio {uss_agent / uss_idle:.2f} (goal <= 1.2)"
    )
    agent.kill()
    ray.kill(idle)


@tool
def crunch(seconds: float = 0.1) -> int:
    """Burn CPU for a while."""
    end, n = time.process_time() + seconds, 0
    while time.process_time() < end:
        n += 1
    return n


def bench_team(server: FakeLLMServer, sizes: tuple[int, ...]) -> None:
    model = LiteLLMModel("openai/fake", api_base=server.url, api_key_env="BENCH_KEY", num_retries=0)
    gateway = ModelGateway.spawn(model, replicas=2)
    for n in sizes:
        agents = [Agent.spawn(f"bench-team-{n}-{i}", model=gateway) for i in range(n)]
        team = Team(agents)
        team.run("warm up")  # process start, imports
        team.run("warm up")  # first connections
        start = time.perf_counter()
        result = team.run("go")
        wall = time.perf_counter() - start
        assert result.ok
        print(
            f"2. team of {n}, model latency 0.2 s: wall {wall:.3f} s → ratio {wall / 0.2:.2f} "
            f"(goal <= 1.3)"
        )
        for agent in agents:
            agent.kill()
    bench_team_runtime(32)
    cores = int(ray.cluster_resources().get("CPU", 1))
    box = RemoteToolBox.spawn("bench-crunch", [crunch], replicas=cores, num_cpus=1)
    members = [
        Agent.spawn(
            f"bench-cpu-{i}",
            model=ScriptedModel(
                lambda m, t: (
                    "done" if m[-1].role == "tool" else ScriptedModel.call("crunch", seconds=0.1)
                )
            ),
            tools=box,
        )
        for i in range(cores * 2)
    ]
    team = Team(members)
    team.run("warm up")
    one = time.perf_counter()
    members[0].run("one")
    single = time.perf_counter() - one
    start = time.perf_counter()
    team.run("all")
    wall = time.perf_counter() - start
    speedup = single * len(members) / wall
    print(
        f"2b. {len(members)} members with a 0.1 s CPU tool on {cores} cores: speed-up "
        f"{speedup:.2f} → speed-up ÷ cores {speedup / cores:.2f} (goal >= 0.8)"
    )
    for member in members:
        member.kill()
    box.kill()
    gateway.kill()


async def slow_reply(messages: Any, tools: Any) -> str:
    await asyncio.sleep(0.2)  # a model that takes 0.2 s and no CPU: the runtime's own share
    return "ok"


def bench_team_runtime(n: int) -> None:
    """2c. The same team round with a 0.2 s ScriptedModel instead of litellm over HTTP: what
    the runtime itself adds (on two cores, litellm's own CPU per call is most of 2.)."""
    agents = [Agent.spawn(f"bench-rt-{n}-{i}", model=ScriptedModel(slow_reply)) for i in range(n)]
    team = Team(agents)
    team.run("warm up")
    start = time.perf_counter()
    assert team.run("go").ok
    wall = time.perf_counter() - start
    print(f"2c. team of {n}, 0.2 s scripted model (no HTTP): ratio {wall / 0.2:.2f} (goal <= 1.3)")
    for agent in agents:
        agent.kill()


def bench_gateway(server: FakeLLMServer, calls: int = 200 if QUICK else 600) -> None:
    import litellm

    async def raw() -> float:
        # The same 64 requests in flight as through the agents below.
        limit = asyncio.Semaphore(64)

        async def one() -> None:
            async with limit:
                await litellm.acompletion(
                    model="openai/fake",
                    api_base=server.url,
                    api_key="x",
                    num_retries=0,
                    max_retries=0,
                    messages=[{"role": "user", "content": "hi"}],
                )

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(calls)))
        return calls / (time.perf_counter() - start)

    raw_rate = asyncio.run(raw())
    model = LiteLLMModel("openai/fake", api_base=server.url, api_key_env="BENCH_KEY", num_retries=0)
    gateway = ModelGateway.spawn(model, replicas=2)
    agents = [Agent.spawn(f"bench-gw-{i}", model=gateway) for i in range(4)]
    team = Team(agents)
    team.map(["warm"] * 8, progress=False)
    start = time.perf_counter()
    team.map(["hi"] * calls, max_in_flight=64, progress=False)
    rate = calls / (time.perf_counter() - start)
    print(
        f"4. {rate:.0f} calls/s through agents + 2 gateway replicas vs raw litellm "
        f"{raw_rate:.0f} calls/s in one process → ratio {rate / raw_rate:.2f} (goal >= 1.5)"
    )
    for agent in agents:
        agent.kill()
    gateway.kill()


def main() -> None:
    ga.init(num_cpus=2, include_dashboard=False)
    bench_round_trip()
    with FakeLLMServer(handler=lambda body: FakeReply.delay(0.2, FakeReply.text("ok"))) as slow:
        bench_team(slow, (8,) if QUICK else (8, 32))
    with FakeLLMServer(handler=lambda body: FakeReply.text("ok")) as fast:
        bench_gateway(fast)
    ga.shutdown()


if __name__ == "__main__":
    main()
