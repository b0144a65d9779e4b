"""Workflow benchmarks: ratios measured side by side in one run (never asserted in tests).

Run: python benchmarks/bench_workflow.py [--quick]

Where a function node runs (``workflow/coordinator.py``): by default in the coordinator's own
process (a sync function in a thread of the engine's node pool, an async one on the loop
itself), with no Ray task, CPU slot or worker process per node. Only a function node
that asks for ``num_cpus``/``num_gpus``, or a sync one with a ``timeout``, runs as a killable
Ray generator task (``num_cpus=0`` unless it asks for more).

1. per-node overhead of a chain of 100 trivial function nodes (20 with --quick): the
   coordinator with checkpoints to file:// ÷ the same coordinator whose ``commit_step`` is a
   no-op (goal <= 1.1), and ÷ a raw Ray task round trip (a chain of trivial tasks from the
   driver). Per node is (last node's clock - first node's clock) / (nodes - 1), read from the
   nodes' outputs, so the coordinator's process start is not counted. Also printed: the same
   chain through Workflow.start, the chain with every node a killable Ray task (a sync node
   with a timeout), raw tasks awaited in an async actor (what a killable node costs at least)
   and a raw actor round trip. Median of 5 runs (3 with --quick), interleaved.
2. checkpoint bytes per step at steps 10, 100, 1,000 (bench_checkpoint.bytes_per_step)
   (goal: step 1,000 <= 1.1 x step 10).
3. bytes sent per node dispatch at step 10 and step 200 of a run whose outputs are 10 KB
   strings (goal: step 200 <= 1.1 x step 10): the size, pickled with Ray's cloudpickle, of
   the ``(fn, ctx)`` a killable Ray task of that visit is sent (``ctx.outputs`` travels as a
   handle of the coordinator, asked for each output the node reads). The engine runs Ray-free
   on a file:// store; a recording executor pickles each context before the node runs. For a
   chain of 200 distinct nodes and for a 200-step ``Next`` loop over one node. ``ctx.input``
   is the previous output (10 KB) in both: "the rest" is the dispatch without it.
4. a DAG with 20-way fan-out: entry → 20 parallel chains of 10 nodes → join (202 nodes; 8
   chains of 6, 50 nodes, with --quick), every node sleeping 0.2 s. The critical path is
   entry + one chain + join (12 nodes, 2.4 s): wall ÷ 2.4 s (goal <= 1.1), in-run (entry
   starts → join ends) and end to end (start → result, with the coordinator's process start),
   with the peak number of nodes that slept at once (from the checkpoint). Side by side: the
   same DAG as plain Ray tasks of one CPU each (the floor on this machine); the coordinator as
   a plain actor with the nodes in its process (threads), and with the nodes as Ray tasks of
   ``num_cpus=1`` (warm workers of the job); and both through Workflow.start (a detached
   actor, whose Ray tasks cannot use the idle workers of the job or of other detached actors:
   they start new ones; in-process nodes need none).

Ray gets num_cpus = fan-out + 4 logical CPUs (for the raw tasks and the num_cpus=1 nodes).
"""

from __future__ import annotations

import asyncio
import dataclasses
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
from gecko_actors.checkpoint import CheckpointStore, StepRecord
from gecko_actors.runtime import namespace
from gecko_actors.workflow import Next, Workflow, WorkflowRun
from gecko_actors.workflow.coordinator import CoordinatorActor, RayExecutor
from gecko_actors.workflow.engine import RunEngine
from gecko_actors.workflow.execution import LocalExecutor
from gecko_actors.workflow.graph import Node, NodeContext, WorkflowGraph

QUICK = "--quick" in sys.argv
CHAIN = 20 if QUICK else 100
REPEAT = 3 if QUICK else 5
REPEAT_DAG = 2 if QUICK else 3
WIDTH, DEPTH = (8, 6) if QUICK else (20, 10)
SLEEP = 0.2
KILLABLE = 600.0  # a timeout that never fires: it makes a sync node a killable Ray task
OUTPUT_SIZE = 10_000  # bytes of each output in the dispatch benchmark
STEPS = (10, 200)  # the dispatches measured


# --- node functions (each returns its own clock reading) ---------------------------------


def stamp(ctx: NodeContext) -> float:
    return time.time()


