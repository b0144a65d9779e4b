"""A node's ``timeout=`` fires end to end, through ``Workflow.start`` on the session's Ray.

An async function node runs as a task on its run engine's event loop (in the workflow host
actor); past its timeout that task is cancelled, and the cancellation is awaited before the
retry starts or the run fails. The sync function node's timeout (each attempt a killable Ray
task) is covered end to end by ``test_workflow_semantics.py::
test_a_timed_out_attempt_is_killed_before_its_retry_and_never_writes``, and both kinds
without Ray by ``test_workflow_engine.py``.

The node records what happened from inside (a ledger file: the node runs in another
process); every assertion reads that ledger, the run's events or its status, never a
wall-clock margin. The slow attempt would sleep an hour: only a timeout ends it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from gecko_actors import WorkflowError
from gecko_actors.workflow import NodeContext, RetryPolicy, Workflow

pytestmark = pytest.mark.usefixtures("ray_session")

AN_HOUR = 3600.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def entries(ledger: Path) -> list[tuple[int, str]]:
    """The (attempt, what) lines of a ledger, in the order they were written."""
    if not ledger.exists():
        return []
    return [tuple(json.loads(line)) for line in ledger.read_text().splitlines()]


def slow_first_attempt(ledger: str) -> Any:
    """An async node: attempt 1 sleeps an hour, logging its cancellation; later ones answer."""

    def log(attempt: int, what: str) -> None:
        with open(ledger, "a") as fh:
            fh.write(json.dumps([attempt, what]) + "\n")

    async def slow(ctx: NodeContext) -> str:
        log(ctx.attempt, "start")
        if ctx.attempt == 1:
            try:
                await asyncio.sleep(AN_HOUR)
            except asyncio.CancelledError:
                log(ctx.attempt, "cancelled")
                raise
        log(ctx.attempt, "end")
        return f"attempt {ctx.attempt}"

    return slow


def test_an_async_node_past_its_timeout_is_cancelled_before_its_retry(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    retry = RetryPolicy(attempts=2, backoff=0)
    wf = Workflow(unique("async-timeout")).add_node(
        "slow", slow_first_attempt(str(ledger)), timeout=1, retry=retry
    )
    run = wf.start(None, checkpoint=tmp_path / "checkpoints")

    assert run.result(timeout=120) == "attempt 2"
    # Attempt 1 was stopped where it ran (not abandoned), and before attempt 2 started.
    assert entries(ledger) == [(1, "start"), (1, "cancelled"), (2, "start"), (2, "end")]
    retried = [e for e in run.events() if e["type"] == "node_retried"]
    assert [(e["node"], e["attempt"]) for e in retried] == [("slow", 1)]
    assert "timed out after 1" in retried[0]["error"]
    assert run.status()["nodes"]["slow"]["attempts"] == 2


def test_an_async_node_past_its_timeout_fails_the_run_naming_it(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    wf = Workflow(unique("async-timeout")).add_node(
        "slow", slow_first_attempt(str(ledger)), timeout=1
    )
    run = wf.start(None, checkpoint=tmp_path / "checkpoints")

    with pytest.raises(WorkflowError, match="timed out after 1") as info:
        run.result(timeout=120)
    assert info.value.node == "slow"
    assert entries(ledger) == [(1, "start"), (1, "cancelled")]  # stopped before the failure
    assert run.status()["status"] == "failed"
