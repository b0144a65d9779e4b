"""The main job: a research workflow on Ray, offline by default.

A planner agent splits a topic into three questions; a team of three researcher agents answers
them in parallel, with tools served by one shared toolbox actor; a writer drafts a report; a
critic reviews it and sends it back (``Next``) until it is satisfied. Every finished node is
checkpointed, so the run can be resumed after a crash.

Offline, each agent's "model" is a scripted function of its conversation (it reads the plan,
calls tools, answers from their results), so the whole machinery runs without a network or a
key. ``model="openai/gpt-4o-mini"`` (any LiteLLM model) runs the same graph for real.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from gecko_actors.core.calculator import calculator
from gecko_actors.core.messages import Message, ToolCall
from gecko_actors.core.models import ToolSchema
from gecko_actors.core.scripted import ScriptedModel
from gecko_actors.core.tools import tool
from gecko_actors.workflow.graph import Next, NodeContext

TOPIC = "How should we run 50 LLM agents in parallel without going over our rate limits?"
MAX_ROUNDS = 3  # reviews before the critic's last word is taken as final
RESEARCHERS = 3

_NOTES = {
    ("actor", "parallel", "team"): "Each agent is a Ray actor, a process of its own that Ray "
    "restarts if it dies; a team sends one task to all its members at once, and Team.map "
    "spreads a batch over them with a bound on the calls in flight.",
    ("rate", "limit"): "One limiter actor, shared by every model gateway replica, keeps the "
    "whole cluster under the provider's requests- and tokens-per-minute limits, retries "
    "included; a 429's Retry-After pauses every replica.",
    ("cost",): "Input tokens cost $0.15 per million on gpt-4o-mini.",
    ("crash", "fail", "node"): "A workflow commits every finished node to object storage; "
    "after the loss of a process, a node or the whole cluster it resumes from the last "
    "committed step and never repeats finished work.",
}


@tool
def search_notes(query: str) -> str:
    """Search the team's engineering notes.

    Args:
        query: words to look for, e.g. "rate limits".
    """
    words = set(re.findall(r"[a-z]+", query.lower()))
    hits = [note for keys, note in _NOTES.items() if any(k in w for k in keys for w in words)]
    return "\n".join(hits) if hits else "no notes match; try other words"


# --- the scripted models: functions of the conversation --------------------------------------


def _last_user(messages: list[Message]) -> str:
    return next(m.text for m in reversed(messages) if m.role == "user")


def _tool_results(messages: list[Message]) -> list[str]:
    return [m.text for m in messages if m.role == "tool"]


def plan(messages: list[Message], tools: list[ToolSchema]) -> str:
    return (
        f"Plan for: {_last_user(messages)}\n"
        "1. How do many agents run in parallel, as a team?\n"
        "2. How do we stay under the rate limits, and what does it cost?\n"
        "3. What happens when a process or a node crashes mid-run?"
    )


def researcher(index: int) -> Callable[[list[Message], list[ToolSchema]], str | list[ToolCall]]:
    """Researcher ``index`` answers question ``index`` of the plan, from tool results."""

    def research(messages: list[Message], tools: list[ToolSchema]) -> str | list[ToolCall]:
        results = _tool_results(messages)
        if not results:
            question = re.findall(r"^\d\. (.*)$", _last_user(messages), re.M)[index - 1]
            calls = [ScriptedModel.call("search_notes", query=question)]
            if "cost" in question:  # 50 agents x 120 calls/h x 2,000 tokens, for a day
                expression = "50 * 120 * 2000 * 24 / 1000000 * 0.15"
                calls.append(ScriptedModel.call("calculator", expression=expression))
            return calls
        finding = " ".join(results[0].split("\n"))
        if len(results) > 1:
            finding += f" For 50 agents that is about ${float(results[1]):,.2f} a day."
        return f"Finding {index}: {finding}"

    return research


def write(messages: list[Message], tools: list[ToolSchema]) -> str:
    brief = _last_user(messages)
    findings = re.findall(r"^- Finding \d: (.*)$", brief, re.M)
    report = "Report\n\n" + "\n".join(f"* {f}" for f in findings)
    if "Critic:" in brief:
        report += (
            "\n\nConclusion: run each agent as an actor, send every model call through "
            "gateways that share one rate limiter, and checkpoint the workflow: parallel, "
            "within the limits, and safe from crashes."
        )
    return report


def critique(messages: list[Message], tools: list[ToolSchema]) -> str:
    if "Conclusion:" in _last_user(messages):
        return "APPROVED"
    return "REVISE: the report lists findings but draws no conclusion; add one."


# --- the graph -------------------------------------------------------------------------------

_PROMPTS = {
    "planner": "Break the topic into exactly 3 numbered research questions, one per line, "
    "formatted '1. ...'.",
    "researcher": "You are researcher {index}. Answer only question {index} of the plan you "
    "are given, in two or three sentences, using the search_notes and calculator tools.",
    "writer": "Write a short report (under 250 words) from the findings. If a critic's "
    "feedback is included, revise the previous draft accordingly. End with a line starting "
    "'Conclusion:'.",
    "critic": "Reply APPROVED if the report answers its topic and ends with a conclusion; "
    "otherwise reply 'REVISE:' and one sentence of feedback.",
}


def collect(ctx: NodeContext) -> str:
    """The team's answers as one brief for the writer (a failed member is left out)."""
    topic = ctx.outputs["topic"]
    answers = [o.content for o in ctx.input["outputs"] if o is not None]
    return f"Topic: {topic}\n\nFindings:\n" + "\n".join(f"- {a}" for a in answers)


