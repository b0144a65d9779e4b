"""Where an agent goes when it is spawned: a hosted agent's entry and host, a dedicated
agent's name, its tools and its conversations; and what runs a named agent now."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import ray

from gecko_actors._actors import pools
from gecko_actors._actors.common import lookup
from gecko_actors._actors.toolbox import MeteredToolBox
from gecko_actors.agents import archive, directory
from gecko_actors.agents.host import AgentHost, HostedAgentRef
from gecko_actors.agents.spec import AgentSpec, LiveCode, foreign_modules, to_data
from gecko_actors.core.sessions import SessionStore
from gecko_actors.core.toolbox import ToolBox
from gecko_actors.core.tools import Tool
from gecko_actors.exceptions import UserError
from gecko_actors.logging import get_logger
from gecko_actors.memory import Memory, sessions_url
from gecko_actors.stores.shared import SharedSessionStore, shareable
from gecko_actors.toolboxes import RemoteToolBox

__all__ = [
    "ToolsArg",
    "existing",
    "hosted",
    "place_tools",
    "recorded",
    "revived",
    "session_store",
    "taken",
    "warm",
]

ToolsArg = RemoteToolBox | ToolBox | Iterable[Tool | Callable[..., Any]] | None


def existing(name: str) -> Any | None:
    """What runs agent ``name`` now: its host's reference, its own actor, or None."""
    entry = directory.find(name)
    if entry is not None and entry.host is not None:
        return HostedAgentRef(entry.host, name)
    found = lookup(f"agent/{name}")
    if entry is not None and found is None:  # a dedicated agent gone with its driver
        directory.remove(name)
    return found


def session_store(agent: str, memory: Memory | None) -> SessionStore:
    """Where agent ``agent`` keeps its conversations: ``memory``'s store, else the one at
    ``GECKO_STORAGE_URL``, opened by URL in the agent's own process (a SQLite file, Redis);
    only a ``memory://`` setting goes through the job's default Memory actor, made if it is
    not there (never a handle remembered from an earlier spawn: it may have been killed)."""
    if memory is not None:
        return memory.session_store(agent)
    url = sessions_url(None)
    if not shareable(url):
        return Memory.spawn().session_store(agent)
    if url.startswith("sqlite:") and pools.alive_nodes() > 1:
        _warn_node_local(url)
    return SharedSessionStore(url, agent)


@functools.lru_cache(maxsize=8)
def _warn_node_local(url: str) -> None:
    """Once per URL per process: a SQLite file is each node's own."""
    get_logger(__name__).warning(
        "sqlite_sessions_on_a_cluster",
        message="agents keep their conversations in a SQLite file, which is each node's own: "
        "an agent whose host moves to another node does not find them there; set "
        "GECKO_STORAGE_URL to a store shared by the nodes (redis://...)",
    )


def taken(name: str) -> UserError:
    return UserError(
        f"an agent named {name!r} already exists",
        hint="pick another name, use Agent.get(name), or get_if_exists=True",
        agent=name,
    )


def hosted(spec: AgentSpec, get_if_exists: bool) -> Any:
    """Record agent ``spec.name`` on this job's preferred agent host (made if need be); of
    two spawns of one name, the second gets the first's agent or a UserError."""
    data, code = recorded(spec)
    made = _record(spec.name, data, code)
    if made is not None:
        if data is not None:  # its parts are data or named code: it may outlive the cluster
            archive.keep(spec.name, data)
        return made
    found = existing(spec.name)  # hosted or dedicated
    if found is not None and get_if_exists:
        return found
    raise taken(spec.name)


def _record(name: str, data: dict[str, Any] | None, code: bytes) -> HostedAgentRef | None:
    """Record agent ``name`` on this job's preferred agent host (made if need be), unless
    an agent of that name exists; its reference if this call recorded it."""
    host = pools.candidates(name, pools.code_env(), "agents")[0]
    pools.handle(host, AgentHost)
    return HostedAgentRef(host, name) if directory.create(name, host, data, code) else None


def revived(name: str) -> Any | None:
    """Agent ``name`` recorded again from its archived spec (after the cluster that ran it
    was lost), or None when no spec of that name is archived."""
    data = archive.kept(name)
    if data is None:
        return None
    return _record(name, data, b"") or existing(name)  # or another driver revived it first


def recorded(spec: AgentSpec) -> tuple[dict[str, Any] | None, bytes]:
    """What the directory keeps of ``spec``: its data where every part is data, and a
    pickled copy where a part is live code or names code outside this package (which its host
    may not be able to import)."""
    try:
        data: dict[str, Any] | None = to_data(spec)
    except LiveCode as live:
        get_logger(__name__).debug("agent_spec_pickled", agent=spec.name, part=live.part)
        data = None
    if data is not None and not foreign_modules(data):
        return data, b""
    try:
        return data, ray.cloudpickle.dumps(spec)
    except Exception as exc:
        raise UserError(
            f"agent {spec.name!r} cannot be sent to an agent host: {type(exc).__name__}: "
            f"{str(exc)[:200]}",
            hint="make its model, tools and hooks picklable (module-level functions), or "
            "spawn it with dedicated=True",
            agent=spec.name,
        ) from None


def warm() -> None:
    """Create this job's agent hosts without waiting for them (``init`` does, so that a first
    call does not wait for a process); best effort: a host not made now is made at a spawn."""
    if not ray.is_initialized():
        return
    env = pools.code_env()
    try:
        for index in range(pools.pool_size("agents")):
            pools.handle(pools.host_name(env, index, "agents"), AgentHost)
    except Exception as exc:
        get_logger(__name__).warning("could not start the agent hosts in advance", error=str(exc))


def place_tools(agent: str, tools: ToolsArg, in_process: bool, hosted: bool) -> tuple[Any, bool]:
    """Where the agent's tools run, and whether that toolbox actor is the agent's own."""
    if tools is None or isinstance(tools, RemoteToolBox):
        return tools, False
    if hosted:  # in the agent's host, counted in the tool metrics as a toolbox actor's are
        return MeteredToolBox.of(tools if isinstance(tools, ToolBox) else ToolBox(tools)), False
    if in_process:
        return (tools if isinstance(tools, ToolBox) else ToolBox(tools)), False
    # The agent's own toolbox: a name clash is an error, never someone else's tools.
    return RemoteToolBox.spawn(agent, tools), True
