"""Workflow runs that outlive their Ray instance, or a coordinator killed mid-write (each
scenario in its own process)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_cluster import run_scenario


@pytest.mark.timeout(300)  # two Ray start-ups, a SIGKILL sweep and a run: slow on a loaded host
# On S3 only (the store that outlives a cluster): resuming from a store does not depend on its
# scheme, and each store's own crash behaviour is what the torn-write tests below check, on
# both. The scenario costs ~30 s, a fifth of the suite's margin.
@pytest.mark.parametrize("scheme", ["s3"])
def test_a_run_and_an_agent_outlive_their_ray_instance(tmp_path: Path, scheme: str) -> None:
    """Every process of the Ray instance (GCS, raylet, agents, the coordinator's and the
    running node's workers) is SIGKILLed once b is done, as when the machine dies; a new Ray
    in the same driver resumes the run from its checkpoint, and gets the hosted agent back
    from its spec archived in the session store, with its conversation."""
    outcome = run_scenario("ray_restart.py", str(tmp_path), scheme)
    assert outcome["survivors"] == []
    assert {"gcs_server", "raylet"} <= set(outcome["killed"])
    assert outcome["coordinator_killed"]
    assert outcome["result"] == "in>a>b>c>d"
    nodes, before = outcome["nodes"], outcome["before_kill"]
    # a and b were committed before the kill: executed once, never again after the resume.
    assert nodes[:2] == ["a", "b"] and before in (2, 3)
    assert "a" not in nodes[before:] and "b" not in nodes[before:]
    assert nodes.count("a") == 1 and nodes.count("b") == 1 and nodes.count("d") == 1
    # c was in flight at the kill: run again at most once, with the same key.
    assert nodes.count("c") in (1, 2)
    assert len({key for node, key in outcome["ledger"] if node == "c"}) == 1
    agent = outcome["agent"]
    assert agent["missing_after_loss"] and agent["placement"] == "hosted" and agent["forgotten"]
    assert agent["before"] == "noted" and agent["after"] in ("noted", "still here")
    stored = outcome["stored"]  # both exchanges, in one session of the durable store
    assert len(stored) == 4 and stored[0] == "remember the blue door"
    assert stored[2] == "what do you remember?"


@pytest.mark.parametrize("scheme", ["file", "s3"])
def test_a_coordinator_killed_mid_write_commits_nothing_torn(tmp_path: Path, scheme: str) -> None:
    """SIGKILLed halfway through the data object of a step, or between it and its commit
    marker (two runs in one Ray instance): the step is not committed, the restarted
    coordinator runs it again (same key), and each run ends as an uninterrupted one would."""
    outcome = run_scenario("torn_write.py", str(tmp_path), scheme)
    for where in ("data", "marker"):
        found = outcome[where]
        assert found["killed"], where
        assert found["result"] == "in>a>b>c>d"
        assert found["steps"] == ["a", "b", "c", "d"]
        nodes = [node for node, _ in found["ledger"]]
        assert nodes == ["a", "b", "b", "c", "d"], where  # b's step was torn: b ran again
        assert len({key for node, key in found["ledger"] if node == "b"}) == 1
