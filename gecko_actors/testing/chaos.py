"""Faults to put in your own tests, the ones this project's fault tests use. Each is bounded
in time and leaves nothing behind:

- :func:`kill_and_restart`: SIGKILL an actor (a workflow host, a dedicated coordinator, an
  agent host or a dedicated agent), and return once Ray restarted it;
- :func:`kill_run_host`: the same for a run's host or coordinator, once the run has
  committed ``at_step`` steps;
- :class:`DiesOnCall`: a :class:`ScriptedModel` reply that kills the process it runs in
  (an agent's host or actor) during its n-th call, once;
- :func:`storage_outage`: the checkpoint storage fails while the block runs (a ``file://``
  folder replaced by a file; any server with ``stop()``/``start()``, like moto's);
- :func:`provider_faults`: a pattern of 429s, 5xx and cut streams for
  :class:`~gecko_actors.testing.FakeLLMServer`.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gecko_actors.exceptions import UserError
from gecko_actors.testing.fake_replies import FakeReply

__all__ = ["DiesOnCall", "kill_and_restart", "kill_run_host", "provider_faults", "storage_outage"]


def _pid(actor: Any, timeout: float) -> int:
    import ray

    return ray.get(actor.__ray_call__.remote(lambda _self: os.getpid()), timeout=timeout)


def kill_and_restart(actor: Any, *, timeout: float = 120.0) -> int:
    """SIGKILL ``actor``'s process (Ray restarts an actor made with ``max_restarts``), and
    return the new process's pid once it answers (``ray.kill`` itself returns at once)."""
    import ray

    deadline = time.monotonic() + timeout
    before = _pid(actor, timeout)
    ray.kill(actor, no_restart=False)
    while True:
        try:
            now = _pid(actor, max(deadline - time.monotonic(), 0.1))
            if now != before:
                return now
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass  # dying, or restarting
        if time.monotonic() > deadline:
            raise TimeoutError(f"the actor was not restarted within {timeout:g}s")
        time.sleep(0.05)


def kill_run_host(run: Any, *, at_step: int = 0, timeout: float = 120.0) -> int:
    """Once ``run`` (a WorkflowRun) has committed ``at_step`` steps, SIGKILL its workflow
    host (or dedicated coordinator) and return once Ray restarted it (the new pid). Steps
    after ``at_step`` may be under way, or committed, when the kill lands."""
    deadline = time.monotonic() + timeout
    while run.status()["steps"] < at_step:
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run.run_id!r} did not commit {at_step} steps in time")
        time.sleep(0.02)
    return kill_and_restart(run.actor, timeout=max(deadline - time.monotonic(), 1.0))


class DiesOnCall:
    """A :class:`~gecko_actors.ScriptedModel` reply function (``reply``, sync or async)
    whose ``call``-th call, counted across processes in ``folder``, SIGKILLs the process it
    runs in: an agent's host (with every agent there) or its dedicated actor. Once only:
    the calls after it, in the restarted process, answer. Picklable (ships in the spec).

        model = ScriptedModel(DiesOnCall(reply, call=2, folder=tmp_path))
    """

    def __init__(self, reply: Callable[..., Any], *, call: int, folder: str | Path) -> None:
        if call < 1:
            raise UserError(f"call must be >= 1, got {call}")
        self.reply, self.call, self.folder = reply, call, str(folder)
        Path(self.folder).mkdir(parents=True, exist_ok=True)

    async def __call__(self, messages: list[Any], tools: Any) -> Any:
        if self._count() == self.call:
            os.kill(os.getpid(), signal.SIGKILL)
        answer = self.reply(messages, tools)
        return await answer if inspect.isawaitable(answer) else answer

    @property
    def calls(self) -> int:
        """How many calls were made so far, in every process."""
        return len(list(Path(self.folder).glob("call-*")))

    def _count(self) -> int:
        """This call's number: the first free ``call-<n>`` file, made atomically."""
        n = 1
        while True:
            try:
                with open(Path(self.folder, f"call-{n}"), "x"):
                    return n
            except FileExistsError:
                n += 1


@contextlib.contextmanager
def storage_outage(target: Any, *, seconds: float | None = None) -> Iterator[None]:
    """The checkpoint storage fails while the block runs (and for at most ``seconds``, if
    given): ``target`` is a ``file://`` URI or folder, replaced by a file meanwhile (every
    read and write fails), or a server with ``stop()`` and ``start()`` (moto's S3 server,
    say). Restored when the block ends, whatever happens in it."""
    stop, start = _outage(target)
    lock, done = threading.Lock(), [False]

    def restore() -> None:
        with lock:
            if not done[0]:
                done[0] = True
                start()

    stop()
    timer = None if seconds is None else threading.Timer(seconds, restore)
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()
        restore()


def _outage(target: Any) -> tuple[Callable[[], None], Callable[[], None]]:
    if callable(getattr(target, "stop", None)) and callable(getattr(target, "start", None)):
        return target.stop, target.start
    text = str(target)
    if "://" in text and not text.startswith("file://"):
        raise UserError(
            f"storage_outage cannot take {text!r} down",
            hint="give a file:// store (or its folder), or a server with stop() and start()",
        )
    folder = Path(text.removeprefix("file://"))
    aside = folder.with_name(f".{folder.name}.outage-{uuid.uuid4().hex[:8]}")

    def stop() -> None:
        folder.rename(aside)
        folder.write_text("a storage outage (gecko_actors.testing.chaos)")

    def start() -> None:
        folder.unlink()
        aside.rename(folder)

    return stop, start


_FAULTS: dict[str, Callable[[FakeReply], FakeReply]] = {
    "429": lambda then: FakeReply.rate_limit(retry_after=0.05),
    "cut": lambda then: FakeReply.cut_stream(after_chunks=1, then=then),
}


def provider_faults(pattern: str, *, then: FakeReply) -> list[FakeReply]:
    """The replies of a provider that fails in ``pattern``: space- or comma-separated
    ``429`` (rate limited), ``5xx`` codes such as ``500`` or ``503`` (server errors),
    ``cut`` (a stream cut after its first chunk) and ``ok`` (``then``). Push them to a
    :class:`~gecko_actors.testing.FakeLLMServer`.

        server.push(*provider_faults("429 500 ok", then=FakeReply.text("fine")))
    """
    replies = []
    for token in pattern.replace(",", " ").split():
        if token == "ok":
            replies.append(then)
        elif token in _FAULTS:
            replies.append(_FAULTS[token](then))
        elif token.isdigit() and 500 <= int(token) <= 599:
            replies.append(FakeReply.server_error(int(token)))
        else:
            raise UserError(
                f"unknown provider fault {token!r} in {pattern!r}",
                hint="use 429, a 5xx code, cut or ok, e.g. '429 500 ok'",
            )
    return replies
