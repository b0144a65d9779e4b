"""Grade 200 answers with a team of agents under one cluster-wide rate limit.

    python examples/batch_eval.py

The agents call a model through a `ModelGateway`; its limiter actor keeps every call of every
agent under one requests-per-minute budget. `Team.map` spreads the 200 prompts over the team
with a bounded number in flight and a progress bar, and the usage summary adds up tokens and
cost. Offline, the "model" is a fake OpenAI-compatible server on 127.0.0.1 priced as
gpt-4o-mini; point `MODEL` at a real provider (with its key in the environment) to run it for
real.
"""

from __future__ import annotations

import os
import re
import uuid
from typing import Any

import gecko_actors
from gecko_actors import Agent, LiteLLMModel, ModelGateway, Team, Usage
from gecko_actors.testing import FakeLLMServer, FakeReply

MODEL = "openai/gpt-4o-mini"
PROMPTS = [f"Grade this answer to 'what is {i} + {i}?': {2 * i + (i % 5 == 0)}" for i in range(200)]
# The fake server wants some key, never a real one. Set before Ray starts, so the gateway's
# process inherits it (keys are read where they are used, never shipped).
os.environ.setdefault("GECKO_EXAMPLE_KEY", "offline-example")


def grade(body: dict[str, Any]) -> FakeReply:
    """The fake model: checks the arithmetic in the prompt."""
    prompt = body["messages"][-1]["content"]
    a, b, given = (int(n) for n in re.findall(r"\d+", prompt)[:3])
    return FakeReply.text("correct" if a + b == given else "wrong")


def main(requests_per_minute: int = 3000) -> dict[str, Any]:
    info = gecko_actors.init()
    server = FakeLLMServer(handler=grade).start()
    suffix = uuid.uuid4().hex[:6]
    gateway = agents = None
    try:
        model = LiteLLMModel(MODEL, api_base=server.url, api_key_env="GECKO_EXAMPLE_KEY")
        gateway = ModelGateway.spawn(model, requests_per_minute=requests_per_minute)
        agents = [Agent.spawn(f"grader{i}-{suffix}", model=gateway) for i in range(4)]
        results = Team(agents, name="graders").map(PROMPTS, max_in_flight=16)
        grades = [r.content if not isinstance(r, BaseException) else "error" for r in results]
        usage = sum((r.usage for r in results if not isinstance(r, BaseException)), Usage())
        print(f"\n{grades.count('correct')} correct, {grades.count('wrong')} wrong")
        print(
            f"usage: {usage.requests} requests, {usage.total_tokens} tokens "
            f"({usage.prompt_tokens} prompt, {usage.completion_tokens} completion), "
            f"cost ${usage.cost or 0:.4f}"
        )
        print(f"rate limit ({requests_per_minute}/min): {gateway.limiter_stats()}")
        return {"grades": grades, "usage": usage, "served": len(server.requests)}
    finally:
        for agent in agents or []:
            agent.kill()
        if gateway is not None:
            gateway.kill()
        server.stop()
        if info["new"]:
            gecko_actors.shutdown()


if __name__ == "__main__":
    main()
