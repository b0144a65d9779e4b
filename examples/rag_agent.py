"""An agent that answers from documents: ingest a folder into LanceDB, then search it.

    python examples/rag_agent.py

`ingest` reads and splits the files in Ray tasks and embeds the chunks in a pool of embedder
actors (offline: a hash embedder); the agent's `retrieval_tool` runs a hybrid (vector +
full-text) search and hands the model the best passages with their sources.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import gecko_actors
from gecko_actors import LanceVectorStore, LocalAgent, ScriptedModel, ingest, retrieval_tool

DOCS = {
    "handbook/oncall.md": "# On-call\n\nThe on-call engineer answers pages within 15 minutes.",
    "handbook/deploys.md": "# Deploys\n\nDeploys to production happen on Tuesdays and "
    "Thursdays, never on Fridays.",
    "handbook/expenses.md": "# Expenses\n\nTravel is booked through the travel desk.",
}
QUESTION = "On which days do we deploy to production?"


def reader(messages, tools):
    """A scripted model: search first, then answer from the best passage, citing it."""
    if messages[-1].role != "tool":
        return [ScriptedModel.call("search_knowledge", query="deploy production days")]
    best = messages[-1].text.split("\n\n[2]")[0]  # passages are numbered [1], [2], ...
    source = re.search(r"\((.*?),", best).group(1)
    sentence = best.splitlines()[-1]
    return f"{sentence} (source: {source})"


def main() -> dict[str, Any]:
    info = gecko_actors.init()
    folder = Path(tempfile.mkdtemp(prefix="gecko-rag-"))
    for name, text in DOCS.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    try:
        store = LanceVectorStore(folder / "vectors")
        print(f"ingest: {ingest(folder / 'handbook', store=store, progress=False)}")
        agent = LocalAgent(ScriptedModel(reader), [retrieval_tool(store, k=2)])
        answer = agent.run(QUESTION).content
        print(f"question: {QUESTION}\nanswer: {answer}")
        return {"answer": answer}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if info["new"]:
            gecko_actors.shutdown()


if __name__ == "__main__":
    main()
