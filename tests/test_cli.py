"""The command line, the demo, and the promise that the core never imports Ray."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from gecko_actors import WorkflowError, __version__
from gecko_actors.cli import main

ROOT = Path(__file__).resolve().parent.parent

FLOW = """
import time
from pathlib import Path

from gecko_actors.workflow import Workflow

GATE = Path(__file__).parent / "gate"


def shout(ctx):
    return str(ctx.input).upper()


def guarded(ctx):
    if not GATE.exists():
        raise RuntimeError("the gate is closed")
    return f"{ctx.input}!"


def build():
    return Workflow("{name}").add_node("shout", shout).add_node("end", guarded).add_edge(
        "shout", "end"
    )


workflow = build()
not_a_workflow = 42
"""


@pytest.fixture
def flow(tmp_path: Path) -> Path:
    path = tmp_path / "flow.py"
    path.write_text(FLOW.replace("{name}", f"flow-{uuid.uuid4().hex[:6]}"))
    return path


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_version_and_every_help_shows_an_example() -> None:
    assert __version__ in cli("--version")[1]
    commands = ("demo", "run", "submit", "status", "list", "resume", "respond", "cancel", "graph")
    commands += ("history", "fork", "ui")
    for command in commands:
        code, text = cli(command, "--help")
        assert code == 0 and "Example:" in text and f"gecko-actors {command}" in text, command


@pytest.mark.usefixtures("ray_session")
def test_demo_runs_the_research_workflow(tmp_path: Path) -> None:
    code, out = cli("demo", "--checkpoint", str(tmp_path / "runs"))
    assert code == 0, out
    for node in ("plan", "research", "collect", "critic", "decide"):
        assert f"✓ {node} in" in out, node
    assert "✓ write in" in out and "write (visit 2, attempt 1)" in out  # the critic's loop
    assert "Finding 2:" not in out  # the report rephrases the findings...
    assert "For 50 agents that is about $43.20 a day." in out  # ...from the tools' results
    assert "Conclusion: run each agent as an actor" in out
    run_id = re.search(r"run (research-\w+)", out).group(1)
    assert f"run {run_id} (research): succeeded, 10 step(s)" in out
    code, status = cli("status", run_id, "--checkpoint", str(tmp_path / "runs"))
    assert code == 0 and "succeeded" in status and "decide" in status
    # The run's tokens are every step's, the loop's first visits included.
    code, as_json = cli("status", run_id, "--checkpoint", str(tmp_path / "runs"), "--json")
    code, history = cli("history", run_id, "--checkpoint", str(tmp_path / "runs"), "--json")
    steps = json.loads(history)["steps"]
    assert json.loads(as_json)["tokens"] == sum(step["tokens"] for step in steps) > 0
    # The page of every run in that store, printed with the command that serves it.
    assert f"gecko-actors ui --checkpoint file://{tmp_path / 'runs'}" in out


def test_demo_with_a_real_model_needs_its_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    code, out = cli("demo", "--model", "openai/gpt-4o-mini")
    assert code == 1 and "OPENAI_API_KEY" in out and "Traceback" not in out


@pytest.mark.usefixtures("ray_session")
def test_run_status_list_and_resume(flow: Path, tmp_path: Path) -> None:
    runs = str(tmp_path / "runs")
    code, out = cli("run", f"{flow}:workflow", "--input", "hi", "--checkpoint", runs)
    assert code == 1 and "the gate is closed" in out  # the summary, then one error line
    assert "✓ shout in" in out and "✗ end: RuntimeError: the gate is closed" in out
    run_id = re.search(r"run (flow-\w+-\w+) \(checkpoint", out).group(1)

    code, listing = cli("list", "--checkpoint", runs)
    assert code == 0 and re.search(rf"{run_id}\s+flow-\w+\s+failed", listing)
    code, status = cli("status", run_id, "--checkpoint", runs, "--json")
    assert code == 0 and json.loads(status)["nodes"]["shout"]["state"] == "done"

    (tmp_path / "gate").touch()
    code, out = cli("resume", run_id, f"{flow}:build", "--checkpoint", runs)
    assert code == 0, out
    assert out.rstrip().endswith("result:\nHI!")
    assert "▶ shout" not in out  # committed before the failure: not run again
    code, status = cli("status", run_id, "--checkpoint", runs)
    assert code == 0 and "succeeded" in status


@pytest.mark.usefixtures("ray_session")
def test_cancel_a_running_run_then_resume_it(tmp_path: Path) -> None:
    # Node b waits (cancellably) for a gate the test opens only after the cancel: the run is
    # surely still going when it is cancelled, however slow the machine.
    flow = tmp_path / "slow.py"
    flow.write_text(
        "import asyncio\nfrom pathlib import Path\nfrom gecko_actors.workflow import Workflow\n"
        "GATE = Path(__file__).parent / 'gate'\n"
        "async def step(ctx):\n"
        "    while ctx.node == 'b' and not GATE.exists():\n"
        "        await asyncio.sleep(0.05)\n"
        "    return f'{ctx.input}>{ctx.node}'\n"
        "workflow = Workflow('slow').add_node('a', step).add_node('b', step)"
        ".add_node('c', step).add_edge('a', 'b').add_edge('b', 'c')\n"
    )
    from gecko_actors.workflow.target import load_workflow

    runs = str(tmp_path / "runs")
    run = load_workflow(f"{flow}:workflow").start("x", checkpoint=runs)
    while run.status()["steps"] < 1:
        time.sleep(0.05)
    code, out = cli("cancel", run.run_id)
    assert code == 0 and f"cancelled {run.run_id}" in out
    with pytest.raises(WorkflowError, match="cancelled"):
        run.result(timeout=60)
    (tmp_path / "gate").touch()
    code, out = cli("resume", run.run_id, f"{flow}:workflow", "--checkpoint", runs)
    assert code == 0, out
    assert out.rstrip().endswith("result:\nx>a>b>c") and "▶ a" not in out  # a: committed


@pytest.mark.usefixtures("ray_session")
def test_run_reads_json_input_from_a_file(flow: Path, tmp_path: Path) -> None:
    (tmp_path / "gate").touch()
    (tmp_path / "input.json").write_text('["a", 1]')
    code, out = cli(
        "run", f"{flow}:workflow", "--input", f"@{tmp_path / 'input.json'}",
        "--checkpoint", str(tmp_path / "runs"),
    )  # fmt: skip
    assert code == 0 and out.rstrip().endswith("result:\n['A', 1]!")


def test_graph_prints_mermaid(flow: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out = cli("graph", f"{flow}:workflow")
    assert code == 0 and out.startswith("flowchart TD") and "shout --> end" in out
    # A module target imports from the current folder, as `python -m` would.
    (flow.parent / "flows_mod.py").write_text(flow.read_text())
    monkeypatch.chdir(flow.parent)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(flow.parent))])
    code, out = cli("graph", "flows_mod:build")
    assert code == 0 and "shout --> end" in out


@pytest.mark.parametrize(
    ("content", "target", "message"),
    [
        ("def broken(:\n", "flow.py:workflow", "flow.py:1: syntax error"),
        (FLOW, "flow.py:missing", "has no attribute 'missing'"),
        (FLOW, "flow.py:not_a_workflow", "is a int, not a Workflow"),
        (FLOW, "nowhere.py:workflow", "no such file"),
        ("raise ImportError('no module named foo')\n", "flow.py:workflow", "failed to load"),
        (FLOW, "flow.py", "invalid target"),
    ],
)
def test_bad_targets_are_one_line_and_a_non_zero_exit(
    tmp_path: Path, content: str, target: str, message: str
) -> None:
    (tmp_path / "flow.py").write_text(content.replace("{name}", "flow"))
    done = subprocess.run(
        [sys.executable, "-m", "gecko_actors.cli", "run", target],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 1
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr


def test_commands_that_need_a_cluster_or_a_run_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out = cli("status", "nope", "--checkpoint", str(tmp_path))
    assert code == 1 and "no run 'nope'" in out
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code, out = cli("submit", "flow.py:workflow")
    assert code == 1 and "no cluster to submit to" in out


@pytest.mark.parametrize("command", ["run", "resume"])
def test_a_dashboard_url_is_refused_where_a_driver_connects(
    flow: Path, tmp_path: Path, command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The target loads (a real workflow file), so the refusal comes from the address check and
    # not from a missing file; it comes before any Ray starts or any run is created.
    def init(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"connected to Ray with {args}")  # fails fast if the check is gone

    monkeypatch.setattr("gecko_actors.init", init)
    runs = str(tmp_path / "runs")
    args = ["run", f"{flow}:workflow"] if command == "run" else ["resume", "r-1", f"{flow}:build"]
    code, out = cli(*args, "--address", "http://127.0.0.1:8265", "--checkpoint", runs)
    assert code == 1, out
    assert (
        "error: http://127.0.0.1:8265 is a dashboard URL: use it with `gecko-actors submit`" in out
    )
    assert "--address auto" in out and "Traceback" not in out
    assert "connected to Ray" not in out and not (tmp_path / "runs").exists()


@pytest.mark.usefixtures("ray_session")
def test_cancel_an_unknown_run() -> None:
    code, out = cli("cancel", "no-such-run")
    assert code == 1 and "no live host or coordinator drives run 'no-such-run'" in out


def test_the_core_never_imports_ray_or_litellm() -> None:
    code = textwrap.dedent(
        """
        import sys
        from gecko_actors import LocalAgent, ScriptedModel, tool

        @tool
        def add(a: int, b: int) -> int:
            "Add two numbers."
            return a + b

        def model(messages, tools):
            if messages[-1].role == "tool":
                return messages[-1].text
            return [ScriptedModel.call("add", a=2, b=3)]

        assert LocalAgent(ScriptedModel(model), [add]).run("2 + 3?").content == "5"
        print(sorted(m for m in ("ray", "litellm") if m in sys.modules))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "[]"


