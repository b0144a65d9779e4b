"""Hosted runs: many runs per workflow host actor, started without a process per run, resumed
by the host Ray restarts, kept apart by the job's code, listed from the run index."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import ray

from gecko_actors import HostBusy, UserError
from gecko_actors.checkpoint import CheckpointStore, Manifest
from gecko_actors.checkpoint.index import IndexEntry, RunIndex
from gecko_actors.testing.chaos import kill_and_restart
from gecko_actors.workflow import NodeContext, Workflow

pytestmark = pytest.mark.usefixtures("ray_session")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def record(ledger: str):
    """A node that records its execution (run, node, idempotency key) and returns its input."""

    def step(ctx: NodeContext) -> Any:
        with open(ledger, "a") as out:
            out.write(f"{ctx.run_id} {ctx.node} {ctx.idempotency_key}\n")
        return ctx.input

    return step


def gated(ledger: str, gate: str):
    """An async node that waits until the file ``gate`` exists, then records itself."""

    async def step(ctx: NodeContext) -> Any:
        while not os.path.exists(gate):
            await asyncio.sleep(0.05)
        with open(ledger, "a") as out:
            out.write(f"{ctx.run_id} {ctx.node} {ctx.idempotency_key}\n")
        return ctx.input

    return step


def lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def test_runs_share_a_named_host_that_says_what_it_holds(tmp_path: Path) -> None:
    wf = Workflow(unique("shared")).add_node("a", lambda ctx: ctx.input * 2)
    runs = [wf.start(i, checkpoint=tmp_path) for i in range(5)]
    assert [r.result(timeout=120) for r in runs] == [0, 2, 4, 6, 8]
    infos = [r.info() for r in runs]
    assert {i["placement"] for i in infos} == {"hosted"}
    hosts = {i["host"] for i in infos}
    assert all(h.startswith("workflows/host/") for h in hosts)
    assert hosts <= set(ray.util.list_named_actors())  # the dashboard shows them by name
    # The host is recorded in each run's manifest and status, and says what it holds.
    store = CheckpointStore(f"file://{tmp_path}")
    assert {store.read_manifest(r.run_id).host for r in runs} == hosts
    assert runs[0].status()["host"] == infos[0]["host"]
    summary = ray.get(runs[0].actor.summary.remote())
    assert summary["host"] == infos[0]["host"] and summary["held"] >= 5
    assert "runs" in repr(runs[0].actor) or summary["active"] == 0


def test_two_simultaneous_starts_of_one_run_id_make_one_run(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    wf = Workflow(unique("once")).add_node("a", record(str(ledger)))
    run_id = unique("same")
    outcomes: list[Any] = []

    def start(i: int) -> None:
        try:
            outcomes.append(wf.start(i, run_id=run_id, checkpoint=tmp_path))
        except UserError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    handles = [o for o in outcomes if not isinstance(o, UserError)]
    refused = [o for o in outcomes if isinstance(o, UserError)]
    assert len(handles) == 1 and len(refused) == 3, outcomes
    assert all("already exists" in str(e) for e in refused)
    value = handles[0].result(timeout=120)
    assert [line[1] for line in lines(ledger)] == ["a"]  # the node ran once
    manifest = CheckpointStore(f"file://{tmp_path}").read_manifest(run_id)
    assert manifest.input == value  # the run is the winner's, whole


def test_a_host_killed_with_200_runs_in_flight_resumes_them_all(tmp_path: Path) -> None:
    ledger, gate = tmp_path / "ledger", tmp_path / "gate"
    wf = Workflow(unique("many")).add_node("a", record(str(ledger)))
    wf.add_node("b", gated(str(ledger), str(gate))).add_edge("a", "b")
    runs = [wf.start(i, checkpoint=tmp_path) for i in range(200)]
    hosts = {r.info()["host"] for r in runs}
    deadline = time.monotonic() + 120
    while sum(1 for line in lines(ledger) if line[1] == "a") < 200:
        assert time.monotonic() < deadline, "the first nodes did not all run"
        time.sleep(0.1)
    store = CheckpointStore(f"file://{tmp_path}")
    while not all(len(store.load_steps(r.run_id)) == 1 for r in runs[-5:]):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    killed = {r.actor for r in runs[:1]}
    for handle in killed:
        ray.kill(handle, no_restart=False)  # SIGKILL: Ray restarts the host, which resumes
    gate.touch()
    assert [r.result(timeout=300) for r in runs] == list(range(200))
    done = lines(ledger)
    for run in runs:  # a was committed before the kill: never run again
        assert [line for line in done if line[0] == run.run_id and line[1] == "a"].__len__() == 1
        keys = {line[2] for line in done if line[0] == run.run_id and line[1] == "b"}
        assert len(keys) == 1  # b ran (once, or again after the kill) with one key
    assert {r.info()["host"] for r in runs} == hosts  # runs do not migrate


def test_a_full_host_refuses_new_runs_stores_nothing_and_exits_when_idle(tmp_path: Path) -> None:
    from gecko_actors.workflow.host import WorkflowHost
    from gecko_actors.workflow.hosting import packed

    name = f"workflows/host/test-{uuid.uuid4().hex[:6]}/0"
    host = (
        ray.remote(WorkflowHost)
        .options(
            name=name,
            num_cpus=0,
            runtime_env={
                "env_vars": {
                    "GECKO_HOST_MAX_RUNS": "1",
                    "GECKO_WORKFLOW_LINGER": "0",
                    "GECKO_HOST_IDLE_EXIT": "1",
                }
            },
        )
        .remote(name)
    )
    gate = tmp_path / "gate"
    wf = Workflow(unique("full")).add_node("a", gated(str(tmp_path / "ledger"), str(gate)))
    uri = f"file://{tmp_path}"
    ray.get(host.start_run.remote("first", uri, packed(wf), 1, time.time()))
    with pytest.raises(HostBusy, match="already drives 1 runs"):
        try:
            ray.get(host.start_run.remote("second", uri, packed(wf), 2, time.time()))
        except ray.exceptions.RayTaskError as exc:
            raise exc.cause from None
    assert CheckpointStore(uri).read_manifest("second") is None
    gate.touch()
    assert ray.get(host.result.remote("first")) == 1
    # Holding no run, it exits by itself (GECKO_HOST_IDLE_EXIT); its name is free again.
    deadline = time.monotonic() + 60
    while name in ray.util.list_named_actors():
        assert time.monotonic() < deadline, "an idle host did not exit"
        time.sleep(0.2)


def test_the_run_index_lists_runs_without_reading_each_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wf = Workflow(unique("listed")).add_node("a", lambda ctx: ctx.input)
    runs = [wf.start(i, checkpoint=tmp_path) for i in range(3)]
    for run in runs:
        run.result(timeout=120)
    store = CheckpointStore(f"file://{tmp_path}")
    deadline = time.monotonic() + 30
    while {e.status for e in RunIndex(store).read().values()} != {"succeeded"}:
        assert time.monotonic() < deadline, RunIndex(store).read()
        time.sleep(0.1)
    from click.testing import CliRunner

    from gecko_actors.cli import main

    def refuse(*_: Any) -> None:
        raise AssertionError("list read a manifest")

    monkeypatch.setattr(CheckpointStore, "read_manifest", refuse)
    out = CliRunner().invoke(main, ["list", "--checkpoint", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert all(r.run_id in out.output for r in runs) and "succeeded" in out.output


def test_a_run_index_merges_batches_compacts_and_rebuilds(tmp_path: Path) -> None:
    store = CheckpointStore(f"file://{tmp_path}")
    index = RunIndex(store)
    index.append([IndexEntry("r1", "wf", "running", 1.0, 1.0, "h")], "p1")
    index.append([IndexEntry("r2", "wf", "running", 2.0, 2.0, "h")], "p2")
    index.append([IndexEntry("r1", "wf", "succeeded", 1.0, 3.0, "h")], "p1")
    assert {k: e.status for k, e in index.read().items()} == {"r1": "succeeded", "r2": "running"}
    assert index.compact("p1") == 2
    assert len(list((tmp_path / ".index" / "p1").iterdir())) == 1
    assert {k: e.status for k, e in index.read().items()} == {"r1": "succeeded", "r2": "running"}
    (tmp_path / ".index" / "p2" / "99999999999999999999-0000abcd.msgpack").write_bytes(b"\xc1")
    assert set(index.read()) == {"r1", "r2"}  # a damaged batch is skipped, not fatal
    with pytest.raises(UserError, match="partition"):
        index.append([IndexEntry("r3", "wf", "running", 1.0, 1.0)], "../escape")
    # A store written before the index: its first writer indexes its runs once.
    legacy = CheckpointStore(f"file://{tmp_path / 'legacy'}")
    legacy.create_manifest(Manifest("before", "wf", "fp", None, 1.0))
    RunIndex(legacy).append([IndexEntry("after", "wf", "running", 2.0, 2.0)], "p")
    assert set(RunIndex(legacy).read()) == {"before", "after"}
    # ... and rebuild() indexes a store from its manifests.
    other = tmp_path / "old"
    wf = Workflow(unique("old")).add_node("a", lambda ctx: 1)
    wf.start(None, checkpoint=other, dedicated=True).result(timeout=120)
    rebuilt = RunIndex(CheckpointStore(f"file://{other}")).rebuild()
    assert [e.status for e in rebuilt.values()] == ["succeeded"]


DRIVER = """
import json, sys
import gecko_actors as ga
from gecko_actors.workflow import Workflow
import jobcode

