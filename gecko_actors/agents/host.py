"""The agent host: many agents in one async actor (``agents/host/<env>/<i>``).

An agent spawned hosted (the default) is an entry in the directory (``directory.py``), not a
process. Its host activates it on the first call it gets for it: it reads the spec and builds
the agent in memory (one activation, however many first calls arrive at once). Each agent
here is the same object a dedicated agent actor is (:class:`AgentActor`): its runs, streams
and hooks behave alike. Ray restarts a dead host under its name (``max_restarts=-1``) and
retries the calls it was running (``max_task_retries=-1``, each with the run id its handle
fixed, so an exchange is stored once); the restarted host activates its agents again, from
their specs, on their next calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from ray import cloudpickle

from gecko_actors._actors import pools
from gecko_actors.agents import directory
from gecko_actors.agents.dedicated import AgentActor, StreamItem
from gecko_actors.agents.spec import AgentSpec, from_data
from gecko_actors.core.tools import ToolContext
from gecko_actors.exceptions import GeckoError, UserError

__all__ = ["AgentHost", "HostedAgentRef"]


class AgentHost:
    """Holds many agents, activated on demand; handles call it with the agent's name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.agents: dict[str, AgentActor] = {}
        self.activating: dict[str, asyncio.Future[AgentActor]] = {}
        self.wanted: dict[str, asyncio.Future[Any]] = {}  # specs to read, by agent
        self.fetching = False
        self.fetcher: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        # The dashboard's Repr column (Ray reads it once, after the constructor).
        return f"AgentHost({len(self.agents)} agents active)"

    async def _agent(self, name: str) -> AgentActor:
        """Agent ``name``, activated now if it is not yet: concurrent first calls share one
        activation."""
        found = self.agents.get(name)
        if found is not None:
            return found
        pending = self.activating.get(name)
        if pending is None:
            pending = asyncio.ensure_future(self._activate(name))
            self.activating[name] = pending
            pending.add_done_callback(lambda _: self.activating.pop(name, None))
        return await asyncio.shield(pending)

    async def _activate(self, name: str) -> AgentActor:
        future = self.wanted.get(name)
        if future is None:
            future = self.wanted[name] = asyncio.get_running_loop().create_future()
        if not self.fetching:
            self.fetching = True
            self.fetcher = asyncio.ensure_future(self._fetch())
        spec = await future
        if spec is None:
            raise UserError(
                f"no agent named {name!r} on host {self.name} (it was killed)",
                hint="spawn it again with Agent.spawn(name, model=...)",
                agent=name,
            )
        agent = AgentActor(spec, self.name)
        self.agents[name] = agent
        return agent

    async def _fetch(self) -> None:
        """Read the specs of every agent waiting for its activation, in one request per
        round (and one thread hop): a team's first round activates thousands at once."""
        try:
            while self.wanted:
                batch, self.wanted = self.wanted, {}
                try:
                    specs = await asyncio.to_thread(self._specs, list(batch))
                except Exception as exc:
                    specs = {name: exc for name in batch}
                for name, future in batch.items():
                    outcome = specs.get(name)
                    if future.done():
                        continue
                    if isinstance(outcome, Exception):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:
            self.fetching = False

    def _specs(self, names: list[str]) -> dict[str, Any]:
        """The specs of the agents ``names`` recorded on this host (a killed one has none)."""
        specs: dict[str, Any] = {}
        for name, entry in directory.find_many(names).items():
            if entry.host != self.name:
                continue
            try:  # one agent's spec that no longer loads fails that agent's calls only
                specs[name] = _spec(entry)
            except Exception as exc:
                specs[name] = exc
        return specs

    # --- what an agent's handle calls: AgentActor's methods, with the agent's name first --

    async def run(self, name: str, *args: Any) -> Any:
        return await (await self._agent(name)).run(*args)

    async def run_packed(self, name: str, call: bytes) -> bytes:
        return await (await self._agent(name)).run_packed(call)

    async def run_batch(
        self,
        names: list[str],
        run_ids: list[str],
        input: Any,
        session_id: str | None,
        timeout: float | None,
        context: ToolContext | None = None,
    ) -> list[Any]:
        """Run agents ``names`` (a team's members on this host) on one input at once, each
        under its run id (and ``context``: the budget the team spends from): each one's
        output or error, in order. After ``timeout`` seconds the unfinished runs are
        cancelled and waited for; their outcomes are None."""
        runs = [
            asyncio.ensure_future(self.run(name, input, session_id, None, run_id, context))
            for name, run_id in zip(names, run_ids, strict=True)
        ]
        try:
            _, late = await asyncio.wait(runs, timeout=timeout)
        except asyncio.CancelledError:  # the whole call was cancelled: so is every run
            late = {run for run in runs if not run.done()}
            raise
        finally:
            for run in late:
                run.cancel()
            if late:
                await asyncio.wait(late)
        return [None if run in late else _outcome(run) for run in runs]

    async def stream(self, name: str, *args: Any) -> AsyncIterator[StreamItem]:
        agent = await self._agent(name)
        async with contextlib.aclosing(agent.stream(*args)) as items:
            async for item in items:
                yield item

    async def run_relayed(self, name: str, *args: Any) -> AsyncIterator[StreamItem]:
        agent = await self._agent(name)
        async with contextlib.aclosing(agent.run_relayed(*args)) as items:
            async for item in items:
                yield item

    async def stop_stream(self, name: str, token: str) -> None:
        await (await self._agent(name)).stop_stream(token)

    async def info(self, name: str) -> dict[str, Any]:
        """The agent's info, with where it lives."""
        info = (await self._agent(name)).info()
        return {**info, "host": self.name, "placement": "hosted"}

    async def modules(self, name: str, names: list[str]) -> dict[str, bool]:
        return (await self._agent(name)).modules(names)

    def remove(self, name: str) -> None:
        """Let agent ``name`` go (it was killed): its runs under way finish; a later call
        finds no agent."""
        self.agents.pop(name, None)

    def summary(self) -> dict[str, Any]:
        """What this host holds."""
        return {"host": self.name, "active": len(self.agents)}


