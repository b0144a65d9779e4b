"""Naming and creating the project's named actors."""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

import ray

from gecko_actors.exceptions import GeckoError, UserError
from gecko_actors.logging import get_logger
from gecko_actors.runtime import ensure_initialized, namespace

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")
_log = get_logger("gecko_actors.actors")


def check_name(kind: str, name: str) -> str:
    """Validate a user-given name and return the actor name ``<kind>/<name>``."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UserError(
            f"{kind} name {name!r} is invalid",
            hint="use 1-100 letters, digits, '_', '.', ':' or '-', starting with a letter or digit",
        )
    return f"{kind}/{name}"


def lookup(actor_name: str) -> Any | None:
    """The handle of a live named actor in our namespace, or ``None``."""
    ensure_initialized()
    try:
        return ray.get_actor(actor_name, namespace=namespace())
    except ValueError:
        return None


def known(kind: str) -> list[str]:
    """The user-facing names of the live actors of one kind (``agent``, ``toolbox``, ...)."""
    ensure_initialized()
    prefix = f"{kind}/"
    names = ray.util.list_named_actors(all_namespaces=False)
    return sorted(
        n[len(prefix) :] for n in names if n.startswith(prefix) and "/" not in n[len(prefix) :]
    )


def create(
    actor_cls: Any,
    actor_name: str,
    args: tuple[Any, ...],
    *,
    get_if_exists: bool = False,
    detached: bool = True,
    **options: Any,
) -> Any:
    """Create a named actor (or attach to it with ``get_if_exists``); a taken name is a
    UserError."""
    ensure_initialized()
    options = {"num_cpus": 0, "max_restarts": -1, "max_task_retries": -1, **options}
    if detached:
        options["lifetime"] = "detached"
    try:
        return actor_cls.options(
            name=actor_name, namespace=namespace(), get_if_exists=get_if_exists, **options
        ).remote(*args)
    except ValueError as exc:
        if "already" not in str(exc):
            raise
        raise UserError(
            f"an actor named {actor_name!r} already exists",
            hint="pick another name, attach with .get(), or pass get_if_exists=True",
            actor=actor_name,
        ) from None


_SINGLETONS: dict[tuple[str, str], Any] = {}  # (cluster, actor name) -> handle, in this process


def singleton(actor_cls: type, actor_name: str) -> Any:
    """The handle of the cluster's one ``actor_name`` actor (``gecko/budgets``,
    ``gecko/scheduler``), made if it does not exist; kept per Ray instance of this process."""
    ensure_initialized()
    key = (ray.get_runtime_context().gcs_address, actor_name)
    found = _SINGLETONS.get(key)
    if found is None:
        found = _SINGLETONS[key] = create(ray.remote(actor_cls), actor_name, (), get_if_exists=True)
    return found


def known_singleton(actor_name: str) -> Any | None:
    """The kept handle of ``actor_name`` in this Ray instance, if :func:`singleton` made it."""
    return _SINGLETONS.get((ray.get_runtime_context().gcs_address, actor_name))


def unwrap(exc: BaseException) -> BaseException:
    """Our own error inside (possibly nested) Ray task errors, so the caller sees a clean
    ``ModelError`` rather than remote tracebacks around it; anything else unchanged."""
    while isinstance(exc, ray.exceptions.RayTaskError) and isinstance(exc.cause, GeckoError):
        exc = exc.cause
    return exc


CANCEL_GRACE = 60.0
"""Default seconds a cancelled call is waited for until it confirms it stopped: long enough
for a sync tool's thread to reach its timeout (30 s by default) inside the cancelled run."""


async def await_cancellable(ref: Any, *, grace: float = CANCEL_GRACE) -> Any:
    """``await ref``, but when the awaiting coroutine is cancelled, cancel the Ray task too
    and wait (up to ``grace`` seconds) until it has stopped, then re-raise CancelledError.

    Awaiting an ObjectRef only watches the task: cancelling the watcher leaves the actor task
    running. Ray cancels a running async-actor task by cancelling its asyncio task, and the
    ref resolves only once that coroutine has returned (Ray's fiber waits for it), so a
    resolved ref means the remote work has stopped (or finished just before)."""
    try:
        return await ref
    except asyncio.CancelledError:
        await cancel_and_wait([ref], grace=grace)
        raise


async def cancel_and_wait(refs: list[Any], *, grace: float = CANCEL_GRACE) -> bool:
    """``ray.cancel`` each task and wait until every ref has resolved, at most ``grace``
    seconds; True when all of them have. Their results and errors (TaskCancelledError most
    often) are discarded. Further cancellations of the caller meanwhile are held back until
    the wait ends: the caller asked for the work to stop, and must learn when it has."""
    for ref in refs:
        with contextlib.suppress(Exception):  # already finished, or its actor is gone
            ray.cancel(ref)
    return await wait_settled(refs, grace=grace)


async def wait_settled(refs: list[Any], *, grace: float = CANCEL_GRACE) -> bool:
    """Wait until every ref has resolved (value or error), at most ``grace`` seconds, holding
    back cancellations of the caller meanwhile; True when all of them have."""
    waiting = {asyncio.ensure_future(_settled(ref)) for ref in refs}
    deadline = asyncio.get_running_loop().time() + grace
    while waiting:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            break
        with contextlib.suppress(asyncio.CancelledError):
            _, waiting = await asyncio.wait(waiting, timeout=left)
    for future in waiting:
        future.cancel()
    if waiting:
        _log.warning("cancelled Ray tasks did not stop in time", pending=len(waiting), grace=grace)
    return not waiting


def cancel_and_wait_blocking(refs: list[Any], *, grace: float = CANCEL_GRACE) -> bool:
    """The blocking twin of :func:`cancel_and_wait`, for sync callers."""
    for ref in refs:
        with contextlib.suppress(Exception):
            ray.cancel(ref)
    return wait_settled_blocking(refs, grace=grace)


def wait_settled_blocking(refs: list[Any], *, grace: float = CANCEL_GRACE) -> bool:
    """The blocking twin of :func:`wait_settled`."""
    if not refs:
        return True
    _, pending = ray.wait(list(refs), num_returns=len(refs), timeout=grace, fetch_local=False)
    if pending:
        _log.warning("cancelled Ray tasks did not stop in time", pending=len(pending), grace=grace)
    return not pending


async def _settled(ref: Any) -> None:
    # A settled ref's value or error no longer matters: only that it settled.
    with contextlib.suppress(Exception):
        await ref
