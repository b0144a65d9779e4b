"""A team fans one question out to four agents at once, each with its own point of view.

    python examples/research_team.py

Each agent is an actor; `Team.run` sends the question to all of them at the same time and
collects the answers in member order (a failed member leaves its error in its slot).
`strategy="first"` returns the first acceptable answer and cancels the rest.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import gecko_actors
from gecko_actors import Agent, ScriptedModel, Team

QUESTION = "Should our team move its agents from one process to a Ray cluster?"
VIEWS = {  # point of view → (seconds it thinks, what it says)
    "optimist": (0.3, "yes: every agent gets its own process and the cluster scales out."),
    "skeptic": (0.6, "only if a run must survive crashes; a cluster adds moving parts."),
    "economist": (0.6, "yes if model calls dominate: the rate limit is shared, not multiplied."),
    "engineer": (0.6, "yes: checkpointed workflows resume instead of starting over."),
}


def analyst(view: str):
    """A scripted model: it thinks for a while, then answers from its point of view."""
    seconds, opinion = VIEWS[view]

    def reply(messages, tools) -> str:
        start = time.time()
        time.sleep(seconds)
        return json.dumps({"view": view, "answer": opinion, "start": start, "end": time.time()})

    return reply


def main() -> dict[str, Any]:
    info = gecko_actors.init()
    suffix = uuid.uuid4().hex[:6]
    agents = [Agent.spawn(f"{view}-{suffix}", model=ScriptedModel(analyst(view))) for view in VIEWS]
    try:
        for agent in agents:  # wait until every actor is up, so the timing shows the team
            agent.info()
        panel = Team(agents, name="panel")
        print(f"question: {QUESTION}\n")
        replies = [json.loads(text) for text in panel.run(QUESTION).contents]
        for reply in replies:
            print(f"  {reply['view']:>9}: {reply['answer']}")
        # All four were thinking at one instant: the latest start is before the earliest end.
        overlap = max(r["start"] for r in replies) < min(r["end"] for r in replies)
        print(f"\nran in parallel: {overlap}")
        first = json.loads(panel.run(QUESTION, strategy="first").winner.content)
        print(f"first answer (the others were cancelled): {first['view']}")
        return {"views": [r["view"] for r in replies], "overlap": overlap, "first": first["view"]}
    finally:
        for agent in agents:
            agent.kill()
        if info["new"]:
            gecko_actors.shutdown()


if __name__ == "__main__":
    main()
