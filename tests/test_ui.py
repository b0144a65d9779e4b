"""The run viewer (``gecko-actors ui``) without a browser: what it reads from a checkpoint
store (runs made by the real engine, Ray-free), the graph it draws, its HTTP API, its token
and its command line. The page itself, in Chromium: tests/test_ui_browser.py."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import CookieJar
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner

from gecko_actors.checkpoint import CheckpointStore
from gecko_actors.checkpoint.index import IndexEntry, RunIndex
from gecko_actors.cli import main as cli
from gecko_actors.core.messages import AgentOutput, Usage
from gecko_actors.exceptions import UserError
from gecko_actors.ui import store_uri
from gecko_actors.ui.actions import Actions
from gecko_actors.ui.data import RunsReader
from gecko_actors.ui.graph_svg import COLOURS, render_svg
from gecko_actors.ui.progress import GraphView, Progress
from gecko_actors.ui.server import make_app, serve
from gecko_actors.workflow import Next, NodeContext, WorkflowGraph
from gecko_actors.workflow.engine import RunEngine
from gecko_actors.workflow.execution import LocalExecutor
from gecko_actors.workflow.fork import create_fork

SECRET = "sk-proj-" + "Q7rT2xLm9vKp4ZsW8nYb"  # credential-shaped: the viewer must mask it
TOKEN = "a-token-for-the-tests-0123456789"


def spent(text: str, tokens: int, usd: float) -> AgentOutput:
    """What an agent returns, with its usage: a step's tokens and cost."""
    usage = Usage(
        requests=1, prompt_tokens=tokens - 5, completion_tokens=5, total_tokens=tokens, cost=usd
    )
    return AgentOutput(content=text, messages=[], usage=usage)


def is_ok(ctx: NodeContext) -> bool:
    return True


def never(ctx: NodeContext) -> bool:
    return False


def loop_graph() -> WorkflowGraph:
    """a → b, and b jumps back to a twice (a loop), then goes on to c (d's edge is false)."""

    def a(ctx: NodeContext) -> AgentOutput:
        ctx.state["rounds"] = ctx.state.get("rounds", 0) + 1
        ctx.state["api_key"] = "hunter2-not-shown"
        return spent(f"draft {ctx.state['rounds']} {SECRET}", 100, 0.001)

    def b(ctx: NodeContext) -> Any:
        return Next("a", "again") if ctx.state["rounds"] < 3 else "good"

    return (
        WorkflowGraph("looping")
        .add_node("a", a)
        .add_node("b", b)
        .add_node("c", lambda ctx: "c")
        .add_node("d", lambda ctx: "d")
        .add_edge("a", "b")
        .add_edge("b", "c", when=is_ok)
        .add_edge("b", "d", when=never)
    )


def failing_graph() -> WorkflowGraph:
    def boom(ctx: NodeContext) -> None:
        raise RuntimeError(f"kaboom with {SECRET}")

    return (
        WorkflowGraph("failing")
        .add_node("start", lambda c: 1)
        .add_node("boom", boom)
        .add_edge("start", "boom")
    )


def waiting_graph() -> WorkflowGraph:
    def approve(ctx: NodeContext) -> Any:
        return ctx.interrupt({"question": "ship it?", "password": "hunter2-not-shown"})

    return (
        WorkflowGraph("approval")
        .add_node("draft", lambda c: "the draft")
        .add_node("approve", approve)
        .add_node("send", lambda c: "sent")
        .add_edge("draft", "approve")
        .add_edge("approve", "send")
    )


def gated_graph(started: asyncio.Event) -> WorkflowGraph:
    async def slow(ctx: NodeContext) -> str:
        started.set()
        await asyncio.sleep(3600)  # cancelled when the test ends
        return "never"

    return (
        WorkflowGraph("gated")
        .add_node("first", lambda c: "1")
        .add_node("slow", slow)
        .add_edge("first", "slow")
    )


async def run(graph: WorkflowGraph, store: CheckpointStore, run_id: str) -> RunEngine:
    engine = RunEngine(graph, run_id, store, LocalExecutor(store))
    engine.open("the input", create=True)
    await engine.run()
    return engine