def last_stamp(ctx: NodeContext) -> dict[str, float]:
    last = time.time()  # before reading an output (a Ray task reads it from the checkpoint)
    return {"first": ctx.outputs["n000"], "last": last}


def sleeper(ctx: NodeContext) -> float:
    started = time.time()
    time.sleep(SLEEP)
    return started


def joiner(ctx: NodeContext) -> dict[str, float]:
    time.sleep(SLEEP)
    last = time.time()
    return {"first": ctx.outputs["entry"], "last": last}


def ten_kb(ctx: NodeContext) -> str:
    """A 10 KB output, different at every step."""
    return f"{ctx.node}/{ctx.visit}:".ljust(OUTPUT_SIZE, "x")


def ten_kb_loop(ctx: NodeContext) -> Any:
    """The same node again with a 10 KB input, until its last visit."""
    return Next(ctx.node, ten_kb(ctx)) if ctx.visit < STEPS[-1] else "done"


# --- the coordinator without checkpoints ---------------------------------------------------


class _NoCommitStore(CheckpointStore):
    """The real store, except that steps are not written (the manifest, the owner claim and
    the run's status, once per run, still are: the run's result is read back from them)."""

    def commit_step(self, run_id: str, record: StepRecord) -> int:
        return 0


class NoCheckpointCoordinator(CoordinatorActor):
    """For in-process nodes only: a killable node would read its outputs from the steps."""

    def __init__(self, run_id: str, graph: Any, uri: str, input: Any) -> None:
        super().__init__(run_id, graph, uri, input)
        # The run is driven only once the constructor has returned: swap the engine's store.
        self.engine.store = _NoCommitStore(uri)


def run_to_end(graph: Workflow, how: str, root: str) -> tuple[Any, float, str]:
    """The run's result, its end-to-end wall time (start → result) and its run id, then a
    coordinator made here is killed. ``how``: "workflow" is ``graph.start`` (a hosted run);
    "ckpt" and "none" make the coordinator (with or without step commits) as a plain named
    actor, driven as ``Workflow.start`` drives it."""
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
    if how != "workflow":  # the coordinator made here; a workflow host serves other runs
        ray.kill(run.actor)
    return result, wall, run.run_id


# --- graphs ------------------------------------------------------------------------------


def chain(n: int, name: str = "bench-chain", **options: Any) -> Workflow:
    wf = Workflow(f"{name}-{n}", max_steps=n + 10)
    for i in range(n):
        wf.add_node(f"n{i:03d}", last_stamp if i == n - 1 else stamp, **options)
        if i:
            wf.add_edge(f"n{i - 1:03d}", f"n{i:03d}")
    return wf


def fan_out(width: int, depth: int, **options: Any) -> Workflow:
    """entry → ``width`` parallel chains of ``depth`` nodes → join, every node sleeping;
    ``options`` (e.g. ``num_cpus=1``) apply to every node."""
    tag = "-tasks" if options else ""
    wf = Workflow(f"bench-dag-{width}x{depth}{tag}", max_steps=width * depth + 10)
    wf.add_node("entry", sleeper, **options)
    wf.add_node("join", joiner, **options)
    for c in range(width):
        for d in range(depth):
            wf.add_node(f"c{c:02d}.{d:02d}", sleeper, **options)
            wf.add_edge(f"c{c:02d}.{d - 1:02d}" if d else "entry", f"c{c:02d}.{d:02d}")
        wf.add_edge(f"c{c:02d}.{depth - 1:02d}", "join")
    return wf.set_entry("entry")


def peak_parallel(root: str, run_id: str) -> int:
    """How many nodes of a fan_out run slept at once (their start clocks, from the steps)."""
    starts = sorted(
        r.output if isinstance(r.output, float) else r.output["last"] - SLEEP
        for r in CheckpointStore(f"file://{root}").load_steps(run_id)
    )
    return max(sum(1 for s in starts if t <= s < t + SLEEP * 0.9) for t in starts)


# --- raw Ray baselines -------------------------------------------------------------------


@ray.remote
def raw_stamp(previous: float | None) -> float:
    return time.time()


@ray.remote(num_cpus=0)
class RawActor:
    async def ping(self) -> None:
        return None

    async def chain(self, n: int) -> float:
        """n sequential task round trips awaited in an async actor, as a coordinator awaits a
        killable node's task."""
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


