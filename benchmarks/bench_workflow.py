"""Workflow benchmarks: ratios measured side by side in one run (never asserted in tests).

Run: python benchmarks/bench_workflow.py [--quick]

1. per-node overhead of a chain of 100 trivial function nodes (20 with --quick): the
   coordinator with checkpoints to file:// ÷ the same coordinator whose commit_step is a no-op
   (goal <= 1.1), and ÷ a raw Ray task round trip (a chain of trivial tasks from the driver).
   Per node is (last node's clock - first node's clock) / (nodes - 1), read from the nodes'
   outputs, so the coordinator's process start is not counted. Also printed: the same chain
   through Workflow.start, raw tasks awaited in an async actor (what the coordinator does) and
   a raw actor round trip. Median of 5 runs (3 with --quick), interleaved.
2. checkpoint bytes per step at steps 10, 100, 1,000 (bench_checkpoint.bytes_per_step)
   (goal: step 1,000 <= 1.1 x step 10).
3. a DAG with 20-way fan-out: entry → 20 parallel chains of 10 nodes → join (202 nodes; 8
   chains of 6, 50 nodes, with --quick), every node sleeping 0.2 s on one CPU. The critical
   path is entry + one chain + join (12 nodes, 2.4 s): wall ÷ 2.4 s (goal <= 1.1), in-run
   (entry starts → join ends) and end to end (start → result, with the coordinator's process
   start), for the same DAG as plain Ray tasks (the floor on this machine), a coordinator made
   as a plain actor (warm workers) and through Workflow.start (a detached actor, whose tasks
   cannot use the idle workers of the job or of other detached actors: they start new ones).

Function nodes are Ray tasks of num_cpus=1; Ray gets num_cpus = fan-out + 4 logical CPUs.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import ray
from bench_checkpoint import bytes_per_step

import gecko_actors as ga
from gecko_actors._actors.coordinator import CoordinatorActor
from gecko_actors.checkpoint import CheckpointStore, StepRecord
from gecko_actors.runtime import namespace
from gecko_actors.workflow import Workflow, WorkflowRun
from gecko_actors.workflow.graph import NodeContext

QUICK = "--quick" in sys.argv
CHAIN = 20 if QUICK else 100
REPEAT = 3 if QUICK else 5
REPEAT_DAG = 2 if QUICK else 3
WIDTH, DEPTH = (8, 6) if QUICK else (20, 10)
SLEEP = 0.2


# --- node functions (each returns its own clock reading) ---------------------------------


def stamp(ctx: NodeContext) -> float:
    return time.time()


def last_stamp(ctx: NodeContext) -> dict[str, float]:
    return {"first": min(ctx.outputs.values()), "last": time.time()}


def sleeper(ctx: NodeContext) -> float:
    started = time.time()
    time.sleep(SLEEP)
    return started


def joiner(ctx: NodeContext) -> dict[str, float]:
    time.sleep(SLEEP)
    return {"first": min(ctx.outputs.values()), "last": time.time()}


# --- the coordinator without checkpoints ---------------------------------------------------


class _NoCommitStore(CheckpointStore):
    """The real store, except that steps are not written (the manifest and the final status,
    once per run, still are: the run's result is read back from them)."""

    def commit_step(self, run_id: str, record: StepRecord) -> int:
        return 0


class NoCheckpointCoordinator(CoordinatorActor):
    def __init__(self, run_id: str, graph: Any, uri: str, input: Any) -> None:
        super().__init__(run_id, graph, uri, input)
        # The run starts driving only once the constructor has returned: swap the store now.
        self.store = _NoCommitStore(uri)


def run_to_end(graph: Workflow, how: str, root: str) -> tuple[Any, float]:
    """The run's result and its end-to-end wall time (start → result), then the coordinator is
    killed. ``how``: "workflow" is ``graph.start`` (a detached coordinator); "ckpt" and "none"
    make the coordinator (with or without step commits) as a plain named actor, driven as
    ``Workflow.start`` drives it. Tasks of a detached actor cannot use the idle workers of
    other jobs or detached actors, so "workflow" runs start their own worker processes."""
    begin = time.perf_counter()
    if how == "workflow":
        run = graph.start("go", checkpoint=Path(root))
    else:
        run_id = f"{graph.name}-{uuid.uuid4().hex[:12]}"
        cls = CoordinatorActor if how == "ckpt" else NoCheckpointCoordinator
        actor = ray.remote(cls).options(
            name=f"workflow/{run_id}", namespace=namespace(), num_cpus=0, max_concurrency=1000
        )
        handle = actor.remote(run_id, graph, f"file://{root}", "go")
        ray.get(handle.reopen.remote())  # as Workflow._coordinator does
        run = WorkflowRun(run_id, handle)
    result = run.result(timeout=600)
    wall = time.perf_counter() - begin
    ray.kill(run._handle)
    return result, wall


# --- graphs ------------------------------------------------------------------------------


def chain(n: int) -> Workflow:
    wf = Workflow(f"bench-chain-{n}", max_steps=n + 10)
    for i in range(n):
        wf.add_node(f"n{i:03d}", last_stamp if i == n - 1 else stamp)
        if i:
            wf.add_edge(f"n{i - 1:03d}", f"n{i:03d}")
    return wf


def fan_out(width: int, depth: int) -> Workflow:
    """entry → ``width`` parallel chains of ``depth`` nodes → join. Every node sleeps, on one
    CPU each (so Ray runs at most num_cpus of them at once)."""
    wf = Workflow(f"bench-dag-{width}x{depth}", max_steps=width * depth + 10)
    wf.add_node("entry", sleeper, num_cpus=1)
    wf.add_node("join", joiner, num_cpus=1)
    for c in range(width):
        for d in range(depth):
            wf.add_node(f"c{c:02d}.{d:02d}", sleeper, num_cpus=1)
            wf.add_edge(f"c{c:02d}.{d - 1:02d}" if d else "entry", f"c{c:02d}.{d:02d}")
        wf.add_edge(f"c{c:02d}.{depth - 1:02d}", "join")
    return wf.set_entry("entry")


# --- raw Ray baselines -------------------------------------------------------------------


@ray.remote
def raw_stamp(previous: float | None) -> float:
    return time.time()


@ray.remote(num_cpus=0)
class RawActor:
    async def ping(self) -> None:
        return None

    async def chain(self, n: int) -> float:
        """n sequential task round trips awaited in an async actor, as the coordinator does."""
        stamps = [await raw_stamp.remote(None)]
        for _ in range(n - 1):
            stamps.append(await raw_stamp.remote(stamps[-1]))
        return (stamps[-1] - stamps[0]) / (n - 1)


def raw_task_chain(n: int) -> float:
    stamps = [ray.get(raw_stamp.remote(None))]
    for _ in range(n - 1):
        stamps.append(ray.get(raw_stamp.remote(stamps[-1])))
    return (stamps[-1] - stamps[0]) / (n - 1)


def raw_actor_round_trip(actor: Any, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        ray.get(actor.ping.remote())
    return (time.perf_counter() - start) / calls


@ray.remote(num_cpus=1)
def raw_sleeper(*previous: float) -> float:
    started = time.time()
    time.sleep(SLEEP)
    return started


@ray.remote(num_cpus=1)
def raw_joiner(*previous: float) -> float:
    time.sleep(SLEEP)
    return time.time()


def raw_fan_out(width: int, depth: int) -> tuple[float, float]:
    """The DAG of fan_out as plain Ray tasks from the driver: (in-run wall, end to end)."""
    begin = time.perf_counter()
    entry = raw_sleeper.remote()
    tails = []
    for _ in range(width):
        ref = entry
        for _ in range(depth):
            ref = raw_sleeper.remote(ref)
        tails.append(ref)
    last = ray.get(raw_joiner.remote(*tails))
    return last - ray.get(entry), time.perf_counter() - begin


@ray.remote
def pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def warm_workers(n: int) -> None:
    """Have n idle worker processes (of the driver's job, which a plain actor's tasks use)."""
    for _ in range(20):
        if len(set(ray.get([pid_after.remote(0.5) for _ in range(n)]))) >= n:
            return


# --- the benchmarks ----------------------------------------------------------------------


def bench_chain(root: str) -> None:
    graph = chain(CHAIN)
    warm_workers(2)
    actor = RawActor.remote()
    ray.get(actor.chain.remote(10))
    raw_task_chain(10)
    hows = ("ckpt", "none", "workflow")
    samples: dict[str, list[float]] = {k: [] for k in (*hows, "task", "in-actor", "actor")}
    for _ in range(REPEAT):  # interleaved, so that drift in the machine's load hits all alike
        for how in hows:
            result, _ = run_to_end(graph, how, root)
            samples[how].append((result["last"] - result["first"]) / (CHAIN - 1))
        samples["task"].append(raw_task_chain(CHAIN))
        samples["in-actor"].append(ray.get(actor.chain.remote(CHAIN)))
        samples["actor"].append(raw_actor_round_trip(actor, CHAIN))
    ray.kill(actor)
    ms = {k: statistics.median(v) * 1000 for k, v in samples.items()}
    print(
        f"1. {CHAIN}-node chain of trivial function nodes, ms per node (median of {REPEAT}): "
        f"with file:// checkpoint {ms['ckpt']:.2f}, without {ms['none']:.2f}, "
        f"through Workflow.start {ms['workflow']:.2f}; raw Ray task round trip "
        f"{ms['task']:.2f} (awaited in an async actor {ms['in-actor']:.2f}), raw actor round "
        f"trip {ms['actor']:.2f}"
    )
    print(
        f"   with ÷ without checkpoint {ms['ckpt'] / ms['none']:.2f} (goal <= 1.1); "
        f"with checkpoint ÷ raw task round trip {ms['ckpt'] / ms['task']:.2f}"
    )


def bench_fan_out(root: str) -> None:
    graph = fan_out(WIDTH, DEPTH)
    nodes, path = len(graph.nodes), DEPTH + 2
    ideal = path * SLEEP
    print(
        f"3. {nodes}-node DAG (entry → {WIDTH} chains of {DEPTH} → join), {SLEEP} s nodes, "
        f"critical path {path} nodes = {ideal:.1f} s; wall ÷ {ideal:.1f} s (goal <= 1.1), "
        f"median of {REPEAT_DAG}, in-run (entry starts → join ends) / end to end:"
    )
    warm_workers(WIDTH)  # the chains' runs left fewer: Ray reaps idle workers beyond num_cpus
    run_to_end(graph, "ckpt", root)  # and a first fan-out from a new owner waits for leases
    for how, label in (
        ("raw", "raw Ray tasks, same DAG, from the driver"),
        ("ckpt", "coordinator as a plain actor, warm workers"),
        ("workflow", "Workflow.start (detached: new worker processes)"),
    ):
        inner, outer = [], []
        for _ in range(REPEAT_DAG):
            if how == "raw":
                run_wall, end_wall = raw_fan_out(WIDTH, DEPTH)
            else:
                result, end_wall = run_to_end(graph, how, root)
                run_wall = result["last"] - result["first"]
            inner.append(run_wall)
            outer.append(end_wall)
        run_wall, end_wall = statistics.median(inner), statistics.median(outer)
        print(
            f"   {label}: {run_wall:.2f} s → {run_wall / ideal:.2f} / "
            f"{end_wall:.2f} s → {end_wall / ideal:.2f}"
        )


def warm_up(root: str) -> None:
    """Import everything once, in every kind of coordinator."""
    run_to_end(fan_out(2, 1), "ckpt", root)
    for how in ("ckpt", "none", "workflow"):
        run_to_end(chain(3), how, root)


def main() -> None:
    ga.init(num_cpus=WIDTH + 4, include_dashboard=False)
    root = tempfile.mkdtemp(prefix="bench-workflow-")
    warm_up(root)
    bench_chain(root)
    print("2. ", end="")
    bytes_per_step()
    bench_fan_out(root)
    ga.shutdown()
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
