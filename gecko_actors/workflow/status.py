"""A run's status as plain data, and Gecko's execution summary (a per-node table).

The coordinator builds the status of a live run; :func:`status_from_checkpoint` builds the same
shape from the checkpoint alone, so a run can be inspected after its cluster is gone.
"""

from __future__ import annotations

import json
import time
from typing import Any

from gecko_actors.checkpoint import CheckpointStore, Manifest, StepRecord
from gecko_actors.checkpoint.journal import Journal
from gecko_actors.core.messages import AgentOutput, Usage
from gecko_actors.workflow.spend import status_spend
from gecko_actors.workflow.upgrading import latest
from gecko_actors.workflow.versions import renamed_steps
from gecko_actors.workflow.waiting import answerable


def usage_of(value: Any) -> Usage | None:
    """The token usage inside a node's output: an agent's output, or the sum over the agent
    outputs in a team's or a map node's results. ``None`` when no model was involved."""
    if isinstance(value, AgentOutput):
        return value.usage
    if isinstance(value, dict):
        items = list(value.values())
    elif isinstance(value, list | tuple):
        items = value
    else:
        return None
    total: Usage | None = None
    for item in items:
        usage = usage_of(item)
        if usage is not None:
            total = usage if total is None else total + usage
    return total


def node_entry(
    state: str,
    visit: int,
    *,
    attempts: int = 0,
    duration: float | None = None,
    usage: Usage | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """One node's line of the status: the same keys whoever builds it."""
    return {
        "state": state,  # running | done | failed
        "visit": visit,
        "attempts": attempts,
        "duration": duration,
        "tokens": usage.total_tokens if usage is not None else 0,
        "usd": (usage.cost or 0.0) if usage is not None else 0.0,
        "error": error,
    }


def entry_of(record: StepRecord) -> dict[str, Any]:
    return node_entry(
        "done",
        record.visit,
        attempts=record.attempts,
        duration=record.duration,
        usage=record.usage,
    )


def run_status(
    manifest: Manifest,
    status: str,
    steps: int,
    nodes: dict[str, dict[str, Any]],
    error: str | None = None,
    spend: dict[str, Any] | None = None,
    tokens: int = 0,
) -> dict[str, Any]:
    """A run's status: ``spend`` is its budget and what it spent, for a budgeted run (see
    ``spend.status_spend``); ``tokens``, what every committed step used (each node's line
    shows its latest visit only)."""
    return {
        "run_id": manifest.run_id,
        "workflow": manifest.workflow,
        "status": status,
        "error": error,
        "steps": steps,
        "created_at": manifest.created_at,
        "finished_at": manifest.finished_at,
        "tokens": tokens,
        "host": manifest.host,
        "nodes": nodes,
        "spend": spend,
        "version": manifest.version,  # the workflow version the run follows now
    }


def status_from_checkpoint(store: CheckpointStore, run_id: str) -> dict[str, Any] | None:
    """The status of a run as its checkpoint records it (``None`` for an unknown run). Nodes
    that were running when the record was last written do not appear: only committed work.
    ``journal`` counts its effect journal's entries."""
    manifest = store.read_manifest(run_id)
    if manifest is None:
        return None
    manifest, renames = latest(store, manifest)  # its current version; renamed nodes
    records = renamed_steps(store.load_steps(run_id), renames)
    nodes = {r.node: entry_of(r) for r in records}
    spend = {"budget": manifest.budget, "spent": manifest.spent}
    tokens = sum(r.usage.total_tokens for r in records if r.usage is not None)
    found = run_status(
        manifest, manifest.status, len(records), nodes, manifest.error, status_spend(spend), tokens
    )
    parked = (manifest.waiting or {}) if manifest.status == "waiting" else {}
    for node, entry in parked.items():
        state = "waiting" if entry.get("answerable", True) else "sleeping"
        nodes[node] = {**node_entry(state, 0), "until": entry.get("until")}
    waiting = {node: entry["payload"] for node, entry in answerable(parked).items()}
    timers = {node: entry["until"] for node, entry in parked.items() if "until" in entry}
    journal = Journal(store, run_id, 0).count()
    return {**found, "waiting": waiting, "timers": timers, "journal": journal}


def format_status(status: dict[str, Any]) -> str:
    """Gecko's execution summary: one line per node (state, attempts, duration, tokens,
    error), then the run's outcome."""
    rows = [("node", "state", "attempts", "duration", "tokens", "error")]
    for name, node in status["nodes"].items():
        duration = node.get("duration")
        rows.append(
            (
                name,
                node["state"],
                str(node["attempts"]),
                "-" if duration is None else f"{duration:.2f}s",
                str(node["tokens"]),
                _clip(node.get("error") or ""),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    end = status.get("finished_at") or time.time()
    lines.append(
        f"run {status['run_id']} ({status['workflow']}{_version(status)}): {status['status']}, "
        f"{status['steps']} step(s), {status['tokens']} tokens, "
        f"{end - status['created_at']:.1f}s"
    )
    spend = status.get("spend")
    if spend:
        limits = ", ".join(f"{k}={v}" for k, v in spend["budget"].items() if v is not None)
        lines.append(
            f"spent {spend['tokens']} tokens, ${spend['usd']:.4f}, {spend['model_calls']} "
            f"model calls (budget: {limits})"
        )
    for node, payload in (status.get("waiting") or {}).items():
        lines.append(f"waiting: {node}: {_clip(json.dumps(payload, default=str), 100)}")
    for node, until in (status.get("timers") or {}).items():
        lines.append(f"timer: {node} runs again at {_when(until)}")
    if status.get("journal"):
        lines.append(f"journal: {status['journal']} recorded effects (steps, tool and model calls)")
    if status.get("error"):
        lines.append(f"error: {status['error']}")
    return "\n".join(line.rstrip() for line in lines)


def _version(status: dict[str, Any]) -> str:
    version = status.get("version")
    return "" if version is None else f" version {version}"


def _clip(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def format_event(event: dict[str, Any]) -> str | None:
    """One line of live progress for a node event (``None`` for other events)."""
    kind, node = event["type"], event.get("node")
    if kind == "node_started":
        return f"  ▶ {node} (visit {event['visit']}, attempt {event['attempt']})"
    if kind == "node_completed":
        return f"  ✓ {node} in {event['duration']:.2f}s, {event['tokens']} tokens"
    if kind == "node_retried":
        return f"  ↻ {node}: attempt {event['attempt']} failed: {_clip(event['error'], 100)}"
    if kind == "node_error":
        return f"  ✗ {node}: {_clip(event['error'], 100)}"
    if kind == "node_waiting":
        return f"  ⏸ {node} waits: {_clip(json.dumps(event['payload'], default=str), 100)}"
    if kind == "node_sleeping":
        return f"  ⏾ {node} sleeps until {event['payload']['sleep_until']}"
    return None


def _when(at: float) -> str:
    """An instant as UTC ISO text, with how far off it is."""
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
    left = at - time.time()
    return f"{iso} (in {left:.0f}s)" if left > 0 else f"{iso} (due)"
