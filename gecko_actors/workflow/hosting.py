"""The driver's side of hosted runs: finding (or making) the job's workflow hosts, and
starting or resuming a run on one of them.

A host is created with ``get_if_exists`` and the same options by every driver (Ray keeps the
first creator's and drops the others'); its handle is kept per process, so a call to a run is
one hop.
"""

from __future__ import annotations

import hashlib
import time
import weakref
from typing import Any

import ray
from ray import cloudpickle

from gecko_actors._actors import pools
from gecko_actors._actors.common import lookup, unwrap
from gecko_actors.checkpoint import Manifest
from gecko_actors.core import tracing
from gecko_actors.core.budget import Budget
from gecko_actors.exceptions import HostBusy, UserError, WorkflowError
from gecko_actors.logging import get_logger
from gecko_actors.runtime import ensure_initialized
from gecko_actors.workflow import directory
from gecko_actors.workflow.graph import WorkflowGraph
from gecko_actors.workflow.host import GraphMissing, GraphRef, WorkflowHost

_log = get_logger("gecko_actors.workflow")
# (cluster, host name, graph key) of the graphs a host was sent by this process: later starts
# send the key alone (the host keeps the graph, and a restarted one finds it in the directory).
_SENT: set[tuple[str, str, str]] = set()
_PACKED: weakref.WeakKeyDictionary[WorkflowGraph, tuple[tuple[Any, ...], GraphRef]] = (
    weakref.WeakKeyDictionary()
)
_CALL_TRIES = 3


def handle(name: str) -> Any:
    """The handle of workflow host ``name``, made if it does not exist."""
    return pools.handle(name, WorkflowHost)


def forget(name: str) -> None:
    """Drop this process's handle of host ``name`` (it died for good)."""
    pools.forget(name)


def warm() -> None:
    """Create this job's preferred workflow host without waiting for it (see ``init``);
    best effort: a runtime that cannot make it now makes it at the first start."""
    if not ray.is_initialized():
        return
    try:
        handle(directory.host_name(directory.code_env(), 0))
    except Exception as exc:
        _log.warning("could not start a workflow host in advance", error=str(exc))


def call(name: str, method: str, *args: Any) -> Any:
    """Call ``method`` of host ``name``; a host killed for good is made again (Ray retries a
    call to a host it is restarting by itself)."""
    for attempt in range(_CALL_TRIES):
        try:
            return ray.get(getattr(handle(name), method).remote(*args))
        except ray.exceptions.ActorDiedError:
            forget(name)
            time.sleep(0.2 * (attempt + 1))  # until its name is free again
        except ray.exceptions.RayTaskError as exc:
            raise unwrap(exc) from None
    raise WorkflowError(
        f"workflow host {name} died {_CALL_TRIES} times in a row while asked to {method}",
        hint="look at the host's log in the Ray dashboard (Actors, then its name)",
        host=name,
    )


def packed(graph: WorkflowGraph) -> GraphRef:
    """What a host needs to run ``graph``: a key naming its exact code, the graph pickled
    (shipped inside the cluster only), and its ``module:attr`` target when it has one.

    Pickled once per shape of the graph (a node added or replaced pickles it again): as with
    a Ray remote function, what its functions' globals hold is taken at the first start."""
    shape = graph.shape()
    hit = _PACKED.get(graph)
    if hit is not None and hit[0] == shape:
        return hit[1]
    blob = cloudpickle.dumps(graph)
    ref = GraphRef(hashlib.sha256(blob).hexdigest()[:32], blob, graph.target)
    _PACKED[graph] = (shape, ref)
    return ref


def start(
    graph: WorkflowGraph, run_id: str, uri: str, input: Any, budget: Budget | None = None
) -> str:
    """Start run ``run_id`` on a host of this job's pool (another one when the preferred one
    is full); returns the host's name."""
    return start_code(packed(graph), run_id, uri, input, budget)


