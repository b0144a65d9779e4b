"""A workflow run and a hosted agent outlive their whole Ray instance: spawn an agent over a
SQLite session store and talk to it, start a run, SIGKILL every process of the instance
mid-run (no graceful shutdown: the raylet, the GCS, the agents, the coordinator's and the
nodes' workers; see hardkill.py), start a new Ray in the same driver, resume the run,
``Agent.get`` the agent (revived from its archived spec) and talk to it again. Run in its own
process by tests/test_workflow_restart.py: ``ray_restart.py WORKDIR file|s3``. Prints
"RESULT <json>"."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import ray
from hardkill import LocalRay, bounded

from gecko_actors import Agent, ScriptedModel, UserError
from gecko_actors.agents import directory
from gecko_actors.stores.sessions import SQLiteSessionStore
from gecko_actors.workflow import NodeContext, Workflow


def build(ledger: Path, name: str = "restartable", seconds: float = 0.8) -> Workflow:
    """a → b → c → d; each node sleeps, then records its execution in the ledger."""

    def step(ctx: NodeContext) -> str:
        time.sleep(seconds)
        with open(ledger, "a") as out:
            out.write(f"{ctx.node} {ctx.idempotency_key}\n")
        return f"{ctx.input}>{ctx.node}"

    wf = Workflow(name)
    for name in ("a", "b", "c", "d"):
        wf.add_node(name, step)
    return wf.add_edge("a", "b").add_edge("b", "c").add_edge("c", "d")


def wait_until_done(run: Any, node: str, limit: float = 90.0) -> dict[str, Any]:
    """Poll the run's status until ``node`` is done; a status call may fail or hang now and
    then (a coordinator starting, a slow store): retried until the deadline."""
    deadline = time.monotonic() + limit
    status: Any = None
    error: BaseException | None = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(
                f"node {node!r} of run {run.run_id!r} was not done within {limit:g}s; "
                f"last status: {status!r}; last error: {error!r}"
            )
        try:
            status = bounded(run.status, min(left, 10.0), "run.status()")
        except Exception as exc:
            error = exc
        else:  # None: nothing to tell yet (no coordinator answered, no checkpoint)
            if status and status["nodes"].get(node, {}).get("state") == "done":
                return status
            if status and status.get("status") in ("failed", "cancelled"):
                raise RuntimeError(f"run {run.run_id!r} ended before {node!r} was done: {status}")
        time.sleep(0.1)


def coordinator_pid(run: Any) -> int | None:
    try:
        return bounded(
            lambda: ray.get(run.actor.__ray_call__.remote(lambda _self: os.getpid())),
            30,
            "asking the coordinator for its pid",
        )
    except Exception:
        return None


def main(workdir: str, scheme: str = "file") -> None:
    ledger = Path(workdir) / "ledger"
    checkpoint, server = str(Path(workdir) / "runs"), None
    if scheme == "s3":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: moto helper
        from s3util import AWS_ENV, MotoS3

        os.environ.update(AWS_ENV)  # before Ray starts: its workers inherit them
        server = MotoS3("gecko-restart").start()  # in this driver: it outlives the instance
        checkpoint = server.uri()
    sessions = Path(workdir) / "sessions.db"
    os.environ["GECKO_STORAGE_URL"] = f"sqlite:///{sessions}"  # agents' specs and sessions
    first, second = LocalRay(num_cpus=2, include_dashboard=False), None
    try:
        first.start()
        keeper = Agent.spawn("keeper", model=ScriptedModel(["noted", "still here"]))
        agent_before = keeper.run("remember the blue door", session_id="s1").content
        run = build(ledger).start("in", run_id="restart-1", checkpoint=checkpoint)
        wait_until_done(run, "b")
        coordinator = coordinator_pid(run)
        started = time.monotonic()
        loss = first.kill()  # the whole Ray instance is gone, mid-run, without a word
        kill_seconds = time.monotonic() - started
        before = len(ledger.read_text().splitlines())  # nothing of the instance writes now
        second = LocalRay(num_cpus=2, include_dashboard=False).start()
        resumed = build(ledger).resume("restart-1", checkpoint=checkpoint)
        result = resumed.result(timeout=120)
        # The agent: gone from the new instance's directory, found in the session store.
        agent = {"missing_after_loss": directory.find("keeper") is None, "before": agent_before}
        revived = Agent.get("keeper")
        agent["after"] = revived.run("what do you remember?", session_id="s1").content
        agent["placement"] = revived.info()["placement"]
        revived.kill()
        try:
            Agent.get("keeper")
        except UserError:  # killed: not revived again
            agent["forgotten"] = True
        second.shutdown()
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for instance in (first, second):
            if instance is not None:
                instance.cleanup()
        if server is not None:
            server.stop()
    ledger_lines = [line.split() for line in ledger.read_text().splitlines()]
    print(
        "RESULT "
        + json.dumps(
            {
                "result": result,
                "nodes": [node for node, _ in ledger_lines],
                "ledger": ledger_lines,
                "before_kill": before,
                "killed": sorted(set(loss["killed"].values())),
                "killed_pids": sorted(loss["killed"]),
                "survivors": sorted(loss["survivors"].values()),
                "coordinator_killed": coordinator is not None and coordinator in loss["killed"],
                "kill_seconds": round(kill_seconds, 2),  # ray.shutdown() included
                "reset_seconds": round(first.reset_seconds, 2),
                "agent": agent,
                "stored": [
                    str(r.get("content"))
                    for r in asyncio.run(SQLiteSessionStore(sessions).load("keeper/s1"))
                ],
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:3])