# --- bytes per dispatch (Ray-free) ----------------------------------------------------------


class RecordingExecutor(LocalExecutor):
    """Runs every node in this process, and records, at the dispatches numbered in ``at``
    (1-based), the pickled size of what a killable Ray task of that attempt is sent (what
    ``RayExecutor.lend`` makes of ``node.target, ctx``: outputs lent by a coordinator
    handle), whole and without ``ctx.input``."""

    def __init__(self, store: CheckpointStore, at: tuple[int, ...], handle: Any) -> None:
        super().__init__(store)
        self.at = at
        self.dispatches = 0
        self.sent: dict[int, tuple[int, int, int]] = {}
        self.lender = RayExecutor(store, handle)

    def start(self, node: Node, ctx: NodeContext) -> Any:
        self.dispatches += 1
        if self.dispatches in self.at:  # before the node runs: it swaps ctx.state for a view
            sent, release = self.lender.lend(ctx)
            whole = len(ray.cloudpickle.dumps((node.target, sent)))
            rest = len(ray.cloudpickle.dumps((node.target, dataclasses.replace(sent, input=None))))
            self.sent[self.dispatches] = (whole, rest, len(ctx.outputs))
            release()
        return super().start(node, ctx)


@ray.remote
class _Lender:
    """Stands in for a coordinator: only its handle is pickled."""


def dispatch_sizes(graph: WorkflowGraph, root: str) -> dict[int, tuple[int, int, int]]:
    store = CheckpointStore(f"file://{root}")
    executor = RecordingExecutor(store, STEPS, _Lender.remote())
    engine = RunEngine(graph, f"{graph.name}-{uuid.uuid4().hex[:12]}", store, executor)
    engine.open(ten_kb(NodeContext(None, node="input")))
    asyncio.run(engine.run())
    assert engine.outcome == "succeeded", engine.failure
    assert set(executor.sent) == set(STEPS), executor.sent
    return executor.sent


def bench_dispatch(root: str) -> None:
    first, last = STEPS
    chain_graph = WorkflowGraph("bench-dispatch-chain", max_steps=last + 10)
    for i in range(last):
        chain_graph.add_node(f"n{i:03d}", ten_kb)
        if i:
            chain_graph.add_edge(f"n{i - 1:03d}", f"n{i:03d}")
    loop_graph = WorkflowGraph("bench-dispatch-loop", max_steps=last + 10)
    loop_graph.add_node("loop", ten_kb_loop)
    print(
        f"3. bytes sent per node dispatch (pickled (fn, ctx) of a killable Ray task), "
        f"{OUTPUT_SIZE // 1000} KB outputs, step {first} vs step {last} (goal <= 1.1):"
    )
    for label, graph in (
        (f"chain of {last} distinct nodes", chain_graph),
        (f"Next loop over one node, {last} steps", loop_graph),
    ):
        sent = dispatch_sizes(graph, root)
        (whole0, rest0, n0), (whole1, rest1, n1) = sent[first], sent[last]
        print(
            f"   {label}: {whole0} → {whole1} bytes, ratio {whole1 / whole0:.3f}; without "
            f"the 10 KB input {rest0} → {rest1} bytes ({rest1 / rest0:.2f}x; ctx.outputs "
            f"names {n0} → {n1} nodes)"
        )


# --- the benchmarks ----------------------------------------------------------------------


