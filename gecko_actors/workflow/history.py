"""A run's history: every committed step in order, read from the checkpoint alone (so after
its cluster is gone too), with what each visit was given and returned, the state it changed,
its tokens, duration and attempts, the effects its journal recorded and the answers it was
given (who answered, when). ``run.history()``, ``gecko-actors history``.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from typing import Any

from gecko_actors._text import clip
from gecko_actors.checkpoint import CheckpointStore, Manifest, StepRecord
from gecko_actors.checkpoint.journal import Journal
from gecko_actors.core.messages import AgentOutput, Message

__all__ = ["format_history", "run_history", "summary"]

SUMMARY_CHARS = 200


def summary(value: Any, limit: int = SUMMARY_CHARS) -> str:
    """``value`` as one short line: an agent's answer or a message as its text, other
    values as JSON (their ``str`` where JSON has no form)."""
    if isinstance(value, AgentOutput):
        text = value.content if isinstance(value.content, str) else repr(value.content)
    elif isinstance(value, Message):
        text = value.text
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, default=str, ensure_ascii=False)
    return clip(" ".join(text.split()), limit)


def run_history(store: CheckpointStore, run_id: str) -> dict[str, Any] | None:
    """The history of run ``run_id`` (``None`` for an unknown run): the run's workflow,
    status and input, then ``steps``, one per committed step in commit order."""
    manifest = store.read_manifest(run_id)
    if manifest is None:
        return None
    lineage = _lineage(store, manifest)
    effects: dict[str, dict[tuple[str, int], list[dict[str, Any]]]] = {}  # per run: read once
    steps = []
    for record in store.load_steps(run_id):
        owner = _committer(run_id, lineage, record.seq)
        if owner not in effects:
            effects[owner] = _effects_by_visit(Journal(store, owner, 0).entries(), owner)
        step = _step(record, effects[owner].get((record.node, record.visit), []))
        steps.append({**step, "run_id": owner})
    return {
        "run_id": run_id,
        "workflow": manifest.workflow,
        "status": manifest.status,
        "created_at": manifest.created_at,
        "finished_at": manifest.finished_at,
        "input": summary(manifest.input),
        "forked_from": lineage,
        "steps": steps,
        "waiting": {node: entry["payload"] for node, entry in (manifest.waiting or {}).items()}
        if manifest.status == "waiting"
        else {},
    }


def _lineage(store: CheckpointStore, manifest: Manifest) -> list[dict[str, Any]]:
    """A fork's ancestors, nearest first: each one's run id as ``parent``, the fork point as
    ``at_step``, and what the fork changed there (``state``, ``node`` and its ``input``)."""
    found: list[dict[str, Any]] = []
    fork = manifest.fork
    while fork is not None:
        entry = {"parent": fork.parent, "at_step": fork.at_step, "state": fork.state}
        found.append({**entry, "node": fork.node, "input": fork.input})
        parent = store.read_manifest(fork.parent)
        fork = None if parent is None else parent.fork
    return found


def _committer(run_id: str, lineage: list[dict[str, Any]], seq: int) -> str:
    """The run that committed step ``seq`` of a fork: up the lineage while the step comes
    before the fork point."""
    for fork in lineage:
        if seq >= fork["at_step"]:
            break
        run_id = fork["parent"]
    return run_id


def _effects_by_visit(
    entries: list[dict[str, Any]], run_id: str
) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """The journal's entries per visit, by their key: ``<run>/<node>/<visit>/<kind>/...``."""
    found: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for entry in entries:
        parts = entry["key"].split("/")
        if len(parts) < 4 or parts[0] != run_id or not parts[2].isdigit():
            continue
        found[(parts[1], int(parts[2]))].append({**entry, "kind": _kind(parts[3:])})
    return found


_ANSWERS = ("interrupt", "approval")  # an answer given with respond


def _kind(rest: list[str]) -> str:
    """What a journal entry records (step, tool, model, interrupt, approval), from its key
    after the visit: past a map item's number and a tool call's ``call-<k>``."""
    while rest and (rest[0].isdigit() or rest[0].startswith("call-")):
        rest = rest[1:]
    return rest[0] if rest else "effect"


def _step(record: StepRecord, effects: list[dict[str, Any]]) -> dict[str, Any]:
    usage = record.usage
    answers = [
        {
            "question": entry["value"].get("payload"),
            "answer": entry["value"].get("answer"),
            "by": entry["value"].get("by"),
            "at": entry["value"].get("at", entry["at"]),
        }
        for entry in effects
        if entry["kind"] in _ANSWERS and isinstance(entry["value"], dict)
    ]
    return {
        "seq": record.seq,
        "node": record.node,
        "visit": record.visit,
        "input": record.input_summary,
        "output": summary(record.output),
        "state": {w.key: None if w.deleted else summary(w.value, 80) for w in record.writes},
        "next": None if record.next is None else record.next.node,
        "tokens": usage.total_tokens if usage is not None else 0,
        "usd": (usage.cost or 0.0) if usage is not None else 0.0,
        "duration": record.duration,
        "attempts": record.attempts,
        "finished_at": record.finished_at,
        "effects": dict(Counter(e["kind"] for e in effects if e["kind"] not in _ANSWERS)),
        "answers": answers,
    }


def format_history(history: dict[str, Any]) -> str:
    """The history as text: a header, then a few lines per step."""
    lines = [
        f"run {history['run_id']} ({history['workflow']}): {history['status']}, "
        f"{len(history['steps'])} step(s); input: {history['input']}"
    ]
    for fork in history["forked_from"]:
        changed = [f"state {summary(fork['state'], 100)}"] if fork["state"] else []
        if fork["node"] is not None:
            changed.append(f"{fork['node']}'s input {summary(fork['input'], 100)}")
        lines.append(
            f"forked from {fork['parent']} at step {fork['at_step']}"
            + (f" with {'; '.join(changed)}" if changed else "")
        )
    for step in history["steps"]:
        retries = f", {step['attempts']} attempts" if step["attempts"] > 1 else ""
        of = "" if step["run_id"] == history["run_id"] else f" [{step['run_id']}]"
        lines.append(
            f"#{step['seq']} {step['node']} (visit {step['visit']}) {step['duration']:.2f}s, "
            f"{step['tokens']} tokens{retries} at {_clock(step['finished_at'])}{of}"
        )
        if step["input"] is not None:
            lines.append(f"    in:  {step['input']}")
        lines.append(f"    out: {step['output']}")
        for key, value in step["state"].items():
            lines.append(f"    state {key} = {'(deleted)' if value is None else value}")
        if step["next"]:
            lines.append(f"    next: {step['next']}")
        if step["effects"]:
            counts = ", ".join(f"{n} {kind}" for kind, n in sorted(step["effects"].items()))
            lines.append(f"    journaled: {counts}")
        for answer in step["answers"]:
            who = f" by {answer['by']}" if answer["by"] else ""
            lines.append(
                f"    asked: {summary(answer['question'], 100)} → answered{who} at "
                f"{_clock(answer['at'])}: {summary(answer['answer'], 100)}"
            )
    for node, payload in history["waiting"].items():
        lines.append(f"waiting: {node}: {summary(payload, 100)}")
    return "\n".join(lines)


def _clock(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