def test_example_tool_agent_runs() -> None:
    import runpy

    namespace = runpy.run_path(str(ROOT / "examples" / "tool_agent.py"))
    quote = namespace["main"]()
    assert (quote.usd, quote.eur) == (59.97, 55.17)


BUDGETED = """
from gecko_actors import LocalAgent, ScriptedModel
from gecko_actors.workflow import Workflow


def ask(ctx):
    return LocalAgent(ScriptedModel(["word " * 230]), name=ctx.node).run("go").content


workflow = Workflow("{name}").add_node("a", ask).add_node("b", ask).add_edge("a", "b")
"""


@pytest.mark.usefixtures("ray_session")
def test_run_and_resume_with_a_budget(tmp_path: Path) -> None:
    path = tmp_path / "budgeted.py"
    path.write_text(BUDGETED.replace("{name}", f"budgeted-{uuid.uuid4().hex[:6]}"))
    runs = str(tmp_path / "runs")
    code, out = cli("run", f"{path}:workflow", "--checkpoint", runs, "--budget", "tokens=400")
    assert code == 1 and "BudgetExceededError" in out and "✓ a in" in out, out
    run_id = re.search(r"run (budgeted-\w+-\w+) \(checkpoint", out).group(1)
    code, status = cli("status", run_id, "--checkpoint", runs)
    assert code == 0 and "model calls (budget: tokens=400)" in status, status

    code, out = cli(
        "resume", run_id, f"{path}:workflow", "--checkpoint", runs, "--budget", "tokens=2000"
    )
    assert code == 0, out
    assert "▶ a" not in out and "✓ b in" in out
    assert "spent" in out and "2 model calls (budget: tokens=2000)" in out

    code, out = cli("run", f"{path}:workflow", "--checkpoint", runs, "--budget", "dollars=1")
    assert code == 1 and "'dollars=1' is not a limit" in out and "usd=X" in out


