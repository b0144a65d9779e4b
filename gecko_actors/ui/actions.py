"""What the run page can do to a run (answer a waiting node, cancel, resume, fork from a
step), and the ``gecko-actors`` command that does the same, shown beside each action.

The actions need the cluster: the viewer runs them only when started with ``--address``
(connected to Ray). Without it, the page shows the commands only. Resume of a run that no live
host holds, and fork, need the run's workflow (its code): the viewer has it only for the
workflows its ``--target`` options name, which the operator chose; a page never names code to
load. Every method blocks (Ray calls): call it from a thread.
"""

from __future__ import annotations

import json
import shlex
import threading
import time
from typing import Any

from gecko_actors._redact import mask_url, redact
from gecko_actors.checkpoint import CheckpointStore
from gecko_actors.checkpoint.records import TERMINAL
from gecko_actors.exceptions import UserError
from gecko_actors.workflow.inputs import MAX_INPUT_BYTES

__all__ = ["Actions"]

_ACTOR_IDS_FOR = 30.0  # seconds an actor's id is remembered (a restarted host has a new one)


class Actions:
    """The actions on the runs of ``store``, and their commands.

    Args:
        store: the checkpoint store the viewer reads.
        address: the Ray address the viewer is connected to (``None``: not connected, the
            actions are commands only).
        dashboard: the Ray dashboard's ``host:port``, for links (when connected).
        targets: workflow name -> (the ``--target`` it was loaded from, the ``Workflow``).
    """

    def __init__(
        self,
        store: CheckpointStore,
        *,
        address: str | None = None,
        dashboard: str | None = None,
        targets: dict[str, tuple[str, Any]] | None = None,
    ) -> None:
        self.store = store
        self.address = address
        self.dashboard = dashboard
        self.targets = dict(targets or {})
        self._actor_ids: dict[str, tuple[float, str | None]] = {}
        self._lock = threading.Lock()

    @property
    def connected(self) -> bool:
        """Whether the page may run actions (the viewer is connected to Ray)."""
        return self.address is not None

    # --- the commands ---------------------------------------------------------------------

    def commands(self, run: dict[str, Any], waiting: list[str]) -> dict[str, Any]:
        """The CLI commands for ``run`` (the page's ``run`` data): ``status``, ``history``,
        and those of the actions that apply to it. ``VALUE`` (an answer) and ``K`` (a fork's
        step count) are placeholders the page fills in."""
        run_id, status = run["run_id"], run["status"]
        store = ["--checkpoint", mask_url(self.store.uri)]
        address = ["--address", redact(self.address or "auto")]
        target = self.target_of(run["workflow"]) or "TARGET"
        found: dict[str, Any] = {
            "status": _command("status", run_id, *store),
            "history": _command("history", run_id, *store),
            "respond": {
                node: _command("respond", run_id, node, "VALUE", *address, *store)
                for node in waiting
            },
            "fork": _command("fork", run_id, target, "--at-step", "K", *store, *address),
        }
        if status not in TERMINAL:
            found["cancel"] = _command("cancel", run_id, *address)
        if status != "succeeded":
            found["resume"] = _command("resume", run_id, target, *store, *address)
        return found

    def target_of(self, workflow: str) -> str | None:
        """The ``--target`` that loaded ``workflow``, if one did."""
        found = self.targets.get(workflow)
        return None if found is None else found[0]

    # --- the actions ----------------------------------------------------------------------

    def respond(self, run_id: str, node: str, value: Any, *, as_json: bool, by: Any) -> str:
        """Answer ``node``'s interrupt with ``value`` (text, or JSON text with ``as_json``),
        given ``by`` whom: through the run's live host, else recorded in the checkpoint
        (the run goes on with it once resumed)."""
        from gecko_actors.workflow.run import WorkflowRun
        from gecko_actors.workflow.waiting import answer_in_checkpoint

        self._check_connected()
        answer = _answer(value, as_json)
        if not isinstance(node, str) or not node:
            raise UserError("respond needs the node to answer", hint="name a waiting node")
        if by is not None and (not isinstance(by, str) or len(by) > 200):
            raise UserError("'by' must be a name (at most 200 characters)")
        try:
            handle = WorkflowRun.attach(run_id)
        except UserError:  # no live host: the answer waits in the checkpoint for a resume
            answer_in_checkpoint(self.store, run_id, node, answer, by or None)
            return f"answered {node} of {run_id} in the checkpoint: resume the run to go on"
        handle.respond(node, answer, by=by or None)
        return f"answered {node} of {run_id}"

    def cancel(self, run_id: str) -> str:
        """Cancel the run (its committed steps stay)."""
        from gecko_actors.workflow.run import WorkflowRun

        self._check_connected()
        WorkflowRun.attach(run_id).cancel(timeout=60)
        return f"cancelled {run_id}"

    def resume(self, run_id: str, workflow: str) -> str:
        """Continue the run from its last committed step: through its live host, else
        with its workflow (a ``--target`` of the viewer)."""
        from gecko_actors.workflow.run import WorkflowRun

        self._check_connected()
        try:
            if WorkflowRun.attach(run_id).reopen():
                return f"resumed {run_id}"
        except UserError:  # no live host holds it
            pass
        wf = self._workflow(workflow, f"resume {run_id}")
        wf.resume(run_id, checkpoint=self.store.uri)
        return f"resumed {run_id}"

    def fork(self, run_id: str, workflow: str, at_step: Any) -> dict[str, str]:
        """Start a new run from the run's first ``at_step`` steps; returns its id."""
        self._check_connected()
        if type(at_step) is not int or at_step < 0:
            raise UserError(f"invalid step count {at_step!r:.40}", hint="a number from 0")
        wf = self._workflow(workflow, f"fork {run_id}")
        handle = wf.fork(run_id, at_step=at_step, checkpoint=self.store.uri)
        return {"message": f"forked {run_id} at step {at_step}", "run_id": handle.run_id}

    def _workflow(self, workflow: str, doing: str) -> Any:
        found = self.targets.get(workflow)
        if found is None:
            raise UserError(
                f"to {doing}, the viewer needs workflow {workflow!r}'s code",
                hint="start `gecko-actors ui` with --target FILE.py:ATTR (or module:attr) "
                "naming it, or run the command shown",
            )
        return found[1]

    def _check_connected(self) -> None:
        if not self.connected:
            raise UserError(
                "the viewer is not connected to Ray: it can only show the command",
                hint="start `gecko-actors ui` with --address to act from the page",
            )

    # --- links to the Ray dashboard -------------------------------------------------------

    def links(self, host: str | None) -> dict[str, str]:
        """Links to the Ray dashboard: its jobs page, and the actor page of ``host`` (the
        run's host, when it is alive). Best effort: ``{}`` when not connected."""
        if not self.connected or not self.dashboard:
            return {}
        base = self.dashboard if "://" in self.dashboard else f"http://{self.dashboard}"
        found = {"dashboard": base, "jobs": f"{base}/#/jobs"}
        actor = self._actor_id(host) if host else None
        if actor:
            found["actor"] = f"{base}/#/actors/{actor}"
        return found

    def _actor_id(self, name: str) -> str | None:
        now = time.monotonic()
        with self._lock:
            cached = self._actor_ids.get(name)
        if cached is not None and now - cached[0] < _ACTOR_IDS_FOR:
            return cached[1]
        try:
            from gecko_actors._actors.common import lookup

            handle = lookup(name)
            found = None if handle is None else handle._actor_id.hex()
        except Exception:  # a link is a convenience: never fail the page for it
            found = None
        with self._lock:
            self._actor_ids[name] = (now, found)
        return found


def _command(*args: str) -> str:
    return " ".join(["gecko-actors", *(a if a in ("VALUE", "K") else shlex.quote(a) for a in args)])


def _answer(value: Any, as_json: bool) -> Any:
    """The answer the page sent: its text, or the JSON value that text holds."""
    if not isinstance(value, str):
        raise UserError("the answer must be text (JSON text with 'json': true)")
    if len(value.encode()) > MAX_INPUT_BYTES:
        raise UserError(f"the answer is larger than {MAX_INPUT_BYTES // 2**20} MiB")
    if not as_json:
        return value
    try:
        return json.loads(value, parse_constant=_no_constant)
    except ValueError as exc:
        raise UserError(f"the answer is not valid JSON: {exc}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a value an answer can hold")
