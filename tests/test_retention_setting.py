"""Per-workflow retention without Ray: ``Workflow(name, retention=...)`` is parsed like
``gc --older-than``, recorded in each run's manifest, and ``collect_garbage`` /
``gecko-actors gc`` delete a finished run once its own retention has passed (with no
``--older-than``), or once the shorter of the two has (with one); running and waiting runs
and the parents forks read from stay, as before."""

from __future__ import annotations

import dataclasses
import time
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from gecko_actors.checkpoint import CheckpointStore, Manifest
from gecko_actors.checkpoint.records import manifest_data, manifest_from, pack, unpack
from gecko_actors.checkpoint.retention import collect_garbage
from gecko_actors.cli import main as cli
from gecko_actors.core.durations import duration_seconds, parse_duration
from gecko_actors.exceptions import UserError
from gecko_actors.workflow import NodeContext, WorkflowGraph
from gecko_actors.workflow.engine import RunEngine
from gecko_actors.workflow.execution import LocalExecutor
from gecko_actors.workflow.fork import create_fork

DAY = 86400.0
NOW = 1_900_000_000.0  # the passes' "now": runs are made to have finished days before it


def test_retention_takes_the_forms_gc_takes_and_refuses_the_rest() -> None:
    assert WorkflowGraph("a", retention="30d").retention == 30 * DAY
    assert WorkflowGraph("a", retention=" 12H ").retention == 12 * 3600
    assert WorkflowGraph("a", retention=timedelta(hours=2)).retention == 7200
    assert WorkflowGraph("a", retention=90).retention == 90.0
    assert WorkflowGraph("a").retention is None
    for bad, problem in [
        ("soon", "retention 'soon' is not a duration"),
        ("30", "is not a duration"),
        (-1, "must be a positive duration"),
        (timedelta(0), "must be a positive duration"),
        (float("inf"), "must be a positive duration"),
        (True, "must be a duration, got bool"),
        ([1], "must be a duration, got list"),
    ]:
        with pytest.raises(UserError, match=problem):
            WorkflowGraph("a", retention=bad)
    # One parser for both: gc's option names itself in its errors.
    assert parse_duration("1.5d") == duration_seconds("1.5d", "x") == 1.5 * DAY
    with pytest.raises(UserError, match="--older-than 'x' is not a duration"):
        parse_duration("x")


def test_version_and_retention_round_trip_and_old_manifests_read_without_them() -> None:
    made = Manifest("r1", "wf", "f" * 64, "in", 1.0, version="3", retention=7 * DAY)
    rec = manifest_data(made)
    assert rec["workflow_version"] == "3" and rec["retention"] == 7 * DAY
    assert rec["version"] != "3"  # the record's own format version is untouched
    back = manifest_from(unpack(pack(rec), "manifest", "r1", "here"), "here", "r1")
    assert (back.version, back.retention) == ("3", 7 * DAY)
    plain = manifest_data(Manifest("r1", "wf", "f" * 64, "in", 1.0))
    assert "workflow_version" not in plain and "retention" not in plain  # as before
    old = manifest_from(unpack(pack(plain), "manifest", "r1", "here"), "here", "r1")
    assert (old.version, old.retention) == (None, None)
    for bad in (dataclasses.replace(made, retention=0), dataclasses.replace(made, version=3)):
        with pytest.raises(UserError, match="Manifest"):
            manifest_data(bad)


def graph(retention: str | None, *, wait: bool = False) -> WorkflowGraph:
    def b(ctx: NodeContext) -> str:
        return f"ok: {ctx.interrupt('go on?')}" if wait else "b"

    g = WorkflowGraph("keep", retention=retention, version=2)
    return g.add_node("a", lambda ctx: "a").add_node("b", b).add_edge("a", "b")