def decide(ctx: NodeContext) -> Any:
    """The critic's verdict: the report when approved, else back to the writer."""
    rounds = ctx.state["reviews"] = ctx.state.get("reviews", 0) + 1
    verdict, draft = ctx.input.content.strip(), ctx.outputs["write"].content
    if verdict.upper().startswith("APPROVED") or rounds >= MAX_ROUNDS:
        return draft
    return Next(
        "write", f"{ctx.outputs['collect']}\n\nPrevious draft:\n{draft}\n\nCritic: {verdict}"
    )


def build(model: str | None = None, *, prefix: str = "demo") -> tuple[Any, list[Any], Any]:
    """The workflow, its agents and their shared toolbox (each ``<prefix>-<role>``)."""
    from gecko_actors.agents.handle import Agent
    from gecko_actors.team import Team
    from gecko_actors.toolboxes import RemoteToolBox
    from gecko_actors.workflow.run import Workflow

    models = _models(model)
    tools = RemoteToolBox.spawn(f"{prefix}-tools", [search_notes, calculator], get_if_exists=True)

    def agent(role: str, **prompt_vars: Any) -> Agent:
        name = f"{prefix}-{role}{prompt_vars.get('index', '')}"
        return Agent.spawn(
            name,
            model=models(role, prompt_vars.get("index", 0)),
            system_prompt=_PROMPTS[role].format(**prompt_vars),
            tools=tools if role == "researcher" else None,
            get_if_exists=True,
        )

    planner, writer, critic = agent("planner"), agent("writer"), agent("critic")
    team = [agent("researcher", index=i) for i in range(1, RESEARCHERS + 1)]
    wf = (
        Workflow("research", max_steps=5 + 3 * MAX_ROUNDS)
        .add_node("topic", lambda ctx: ctx.input.strip())
        .add_node("plan", planner)
        .add_node("research", Team(team))
        .add_node("collect", collect)
        .add_node("write", writer)
        .add_node("critic", critic)
        .add_node("decide", decide)
        .add_edge("topic", "plan")
        .add_edge("plan", "research")
        .add_edge("research", "collect")
        .add_edge("collect", "write")
        .add_edge("write", "critic")
        .add_edge("critic", "decide")
    )
    return wf, [planner, *team, writer, critic], tools


def _models(model: str | None) -> Callable[[str, int], Any]:
    if model is None:
        scripted = {"planner": plan, "writer": write, "critic": critique}
        return lambda role, i: ScriptedModel(
            researcher(i) if role == "researcher" else scripted[role], name=f"scripted-{role}"
        )
    from gecko_actors.core.litellm_model import LiteLLMModel
    from gecko_actors.gateway import ModelGateway

    real = LiteLLMModel(model)
    real.validate_environment()  # a missing key is a UserError naming the variable
    gateway = ModelGateway.spawn(real)
    return lambda role, i: gateway


def run_demo(
    echo: Callable[[str], None] = print,
    *,
    model: str | None = None,
    checkpoint: str | None = None,
    address: str | None = None,
    topic: str = TOPIC,
) -> str:
    """Run the research workflow on Ray, printing progress per node; returns the report."""
    import gecko_actors
    from gecko_actors.workflow.run import checkpoint_uri
    from gecko_actors.workflow.status import format_event

    started = time.perf_counter()
    info = gecko_actors.init(address)
    echo(f"Ray: {info['address']} (namespace {info['namespace']})")
    if info.get("dashboard_url"):
        actors = "Actors: workflows/host/..., agent/demo-..."
        echo(f"dashboard: http://{info['dashboard_url']} ({actors})")
    prefix = f"demo-{uuid.uuid4().hex[:6]}"
    wf, agents, tools = build(model, prefix=prefix)
    try:
        run = wf.start(topic, checkpoint=checkpoint)
        echo(f"workflow {wf.name}, run {run.run_id}: {topic}\n")
        for event in run.events():
            line = format_event(event)
            if line:
                echo(line)
        report = run.result()
        echo(f"\n{report}\n\n{run.summary()}")
    finally:
        for actor in [*agents, tools]:
            actor.kill()
    uri = checkpoint_uri(checkpoint)
    echo(
        f"\ncheckpoint: {uri}/{run.run_id}\n"
        f"  gecko-actors status {run.run_id} --checkpoint {uri}\n"
        f"  gecko-actors ui --checkpoint {uri}    # every run, its graph and steps, in a browser\n"
        f"finished in {time.perf_counter() - started:.1f}s"
    )
    return report
