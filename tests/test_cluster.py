"""Multi-node behaviour on one machine with ``ray.cluster_utils.Cluster``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCENARIOS = Path(__file__).parent / "scenarios"


def run_scenario(name: str, *args: str, timeout: float = 300) -> dict:
    # A separate process: the scenario starts its own cluster, which must not meet the
    # session-scoped local Ray other tests share.
    env = {**os.environ, "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    done = subprocess.run(
        [sys.executable, str(SCENARIOS / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stdout[-4000:] + done.stderr[-4000:]
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.mark.parametrize("placement", ["hosted", "dedicated"])
def test_agent_survives_the_loss_of_its_node(tmp_path: Path, placement: str) -> None:
    result = run_scenario("node_loss.py", str(tmp_path), placement)
    assert result["placement"] == placement
    assert result["before"] == result["node2"]
    assert result["after"] == result["head"]
    assert result["first"] == ["seen 1 user messages", "seen 2 user messages"]
    # The restarted agent saw the whole conversation, stored once.
    assert result["after_run"] == "seen 3 user messages"
    assert result["history"] == [
        "one",
        "seen 1 user messages",
        "two",
        "seen 2 user messages",
        "three",
        "seen 3 user messages",
    ]


def test_a_workflow_survives_the_loss_of_a_branch_agents_node(tmp_path: Path) -> None:
    result = run_scenario("workflow_node_loss.py", str(tmp_path))
    assert result["first_node"] == result["node2"]  # the agent was working on node 2...
    assert result["nodes"] == sorted([result["node2"], result["head"]])  # ...then on the head
    assert result["status"] == "succeeded"
    assert result["result"] == {"research": "researched topic ray", "count": 9}


def test_a_hosts_node_is_lost_and_its_restarted_host_resumes_the_run(tmp_path: Path) -> None:
    result = run_scenario("host_node_loss.py", str(tmp_path))
    assert result["result"] == "done x"
    assert result["where"] == result["node2"]  # the host ran on node 2 before its loss
    assert result["pids"][0] != result["pids"][1]  # a new host process, by the same name
    lines = [line.split() for line in result["ledger"]]
    assert [line[0] for line in lines] == ["first", "second"]  # first committed: never again
    assert lines[1][2] == result["head"]  # the run went on on the head
