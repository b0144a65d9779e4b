"""A two-node cluster loses the node of the workflow host that drives a run, mid-run: Ray
restarts the host (by its name) on the head, whose constructor resumes the run from its
checkpoint; the committed node does not run again. Run in its own process by
tests/test_cluster.py. Prints "RESULT <json>"."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import ray
from node_loss import host_on_node2, two_node_cluster, wait_until_dead

import gecko_actors as ga
from gecko_actors.checkpoint import CheckpointStore
from gecko_actors.workflow import NodeContext, Workflow
from gecko_actors.workflow.host import WorkflowHost
from gecko_actors.workflow.hosting import packed


def node_id() -> str:
    return ray.get_runtime_context().get_node_id()


def main(workdir: str) -> None:
    ledger, gate = Path(workdir, "ledger"), Path(workdir, "gate")

    def first(ctx: NodeContext) -> Any:
        with open(ledger, "a") as out:
            out.write(f"first {ctx.idempotency_key}\n")
        return ctx.input

    async def second(ctx: NodeContext) -> Any:
        while not gate.exists():
            await asyncio.sleep(0.05)
        with open(ledger, "a") as out:
            out.write(f"second {ctx.idempotency_key} {node_id()}\n")
        return f"done {ctx.input}"

    cluster, filler, node2 = two_node_cluster(head_cpus=2)
    try:
        wf = Workflow("hosted").add_node("first", first).add_node("second", second)
        wf.add_edge("first", "second")
        name = "workflows/host/node-loss/0"
        host = host_on_node2(WorkflowHost, name)
        uri = f"file://{workdir}/runs"
        ray.get(host.start_run.remote("hosted-1", uri, packed(wf), "x", time.time()))
        before = ray.get(host.__ray_call__.remote(lambda self: os.getpid()))
        where = ray.get(
            host.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id())
        )
        store = CheckpointStore(uri)
        deadline = time.monotonic() + 60
        while len(store.load_steps("hosted-1")) < 1:  # "first" is committed
            assert time.monotonic() < deadline
            time.sleep(0.1)
        cluster.remove_node(node2, allow_graceful=False)
        wait_until_dead(node2.node_id)
        ray.kill(filler)  # free the head's slot so the host can come back there
        gate.touch()
        result = ray.get(host.result.remote("hosted-1"), timeout=120)  # the restarted host
        after = ray.get(host.__ray_call__.remote(lambda self: os.getpid()))
        print(
            "RESULT "
            + json.dumps(
                {
                    "node2": node2.node_id,
                    "head": cluster.head_node.node_id,
                    "where": where,
                    "pids": [before, after],
                    "result": result,
                    "ledger": ledger.read_text().splitlines(),
                }
            )
        )
    finally:
        ga.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
