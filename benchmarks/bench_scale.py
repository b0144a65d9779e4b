"""Scale benchmarks for hosted runs and hosted agents: ratios measured side by side in one run
(never asserted).

Run: python benchmarks/bench_scale.py [--quick] [--agents]   (--agents: only part 5;
LangGraph's figure needs
``pip install -e '.[bench]'``; without it that line is skipped)

1. A DAG with 20-way fan-out (entry -> 20 chains of 10 nodes -> join, 202 nodes; 8 chains of
   6 with --quick), every node sleeping 0.2 s in a sync function, through ``Workflow.start``
   on a fresh runtime (Ray just started, no workflow host yet): wall from ``start`` to its
   result ÷ the critical path (12 nodes, 2.4 s). Then the same on the warm runtime.
2. entry -> 20 parallel sync function nodes sleeping 2 s (I/O-bound) -> join, a new run on
   the warm runtime: wall ÷ 2 s, and the peak of nodes asleep at once.
3. 1,000 concurrent runs of a 3-node chain (200 with --quick): the time to start them all,
   one after another from the driver, and until every result is in. Beside it, per start:
   the same through dedicated coordinators (``dedicated=True``: a process per run; 5 runs).
4. Durable per-node overhead: a chain of 100 trivial function nodes on a warm host with a
   file:// checkpoint, per node from the nodes' own clocks; beside it LangGraph's
   ``StateGraph`` of 100 trivial nodes with its SQLite checkpointer (``durability="sync"``:
   each step's checkpoint is written before the next step runs, as our commits are).
5. Hosted agents (1,000 and 10,000; 100 with --quick): spawn, then two rounds of a team of
   all of them with an instant model, and the memory every Ray process added. Their
   conversations go to the default store, a SQLite file (in the benchmark's folder).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import gecko_actors as ga
from gecko_actors.checkpoint import CheckpointStore
from gecko_actors.workflow import Workflow

QUICK = "--quick" in sys.argv
ONLY_AGENTS = "--agents" in sys.argv
WIDTH, DEPTH = (8, 6) if QUICK else (20, 10)
RUNS = 200 if QUICK else 1000
DEDICATED = 3 if QUICK else 5
CHAIN = 100
AGENTS = (100,) if QUICK else (1000, 10000)
SLEEP = 0.2


def sleeper(ctx: Any) -> float:
    started = time.time()
    time.sleep(SLEEP)
    return started


def io_node(ctx: Any) -> float:
    started = time.time()
    time.sleep(2.0)
    return started


async def clock(ctx: Any) -> float:
    return time.time()


async def plus_one(ctx: Any) -> int:
    return (ctx.input or 0) + 1


def fan_out(name: str, width: int, depth: int, node: Any, ends: Any = None) -> Workflow:
    """entry -> ``width`` chains of ``depth`` nodes -> join (entry and join run ``ends``,
    or ``node``)."""
    wf = Workflow(name, max_steps=width * depth + 2)
    wf.add_node("entry", ends or node).add_node("join", ends or node)
    for w in range(width):
        previous = "entry"
        for d in range(depth):
            wf.add_node(f"n{w}_{d}", node).add_edge(previous, f"n{w}_{d}")
            previous = f"n{w}_{d}"
        wf.add_edge(previous, "join")
    return wf


def peak_overlap(uri: str, run_id: str, seconds: float) -> int:
    """The most nodes asleep at once, from each node's own start clock."""
    starts = [r.output for r in CheckpointStore(uri).load_steps(run_id)]
    events = sorted([(t, 1) for t in starts] + [(t + seconds, -1) for t in starts])
    peak = level = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    return peak


def timed_run(wf: Workflow, uri: str, input: Any = None, **options: Any) -> tuple[float, str]:
    t0 = time.perf_counter()
    run = wf.start(input, checkpoint=uri, **options)
    run.result(timeout=600)
    return time.perf_counter() - t0, run.run_id


def bench_fan_out(root: Path) -> None:
    wf = fan_out("fanout", WIDTH, DEPTH, sleeper)
    critical = (DEPTH + 2) * SLEEP
    uri = f"file://{root}/fanout"
    nodes = WIDTH * DEPTH + 2
    cold, run_id = timed_run(wf, uri)
    peak = peak_overlap(uri, run_id, SLEEP)
    warm, _ = timed_run(wf, uri)
    print(f"{nodes}-node DAG, {WIDTH}-way fan-out of {SLEEP}s nodes, critical path {critical:.1f}s")
    print(f"  fresh runtime (Workflow.start -> result) / critical path: {cold / critical:.2f}")
    print(f"  warm runtime                             / critical path: {warm / critical:.2f}")
    print(f"  peak nodes asleep at once: {peak} of {WIDTH}")


def bench_io_fan_out(root: Path) -> None:
    wf = fan_out("io", 20, 1, io_node, ends=clock)
    uri = f"file://{root}/io"
    wall, run_id = timed_run(wf, uri)
    starts = [r.output for r in CheckpointStore(uri).load_steps(run_id) if r.node[0] == "n"]
    print("entry -> 20 sync nodes sleeping 2 s -> join, a new run on the warm runtime")
    print(
        f"  wall / critical path (2 s): {wall / 2.0:.2f}; nodes started within "
        f"{max(starts) - min(starts):.2f}s of each other"
    )


