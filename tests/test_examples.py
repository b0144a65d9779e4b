"""Every example runs offline with one command; these run their main() on the shared Ray."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
from click.testing import CliRunner

from gecko_actors.cli import main as cli

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

pytestmark = pytest.mark.usefixtures("ray_session")


def run_example(name: str, **kwargs):
    return runpy.run_path(str(EXAMPLES / f"{name}.py"))["main"](**kwargs)


def test_research_team_runs_its_members_at_once() -> None:
    result = run_example("research_team")
    assert result["views"] == ["optimist", "skeptic", "economist", "engineer"]
    assert result["overlap"] and result["first"] == "optimist"


def test_durable_pipeline_resumes_without_redoing_committed_steps(tmp_path: Path) -> None:
    result = run_example("durable_pipeline", checkpoint=str(tmp_path))
    assert len(result["committed"]) >= 2
    assert not set(result["committed"]) & set(result["rerun"])  # committed: never run again
    assert set(result["committed"]) | set(result["rerun"]) == {
        "fetch", "clean", "words", "sentences", "report"
    }  # fmt: skip
    assert result["result"].startswith("4 sentences; most frequent words:")


def test_durable_pipeline_through_the_cli(tmp_path: Path) -> None:
    outcome = CliRunner().invoke(
        cli,
        ["run", f"{EXAMPLES / 'durable_pipeline.py'}:workflow", "--input", "A b. C!",
         "--checkpoint", str(tmp_path)],
    )  # fmt: skip
    assert outcome.exit_code == 0, outcome.output
    # stdout only: Ray may log warnings (a nearly full disk, say) to stderr meanwhile
    assert outcome.stdout.rstrip().endswith("2 sentences; most frequent words: a (1), b (1), c (1)")


def test_time_travel_reads_back_forks_and_replays_a_run(tmp_path: Path) -> None:
    result = run_example("time_travel", checkpoint=str(tmp_path))
    assert result["result"] == "Hi there! Forecast: sunny and 24°C in Lyon. — G."
    assert result["steps"] == ["plan", "forecast", "write", "sign"]
    assert result["fork"] == "Dear friends, Forecast: sunny and 24°C in Lyon. — G."
    assert (
        len(set(result["fork_steps"][:2])) == 1
        and result["fork_steps"][2] != (result["fork_steps"][0])
    )  # the first two steps are the parent's, the rest the fork's
    assert result["replay_ok"] and result["changed_at"] == "sign"


def test_batch_eval_grades_200_prompts_under_the_rate_limit() -> None:
    result = run_example("batch_eval")
    assert len(result["grades"]) == 200 and result["served"] == 200  # one request each
    assert result["grades"][:6] == ["wrong", "correct", "correct", "correct", "correct", "wrong"]
    assert result["usage"].requests == 200 and result["usage"].total_tokens > 0


def test_rag_agent_answers_from_the_right_document() -> None:
    answer = run_example("rag_agent")["answer"]
    assert answer == (
        "Deploys to production happen on Tuesdays and Thursdays, never on Fridays. "
        "(source: deploys.md)"
    )


def test_approval_waits_for_the_human_then_sends_the_edited_mail(tmp_path: Path) -> None:
    result = run_example("approval", checkpoint=str(tmp_path))
    assert result["asked"] == {
        "tool": "send_mail",
        "arguments": {"to": "ann@example.com", "body": "Your refund for order 42 is on its way."},
    }
    assert result["result"] == (
        "order 42: paid by card, refundable; refund of order 42 paid; "
        "Done: sent to ann@example.com."
    )
