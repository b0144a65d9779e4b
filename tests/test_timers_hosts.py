"""Durable timers on Ray: a hosted run whose node sleeps 3 s has its workflow host SIGKILLed
during the sleep; Ray restarts the host, which drives the run again, and the code after the
sleep runs once, never before its deadline. An interrupt's timeout answers a hosted run
with its default while nothing waits in any process."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from gecko_actors.testing.chaos import kill_and_restart
from gecko_actors.workflow import NodeContext, Workflow

pytestmark = pytest.mark.usefixtures("ray_session")


def until_status(run: Any, wanted: str, deadline: float) -> dict[str, Any]:
    while (status := run.status())["status"] != wanted:
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
    return status


def napper(folder: Path) -> Any:
    def nap(ctx: NodeContext) -> str:
        # Each line a process writes: what it did and when (the test reads them back).
        ctx.step("notify", lambda: _append(folder / "effects", "notified"))
        ctx.sleep(3)
        _append(folder / "woke", str(time.time()))
        return "rested"

    return nap


def _append(path: Path, line: str) -> None:
    with path.open("a") as out:
        out.write(line + "\n")


def test_a_sleep_fires_once_after_its_host_is_sigkilled_during_it(tmp_path: Path) -> None:
    wf = Workflow(f"nap-{uuid.uuid4().hex[:8]}").add_node("nap", napper(tmp_path))
    wf.add_node("after", lambda ctx: f"{ctx.input} and done").add_edge("nap", "after")
    run = wf.start(None, checkpoint=tmp_path / "runs")
    deadline = time.monotonic() + 120
    status = until_status(run, "waiting", deadline)
    due = status["timers"]["nap"]
    assert status["waiting"] == {} and status["nodes"]["nap"]["state"] == "sleeping"

    kill_and_restart(run.actor)  # SIGKILL during the sleep: Ray restarts the host
    assert run.result(timeout=120) == "rested and done"
    woke = [float(t) for t in (tmp_path / "woke").read_text().split()]
    assert len(woke) == 1 and woke[0] >= due  # once, never early
    assert (tmp_path / "effects").read_text().split() == ["notified"]
    assert run.status()["timers"] == {}


def test_an_unanswered_interrupt_takes_its_default_when_its_timeout_passes(
    tmp_path: Path,
) -> None:
    def ask(ctx: NodeContext) -> str:
        return ctx.interrupt({"q": "publish?"}, timeout=1.0, default="skipped")

    run = (
        Workflow(f"ask-{uuid.uuid4().hex[:8]}")
        .add_node("ask", ask)
        .start(None, checkpoint=tmp_path)
    )
    status = until_status(run, "waiting", time.monotonic() + 120)
    assert status["waiting"] == {"ask": {"q": "publish?"}} and "ask" in status["timers"]
    assert run.result(timeout=120) == "skipped"
