"""A tool-using agent with structured output, offline.

Run: python examples/tool_agent.py

Swap ScriptedModel for LiteLLMModel("openai/gpt-4o-mini") to use a real provider (with
OPENAI_API_KEY in the environment); nothing else changes.
"""

from __future__ import annotations

from pydantic import BaseModel

from gecko_actors import LocalAgent, ScriptedModel, calculator, tool


@tool
def convert(amount: float, rate: float) -> float:
    """Convert an amount of money with an exchange rate.

    Args:
        amount: the amount in the source currency.
        rate: units of the target currency per unit of the source currency.
    """
    return round(amount * rate, 2)


class Quote(BaseModel):
    """A price quote."""

    usd: float
    eur: float


def main() -> Quote:
    model = ScriptedModel(
        [
            ScriptedModel.call("calculator", expression="3 * 19.99"),
            ScriptedModel.call("convert", amount=59.97, rate=0.92),
            ScriptedModel.call("final_result", usd=59.97, eur=55.17),
        ]
    )
    agent = LocalAgent(model, [calculator, convert], system_prompt="You quote prices.")
    output = agent.run("Three licences at $19.99: what is that in euros?", response_model=Quote)
    for message in output.messages:
        print(f"{message.role:>9}: {message.text or [c.name for c in message.tool_calls]}")
    print("quote:", output.structured)
    return output.structured


if __name__ == "__main__":
    main()
