"""A hosted agent outlives its whole Ray instance when its spec is data and its conversations
are in a durable store: spawn it over a SQLite session store, talk to it, shut the instance
down (its GCS, and the directory in it, are gone), start a new Ray in the same driver,
``Agent.get`` it and talk again. Run in its own process by tests/test_agent_archive.py:
``agent_ray_restart.py WORKDIR``. Prints "RESULT <json>"."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import ray
from hardkill import LocalRay

from gecko_actors import Agent, ScriptedModel
from gecko_actors.agents import directory
from gecko_actors.stores.sessions import SQLiteSessionStore


def main(workdir: str) -> None:
    sessions = Path(workdir) / "sessions.db"
    os.environ["GECKO_STORAGE_URL"] = f"sqlite:///{sessions}"  # before Ray starts
    first, second = LocalRay(num_cpus=2, include_dashboard=False), None
    try:
        first.start()
        agent = Agent.spawn("keeper", model=ScriptedModel(["noted", "still here"]))
        before = agent.run("remember the blue door", session_id="s1").content
        first.shutdown()  # the cluster's directory is gone with its GCS
        second = LocalRay(num_cpus=2, include_dashboard=False).start()
        missing = directory.find("keeper") is None
        revived = Agent.get("keeper")
        after = revived.run("what do you remember?", session_id="s1").content
        placement = revived.info()["placement"]
        listed = "keeper" in Agent.list()
        revived.kill()
        try:
            Agent.get("keeper")
            forgotten = False
        except Exception:  # killed: not revived again
            forgotten = True
        second.shutdown()
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for instance in (first, second):
            if instance is not None:
                instance.cleanup()
    records = asyncio.run(SQLiteSessionStore(sessions).load("keeper/s1"))
    result = {
        "before": before,
        "after": after,
        "missing_after_loss": missing,
        "placement": placement,
        "listed": listed,
        "forgotten": forgotten,
        "stored": [(r.get("role"), str(r.get("content"))) for r in records],
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:2])
