"""A local Ray instance that can be lost the hard way: every one of its processes SIGKILLed at
once, as when its machine dies, with no graceful shutdown. For tests/scenarios/ray_restart.py.

The instance's processes are found by three marks, so that none escapes and no process of
another Ray instance on the machine (the test session's own, say) is ever touched:

- the process tree below this driver (``ray.init`` starts the GCS, the raylet, the dashboard
  and log monitor; the raylet starts the agents and every worker);
- a private temporary folder given to ``ray.init(_temp_dir=...)``: every Ray process keeps its
  log files open in it, and the C++ ones name it on their command line (workers and agents
  rewrite their command line, and some their environment, to show a title like ``ray::IDLE``);
- an environment variable with a value unique to the instance, set before Ray starts, which
  every process the instance starts inherits (a process orphaned by the raylet's death is no
  longer below the driver, but keeps its environment).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import ray

import gecko_actors as ga

MARK = "GECKO_TEST_RAY_INSTANCE"


def _psutil() -> Any:
    import psutil  # vendored by Ray (ray/thirdparty_files), on sys.path once ray is imported

    return psutil


class LocalRay:
    """``start`` a local Ray in this process; then either ``kill`` it (SIGKILL, whole) or
    ``shutdown`` it (gracefully). Either way this process can start another one afterwards."""

    def __init__(self, **init_kwargs: Any) -> None:
        self.init_kwargs = init_kwargs
        self.mark = uuid.uuid4().hex
        # Short: Ray puts unix sockets in it, and a socket path has ~100 characters at most.
        self.temp_dir = os.path.realpath(tempfile.mkdtemp(prefix="gecko-ray-"))

    def start(self) -> LocalRay:
        os.environ[MARK] = self.mark  # before Ray starts: all its processes inherit it
        ga.init(_temp_dir=self.temp_dir, **self.init_kwargs)
        return self

    def processes(self) -> list[Any]:
        """The instance's live processes, this driver excepted."""
        psutil = _psutil()
        me = psutil.Process()
        found = {p.pid: p for p in me.children(recursive=True)}
        for proc in psutil.process_iter():
            if proc.pid in found or proc.pid == me.pid:
                continue
            try:
                if self._marked(proc):
                    found[proc.pid] = proc
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue  # gone, or another user's: not ours
        return [p for p in found.values() if _alive(p)]

    def _marked(self, proc: Any) -> bool:
        with proc.oneshot():
            if any(self._inside(arg) for arg in proc.cmdline()):
                return True
            if proc.environ().get(MARK) == self.mark:
                return True
            return any(self._inside(f.path) for f in proc.open_files())

    def _inside(self, text: str) -> bool:
        return self.temp_dir + os.sep in text or text.endswith(self.temp_dir)

    def kill(self, rounds: int = 5) -> dict[str, Any]:
        """SIGKILL every process of the instance, then reset this driver's Ray state so that a
        new ``ga.init`` works here. Returns what was killed (pid → name) and what survived."""
        psutil = _psutil()
        killed: dict[int, str] = {}
        for _ in range(rounds):  # again: a process may have been starting during a round
            procs = self.processes()
            if not procs:
                break
            # The raylet first: no new worker is started while the others die.
            procs.sort(key=lambda p: _name(p) != "raylet")
            for proc in procs:
                name = _name(proc)
                try:
                    proc.send_signal(signal.SIGKILL)
                    killed[proc.pid] = name
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(procs, timeout=10)
        survivors = {p.pid: _name(p) for p in self.processes()}
        self._reset_driver()
        return {"killed": killed, "survivors": survivors}

    def _reset_driver(self, limit: float = 60.0) -> None:
        # ray.shutdown() forgets the dead instance (its GCS client, core worker and node); it
        # must not wait for the dead processes. Bounded, so that a hang fails the scenario.
        start = time.monotonic()
        bounded(ray.shutdown, limit, "ray.shutdown() after the SIGKILL")
        if ray.is_initialized():
            raise RuntimeError("ray.shutdown() after the SIGKILL left Ray initialized")
        self.reset_seconds = time.monotonic() - start
        os.environ.pop(MARK, None)

    def shutdown(self) -> None:
        ga.shutdown()
        os.environ.pop(MARK, None)

    def cleanup(self) -> None:
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def bounded(fn: Callable[[], Any], limit: float, what: str) -> Any:
    """``fn()``, or a ``TimeoutError`` naming ``what`` after ``limit`` seconds (the call is
    left behind in a daemon thread, which does not keep the process from exiting)."""
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # re-raised in the caller
            outcome["error"] = exc

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(limit)
    if thread.is_alive():
        raise TimeoutError(f"{what} did not return within {limit:g}s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _alive(proc: Any) -> bool:
    psutil = _psutil()
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _name(proc: Any) -> str:
    try:
        return proc.name()
    except Exception:
        return "?"
