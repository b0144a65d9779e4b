"""The command line, the demo, the examples, and the promise that the core never imports Ray."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from gecko_actors import __version__
from gecko_actors.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_demo_prints_a_tool_using_answer() -> None:
    result = CliRunner().invoke(main, ["demo"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert 'calculator({"expression": "12 * 340 * 24"})' in out
    assert "tool calculator ← 97920" in out
    assert "answer: The 12 agents make 97,920 calls a day." in out
    assert "$14.69 per day on gpt-4o-mini and $24.48 per day on claude-haiku" in out
    assert "model calls: 3" in out and "tool calls: 5" in out


def test_version_and_help() -> None:
    runner = CliRunner()
    assert __version__ in runner.invoke(main, ["--version"]).output
    help_text = runner.invoke(main, ["demo", "--help"]).output
    assert "Example:" in help_text and "gecko-actors demo" in help_text


def test_core_and_demo_never_import_ray_or_litellm() -> None:
    code = (
        "import sys\n"
        "from gecko_actors.demo import run_demo\n"
        "run_demo(lambda _: None)\n"
        "print(sorted(m for m in ('ray', 'litellm') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "[]"


def test_example_tool_agent_runs() -> None:
    namespace = runpy.run_path(str(ROOT / "examples" / "tool_agent.py"))
    quote = namespace["main"]()
    assert (quote.usd, quote.eur) == (59.97, 55.17)
