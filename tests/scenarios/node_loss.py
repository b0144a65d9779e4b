"""A two-node cluster loses the node running an agent (``dedicated``: its own actor; ``hosted``:
its agent host); the agent comes back on the head with its conversation intact (a hosted one
from its spec, in its restarted host). Run in its own process by tests/test_cluster.py (it
starts its own Ray cluster, which must not meet the test session's local Ray). Prints one
JSON line."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import ray
from ray.cluster_utils import Cluster

import gecko_actors as ga
from gecko_actors import Agent, Memory, ScriptedModel
from gecko_actors._actors import pools
from gecko_actors.agents.host import AgentHost
from gecko_actors.runtime import namespace


@ray.remote(num_cpus=0)
class Filler:
    def ping(self) -> bool:
        return True


def wait_until_dead(node_id: str, limit: float = 60.0) -> None:
    # Until the GCS declares the node dead, its orphaned workers may still answer calls.
    deadline = time.monotonic() + limit
    while any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"node {node_id} still alive after {limit}s")
        time.sleep(0.2)


def reply(messages, tools):
    return f"seen {sum(m.role == 'user' for m in messages)} user messages"


def two_node_cluster(head_cpus: int = 1) -> tuple[Cluster, Any, Any]:
    """A head whose "agent_slot" is mostly taken (by the returned filler) and a second node
    with a free one, so that an agent asking for the slot lands on the second node."""
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": head_cpus,
            "resources": {"head": 1, "agent_slot": 1},
            # Notice a dead node in ~1.5 s instead of ~30 s.
            "_system_config": {
                "health_check_initial_delay_ms": 0,
                "health_check_period_ms": 500,
                "health_check_failure_threshold": 3,
            },
        },
    )
    # These scenarios place hosts themselves (host_on_node2): init must not start the pool's
    # hosts first, wherever the scheduler puts them.
    os.environ["GECKO_WARM_HOSTS"] = "false"
    ga.init(address=cluster.address)
    filler = Filler.options(resources={"agent_slot": 0.6}).remote()
    ray.get(filler.ping.remote())  # the head's slot is now too small for an agent
    node2 = cluster.add_node(num_cpus=1, resources={"agent_slot": 1})
    cluster.wait_for_nodes()
    return cluster, filler, node2


def host_on_node2(host_class: type, name: str) -> Any:
    """Make host actor ``name`` (an agent or workflow host, with the options a pool's host
    gets) where only node 2 has room."""
    return (
        ray.remote(host_class)
        .options(
            name=name,
            namespace=namespace(),
            lifetime="detached",
            num_cpus=0,
            max_restarts=-1,
            max_task_retries=-1,
            max_concurrency=10_000,
            resources={"agent_slot": 0.5},  # only node 2 has that much free now
        )
        .remote(name)
    )


def main(workdir: str, placement: str) -> None:
    cluster, filler, node2 = two_node_cluster()
    try:
        memory = Memory.spawn(
            "cluster", sessions=f"sqlite:///{workdir}/sessions.db", resources={"head": 0.01}
        )
        if placement == "hosted":
            # The host the agent will be placed on.
            host_on_node2(AgentHost, pools.candidates("traveller", pools.code_env(), "agents")[0])
            agent = Agent.spawn("traveller", model=ScriptedModel(reply), memory=memory)
        else:
            agent = Agent.spawn(
                "traveller",
                model=ScriptedModel(reply),
                memory=memory,
                resources={"agent_slot": 0.5},
            )
        before = agent.info()["node_id"]
        first = [agent.run(text, session_id="s", timeout=60).content for text in ("one", "two")]
        cluster.remove_node(node2, allow_graceful=False)
        wait_until_dead(node2.node_id)
        ray.kill(filler)  # free the head's slot so the agent can come back there
        after_run = agent.run("three", session_id="s", timeout=120).content
        after = agent.info()["node_id"]
        history = [m.text for m in memory.history("traveller", "s")]
        print(
            "RESULT "
            + json.dumps(
                {
                    "node2": node2.node_id,
                    "head": cluster.head_node.node_id,
                    "placement": agent.info()["placement"],
                    "before": before,
                    "after": after,
                    "first": first,
                    "after_run": after_run,
                    "history": history,
                }
            )
        )
    finally:
        ga.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
