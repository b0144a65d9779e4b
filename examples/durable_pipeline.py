"""A durable pipeline: its coordinator is killed midway, the run is resumed, and no finished
step runs again.

    python examples/durable_pipeline.py            # the whole story, on a local Ray
    gecko-actors run examples/durable_pipeline.py:workflow --input "some text"

The graph: fetch → clean → (count words ‖ count sentences) → report. Every node is a plain
function (it runs as a Ray task) and sleeps a little, so that a kill lands midway.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections import Counter
from typing import Any

import ray

import gecko_actors
from gecko_actors.workflow import NodeContext, Workflow

TEXT = (
    "Ray runs actors. Actors keep state between calls. A workflow coordinator is an actor too: "
    "it commits every finished step, so a crash costs only the step in flight. Steps that "
    "finished never run again."
)
STEP_SECONDS = 0.4


def fetch(ctx: NodeContext) -> str:
    time.sleep(STEP_SECONDS)
    return ctx.input or TEXT


def clean(ctx: NodeContext) -> str:
    time.sleep(STEP_SECONDS)
    return " ".join(ctx.input.split())


def words(ctx: NodeContext) -> dict[str, int]:
    time.sleep(STEP_SECONDS)
    counts = Counter(re.findall(r"[a-z']+", ctx.input.lower()))
    return dict(counts.most_common(3))


def sentences(ctx: NodeContext) -> int:
    time.sleep(STEP_SECONDS)
    return len([s for s in re.split(r"[.!?]+", ctx.input) if s.strip()])


def report(ctx: NodeContext) -> str:
    time.sleep(STEP_SECONDS)
    top = ", ".join(f"{word} ({n})" for word, n in ctx.input["words"].items())
    return f"{ctx.input['sentences']} sentences; most frequent words: {top}"


workflow = (
    Workflow("pipeline")
    .add_node("fetch", fetch)
    .add_node("clean", clean)
    .add_node("words", words)
    .add_node("sentences", sentences)
    .add_node("report", report)
    .add_edge("fetch", "clean")
    .add_edge("clean", "words")
    .add_edge("clean", "sentences")
    .add_edge("words", "report")
    .add_edge("sentences", "report")
)


def main(checkpoint: str | None = None) -> dict[str, Any]:
    """Start a run, kill its coordinator once two steps are committed, resume it."""
    info = gecko_actors.init()
    checkpoint = checkpoint or tempfile.mkdtemp(prefix="gecko-pipeline-")
    try:
        run = workflow.start(TEXT, checkpoint=checkpoint)
        print(f"run {run.run_id}, checkpoint {checkpoint}")
        while run.status()["steps"] < 2:
            time.sleep(0.05)
        committed = sorted(n for n, s in run.status()["nodes"].items() if s["state"] == "done")
        ray.kill(run.actor, no_restart=True)  # the coordinator is gone, mid-run
        _wait_until_dead(run.actor)
        print(f"killed the coordinator after {committed}")
        resumed = workflow.resume(run.run_id, checkpoint=checkpoint)
        rerun = [e["node"] for e in resumed.events() if e["type"] == "node_started"]
        result = resumed.result(timeout=120)
        print(f"resumed: ran {rerun}; the committed {committed} did not run again")
        print(resumed.summary())
        print(f"result: {result}")
        return {"committed": committed, "rerun": rerun, "result": result}
    finally:
        if info["new"]:
            gecko_actors.shutdown()


def _wait_until_dead(actor: Any) -> None:
    """``ray.kill`` returns before the process is gone: a resume sent meanwhile could still
    reach it. Wait until calls to it fail."""
    while True:
        try:
            ray.get(actor.__ray_call__.remote(lambda self: None), timeout=5)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return
        time.sleep(0.05)


if __name__ == "__main__":
    main()
