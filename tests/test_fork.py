"""Forking a run without Ray: a fork keeps its parent's first steps (read from the parent,
never copied or changed), writes its state change at the fork point, runs only what comes
after, survives a crash of its engine, and can be forked in turn. Plain asyncio."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
from pathlib import Path
from typing import Any

import pytest

from gecko_actors.checkpoint import CheckpointStore
from gecko_actors.exceptions import UserError
from gecko_actors.workflow import NodeContext, WorkflowGraph
from gecko_actors.workflow.engine import RunEngine
from gecko_actors.workflow.execution import LocalExecutor
from gecko_actors.workflow.fork import create_fork
from gecko_actors.workflow.history import format_history, run_history

NODES = ("a", "b", "c", "d", "e", "f")


def chain(ran: list[str], hang_at: str | None = None, hung: Any = None) -> WorkflowGraph:
    """a → b → ... → f; a sets the tone, each node appends itself in that tone. The node
    ``hang_at`` sets ``hung`` and hangs (its engine is then stopped, as if its process died)."""

    def make(name: str):
        async def node(ctx: NodeContext) -> str:
            ran.append(name)
            if name == "a":
                ctx.state["tone"] = "casual"
            if name == hang_at:
                hung.set()
                await asyncio.sleep(3600)
            return f"{ctx.input}>{name}:{ctx.state['tone']}"

        return node

    graph = WorkflowGraph("six")
    for name in NODES:
        graph.add_node(name, make(name))
    for before, after in itertools.pairwise(NODES):
        graph.add_edge(before, after)
    return graph


def open_engine(graph: WorkflowGraph, store: CheckpointStore, run_id: str, create: bool) -> Any:
    engine = RunEngine(graph, run_id, store, LocalExecutor(store))
    engine.open("in", create=create)
    if not create:
        engine.take_over()
    return engine


async def finish(graph: WorkflowGraph, store: CheckpointStore, run_id: str, create: bool) -> Any:
    engine = open_engine(graph, store, run_id, create)
    await engine.run()
    assert engine.outcome == "succeeded", engine.failure
    return engine.value


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` and the sha256 of its bytes."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(f"file://{tmp_path}")


async def test_a_fork_runs_only_what_comes_after_its_fork_point_with_the_change(
    store: CheckpointStore, tmp_path: Path
) -> None:
    ran: list[str] = []
    assert await finish(chain(ran), store, "p", True) == (
        "in>a:casual>b:casual>c:casual>d:casual>e:casual>f:casual"
    )
    parent = tree(tmp_path / "p")
    ran.clear()
    create_fork(chain(ran), store, "p", 3, state={"tone": "formal"}, run_id="f1")
    value = await finish(chain(ran), store, "f1", False)
    assert ran == ["d", "e", "f"]  # a, b and c are the parent's steps
    assert value == "in>a:casual>b:casual>c:casual>d:formal>e:formal>f:formal"
    assert tree(tmp_path / "p") == parent  # the parent is byte-for-byte unchanged
    own = sorted(name for name in tree(tmp_path / "f1") if name.endswith(".commit"))
    assert own == [f"steps/0000000{seq}.commit" for seq in (3, 4, 5)]  # none of the parent's
    # A fork of the fork, at its step 4 (d was the fork's): only e and f run.
    ran.clear()
    create_fork(chain(ran), store, "f1", 4, state={"tone": "curt"}, run_id="f2")
    assert await finish(chain(ran), store, "f2", False) == (
        "in>a:casual>b:casual>c:casual>d:formal>e:curt>f:curt"
    )
    assert ran == ["e", "f"]
    history = run_history(store, "f2")
    assert [s["run_id"] for s in history["steps"]] == ["p", "p", "p", "f1", "f2", "f2"]
    assert [(f["parent"], f["at_step"]) for f in history["forked_from"]] == [("f1", 4), ("p", 3)]
    text = format_history(history)
    assert 'forked from f1 at step 4 with state {"tone": "curt"}' in text
    assert "forked from p at step 3" in text


async def test_what_a_fork_writes_does_not_grow_with_its_fork_point(
    store: CheckpointStore, tmp_path: Path
) -> None:
    await finish(chain([]), store, "p", True)
    sizes = {}
    for at in (1, 5):
        create_fork(chain([]), store, "p", at, state={"tone": "x"}, run_id=f"at{at}")
        files = tree(tmp_path / f"at{at}")
        sizes[at] = sum(os.path.getsize(tmp_path / f"at{at}" / name) for name in files)
    assert sizes[1] == sizes[5]  # a manifest naming the parent, whatever the fork point


async def test_a_fork_can_give_the_next_visit_another_input(store: CheckpointStore) -> None:
    await finish(chain([]), store, "p", True)
    ran: list[str] = []
    create_fork(chain(ran), store, "p", 2, input="REPLACED", run_id="f")
    assert await finish(chain(ran), store, "f", False) == (
        "REPLACED>c:casual>d:casual>e:casual>f:casual"
    )
    assert ran == ["c", "d", "e", "f"]


async def test_a_fork_whose_engine_died_is_resumed_with_its_change(store: CheckpointStore) -> None:
    await finish(chain([]), store, "p", True)
    ran: list[str] = []
    create_fork(chain(ran), store, "p", 2, state={"tone": "formal"}, run_id="f")
    hung = asyncio.Event()
    crashed = open_engine(chain(ran, hang_at="e", hung=hung), store, "f", False)
    driving = asyncio.create_task(crashed.run())
    await hung.wait()
    driving.cancel()  # its process is gone: nothing of e was committed
    await asyncio.gather(driving, return_exceptions=True)
    assert [r.node for r in store.load_steps("f")] == ["a", "b", "c", "d"]  # c, d its own
    ran.clear()
    value = await finish(chain(ran), store, "f", False)  # a new engine takes it over
    assert ran == ["e", "f"] and value.endswith("d:formal>e:formal>f:formal")


async def test_a_fork_at_step_0_is_a_new_run_of_the_same_input_with_the_change(
    store: CheckpointStore,
) -> None:
    await finish(chain([]), store, "p", True)
    ran: list[str] = []
    create_fork(chain(ran), store, "p", 0, state={"tone": "kept?"}, run_id="f")
    value = await finish(chain(ran), store, "f", False)
    assert ran == list(NODES) and value.startswith("in>a:casual")  # a writes the tone again


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"parent": "nope", "at_step": 1}, "no run 'nope'"),
        ({"parent": "p", "at_step": 7}, "it has 6 committed steps"),
        ({"parent": "p", "at_step": -1}, "it has 6 committed steps"),
        ({"parent": "p", "at_step": 2, "state": {1: "x"}}, "dict of str keys"),
        ({"parent": "p", "at_step": 2, "state": {"k": object()}}, "fork's state"),
        ({"parent": "p", "at_step": 6, "input": "x"}, "none \\(the run had ended\\)"),
        ({"parent": "p", "at_step": 2, "input": "x", "node": "e"}, "'e' is not one of them"),
        ({"parent": "p", "at_step": 2, "node": "c"}, "no input is given"),
        ({"parent": "p", "at_step": 2, "run_id": "p"}, "already exists"),
        ({"parent": "p", "at_step": 2, "run_id": "bad/id"}, "invalid"),
    ],
)
async def test_a_bad_fork_is_refused_before_anything_is_stored(
    store: CheckpointStore, tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    await finish(chain([]), store, "p", True)
    before = tree(tmp_path)
    parent, at_step = kwargs.pop("parent"), kwargs.pop("at_step")
    with pytest.raises(UserError, match=message):
        create_fork(chain([]), store, parent, at_step, **kwargs)
    assert tree(tmp_path) == before


async def test_a_fork_needs_a_compatible_graph(store: CheckpointStore) -> None:
    await finish(chain([]), store, "p", True)
    later = chain([]).add_node("g", lambda ctx: 1).add_edge("f", "g")
    assert create_fork(later, store, "p", 2).graph == later.describe()  # g: after step 2
    other = chain([])
    del other.nodes["a"]
    other.edges, other.entry = other.edges[1:], "b"
    with pytest.raises(UserError, match="node 'a' ran in this run but is gone"):
        create_fork(other, store, "p", 2)


async def test_a_fork_reads_a_shared_step_from_its_parent(store: CheckpointStore) -> None:
    """What a node reads lazily of an older output (``ctx.outputs``) is found in the parent."""
    await finish(chain([]), store, "p", True)
    fork_id = create_fork(chain([]), store, "p", 4).run_id
    assert fork_id.startswith("six-")
    assert store.read_step(fork_id, 1) == store.read_step("p", 1)
    await finish(chain([]), store, fork_id, False)
    assert store.read_step(fork_id, 5).node == "f" and store.read_step(fork_id, 5).epoch > 0
