"""Hosted agents whose spec is data are archived in the session store, so that they outlive
the whole cluster: ``Agent.get`` records them again from there (the whole-instance loss is in
tests/test_workflow_restart.py)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from gecko_actors import Agent, ScriptedModel, UserError
from gecko_actors.agents import archive, directory


@pytest.fixture
def durable_sessions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "sessions.db"
    monkeypatch.setenv("GECKO_STORAGE_URL", f"sqlite:///{path}")
    return path


@pytest.mark.usefixtures("ray_session", "durable_sessions")
def test_an_agent_lost_from_the_directory_comes_back_from_its_archived_spec() -> None:
    name = f"kept-{uuid.uuid4().hex[:8]}"
    Agent.spawn(name, model=ScriptedModel(["one", "two"]))
    try:
        assert archive.kept(name) == directory.find(name).data  # the spec, as data
        directory.remove(name)  # what the loss of the cluster's GCS does to it
        revived = Agent.get(name)
        assert directory.find(name) is not None  # recorded again
        assert revived.run("hi").content in ("one", "two")
    finally:
        Agent.get(name).kill()
    assert archive.kept(name) is None  # killed: forgotten
    with pytest.raises(UserError, match="no agent named"):
        Agent.get(name)


@pytest.mark.usefixtures("ray_session", "durable_sessions")
def test_an_agent_of_live_code_is_not_archived() -> None:
    name = f"live-{uuid.uuid4().hex[:8]}"
    agent = Agent.spawn(name, model=ScriptedModel(lambda messages, tools: "from a lambda"))
    try:
        assert archive.kept(name) is None  # pickled in the cluster only: gone with it
    finally:
        agent.kill()


@pytest.mark.usefixtures("ray_session")
def test_nothing_is_archived_in_a_memory_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GECKO_STORAGE_URL", "memory://")
    name = f"mem-{uuid.uuid4().hex[:8]}"
    agent = Agent.spawn(name, model=ScriptedModel(["one"]))
    try:
        assert archive.kept(name) is None
    finally:
        agent.kill()