def bench_chain(root: str) -> None:
    variants = {
        "ckpt": (chain(CHAIN), "ckpt"),
        "none": (chain(CHAIN), "none"),
        "workflow": (chain(CHAIN), "workflow"),
        "killable": (chain(CHAIN, "bench-killable", timeout=KILLABLE), "ckpt"),
    }
    warm_workers(2)
    actor = RawActor.remote()
    ray.get(actor.chain.remote(10))
    raw_task_chain(10)
    samples: dict[str, list[float]] = {k: [] for k in (*variants, "task", "in-actor", "actor")}
    for _ in range(REPEAT):  # interleaved, so that drift in the machine's load hits all alike
        for key, (graph, how) in variants.items():
            result, _, _ = run_to_end(graph, how, root)
            samples[key].append((result["last"] - result["first"]) / (CHAIN - 1))
        samples["task"].append(raw_task_chain(CHAIN))
        samples["in-actor"].append(ray.get(actor.chain.remote(CHAIN)))
        samples["actor"].append(raw_actor_round_trip(actor, CHAIN))
    ray.kill(actor)
    ms = {k: statistics.median(v) * 1000 for k, v in samples.items()}
    print(
        f"1. {CHAIN}-node chain of trivial function nodes, ms per node (median of {REPEAT}): "
        f"in the coordinator with file:// checkpoint {ms['ckpt']:.2f}, without "
        f"{ms['none']:.2f}, through Workflow.start {ms['workflow']:.2f}; as killable Ray tasks "
        f"with checkpoint {ms['killable']:.2f}; raw Ray task round trip {ms['task']:.2f} "
        f"(awaited in an async actor {ms['in-actor']:.2f}), raw actor round trip "
        f"{ms['actor']:.2f}"
    )
    print(
        f"   with ÷ without checkpoint {ms['ckpt'] / ms['none']:.2f} (goal <= 1.1); "
        f"with checkpoint ÷ raw task round trip {ms['ckpt'] / ms['task']:.2f}; "
        f"killable ÷ raw task awaited in an actor {ms['killable'] / ms['in-actor']:.2f}"
    )


def bench_fan_out(root: str) -> None:
    graphs = {"threads": fan_out(WIDTH, DEPTH), "tasks": fan_out(WIDTH, DEPTH, num_cpus=1)}
    nodes, path = len(graphs["threads"].nodes), DEPTH + 2
    ideal = path * SLEEP
    print(
        f"4. {nodes}-node DAG (entry → {WIDTH} chains of {DEPTH} → join), {SLEEP} s nodes, "
        f"critical path {path} nodes = {ideal:.1f} s; wall ÷ {ideal:.1f} s (goal <= 1.1), "
        f"median of {REPEAT_DAG}, in-run (entry starts → join ends) / end to end, peak "
        f"nodes asleep at once:"
    )
    warm_workers(WIDTH)  # the chains' runs left fewer: Ray reaps idle workers beyond num_cpus
    run_to_end(graphs["tasks"], "ckpt", root)  # and a first fan-out from a new owner waits
    raw_fan_out(WIDTH, DEPTH)  # for leases: the driver's too
    for key, how, label in (
        ("raw", "raw", "raw Ray tasks (num_cpus=1), same DAG, from the driver"),
        ("threads", "ckpt", "coordinator as a plain actor, nodes in its process"),
        ("tasks", "ckpt", "coordinator as a plain actor, nodes as num_cpus=1 Ray tasks"),
        ("threads", "workflow", "Workflow.start, nodes in its process"),
        ("tasks", "workflow", "Workflow.start, nodes as num_cpus=1 Ray tasks (new workers)"),
    ):
        inner, outer, peaks = [], [], []
        for _ in range(REPEAT_DAG):
            if how == "raw":
                run_wall, end_wall = raw_fan_out(WIDTH, DEPTH)
            else:
                result, end_wall, run_id = run_to_end(graphs[key], how, root)
                run_wall = result["last"] - result["first"]
                peaks.append(peak_parallel(root, run_id))
            inner.append(run_wall)
            outer.append(end_wall)
        run_wall, end_wall = statistics.median(inner), statistics.median(outer)
        peak = "" if how == "raw" else f", peak {max(peaks)}"
        print(
            f"   {label}: {run_wall:.2f} s → {run_wall / ideal:.2f} / "
            f"{end_wall:.2f} s → {end_wall / ideal:.2f}{peak}"
        )


def warm_up(root: str) -> None:
    """Import everything once, in every kind of coordinator."""
    run_to_end(fan_out(2, 1, num_cpus=1), "ckpt", root)
    run_to_end(chain(3, "bench-killable", timeout=KILLABLE), "ckpt", root)
    for how in ("ckpt", "none", "workflow"):
        run_to_end(chain(3), how, root)


def main() -> None:
    root = tempfile.mkdtemp(prefix="bench-workflow-")
    ga.init(num_cpus=WIDTH + 4, include_dashboard=False)
    warm_up(root)
    bench_chain(root)
    print("2. ", end="")
    bytes_per_step(root)
    bench_dispatch(root)
    bench_fan_out(root)
    ga.shutdown()
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