def _spec(entry: directory.Entry) -> AgentSpec:
    """The spec an entry records: rebuilt from its data, else (a module this process cannot
    import) unpickled from its copy."""
    if entry.data is None:
        return cloudpickle.loads(entry.code)
    try:
        return from_data(entry.data)
    except UserError:
        if not entry.code:
            raise
        return cloudpickle.loads(entry.code)


def _outcome(run: asyncio.Future[Any]) -> Any:
    """A finished run's output, or its error if that can travel back (else a GeckoError
    that says what it was)."""
    error = run.exception()
    if error is None:
        return run.result()
    try:
        cloudpickle.dumps(error)
    except Exception:
        return GeckoError(f"{type(error).__name__}: {str(error)[:500]}")
    return error


class HostedAgentRef:
    """Stands where a dedicated agent's actor handle would: ``ref.run.remote(...)`` calls
    ``run`` of the agent's host with the agent's name first. Pickles as two names."""

    def __init__(self, host: str, agent: str) -> None:
        self.host, self.agent = host, agent

    def __reduce__(self) -> Any:
        return (HostedAgentRef, (self.host, self.agent))

    @property
    def actor(self) -> Any:
        """The host's actor handle."""
        return pools.handle(self.host, AgentHost)

    def __getattr__(self, method: str) -> _HostedMethod:
        if method.startswith("_"):
            raise AttributeError(method)
        return _HostedMethod(self, method, {})


class _HostedMethod:
    def __init__(self, ref: HostedAgentRef, method: str, options: dict[str, Any]) -> None:
        self.ref, self.method, self.opts = ref, method, options

    def options(self, **options: Any) -> _HostedMethod:
        return _HostedMethod(self.ref, self.method, options)

    def remote(self, *args: Any) -> Any:
        method = getattr(self.ref.actor, self.method)
        if self.opts:
            method = method.options(**self.opts)
        return method.remote(self.ref.agent, *args)
