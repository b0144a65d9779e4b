"""LLM-call throughput through the gateways: ratios measured side by side in one run (never
asserted in tests). The fake provider is ``FakeLLMServer`` (one asyncio loop in the driver,
thousands of requests/s), so it is not what is measured.

Run: python benchmarks/bench_throughput.py [--quick]

1. calls/s and CPU per call: raw litellm in one process; agents through 1, 2 and 4 gateway
   replicas (CPU summed over the driver and every Ray process)      (goals: calls/s ÷ raw >= 1.3;
                                                                           CPU/call ÷ raw <= 1.3)
2. the same with a cluster-wide limiter that never binds ÷ without   (goal >= 0.9)
3. Team.map of 2,000 prompts with max_in_flight 64 and 256
4. under a 6,000-RPM limit, 4 replicas pushing: the share of the limit the first two windows
   carried, as the fake server counted arrivals (goal >= 0.95), and the most requests in any
   window (goal: none over the limit). ``--quick`` keeps the rate with a 6 s window.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import sys
import time
from collections.abc import Callable

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("GECKO_STORAGE_URL", "memory://")
os.environ.setdefault("BENCH_KEY", "not-a-secret")  # the fake server accepts any key

import gecko_actors as ga
from gecko_actors import Agent, LiteLLMModel, ModelGateway, Team
from gecko_actors.testing import FakeLLMServer, FakeReply

QUICK = "--quick" in sys.argv
CALLS = 600 if QUICK else 2000
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> float:
    """CPU used so far by this process (the driver, and the fake server's thread) and every
    Ray worker process (``ray::...``: agent hosts, gateways, limiter). Ray's daemons (raylet,
    GCS, dashboard agents) are left out: an actor call does not go through them, and their
    background work would be counted as the calls'."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read()
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(pid) == os.getpid() or command.startswith(b"ray::"):
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


def measured(work: Callable[[], None], calls: int) -> tuple[float, float]:
    """Calls per second and CPU seconds per call of ``work``."""
    cpu, start = cpu_seconds(), time.perf_counter()
    work()
    wall, used = time.perf_counter() - start, cpu_seconds() - cpu
    return calls / wall, used / calls


def raw_litellm(server: FakeLLMServer, calls: int) -> None:
    import litellm

    async def main() -> None:
        limit = asyncio.Semaphore(64)  # as many in flight as the agents below

        async def one() -> None:
            async with limit:
                await litellm.acompletion(
                    model="openai/fake", api_base=server.url, api_key="x", num_retries=0,
                    max_retries=0, messages=[{"role": "user", "content": "hi"}],
                )  # fmt: skip

        await asyncio.gather(*(one() for _ in range(calls)))

    asyncio.run(main())


def agents_on(gateway: ModelGateway, tag: str) -> Team:
    team = Team([Agent.spawn(f"tp-{tag}-{i}", model=gateway) for i in range(8)])
    team.map(["warm"] * 16, progress=False)
    return team


def model(server: FakeLLMServer, variant: int) -> LiteLLMModel:
    # Each variant is its own configuration, so its own gateway.
    return LiteLLMModel("openai/fake", api_base=server.url, api_key_env="BENCH_KEY",
                        num_retries=0, timeout=60 + variant)  # fmt: skip


def done(team: Team, gateway: ModelGateway) -> None:
    for agent in team.members:
        agent.kill()
    gateway.kill()


def bench_paths(server: FakeLLMServer) -> None:
    raw_litellm(server, 50)  # imports and warms litellm here
    raw_rate, raw_cpu = measured(lambda: raw_litellm(server, CALLS), CALLS)
    print(f"1. raw litellm in one process: {raw_rate:.0f} calls/s, "
          f"{raw_cpu * 1000:.2f} ms CPU/call")  # fmt: skip
    rates = {}
    for replicas in (1, 2, 4):
        gateway = ModelGateway.spawn(model(server, replicas), replicas=replicas)
        team = agents_on(gateway, f"r{replicas}")
        rate, cpu = measured(lambda t=team: t.map(["hi"] * CALLS, max_in_flight=64,
                                                   progress=False), CALLS)  # fmt: skip
        rates[replicas] = rate
        print(f"1. agents + {replicas} gateway replica(s): {rate:.0f} calls/s "
              f"(÷ raw {rate / raw_rate:.2f}, goal >= 1.3), {cpu * 1000:.2f} ms CPU/call "
              f"(÷ raw {cpu / raw_cpu:.2f}, goal <= 1.3)")  # fmt: skip
        done(team, gateway)
    limited = ModelGateway.spawn(model(server, 7), replicas=2, requests_per_minute=10**7)
    team = agents_on(limited, "lim")
    rate, _ = measured(lambda: team.map(["hi"] * CALLS, max_in_flight=64, progress=False), CALLS)
    print(f"2. 2 replicas with a limiter that never binds: {rate:.0f} calls/s "
          f"→ on ÷ off {rate / rates[2]:.2f} (goal >= 0.9)")  # fmt: skip
    done(team, limited)


def bench_map(server: FakeLLMServer) -> None:
    gateway = ModelGateway.spawn(model(server, 5), replicas=2)
    team = agents_on(gateway, "map")
    for in_flight in (64, 256):
        rate, cpu = measured(
            lambda n=in_flight: team.map(["hi"] * 2000, max_in_flight=n, progress=False), 2000
        )
        print(f"3. Team.map of 2,000 prompts, max_in_flight {in_flight}: {rate:.0f} calls/s, "
              f"{cpu * 1000:.2f} ms CPU/call")  # fmt: skip
    done(team, gateway)


def bench_rpm(server: FakeLLMServer) -> None:
    window = 6.0 if QUICK else 60.0
    limit = int(6000 * window / 60)  # 6,000 per minute, at any window length
    gateway = ModelGateway.spawn(model(server, 6), replicas=4, requests_per_minute=limit,
                                 window_seconds=window)  # fmt: skip
    team = agents_on(gateway, "rpm")
    first = server.request_count
    # Two and a half windows' worth: the first two windows are full if the limiter lets
    # through all it may, and the rest keeps them under pressure to the end.
    team.map(["hi"] * int(limit * 2.5), max_in_flight=256, progress=False)
    times = server.request_times[first:]
    achieved = bisect.bisect_left(times, times[0] + 2 * window) / (2 * limit)
    most = max(bisect.bisect_right(times, t) - bisect.bisect_right(times, t - window)
               for t in times)  # fmt: skip
    print(
        f"4. under {limit} requests per {window:.0f} s (6,000 per minute): the first two "
        f"windows carried {achieved:.3f} of the limit (goal >= 0.95); the most in any "
        f"window {most} ({'none over the limit' if most <= limit else 'OVER the limit'})"
    )
    done(team, gateway)


def main() -> None:
    ga.init(num_cpus=2, include_dashboard=False)
    with FakeLLMServer(handler=lambda body: FakeReply.text("ok")) as server:
        bench_paths(server)
        bench_map(server)
        bench_rpm(server)
    ga.shutdown()


if __name__ == "__main__":
    main()
