"""A workflow run outlives its whole Ray instance: start a run, stop Ray mid-run, start a new
Ray, resume. Run in its own process by tests/test_workflow_restart.py. Prints "RESULT <json>"."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import gecko_actors as ga
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


def main(workdir: str, scheme: str = "file") -> None:
    ledger = Path(workdir) / "ledger"
    checkpoint, server = str(Path(workdir) / "runs"), None
    if scheme == "s3":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: moto helper
        from s3util import AWS_ENV, MotoS3

        os.environ.update(AWS_ENV)  # before Ray starts: its workers inherit them
        server = MotoS3("gecko-restart").start()
        checkpoint = server.uri()
    ga.init(num_cpus=2, include_dashboard=False)
    run = build(ledger).start("in", run_id="restart-1", checkpoint=checkpoint)
    while run.status()["nodes"].get("b", {}).get("state") != "done":
        time.sleep(0.1)
    ga.shutdown()  # the whole Ray instance is gone, mid-run
    ga.init(num_cpus=2, include_dashboard=False)
    result = build(ledger).resume("restart-1", checkpoint=checkpoint).result(timeout=120)
    ga.shutdown()
    if server is not None:
        server.stop()
    nodes = [line.split()[0] for line in ledger.read_text().splitlines()]
    print("RESULT " + json.dumps({"result": result, "nodes": nodes}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