async def make_run(
    store: CheckpointStore,
    run_id: str,
    retention: str | None,
    days_ago: float,
    *,
    wait: bool = False,
    now: float = NOW,
) -> None:
    """A run of a workflow with ``retention`` that finished ``days_ago`` days before ``now``
    (or waits, since then)."""
    engine = RunEngine(graph(retention, wait=wait), run_id, store, LocalExecutor(store))
    engine.open("in", create=True)
    await engine.run()
    assert engine.outcome == ("waiting" if wait else "succeeded"), engine.failure
    manifest = store.read_manifest(run_id)
    status = "waiting" if wait else "succeeded"
    store.update_status(run_id, status, result=manifest.result)
    # Its finish time is the status record's: rewrite it as of days_ago.
    path = store._path(run_id, "status.msgpack")
    rec = unpack(store._get(path, run_id), "status", run_id, path)
    rec["updated_at"] = now - days_ago * DAY
    rec["finished_at"] = None if wait else now - days_ago * DAY
    store._put(path, pack(rec), run_id)


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(f"file://{tmp_path}/runs")


async def test_a_run_records_its_workflows_retention_and_gc_keeps_to_it(
    store: CheckpointStore,
) -> None:
    await make_run(store, "week-old-7d", "7d", days_ago=8)
    await make_run(store, "day-old-7d", "7d", days_ago=1)
    await make_run(store, "year-old-none", None, days_ago=365)
    await make_run(store, "waits-1d", "1d", days_ago=30, wait=True)
    manifest = store.read_manifest("week-old-7d")
    assert (manifest.retention, manifest.version) == (7 * DAY, "2")

    dry = collect_garbage(store, now=NOW, dry_run=True)
    assert dry.deleted == ("week-old-7d",) and store.read_manifest("week-old-7d") is not None
    report = collect_garbage(store, now=NOW)  # no older_than: each run's own retention
    assert report.deleted == ("week-old-7d",)
    assert store.list_runs() == ["day-old-7d", "waits-1d", "year-old-none"]


async def test_with_older_than_the_shorter_of_the_two_applies(store: CheckpointStore) -> None:
    await make_run(store, "short-10d", "7d", days_ago=10)  # its own 7d passed: goes
    await make_run(store, "long-40d", "90d", days_ago=40)  # the 30d cut-off passed: goes
    await make_run(store, "long-20d", "90d", days_ago=20)  # neither passed: stays
    await make_run(store, "none-20d", None, days_ago=20)  # the cut-off only: stays
    await make_run(store, "none-40d", None, days_ago=40)  # the cut-off passed: goes
    report = collect_garbage(store, older_than=30 * DAY, now=NOW)
    assert sorted(report.deleted) == ["long-40d", "none-40d", "short-10d"]
    assert store.list_runs() == ["long-20d", "none-20d"]
    with pytest.raises(UserError, match="older_than"):
        collect_garbage(store, older_than=-1.0, now=NOW)


async def test_a_forked_parent_stays_whatever_its_retention(store: CheckpointStore) -> None:
    await make_run(store, "parent", "1d", days_ago=5)
    create_fork(graph(None), store, "parent", 1, run_id="child")
    engine = RunEngine(graph(None), "child", store, LocalExecutor(store))
    engine.open(None, create=False)
    await engine.run()
    assert engine.outcome == "succeeded", engine.failure
    assert store.read_manifest("child").retention is None  # the forking workflow's
    report = collect_garbage(store, now=NOW)
    assert report.deleted == () and report.kept == {"parent": ("child",)}


async def test_gc_without_older_than_deletes_what_each_workflow_let_go(
    store: CheckpointStore,
) -> None:
    now = time.time()  # the command's clock
    await make_run(store, "old", "2d", days_ago=3, now=now)
    await make_run(store, "young", "2d", days_ago=1, now=now)
    await make_run(store, "plain", None, days_ago=3, now=now)
    runner = CliRunner()
    dry = runner.invoke(cli, ["gc", "--checkpoint", store.uri, "--dry-run"])
    assert dry.exit_code == 0 and "would delete old\n" in dry.output, dry.output
    gone = runner.invoke(cli, ["gc", "--checkpoint", store.uri])
    assert gone.exit_code == 0 and "deleted old\n" in gone.output, gone.output
    assert "deleted 1 run(s)" in gone.output and store.list_runs() == ["plain", "young"]
    both = runner.invoke(cli, ["gc", "--checkpoint", store.uri, "--older-than", "2d"])
    assert both.exit_code == 0 and "deleted plain\n" in both.output, both.output
    assert store.list_runs() == ["young"]