@pytest.fixture
async def store(tmp_path: Path) -> CheckpointStore:
    """A file:// store with a succeeded run (a loop), a failed one and a waiting one, made in
    that order (the list shows them newest first)."""
    found = CheckpointStore(f"file://{tmp_path}/runs")
    assert (await run(loop_graph(), found, "loop-1")).outcome == "succeeded"
    assert (await run(failing_graph(), found, "fails-1")).outcome == "failed"
    assert (await run(waiting_graph(), found, "approval-1")).outcome == "waiting"
    return found


@pytest.fixture
async def running(store: CheckpointStore) -> AsyncIterator[str]:
    """A run of ``store`` still running: its second node hangs."""
    started = asyncio.Event()
    engine = RunEngine(gated_graph(started), "gated-1", store, LocalExecutor(store))
    engine.open("the input", create=True)
    task = asyncio.create_task(engine.run())
    await asyncio.wait_for(started.wait(), 10)
    yield "gated-1"
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


# --- reading runs ----------------------------------------------------------------------------


async def test_the_list_shows_every_run_newest_first_with_its_figures(
    store: CheckpointStore, running: str
) -> None:
    found = RunsReader(store).runs()
    rows = {r["run_id"]: r for r in found["runs"]}
    assert [r["run_id"] for r in found["runs"]] == ["gated-1", "approval-1", "fails-1", "loop-1"]
    assert found["total"] == 4
    assert {k: r["status"] for k, r in rows.items()} == {
        "gated-1": "running", "approval-1": "waiting", "fails-1": "failed", "loop-1": "succeeded"
    }  # fmt: skip
    loop = rows["loop-1"]
    assert (loop["steps"], loop["tokens"], loop["usd"]) == (7, 300, pytest.approx(0.003))
    assert loop["workflow"] == "looping" and loop["duration"] >= 0 and loop["finished_at"]
    assert rows["gated-1"]["steps"] == 1 and rows["gated-1"]["finished_at"] is None
    assert SECRET not in json.dumps(found) and "***" in rows["fails-1"]["error"]


async def test_the_list_filters_by_status_and_by_name(store: CheckpointStore) -> None:
    reader = RunsReader(store)
    assert [r["run_id"] for r in reader.runs(status="failed")["runs"]] == ["fails-1"]
    assert [r["run_id"] for r in reader.runs(name="APPROV")["runs"]] == ["approval-1"]
    assert [r["run_id"] for r in reader.runs(name="loop-")["runs"]] == ["loop-1"]
    assert reader.runs(status="succeeded", name="approval")["total"] == 0
    page = reader.runs(offset=1, limit=1)
    assert [r["run_id"] for r in page["runs"]] == ["fails-1"] and page["total"] == 3
    for bad in ({"status": "done"}, {"limit": 0}, {"limit": 5000}, {"offset": -1}):
        with pytest.raises(UserError):
            reader.runs(**bad)


