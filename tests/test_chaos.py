"""The chaos helpers themselves (``gecko_actors.testing.chaos``), where they need no Ray: a
file:// storage outage, bounded and restored; provider fault patterns; DiesOnCall's count."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gecko_actors.checkpoint import CheckpointStore, StepRecord
from gecko_actors.exceptions import CheckpointError, UserError
from gecko_actors.testing import FakeReply
from gecko_actors.testing.chaos import DiesOnCall, provider_faults, storage_outage


def test_a_file_storage_outage_fails_every_write_then_restores_everything(tmp_path: Path) -> None:
    store = CheckpointStore(f"file://{tmp_path}/runs", retries=1, backoff=0.01)
    store.commit_step("r", StepRecord(0, "a", 1, "before"))
    with storage_outage(f"file://{tmp_path}/runs"):
        with pytest.raises(CheckpointError):
            store.commit_step("r", StepRecord(1, "b", 1, "during"))
        with pytest.raises(CheckpointError):
            store.load_steps("r")
    store.commit_step("r", StepRecord(1, "b", 1, "after"))
    assert [s.output for s in store.load_steps("r")] == ["before", "after"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # nothing left behind


def test_an_outage_of_bounded_seconds_ends_by_itself(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    with storage_outage(tmp_path / "runs", seconds=0.2):
        assert (tmp_path / "runs").is_file()
        deadline = time.monotonic() + 30
        while (tmp_path / "runs").is_file():
            assert time.monotonic() < deadline, "the outage did not end"
            time.sleep(0.02)
    assert (tmp_path / "runs").is_dir()


def test_a_server_outage_stops_then_starts_it_even_on_an_error() -> None:
    class Server:
        calls: list[str] = []

        def stop(self) -> None:
            self.calls.append("stop")

        def start(self) -> None:
            self.calls.append("start")

    server = Server()
    with pytest.raises(RuntimeError), storage_outage(server):
        raise RuntimeError("the test failed midway")
    assert server.calls == ["stop", "start"]
    with pytest.raises(UserError, match="cannot take"):
        storage_outage("s3://bucket/runs").__enter__()


def test_provider_faults_follow_their_pattern() -> None:
    ok = FakeReply.text("fine")
    replies = provider_faults("429, 503 cut ok", then=ok)
    assert [r.status for r in replies[:2]] == [429, 503]
    assert (replies[2].after_chunks, replies[2].then) == (1, ok) and replies[3] is ok
    with pytest.raises(UserError, match="unknown provider fault '404'"):
        provider_faults("404", then=ok)


def test_dies_on_call_counts_calls_across_processes(tmp_path: Path) -> None:
    dies = DiesOnCall(lambda messages, tools: "fine", call=3, folder=tmp_path / "calls")
    assert [asyncio.run(dies([], None)) for _ in range(2)] == ["fine", "fine"]
    assert dies.calls == 2  # the third would kill this process: not here
    with pytest.raises(UserError):
        DiesOnCall(lambda m, t: "x", call=0, folder=tmp_path)