ga.init(address=sys.argv[1])
wf = Workflow("job").add_node("who", jobcode.who)
run = wf.start(None, checkpoint=sys.argv[2])
print(json.dumps({"result": run.result(timeout=120), "host": run.info()["host"]}))
"""

JOBCODE = """
import os
def who(ctx):
    return {"job": %r, "pid": os.getpid()}
"""


def test_a_jobs_host_never_serves_another_jobs_code(tmp_path: Path) -> None:
    """Two drivers whose working_dir holds a module of the same name, with other code: each
    run executes its own job's code, on a host of its own job's pool."""
    address = ray.get_runtime_context().gcs_address
    procs = {}
    for job in ("A", "B"):
        folder = tmp_path / job
        folder.mkdir()
        (folder / "jobcode.py").write_text(JOBCODE % job)
        (folder / "driver.py").write_text(
            DRIVER.replace(
                "ga.init(address=sys.argv[1])",
                f"ga.init(address=sys.argv[1], runtime_env={{'working_dir': {str(folder)!r}}})",
            )
        )
        procs[job] = subprocess.Popen(
            [sys.executable, "driver.py", address, str(tmp_path / "runs")],
            cwd=folder,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    seen = {}
    for job, proc in procs.items():
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-2000:]
        seen[job] = json.loads(out.strip().splitlines()[-1])
    assert seen["A"]["result"]["job"] == "A" and seen["B"]["result"]["job"] == "B"
    assert seen["A"]["host"] != seen["B"]["host"]
    assert seen["A"]["result"]["pid"] != seen["B"]["result"]["pid"]


def test_start_of_a_bad_run_id_or_input_stores_nothing(tmp_path: Path) -> None:
    wf = Workflow(unique("bad")).add_node("a", lambda ctx: 1)
    with pytest.raises(UserError, match="run_id"):
        wf.start(None, run_id="../x", checkpoint=tmp_path)
    with pytest.raises(UserError, match="input"):
        wf.start(object(), checkpoint=tmp_path)
    assert not any(p.name != ".index" for p in tmp_path.iterdir())


def test_hosted_and_dedicated_runs_answer_alike(tmp_path: Path) -> None:
    from gecko_actors.workflow.run import WorkflowRun

    gate = tmp_path / "gate"
    wf = Workflow(unique("alike")).add_node("a", gated(str(tmp_path / "ledger"), str(gate)))
    hosted = wf.start(1, checkpoint=tmp_path)
    dedicated = wf.start(1, checkpoint=tmp_path, dedicated=True)
    attached = WorkflowRun.attach(hosted.run_id)  # from the run id alone, while it runs
    assert attached.info()["host"] == hosted.info()["host"]
    gate.touch()
    assert hosted.result(timeout=120) == dedicated.result(timeout=120) == 1
    assert attached.result(timeout=60) == 1
    assert dedicated.info()["host"] == f"workflow/{dedicated.run_id}"
    kinds = [e["type"] for e in hosted.events()]
    assert kinds[0] == "workflow_started" and kinds[-1] == "workflow_completed"
    # A run resumes where it was started: hosted, on its host.
    resumed = wf.resume(hosted.run_id, checkpoint=tmp_path)
    assert resumed.info()["host"] == hosted.info()["host"] and resumed.result() == 1


def test_a_graph_is_sent_once_per_shape_and_again_to_a_host_that_lost_it(
    tmp_path: Path,
) -> None:
    from ray.experimental import internal_kv

    from gecko_actors.workflow import directory, hosting

    wf = Workflow(unique("shape")).add_node("a", lambda ctx: ctx.input + 1)
    assert wf.start(1, checkpoint=tmp_path).result(timeout=120) == 2
    # A node added after a start: the next start ships the new graph, not the one it sent.
    wf.add_node("b", lambda ctx: ctx.input * 10).add_edge("a", "b")
    run = wf.start(1, checkpoint=tmp_path)
    assert run.result(timeout=120) == 20
    # The host loses every copy (Ray restarts it, and the cluster's copy is gone too): the
    # driver, which sends only the graph's key to a host it sent the graph to, sends it again.
    key = hosting.packed(wf).key
    # Restarted before the start: a start that reached the dying host would be another test.
    kill_and_restart(run.actor)
    internal_kv._internal_kv_del(f"graphs/{key}", namespace=directory._space())
    assert wf.start(2, checkpoint=tmp_path).result(timeout=120) == 30