async def test_the_list_reads_the_index_and_a_finished_run_s_steps_once(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = RunIndex(store)
    for run_id in ("loop-1", "fails-1"):
        m = store.read_manifest(run_id)
        assert m is not None
        entry = IndexEntry(m.run_id, m.workflow, m.status, m.created_at, m.finished_at or 0)
        index.append([entry], "tests")
    now = [time.time()]
    reader = RunsReader(store, clock=lambda: now[0])
    loads: list[str] = []
    load_steps = reader.store.load_steps  # it reads through a marking copy of the store
    monkeypatch.setattr(
        reader.store, "load_steps", lambda run_id: loads.append(run_id) or load_steps(run_id)
    )
    first = reader.runs()["runs"]
    # approval-1 has no index entry: found by listing the store's top level
    assert [r["run_id"] for r in first] == ["approval-1", "fails-1", "loop-1"]
    assert sorted(loads) == ["approval-1", "fails-1", "loop-1"]
    loads.clear()
    now[0] += 60  # past every refresh interval
    again = reader.runs()["runs"]
    assert [{**r, "duration": 0} for r in again] == [{**r, "duration": 0} for r in first]
    assert again[0]["duration"] == pytest.approx(first[0]["duration"] + 60)  # still waiting
    assert loads == ["approval-1"]  # a finished run's figures never change: read once


async def test_a_run_s_page_has_its_graph_states_steps_and_full_records(
    store: CheckpointStore,
) -> None:
    reader = RunsReader(store)
    page = reader.run("loop-1")
    assert page is not None
    assert page["run"]["status"] == "succeeded" and page["run"]["result"] == "c"
    assert page["graph"]["recorded"] is True and page["graph"]["entry"] == "a"
    assert page["graph"]["states"] == {"a": "done", "b": "done", "c": "done", "d": "pruned"}
    assert page["graph"]["visits"] == {"a": 3, "b": 3, "c": 1}
    assert [(s["seq"], s["node"], s["visit"]) for s in page["steps"]][:3] == [
        (0, "a", 1), (1, "b", 1), (2, "a", 2)
    ]  # fmt: skip
    first = page["steps"][0]
    assert first["tokens"] == 100 and first["state"]["api_key"] == "***"
    assert SECRET not in json.dumps(page) and "hunter2" not in json.dumps(page)
    assert 'data-node="d"' in page["graph"]["svg"] and "Next &#215;2" in page["graph"]["svg"]
    record = reader.step("loop-1", 1)
    assert record is not None and record["record"]["next"] == {"node": "a", "input": "again"}
    full = reader.step("loop-1", 0)["record"]  # type: ignore[index]
    assert full["usage"]["total_tokens"] == 100 and full["state"]["api_key"] == "***"
    assert reader.step("loop-1", 99) is None and reader.step("nope", 0) is None
    assert reader.run("nope") is None
    with pytest.raises(UserError):
        reader.run("../etc")


async def test_the_failed_node_the_waiting_node_and_the_running_node_are_marked(
    store: CheckpointStore, running: str
) -> None:
    reader = RunsReader(store)
    failed = reader.run("fails-1")
    assert failed is not None and failed["graph"]["states"] == {"start": "done", "boom": "failed"}
    assert "kaboom" in failed["run"]["error"] and SECRET not in failed["run"]["error"]
    waiting = reader.run("approval-1")
    assert waiting is not None
    assert waiting["graph"]["states"] == {"draft": "done", "approve": "waiting", "send": "pending"}
    assert waiting["waiting"] == {"approve": {"question": "ship it?", "password": "***"}}
    live = reader.run(running)
    assert live is not None and live["run"]["status"] == "running"
    assert live["graph"]["states"] == {"first": "done", "slow": "running"}


async def test_a_fork_shows_its_lineage(store: CheckpointStore) -> None:
    create_fork(loop_graph(), store, "loop-1", 2, state={"rounds": 5}, run_id="fork-1")
    engine = RunEngine(loop_graph(), "fork-1", store, LocalExecutor(store))
    engine.open(None, create=False)
    engine.take_over()
    await engine.run()
    page = RunsReader(store).run("fork-1")
    assert page is not None and page["run"]["forked_from"] == "loop-1"
    [lineage] = page["forked_from"]
    assert lineage["parent"] == "loop-1" and lineage["at_step"] == 2
    assert [s["run_id"] for s in page["steps"]][:3] == ["loop-1", "loop-1", "fork-1"]
    row = next(r for r in RunsReader(store).runs()["runs"] if r["run_id"] == "fork-1")
    assert row["forked_from"] == "loop-1"


async def test_a_run_recorded_without_its_graph_shows_the_nodes_of_its_steps(
    store: CheckpointStore, tmp_path: Path
) -> None:
    old = CheckpointStore(f"file://{tmp_path}/old")
    manifest = store.read_manifest("loop-1")
    assert manifest is not None
    old.create_manifest(dataclasses.replace(manifest, graph=None, status="running"))
    for record in store.load_steps("loop-1")[:3]:
        old.commit_step("loop-1", dataclasses.replace(record, epoch=0))
    page = RunsReader(old).run("loop-1")
    assert page is not None and page["graph"]["recorded"] is False
    assert page["graph"]["states"] == {"a": "done", "b": "done"}
    assert 'class="edge' not in page["graph"]["svg"]  # no edges known: none drawn


# --- the graph -------------------------------------------------------------------------------


def test_the_svg_colours_each_state_dashes_conditions_and_counts_loop_visits() -> None:
    view = GraphView(
        {n: {"kind": "function", "fan_out": n == "m"} for n in "abcmxpz"},
        [("a", "b", None), ("b", "c", "only_<big>"), ("b", "m", None), ("m", "x", None),
         ("c", "x", None), ("a", "p", "never")],
        "a",
        recorded=True,
    )  # fmt: skip
    states = {"a": "done", "b": "waiting", "c": "running", "m": "failed", "x": "pending"}
    states["z"] = "sleeping"
    svg = render_svg(
        view, Progress({**states, "p": "pruned"}, {"a": 3, "b": 1}, "a", {("b", "a"): 2})
    )
    nodes = dict(re.findall(r'data-node="([^"]+)" data-state="([^"]+)"', svg))
    assert nodes == {**states, "p": "pruned"}
    for state, (fill, stroke) in COLOURS.items():
        assert re.search(rf'class="node state-{state}.*?fill="{fill}" stroke="{stroke}"', svg)
    conditional = re.search(
        r'<g class="edge conditional" data-source="b" data-target="c">.*?</g>', svg
    )
    assert conditional and 'stroke-dasharray="6 4"' in conditional[0]
    assert "only_&lt;big&gt;" in conditional[0] and "<big>" not in svg  # escaped
    plain = re.search(r'<g class="edge" data-source="a" data-target="b">.*?</g>', svg)
    assert plain and "stroke-dasharray" not in plain[0]
    assert re.search(r'data-node="a".*?class="visit-count"[^>]*>&#215;3<', svg)
    assert 'class="jump" data-source="b" data-target="a"' in svg and "Next &#215;2" in svg
    assert "function · map · failed" in svg
    # layered top-down: each node below its predecessors
    y = {
        n: float(v) for n, v in re.findall(r'data-node="(\w+)".*?translate\([\d.]+,([\d.]+)\)', svg)
    }
    assert y["a"] < y["b"] < y["c"] < y["x"] and y["b"] < y["m"] < y["x"]


def test_an_empty_graph_says_so() -> None:
    assert "no steps yet" in render_svg(GraphView({}, [], None, False), Progress({}, {}))


# --- the HTTP API ----------------------------------------------------------------------------


async def test_the_api_lists_filters_and_shows_runs_with_json_errors(
    store: CheckpointStore,
) -> None:
    app = make_app(RunsReader(store))
    async with TestClient(TestServer(app)) as client:
        page = await client.get("/")
        assert page.status == 200 and "<title>gecko-actors runs" in await page.text()
        assert "script-src 'self'" in page.headers["Content-Security-Policy"]
        assert (await client.get("/static/app.js")).status == 200
        found = await (await client.get("/api/runs")).json()
        assert [r["run_id"] for r in found["runs"]] == ["approval-1", "fails-1", "loop-1"]
        failed = await (await client.get("/api/runs?status=failed&name=fail")).json()
        assert [r["run_id"] for r in failed["runs"]] == ["fails-1"]
        detail = await (await client.get("/api/runs/approval-1")).json()
        assert detail["graph"]["states"]["approve"] == "waiting" and detail["actions"] is False
        assert detail["commands"]["respond"]["approve"].startswith(
            "gecko-actors respond approval-1 approve VALUE --address auto --checkpoint file://"
        )
        assert detail["commands"]["cancel"] == "gecko-actors cancel approval-1 --address auto"
        step = await (await client.get("/api/runs/loop-1/steps/0")).json()
        assert step["record"]["node"] == "a"
        for path, status, words in [
            ("/api/runs/nope", 404, "no run 'nope'"),
            ("/api/runs/loop-1/steps/42", 404, "no committed step 42"),
            ("/api/runs/loop-1/steps/x", 400, "invalid step"),
            ("/api/runs?status=weird", 400, "unknown status filter"),
            ("/api/runs?limit=-3", 400, "invalid limit"),
            ("/api/runs/..x", 400, "invalid run_id"),
            ("/api/nothing", 404, "Not Found"),
        ]:
            response = await client.get(path)
            body = await response.json()
            assert response.status == status and words in body["error"]["message"], path
        post = {"json": {}, "headers": {"Content-Type": "application/json"}}
        refused = await client.post("/api/runs/approval-1/cancel", **post)
        assert (
            refused.status == 409 and "not connected" in (await refused.json())["error"]["message"]
        )
        form = await client.post("/api/runs/approval-1/cancel", data="x=1")  # another site's form
        assert form.status == 403
        assert (await client.post("/api/runs/approval-1/explode", **post)).status == 404
        assert (await client.post("/api/runs/nope/cancel", **post)).status == 404


async def test_a_token_is_needed_once_then_a_cookie_carries_it(store: CheckpointStore) -> None:
    app = make_app(RunsReader(store), token=TOKEN)
    async with TestClient(TestServer(app), cookie_jar=CookieJar(unsafe=True)) as client:
        for path in ("/", "/api/runs", "/api/runs/loop-1", "/static/app.js"):
            denied = await client.get(path)
            assert (
                denied.status == 401
                and "needs its token" in (await denied.json())["error"]["message"]
            )
        assert (await client.get("/api/runs", headers={"X-Gecko-Token": "wrong"})).status == 401
        bearer = await client.get("/api/runs", headers={"Authorization": f"Bearer {TOKEN}"})
        assert bearer.status == 200
        first = await client.get(f"/?token={TOKEN}", allow_redirects=False)
        assert first.status == 303 and first.headers["Location"] == "/"  # the token leaves the URL
        assert (
            "HttpOnly" in first.headers["Set-Cookie"]
            and "SameSite=Strict" in first.headers["Set-Cookie"]
        )
        assert (await client.get("/api/runs")).status == 200  # the cookie now


async def test_serving_beyond_loopback_needs_a_token() -> None:
    app = make_app(RunsReader(CheckpointStore("memory://ui-none")))
    with pytest.raises(UserError, match="needs a token"):
        serve(app, "0.0.0.0", 0, print)


# --- the command line ------------------------------------------------------------------------


def test_the_cli_refuses_bad_arguments(tmp_path: Path) -> None:
    runner = CliRunner()
    folder = str(tmp_path)
    helped = runner.invoke(cli, ["ui", "--help"])
    assert (
        helped.exit_code == 0 and "Example:" in helped.output and "gecko-actors ui" in helped.output
    )
    bad_port = runner.invoke(cli, ["ui", "--checkpoint", folder, "--port", "70000"])
    assert bad_port.exit_code == 2 and "70000" in bad_port.output
    short = runner.invoke(cli, ["ui", "--checkpoint", folder, "--host", "0.0.0.0", "--token", "x"])
    assert short.exit_code == 1 and "at least 16 characters" in short.output
    memory = runner.invoke(cli, ["ui", "--checkpoint", "memory://x"])
    assert memory.exit_code == 1 and "memory of one process" in memory.output
    target = runner.invoke(cli, ["ui", "--checkpoint", folder, "--target", "nope"])
    assert target.exit_code == 1 and "invalid target" in target.output


def test_the_cli_generates_a_token_beyond_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served: dict[str, Any] = {}

    def fake_serve(app: Any, host: str, port: int, echo: Any, **kwargs: Any) -> None:
        served.update(host=host, port=port, **kwargs)

    monkeypatch.setattr("gecko_actors.ui.server.serve", fake_serve)
    monkeypatch.delenv("GECKO_UI_TOKEN", raising=False)
    result = CliRunner().invoke(cli, ["ui", "--checkpoint", str(tmp_path), "--host", "0.0.0.0"])
    assert result.exit_code == 0, result.output
    assert served["host"] == "0.0.0.0" and len(served["token"]) >= 16 and served["show_token"]
    monkeypatch.setenv("GECKO_UI_TOKEN", TOKEN)
    result = CliRunner().invoke(cli, ["ui", "--checkpoint", str(tmp_path), "--port", "8123"])
    assert result.exit_code == 0 and served["token"] == TOKEN and not served["show_token"]
    assert served["host"] == "127.0.0.1" and served["port"] == 8123


def test_the_store_uri_is_the_workflows_own() -> None:
    from gecko_actors.workflow.run import checkpoint_uri

    for given in (None, "runs", "/abs/runs", "file:///x", "s3://bucket/runs?region=eu-west-1"):
        assert store_uri(given) == checkpoint_uri(given)


def test_the_commands_of_the_actions_quote_what_they_name(tmp_path: Path) -> None:
    actions = Actions(CheckpointStore(f"file://{tmp_path}/my runs"), address="10.0.0.1:6379")
    run = {"run_id": "r-1", "status": "failed", "workflow": "w"}
    found = actions.commands(run, [])
    assert found["status"] == f"gecko-actors status r-1 --checkpoint 'file://{tmp_path}/my runs'"
    assert found["resume"].startswith("gecko-actors resume r-1 TARGET --checkpoint")
    assert found["fork"].startswith("gecko-actors fork r-1 TARGET --at-step K")
    assert "cancel" not in found and found["respond"] == {}
    assert actions.links(None) == {}  # no dashboard known


async def test_the_viewer_serves_without_ray_and_stops_on_ctrl_c(store: CheckpointStore) -> None:
    code = "import sys, gecko_actors.cli.ui, gecko_actors.ui.server; print('ray' in sys.modules)"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "False"  # the viewer never imports Ray without --address
    viewer = subprocess.Popen(
        [sys.executable, "-m", "gecko_actors.cli", "ui", "--checkpoint", store.uri],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "GECKO_UI_TOKEN": ""},
    )
    try:
        url = await asyncio.to_thread(_url_of, viewer)
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{url}api/runs", timeout=10) as response:
            assert json.load(response)["total"] == 3
        evil = urllib.request.Request(f"{url}api/runs", headers={"Host": "evil.example"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(evil, timeout=10)
        assert info.value.code == 403  # DNS rebinding: another host name is refused
        viewer.send_signal(signal.SIGINT)
        assert viewer.wait(timeout=15) == 0
    finally:
        if viewer.poll() is None:
            viewer.kill()
            viewer.wait()


def _url_of(viewer: subprocess.Popen[str]) -> str:
    assert viewer.stdout is not None
    for line in viewer.stdout:
        if match := re.search(r"(http://\S+/)", line):
            return match[1]
    raise AssertionError(
        f"the viewer printed no URL: {viewer.stderr.read() if viewer.stderr else ''}"
    )


# --- the actions, connected to Ray -----------------------------------------------------------


@pytest.mark.usefixtures("ray_session")
async def test_connected_the_page_answers_cancels_resumes_and_forks(tmp_path: Path) -> None:
    from gecko_actors.workflow import Workflow

    uri, gate = f"file://{tmp_path}/runs", tmp_path / "gate"

    def approve(ctx: NodeContext) -> str:
        return f"approved: {ctx.interrupt({'question': 'ship it?'})}"

    async def gated(ctx: NodeContext) -> str:
        while not gate.exists():  # async: a cancel stops it at once
            await asyncio.sleep(0.05)
        return "through"

    tag = os.urandom(3).hex()
    asking = Workflow(f"ui-asking-{tag}").add_node("draft", lambda c: "d").add_node("ok", approve)
    asking.add_edge("draft", "ok")
    holding = Workflow(f"ui-holding-{tag}").add_node("first", lambda c: 1).add_node("g", gated)
    holding.add_edge("first", "g")
    store = CheckpointStore(uri)
    actions = Actions(store, address="auto", targets={holding.name: ("tests:holding", holding)})
    post = {"headers": {"Content-Type": "application/json"}}
    async with TestClient(TestServer(make_app(RunsReader(store), actions=actions))) as client:

        async def act(run_id: str, action: str, **body: Any) -> dict[str, Any]:
            response = await client.post(f"/api/runs/{run_id}/{action}", json=body, **post)
            found = await response.json()
            assert response.status == 200, found
            return found

        asked = await asyncio.to_thread(asking.start, "x", checkpoint=uri)
        await _until(lambda: asked.status()["status"] == "waiting")
        detail = await (await client.get(f"/api/runs/{asked.run_id}")).json()
        assert detail["actions"] is True and list(detail["waiting"]) == ["ok"]
        done = await act(asked.run_id, "respond", node="ok", value="yes", by="ana")
        assert done["message"] == f"answered ok of {asked.run_id}"
        assert await asyncio.to_thread(asked.result, 60) == "approved: yes"

        held = await asyncio.to_thread(holding.start, "x", checkpoint=uri)
        await _until(lambda: held.status()["nodes"].get("g", {}).get("state") == "running")
        assert (await act(held.run_id, "cancel"))["message"] == f"cancelled {held.run_id}"
        assert held.status()["status"] == "cancelled"
        gate.touch()
        await act(held.run_id, "resume")
        assert await asyncio.to_thread(held.result, 60) == "through"
        forked = await act(held.run_id, "fork", at_step=1)
        fork = await (await client.get(f"/api/runs/{forked['run_id']}")).json()
        assert fork["forked_from"][0]["parent"] == held.run_id
        await _until(lambda: store.read_manifest(forked["run_id"]).status == "succeeded")
        # a workflow the viewer has no --target for cannot be forked from the page
        refused = await client.post(f"/api/runs/{asked.run_id}/fork", json={"at_step": 1}, **post)
        assert refused.status == 400 and "--target" in (await refused.json())["error"]["hint"]


async def _until(condition: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)
