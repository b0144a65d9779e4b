"""Time travel: read back a finished run, fork it from a step with a change, and replay it
offline to see which step a code change alters.

    python examples/time_travel.py               # the whole story, on a local Ray
    gecko-actors run examples/time_travel.py:workflow --input Lyon
    gecko-actors history RUN_ID
    gecko-actors fork RUN_ID examples/time_travel.py:workflow --at-step 2 --state tone=formal

The graph: plan → forecast (an agent with a weather tool) → write → sign. ``plan`` sets the
state's ``tone``; ``write`` writes the postcard in that tone. The agent's model is scripted,
so it all runs offline; its model and tool calls are journaled (``journal_models=True``),
which is what lets the replay run without calling them.
"""

from __future__ import annotations

import tempfile
from typing import Any

import gecko_actors
from gecko_actors import Agent, ScriptedModel, tool
from gecko_actors.testing import replay
from gecko_actors.workflow import NodeContext, Workflow
from gecko_actors.workflow.history import format_history


@tool
def weather(city: str) -> str:
    """Today's weather in a city."""
    return f"sunny and 24°C in {city}"


def forecaster(messages: list[Any], tools: Any) -> Any:
    """A scripted model: ask the weather tool, then answer with what it said."""
    if messages[-1].role != "tool":
        return ScriptedModel.call("weather", city=messages[-1].text)
    return f"Forecast: {messages[-1].text}."


def plan(ctx: NodeContext) -> str:
    ctx.state["tone"] = "casual"
    return ctx.input


def write(ctx: NodeContext) -> str:
    opening = {"casual": "Hi there!", "formal": "Dear friends,"}.get(ctx.state["tone"], "Hello,")
    return f"{opening} {ctx.input.content}"


SIGNATURE = "G."  # the replay below changes it, as an edit of this file would


def sign(ctx: NodeContext) -> str:
    return f"{ctx.input} — {SIGNATURE}"


def build() -> Workflow:
    agent = Agent.spawn("postcard-forecaster", model=ScriptedModel(forecaster), tools=[weather],
                        get_if_exists=True)  # fmt: skip
    return (
        Workflow("postcard", journal_models=True)
        .add_node("plan", plan)
        .add_node("forecast", agent)
        .add_node("write", write)
        .add_node("sign", sign)
        .add_edge("plan", "forecast")
        .add_edge("forecast", "write")
        .add_edge("write", "sign")
    )


def workflow() -> Workflow:
    """The CLI's target (``examples/time_travel.py:workflow``)."""
    return build()


def main(checkpoint: str | None = None) -> dict[str, Any]:
    info = gecko_actors.init()
    checkpoint = checkpoint or tempfile.mkdtemp(prefix="gecko-time-travel-")
    try:
        wf = build()
        run = wf.start("Lyon", checkpoint=checkpoint)
        print(f"run {run.run_id}: {run.result(timeout=120)}\n")
        print(format_history(run.history()), "\n")

        fork = wf.fork(run.run_id, at_step=2, state={"tone": "formal"}, checkpoint=checkpoint)
        forked = fork.result(timeout=120)
        print(f"fork {fork.run_id} (from step 2, tone formal): {forked}\n")

        same = replay(run.run_id, checkpoint=checkpoint, workflow=wf)
        print(same)
        global SIGNATURE
        SIGNATURE = "Gecko"  # a code change: which recorded step does it alter?
        changed = replay(run.run_id, checkpoint=checkpoint, workflow=wf)
        SIGNATURE = "G."
        print(changed)
        return {
            "result": run.result(),
            "steps": [step["node"] for step in run.history()["steps"]],
            "fork": forked,
            "fork_steps": [step["run_id"] for step in fork.history()["steps"]],
            "replay_ok": same.ok,
            "changed_at": changed.difference.node if changed.difference else None,
        }
    finally:
        if info["new"]:
            gecko_actors.shutdown()


if __name__ == "__main__":
    main()
