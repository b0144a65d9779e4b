"""Retention without Ray: ``collect_garbage`` and ``gecko-actors gc`` delete exactly the
finished runs older than the cut-off, on file:// and s3:// (moto), keep running and waiting
runs, newer runs and the parents that forks read from, keep the run index right, and finish
a pass that was interrupted midway."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from gecko_actors.checkpoint import CheckpointStore
from gecko_actors.checkpoint.index import RunIndex
from gecko_actors.checkpoint.retention import GcReport, collect_garbage
from gecko_actors.cli import main as cli
from gecko_actors.cli.retention import parse_duration
from gecko_actors.exceptions import UserError
from gecko_actors.workflow import NodeContext, WorkflowGraph
from gecko_actors.workflow.engine import RunEngine
from gecko_actors.workflow.execution import LocalExecutor
from gecko_actors.workflow.fork import create_fork
from gecko_actors.workflow.history import run_history

DAY = 86400.0


def graph(*, fail: bool = False, wait: bool = False) -> WorkflowGraph:
    """a → b; a journals an effect and writes a step too big to go in its marker."""

    def a(ctx: NodeContext) -> str:
        ctx.step("effect", lambda: "done")
        ctx.state["n"] = 1
        return "x" * 70_000  # a data object of its own, beside the marker

    def b(ctx: NodeContext) -> str:
        if fail:
            raise RuntimeError("b broke")
        if wait:
            return f"ok: {ctx.interrupt('go on?')}"
        return "b"

    return WorkflowGraph("keep").add_node("a", a).add_node("b", b).add_edge("a", "b")


async def make_run(store: CheckpointStore, run_id: str, outcome: str) -> None:
    """A run that ends ``outcome``: succeeded, failed, waiting, cancelled or running."""
    g = graph(fail=outcome == "failed", wait=outcome == "waiting")
    engine = RunEngine(g, run_id, store, LocalExecutor(store))
    engine.open("in", create=True)
    if outcome == "running":  # created, never driven to an end
        return
    await engine.run()
    if outcome == "cancelled":
        assert engine.outcome == "succeeded", engine.failure
        store.update_status(run_id, "cancelled")
        return
    assert engine.outcome == outcome, engine.failure


async def make_fork(store: CheckpointStore, parent: str, run_id: str, at: int = 1) -> None:
    create_fork(graph(), store, parent, at, state={"n": 2}, run_id=run_id)
    engine = RunEngine(graph(), run_id, store, LocalExecutor(store))
    engine.open("in", create=False)
    engine.take_over()
    await engine.run()
    assert engine.outcome == "succeeded", engine.failure


def gc(store: CheckpointStore, cutoff: float, **options: Any) -> GcReport:
    """A pass that deletes what finished before ``cutoff`` (a fake ``now``, 30 days on)."""
    return collect_garbage(store, older_than=30 * DAY, now=cutoff + 30 * DAY, **options)


def objects(store: CheckpointStore, run_id: str) -> int:
    """How many objects run ``run_id`` still has."""

    def count(folder: str) -> int:
        return sum(
            count(f"{folder}/{e.name}") if e.is_dir else 1 for e in store._list(folder, None)
        )

    return count(run_id)


async def test_gc_deletes_exactly_the_old_finished_runs_with_the_statuses(
    checkpoint_uri: str,
) -> None:
    store = CheckpointStore(checkpoint_uri)
    for run_id, outcome in [
        ("old-ok", "succeeded"),
        ("old-failed", "failed"),
        ("old-cancelled", "cancelled"),
        ("old-waiting", "waiting"),
        ("old-running", "running"),
    ]:
        await make_run(store, run_id, outcome)
    cutoff = time.time()
    time.sleep(0.01)
    await make_run(store, "new-ok", "succeeded")
    RunIndex(store).rebuild()
    everything = set(store.list_runs())

    dry = gc(store, cutoff, statuses=("succeeded", "failed"), dry_run=True)
    assert dry.dry_run and dry.deleted == ("old-failed", "old-ok")
    assert str(dry).startswith("would delete 2 run(s)")
    assert set(store.list_runs()) == everything == set(RunIndex(store).read())
    report = gc(store, cutoff, statuses=("succeeded", "failed"))
    assert report.deleted == dry.deleted and report.bytes_freed == dry.bytes_freed
    assert not report.dry_run
    assert report.bytes_freed > 70_000 and not report.kept and not report.finished
    assert set(store.list_runs()) == everything - {"old-ok", "old-failed"}
    assert objects(store, "old-ok") == 0 and objects(store, "old-failed") == 0
    assert store.read_manifest("old-ok") is None and store.load_steps("old-ok") == []
    assert set(RunIndex(store).read()) == everything - {"old-ok", "old-failed"}
    assert "deleted 2 run(s)" in str(report)

    report = gc(store, cutoff)  # the default statuses: every finished one
    assert report.deleted == ("old-cancelled",)
    assert set(store.list_runs()) == {"old-waiting", "old-running", "new-ok"}
    assert gc(store, cutoff).deleted == ()  # nothing left to do
    assert len(store.load_steps("old-waiting")) == 1  # untouched
    assert len(store.load_steps("new-ok")) == 2


async def test_a_forked_parent_is_kept_while_its_fork_reads_it(checkpoint_uri: str) -> None:
    store = CheckpointStore(checkpoint_uri)
    await make_run(store, "p", "succeeded")
    cutoff = time.time()
    time.sleep(0.01)
    await make_fork(store, "p", "f")  # newer than the cut-off: it stays, so p stays
    for forked_parents in (False, True):
        report = gc(store, cutoff, forked_parents=forked_parents)
        assert report.deleted == () and report.kept == {"p": ("f",)}
    assert "kept 1 run(s) that forks reference" in str(report)
    history = run_history(CheckpointStore(checkpoint_uri), "f")
    assert [s["node"] for s in history["steps"]] == ["a", "b"]
    assert history["forked_from"]  # its first step is read from p
    assert len(CheckpointStore(checkpoint_uri).load_steps("f")) == 2

    # Both old: by default the fork goes first and the parent in a later pass...
    later = time.time()
    report = gc(store, later)
    assert report.deleted == ("f",) and report.kept == {"p": ("f",)}
    assert gc(store, later).deleted == ("p",)
    assert store.list_runs() == []


async def test_forked_parents_deletes_a_parent_with_all_its_forks(tmp_path: Path) -> None:
    store = CheckpointStore(f"file://{tmp_path}")  # fork rules: the same on every storage
    await make_run(store, "p", "succeeded")
    await make_fork(store, "p", "f1")
    await make_fork(store, "f1", "f2", at=2)  # a fork of the fork: reads f1, which reads p
    cutoff = time.time()
    time.sleep(0.01)
    await make_fork(store, "p", "young")
    report = gc(store, cutoff, forked_parents=True)
    assert report.deleted == ("f2", "f1") and report.kept == {"p": ("f1", "young")}
    assert len(store.load_steps("young")) == 2
    report = gc(store, time.time(), forked_parents=True)
    assert report.deleted == ("young", "p") and store.list_runs() == []


async def test_an_interrupted_gc_is_finished_by_the_next(
    checkpoint_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CheckpointStore(checkpoint_uri)
    await make_run(store, "r1", "succeeded")
    await make_run(store, "r2", "succeeded")
    await make_run(store, "keep", "waiting")
    RunIndex(store).rebuild()
    whole = gc(store, time.time(), dry_run=True).bytes_freed

    def crash(run_id: str) -> None:
        raise KeyboardInterrupt  # the process dies after deleting r1's manifest

    monkeypatch.setattr(store, "delete_run", crash)
    with pytest.raises(KeyboardInterrupt):
        gc(store, time.time())
    monkeypatch.undo()
    # r1 is half deleted, r2 not yet: neither is listed, nor read as a run.
    assert objects(store, "r1") > 0 and store.read_manifest("r1") is None
    assert store.list_runs() == ["keep", "r2"]
    assert set(RunIndex(store).read()) == {"keep"}
    assert set(RunIndex(store).deleted()) == {"r1", "r2"}
    cli_list = CliRunner().invoke(cli, ["list", "--checkpoint", checkpoint_uri])
    assert [line.split()[0] for line in cli_list.output.splitlines()] == ["keep"]

    report = gc(CheckpointStore(checkpoint_uri), time.time())
    assert report.finished == ("r1", "r2") and report.deleted == ()
    assert "finished 2 interrupted deletion(s)" in str(report)
    assert report.bytes_freed < whole  # r1's manifest had gone with the first pass
    assert objects(store, "r1") == 0 and objects(store, "r2") == 0
    assert store.list_runs() == ["keep"] and set(RunIndex(store).read()) == {"keep"}
    assert gc(store, time.time()).finished == ()


async def test_an_interrupted_pass_over_forks_finishes_forks_first_and_never_orphans_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = CheckpointStore("memory://retention-interrupted-forks")
    await make_run(store, "p", "succeeded")
    await make_fork(store, "p", "f")
    monkeypatch.setattr(store, "delete_run", lambda run_id: exec("raise KeyboardInterrupt"))
    with pytest.raises(KeyboardInterrupt):  # dies with f's manifest gone, p untouched
        gc(store, time.time(), forked_parents=True)
    monkeypatch.undo()
    assert store.list_runs() == ["p"] and set(RunIndex(store).deleted()) == {"f", "p"}
    # Someone forks p before the next pass: p is kept, and listed again.
    before_g = time.time()
    await make_fork(store, "p", "g")
    report = gc(store, before_g, forked_parents=True)
    assert report.finished == ("f",) and report.kept == {"p": ("g",)}
    assert set(RunIndex(store).read()) == {"p"} and store.list_runs() == ["g", "p"]
    assert len(store.load_steps("g")) == 2
    report = gc(store, time.time(), forked_parents=True)
    assert report.deleted == ("g", "p") and store.list_runs() == []


async def test_tombstones_survive_compaction_and_a_new_run_of_the_same_id_is_listed() -> None:
    store = CheckpointStore("memory://retention-tombstones")
    index = RunIndex(store)
    await make_run(store, "r1", "succeeded")
    await make_run(store, "r2", "succeeded")
    index.rebuild()
    gc(store, time.time())
    index.forget(list(index.deleted().values()))  # a second batch in the gc partition
    assert index.compact("gc") == 2
    assert index.read() == {} and set(index.deleted()) == {"r1", "r2"}
    time.sleep(0.01)
    await make_run(store, "r1", "succeeded")  # the same id, started again
    index.rebuild()
    assert set(index.read()) == {"r1"} and set(index.deleted()) == {"r2"}
    assert gc(store, time.time() - 30 * DAY).finished == ()  # not a deletion left over
    assert store.list_runs() == ["r1"]


def test_invalid_options_are_refused() -> None:
    store = CheckpointStore("memory://retention-options")
    for bad in ({"older_than": -1}, {"older_than": "30d"}, {"older_than": float("nan")}):
        with pytest.raises(UserError, match="older_than"):
            collect_garbage(store, **bad)
    for statuses in (("running",), ("succeeded", "waiting"), ()):
        with pytest.raises(UserError, match="finished runs only"):
            collect_garbage(store, older_than=0, statuses=statuses)


def test_durations() -> None:
    assert parse_duration("30d") == 30 * DAY and parse_duration("12h") == 12 * 3600
    assert parse_duration("90m") == 5400 and parse_duration("45s") == 45
    assert parse_duration(" 1.5D ") == 1.5 * DAY
    for bad in ("30", "d", "30 days", "-1d", "1w", ""):
        with pytest.raises(UserError, match="not a duration"):
            parse_duration(bad)


async def test_the_gc_command(tmp_path: Path) -> None:
    checkpoint_uri = f"file://{tmp_path}/checkpoints"  # the API is tested on s3:// too
    store = CheckpointStore(checkpoint_uri)
    await make_run(store, "p", "failed")
    await make_fork(store, "p", "f")
    await make_run(store, "w", "waiting")
    RunIndex(store).rebuild()
    runner = CliRunner()

    def gc_cli(*args: str) -> Any:
        return runner.invoke(cli, ["gc", "--checkpoint", checkpoint_uri, *args])

    helped = runner.invoke(cli, ["gc", "--help"]).output
    assert "Example:" in helped and "gecko-actors gc --checkpoint" in helped
    dry = gc_cli("--older-than", "0s", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would delete f\n" in dry.output and "kept p: forks read its steps (f)" in dry.output
    assert "would delete 1 run(s)" in dry.output
    assert store.list_runs() == ["f", "p", "w"]
    failed = gc_cli("--older-than", "0s", "--status", "failed", "--forked-parents")
    assert failed.exit_code == 0 and "deleted 0 run(s)" in failed.output  # f succeeded
    done = gc_cli("--older-than", "0s", "--forked-parents")
    assert done.exit_code == 0, done.output
    assert "deleted f\ndeleted p\n" in done.output and "bytes" in done.output
    assert store.list_runs() == ["w"]
    listed = runner.invoke(cli, ["list", "--checkpoint", checkpoint_uri]).output
    assert [line.split()[:3] for line in listed.splitlines()] == [["w", "keep", "waiting"]]

    for args, problem in [
        (("--older-than", "30"), "--older-than '30' is not a duration"),
        (("--older-than", "soon"), "30d (days), 12h (hours)"),
        (("--older-than", "1d", "--status", "running"), "--status 'running' is not"),
        (("--older-than", "1d", "--status", "nope"), "use --status with succeeded"),
    ]:
        result = gc_cli(*args)
        assert result.exit_code == 1 and problem in result.output, result.output
    # Without --older-than, only runs whose workflow set a retention go: none here.
    own = runner.invoke(cli, ["gc", "--checkpoint", checkpoint_uri])
    assert own.exit_code == 0 and "deleted 0 run(s)" in own.output, own.output
