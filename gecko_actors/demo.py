"""The offline demo: a multi-turn, tool-using agent driven by a ScriptedModel.

The scripted "model" is a function of the conversation: it reads the tool results it has been
given so far and decides the next step, the way a real model would, so the run exercises the
whole ReAct loop (tool schemas, argument validation, concurrent tool calls, history) offline.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from gecko_actors.core.agent import LocalAgent
from gecko_actors.core.calculator import calculator
from gecko_actors.core.messages import AgentOutput, Message, ToolCall
from gecko_actors.core.models import ToolSchema
from gecko_actors.core.scripted import ScriptedModel
from gecko_actors.core.tools import tool

QUESTION = (
    "We run 12 research agents around the clock; each makes 340 model calls an hour. "
    "What do they cost per day on gpt-4o-mini, and on claude-haiku?"
)
_PRICES = {"gpt-4o-mini": 0.00015, "claude-haiku": 0.00025}


@tool
def price_per_call(model: str) -> dict[str, float | str]:
    """Look up the average price of one call to a model, in US dollars.

    Args:
        model: the model's short name, e.g. "gpt-4o-mini".
    """
    if model not in _PRICES:
        raise KeyError(f"no price for {model!r}; known: {sorted(_PRICES)}")
    return {"model": model, "usd_per_call": _PRICES[model]}


def _tool_results(messages: list[Message]) -> dict[str, str]:
    return {m.tool_call_id or "": m.text for m in messages if m.role == "tool"}


def _calls(messages: list[Message]) -> list[ToolCall]:
    return [c for m in messages if m.role == "assistant" for c in m.tool_calls]


def researcher(messages: list[Message], tools: list[ToolSchema]) -> str | list[ToolCall]:
    """The scripted model: plan, look up prices and compute, then answer from the results."""
    calls, results = _calls(messages), _tool_results(messages)
    if not calls:  # turn 1: total calls per day, and both prices at once
        return [
            ScriptedModel.call("calculator", expression="12 * 340 * 24"),
            ScriptedModel.call("price_per_call", model="gpt-4o-mini"),
            ScriptedModel.call("price_per_call", model="claude-haiku"),
        ]
    if len(calls) == 3:  # turn 2: multiply by each price
        per_day = results[calls[0].id]
        prices = [json.loads(results[c.id])["usd_per_call"] for c in calls[1:]]
        return [ScriptedModel.call("calculator", expression=f"{per_day} * {p}") for p in prices]
    per_day = results[calls[0].id]
    gpt, haiku = (float(results[c.id]) for c in calls[3:5])
    return (
        f"The 12 agents make {int(per_day):,} calls a day. That costs ${gpt:,.2f} per day "
        f"on gpt-4o-mini and ${haiku:,.2f} per day on claude-haiku."
    )


def build_agent() -> LocalAgent:
    return LocalAgent(
        ScriptedModel(researcher, name="scripted-researcher"),
        [calculator, price_per_call],
        name="researcher",
        system_prompt="You are a careful analyst. Use tools for every number.",
    )


def format_message(message: Message) -> str:
    if message.role == "assistant" and message.tool_calls:
        calls = ", ".join(f"{c.name}({c.arguments})" for c in message.tool_calls)
        return f"assistant → {calls}"
    if message.role == "tool":
        return f"tool {message.name} ← {message.text}"
    return f"{message.role}: {message.text}"


def run_demo(echo: Callable[[str], None] = print) -> AgentOutput:
    """Run the demo agent and print the conversation, the answer and what it used."""
    agent = build_agent()
    echo(f"question: {QUESTION}\n")
    output = agent.run(QUESTION, session_id="demo")
    for message in output.messages:
        echo(f"  {format_message(message)}")
    echo(f"\nanswer: {output.content}")
    usage = output.usage
    echo(
        f"\nmodel calls: {usage.requests}, tokens: {usage.total_tokens}, "
        f"tool calls: {len(output.tool_calls)}"
    )
    for name, stats in agent.toolbox.stats().items():
        echo(
            f"  {name}: {int(stats['executions'])} call(s), "
            f"{stats['success_rate']:.0%} ok, avg {stats['avg_time'] * 1000:.1f} ms"
        )
    return output