@pytest.mark.usefixtures("ray_session")
async def test_respond_to_a_run_no_host_holds_through_its_checkpoint(tmp_path: Path) -> None:
    from gecko_actors.checkpoint import CheckpointStore
    from gecko_actors.workflow import WorkflowGraph
    from gecko_actors.workflow.engine import RunEngine
    from gecko_actors.workflow.execution import LocalExecutor

    graph = WorkflowGraph("ask").add_node("ask", lambda ctx: f"got {ctx.interrupt('why?')}")
    store = CheckpointStore(f"file://{tmp_path}")
    engine = RunEngine(graph, "offline-1", store, LocalExecutor(store))
    engine.open(None)
    await engine.run()  # it waits, and no host holds it
    (tmp_path / "answer.json").write_text('{"because": 42}')
    code, out = cli("respond", "offline-1", "ask", "@" + str(tmp_path / "answer.json"),
                    "--checkpoint", str(tmp_path))  # fmt: skip
    assert code == 0 and "resume the run to go on" in out, out
    again = RunEngine(graph, "offline-1", store, LocalExecutor(store))
    again.open(None, create=False)
    await again.run()
    assert again.value == "got {'because': 42}"
    code, out = cli("respond", "offline-1", "ask", "x", "--checkpoint", str(tmp_path))
    assert code == 1 and "not waiting" in out
