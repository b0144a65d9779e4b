"""Naming and creating the project's named actors."""

from __future__ import annotations

import re
from typing import Any

import ray

from gecko_actors.exceptions import GeckoError, UserError
from gecko_actors.runtime import ensure_initialized, namespace

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")


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


def unwrap(exc: BaseException) -> BaseException:
    """Our own error inside (possibly nested) Ray task errors, so the caller sees a clean
    ``ModelError`` rather than remote tracebacks around it; anything else unchanged."""
    while isinstance(exc, ray.exceptions.RayTaskError) and isinstance(exc.cause, GeckoError):
        exc = exc.cause
    return exc
