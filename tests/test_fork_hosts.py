"""Forks on Ray: ``wf.fork`` starts the fork on a workflow host, which survives a SIGKILL of
that host (Ray restarts it, and it resumes the fork with its change); ``gecko-actors fork``
does the same from a shell."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from gecko_actors.checkpoint import CheckpointStore
from gecko_actors.cli import main as cli
from gecko_actors.testing.chaos import kill_and_restart
from gecko_actors.workflow import NodeContext, Workflow

pytestmark = pytest.mark.usefixtures("ray_session")


def chain(name: str, ledger: str, gate: str | None = None) -> Workflow:
    """a → b → c → d: a sets the tone, each node records itself; c waits for ``gate``."""

    def make(node: str):
        def step(ctx: NodeContext) -> str:
            with open(ledger, "a") as out:
                out.write(f"{ctx.run_id} {node}\n")
            if node == "a":
                ctx.state["tone"] = "casual"
            while node == "c" and gate is not None and not os.path.exists(gate):
                time.sleep(0.05)  # the host is killed while c waits here
            return f"{ctx.input}>{node}:{ctx.state['tone']}"

        return step

    wf = Workflow(name)
    for node in "abcd":
        wf.add_node(node, make(node))
    return wf.add_edge("a", "b").add_edge("b", "c").add_edge("c", "d")


def test_a_fork_survives_a_kill_of_its_host(tmp_path: Path) -> None:
    ledger, gate = tmp_path / "ledger", tmp_path / "gate"
    name = f"fork-{uuid.uuid4().hex[:8]}"
    parent = chain(name, str(ledger)).start("in", checkpoint=tmp_path)
    assert parent.result(timeout=120) == "in>a:casual>b:casual>c:casual>d:casual"
    wf = chain(name, str(ledger), str(gate))
    fork = wf.fork(parent.run_id, at_step=2, state={"tone": "formal"}, checkpoint=tmp_path)
    deadline = time.monotonic() + 120
    while f"{fork.run_id} c" not in ledger.read_text():  # the fork's c has started
        assert time.monotonic() < deadline, "the fork did not start c"
        time.sleep(0.05)
    kill_and_restart(fork.actor)  # SIGKILL: Ray restarts the host, which resumes the fork
    gate.touch()
    assert fork.result(timeout=120) == "in>a:casual>b:casual>c:formal>d:formal"
    ran = [line.split()[1] for line in ledger.read_text().splitlines() if fork.run_id in line]
    assert "a" not in ran and "b" not in ran and ran.count("d") == 1  # a, b: the parent's
    history = fork.history()
    assert [s["run_id"] for s in history["steps"]] == [parent.run_id] * 2 + [fork.run_id] * 2
    assert history["forked_from"][0]["parent"] == parent.run_id


def test_the_fork_command_forks_and_follows(tmp_path: Path) -> None:
    module = tmp_path / "flows.py"
    module.write_text(
        "from gecko_actors.workflow import Workflow\n"
        "def step(ctx):\n"
        "    ctx.state['n'] = ctx.state.get('n', 0) + 1\n"
        "    return f\"{ctx.input}|{ctx.state['n']}\"\n"
        f"workflow = Workflow('cli-fork-{uuid.uuid4().hex[:6]}')"
        ".add_node('a', step).add_node('b', step).add_edge('a', 'b')\n"
    )
    target, runner = f"{module}:workflow", CliRunner()
    first = runner.invoke(cli, ["run", target, "--input", "x", "--run-id", "p-cli",
                                "--checkpoint", str(tmp_path)])  # fmt: skip
    assert first.exit_code == 0, first.output
    assert first.stdout.rstrip().endswith("x|1|2")
    forked = runner.invoke(cli, ["fork", "p-cli", target, "--at-step", "1", "--state", "n=10",
                                 "--run-id", "f-cli", "--checkpoint", str(tmp_path)])  # fmt: skip
    assert forked.exit_code == 0, forked.output
    assert forked.stdout.rstrip().endswith("x|1|11")  # b saw the state the fork wrote
    store = CheckpointStore(f"file://{tmp_path}")
    assert store.read_manifest("f-cli").fork.parent == "p-cli"
    bad = runner.invoke(cli, ["fork", "p-cli", target, "--at-step", "5",
                              "--checkpoint", str(tmp_path)])  # fmt: skip
    assert bad.exit_code == 1 and "it has 2 committed steps" in bad.output
