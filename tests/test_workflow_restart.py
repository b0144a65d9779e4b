"""A workflow run resumed after its whole Ray instance was stopped (in its own process)."""

from __future__ import annotations

from pathlib import Path

from test_cluster import run_scenario


def test_run_resumes_after_ray_is_restarted(tmp_path: Path) -> None:
    outcome = run_scenario("ray_restart.py", str(tmp_path))
    assert outcome["result"] == "in>a>b>c>d"
    nodes = outcome["nodes"]
    # Finished before the stop: never run again. In flight at the stop: run again at most once.
    assert nodes.count("a") == 1 and nodes.count("b") == 1 and nodes.count("d") == 1
    assert nodes.count("c") in (1, 2)