def bench_many_runs(root: Path) -> None:
    wf = Workflow("chain3").add_node("a", plus_one).add_node("b", plus_one)
    wf.add_node("c", plus_one).add_edge("a", "b").add_edge("b", "c")
    uri = f"file://{root}/many"
    t0 = time.perf_counter()
    runs = [wf.start(i, checkpoint=uri) for i in range(RUNS)]
    started = time.perf_counter() - t0
    results = [run.result(timeout=600) for run in runs]
    done = time.perf_counter() - t0
    assert results == [i + 3 for i in range(RUNS)]
    t1 = time.perf_counter()
    dedicated = [wf.start(i, checkpoint=uri, dedicated=True) for i in range(DEDICATED)]
    for run in dedicated:
        run.result(timeout=600)
    per_dedicated = (time.perf_counter() - t1) / DEDICATED
    print(f"{RUNS} concurrent runs of a 3-node chain (hosted)")
    print(
        f"  start all: {started:.2f}s ({started / RUNS * 1000:.1f} ms per start); "
        f"all done: {done:.2f}s"
    )
    print(
        f"  dedicated coordinators, start to result per run: {per_dedicated:.2f}s "
        f"= {per_dedicated / (done / RUNS):.0f}x a hosted run's share"
    )


def bench_per_node(root: Path) -> None:
    wf = Workflow("chain100", max_steps=CHAIN)
    for i in range(CHAIN):
        wf.add_node(f"n{i}", clock)
        if i:
            wf.add_edge(f"n{i - 1}", f"n{i}")
    uri = f"file://{root}/chain"
    samples = []
    for _ in range(3):
        _, run_id = timed_run(wf, uri)
        clocks = [r.output for r in CheckpointStore(uri).load_steps(run_id)]
        samples.append((clocks[-1] - clocks[0]) / (CHAIN - 1))
    ours = statistics.median(samples)
    print(f"durable per-node overhead, chain of {CHAIN} trivial nodes, file:// checkpoint")
    print(f"  gecko_actors (hosted): {ours * 1000:.2f} ms per node")
    theirs = langgraph_per_node(root)
    if theirs is None:
        print("  LangGraph + SQLite: not installed (pip install -e '.[bench]')")
    else:
        print(
            f"  LangGraph + SQLite (durability='sync'): {theirs * 1000:.2f} ms per node; "
            f"ratio ours / theirs: {ours / theirs:.2f}"
        )


def langgraph_per_node(root: Path) -> float | None:
    try:
        from langgraph.checkpoint.sqlite import SqliteSaver
        from langgraph.graph import END, START, StateGraph
    except ImportError:
        return None
    from typing import TypedDict

    class State(TypedDict):
        x: int

    graph = StateGraph(State)
    for i in range(CHAIN):
        graph.add_node(f"n{i}", lambda state: {"x": state["x"] + 1})
        graph.add_edge(START if i == 0 else f"n{i - 1}", f"n{i}")
    graph.add_edge(f"n{CHAIN - 1}", END)
    samples = []
    with SqliteSaver.from_conn_string(str(root / "langgraph.sqlite")) as saver:
        app = graph.compile(checkpointer=saver)
        for k in range(3):
            config = {"configurable": {"thread_id": f"t{k}"}, "recursion_limit": CHAIN + 10}
            t0 = time.perf_counter()
            app.invoke({"x": 0}, config, durability="sync")
            samples.append((time.perf_counter() - t0) / CHAIN)
    return statistics.median(samples)


async def instant(messages: list[Any], tools: Any) -> str:
    return "ok"


def bench_agents(count: int) -> None:
    """Spawn ``count`` hosted agents (instant model, default memory), then two rounds of one
    team of all of them; memory added is the resident memory of every Ray process, after
    minus before."""
    from gecko_actors import Agent, ScriptedModel, Team

    before = ray_memory()
    t0 = time.perf_counter()
    agents = [Agent.spawn(f"bench-{count}-{i}", model=ScriptedModel(instant)) for i in range(count)]
    spawned = time.perf_counter() - t0
    team = Team(agents)
    rounds = []
    for _ in range(2):
        t1 = time.perf_counter()
        result = team.run("hi", timeout=600)
        rounds.append(time.perf_counter() - t1)
        assert not any(result.errors), result.errors[:3]
    added = ray_memory() - before
    print(f"{count} hosted agents (instant model)")
    print(
        f"  spawn {spawned:.2f}s ({spawned / count * 1000:.2f} ms each); first round "
        f"{rounds[0]:.2f}s, second {rounds[1]:.2f}s; spawn + first round "
        f"{spawned + rounds[0]:.2f}s; memory added {added / 2**30:.2f} GB "
        f"({added / count / 1024:.0f} KB per agent)"
    )
    for agent in agents:
        agent.kill()


def ray_memory() -> int:
    """Resident bytes of every process of the local Ray instance and of this driver (from
    /proc: Linux only)."""
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:  # gone meanwhile
            continue
        if b"ray" in cmdline or int(pid) == os.getpid():
            rss = next((line for line in status.splitlines() if line.startswith("VmRSS:")), "")
            total += int(rss.split()[1]) * 1024 if rss else 0
    return total


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="gecko-bench-scale-") as folder:
        run_all(Path(folder))


def run_all(root: Path) -> None:
    os.environ["GECKO_STORAGE_URL"] = f"sqlite:///{root}/sessions.db"
    ga.init(num_cpus=2)
    if not ONLY_AGENTS:
        bench_fan_out(root)  # first: its cold figure needs a runtime with no host yet
        bench_io_fan_out(root)
        bench_many_runs(root)
        bench_per_node(root)
    for count in AGENTS:
        bench_agents(count)
    ga.shutdown()


if __name__ == "__main__":
    main()
