"""A two-node cluster loses the node running the agent of one branch of a workflow, while that
agent works; the agent comes back on the head and the run completes. Run in its own process by
tests/test_cluster.py. Prints "RESULT <json>"."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import ray
from node_loss import two_node_cluster, wait_until_dead

import gecko_actors as ga
from gecko_actors import Agent, ScriptedModel
from gecko_actors.workflow import Workflow


def slow_reply(marker_dir: str):
    def reply(messages, tools):
        # Tell the test where we run, then work long enough for the node to be removed.
        Path(marker_dir, f"started-{os.getpid()}").write_text(
            ray.get_runtime_context().get_node_id()
        )
        time.sleep(3)
        return f"researched {messages[-1].text}"

    return reply


def main(workdir: str) -> None:
    cluster, filler, node2 = two_node_cluster(head_cpus=2)
    try:
        markers = Path(workdir, "markers")
        markers.mkdir()
        researcher = Agent.spawn(
            "researcher",
            model=ScriptedModel(slow_reply(str(markers))),
            resources={"agent_slot": 0.5},
        )
        wf = (
            Workflow("branches")
            .add_node("plan", lambda ctx: f"topic {ctx.input}")
            .add_node("research", researcher)
            .add_node("count", lambda ctx: len(ctx.input))
            .add_node(
                "join", lambda ctx: {k: getattr(v, "content", v) for k, v in ctx.input.items()}
            )
            .add_edge("plan", "research")
            .add_edge("plan", "count")
            .add_edge("research", "join")
            .add_edge("count", "join")
        )
        run = wf.start("ray", run_id="branches-1", checkpoint=f"{workdir}/runs")
        deadline = time.monotonic() + 60
        while not any(markers.iterdir()):
            assert time.monotonic() < deadline, run.status()
            time.sleep(0.1)
        first_node = next(markers.iterdir()).read_text()
        cluster.remove_node(node2, allow_graceful=False)
        wait_until_dead(node2.node_id)
        ray.kill(filler)  # free the head's slot so the agent can come back there
        result = run.result(timeout=120)
        print(
            "RESULT "
            + json.dumps(
                {
                    "node2": node2.node_id,
                    "head": cluster.head_node.node_id,
                    "first_node": first_node,
                    "nodes": sorted(p.read_text() for p in markers.iterdir()),
                    "result": result,
                    "status": run.status()["status"],
                }
            )
        )
    finally:
        ga.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