def start_code(
    code: GraphRef, run_id: str, uri: str, input: Any, budget: Budget | None = None
) -> str:
    """:func:`start` from ``code`` as hosts take it: a scheduler starts a run with the key
    of a graph kept in the directory (and its target), without unpickling the graph, i.e.
    without importing the user's code, itself."""
    ensure_initialized()
    created_at = time.time()  # the same in a retry: how a host knows its own run again
    hosts = directory.candidates(run_id, directory.code_env())
    cluster = ray.get_runtime_context().gcs_address
    traced = tracing.shipped()  # the host traces the run as this process does
    for name in hosts:
        sent = (cluster, name, code.key)
        known = code._replace(blob=None) if sent in _SENT else code
        try:
            try:
                call(name, "start_run", run_id, uri, known, input, created_at, budget, traced)
            except GraphMissing:  # it lost the graph it was sent: send it again
                call(name, "start_run", run_id, uri, code, input, created_at, budget, traced)
        except HostBusy:
            continue
        _SENT.add(sent)
        return name
    raise HostBusy(
        f"every workflow host of this job ({len(hosts)}) already drives its maximum of runs",
        hint="wait for runs to finish, add nodes, or raise GECKO_HOST_MAX_RUNS or "
        "GECKO_HOSTS_PER_NODE",
        run_id=run_id,
    )


def resume(graph: WorkflowGraph, manifest: Manifest, uri: str, budget: Budget | None = None) -> str:
    """Resume a run on its host when that host is of this job's pool (else on this pool's
    preferred host, which takes the run over); returns the host's name."""
    ensure_initialized()
    env = directory.code_env()
    recorded = manifest.host or ""
    ours = recorded.startswith(directory.host_name(env, ""))
    name = recorded if ours else directory.candidates(manifest.run_id, env)[0]
    code = packed(graph)
    call(name, "resume_run", manifest.run_id, uri, code, manifest.input, budget, tracing.shipped())
    return name


def drain_workflow_host(
    name: str, *, timeout: float = 60.0, hand_over: bool = True
) -> dict[str, Any]:
    """Replace workflow host ``name`` without losing a run: it takes no new run, gives the
    runs it drives up to ``timeout`` seconds to end (or to wait for an answer or a timer),
    lets go of the others without recording anything, and exits; each run it let go is
    then resumed from its checkpoint by a host of the same pool (a fresh actor of that name
    when the pool has one host), and its handles follow it there. With
    ``hand_over=False`` the runs are only let go, intact in their checkpoints, for a driver
    of the new code to resume (``wf.resume`` with the new version: a deploy). Returns the
    runs that ``ended`` on the host and where each ``released`` one went (run id -> host,
    or None).

    Example:
        >>> gecko_actors.drain_workflow_host("workflows/host/3f2a9c0d1e/0", timeout=120)
    """
    ensure_initialized()
    host = lookup(name)
    if host is None or not name.startswith("workflows/host/"):
        raise UserError(
            f"no live workflow host is named {name!r}",
            hint="the names are listed by `ray list actors` and the dashboard, as "
            "workflows/host/<env>/<i>",
        )
    report = ray.get(host.drain.remote(timeout))
    if not hand_over:
        ray.kill(host, no_restart=True)
        forget(name)
        return {"ended": report["ended"], "released": dict.fromkeys(report["released"])}
    env = name.split("/")[2]
    # Each run is recorded for its successor before the host exits, so a handle that asks
    # meanwhile finds where it goes (and a successor of the same name resumes it by itself).
    successors = {run_id: _successor(run_id, env, name) for run_id in report["released"]}
    for run_id, entry in report["released"].items():
        directory.record_run(successors[run_id], run_id, entry)
    ray.kill(host, no_restart=True)  # it exits for good: the name is free for its successor
    forget(name)
    moved = {}
    for run_id, entry in report["released"].items():
        graph = GraphRef(entry["graph"], None, entry.get("target"))
        moved[run_id] = _resume_entry(run_id, entry, graph, env, successors[run_id])
    return {"ended": report["ended"], "released": moved}


def _successor(run_id: str, env: str, drained: str) -> str:
    """Where a drained host's run goes: another host of its pool (its node may be going
    away), else a new actor of the drained one's name."""
    return next((h for h in directory.candidates(run_id, env) if h != drained), drained)


def _resume_entry(run_id: str, entry: dict[str, Any], graph: GraphRef, env: str, first: str) -> str:
    """Resume a released run on host ``first``, else on the next host of pool ``env`` that
    takes it (recorded there instead)."""
    others = [h for h in directory.candidates(run_id, env) if h != first]
    for name in [first, *others]:
        try:
            if name != first:
                directory.record_run(name, run_id, entry)
            call(name, "resume_run", run_id, entry["uri"], graph, None, None, None)
        except HostBusy:
            directory.forget_run(name, run_id)
            continue
        return name
    raise HostBusy(
        f"no workflow host of the pool took run {run_id!r} over",
        hint=f"resume it with wf.resume({run_id!r}, checkpoint=...): it is intact in its "
        "checkpoint",
        run_id=run_id,
    )
