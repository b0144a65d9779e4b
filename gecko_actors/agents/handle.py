"""``Agent``: the typed handle to a named agent, hosted (one of many in an agent host actor,
the default) or dedicated (an actor of its own, ``agent/<name>``)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from typing import Any

import msgpack
import ray
from pydantic import BaseModel

from gecko_actors._actors.common import (
    CANCEL_GRACE,
    await_cancellable,
    cancel_and_wait_blocking,
    check_name,
    create,
    known,
    unwrap,
)
from gecko_actors.agents import archive, directory, placement
from gecko_actors.agents.dedicated import AgentActor
from gecko_actors.agents.host import HostedAgentRef
from gecko_actors.agents.placement import ToolsArg
from gecko_actors.agents.spec import AgentSpec
from gecko_actors.agents.stream import (
    AsyncRemoteAgentStream,
    RemoteAgentStream,
    afinal_output,
    final_output,
    relay_async,
    relay_blocking,
)
from gecko_actors.core.budget import Budget, checked_budget, current_spending
from gecko_actors.core.engine import Hooks
from gecko_actors.core.events import EventBus
from gecko_actors.core.memory import TokenMemory
from gecko_actors.core.messages import AgentOutput, MessageInput
from gecko_actors.core.prompt import PromptTemplate
from gecko_actors.core.sessions import SessionStore
from gecko_actors.core.tools import ToolContext
from gecko_actors.core.tracing import with_trace
from gecko_actors.exceptions import UserError
from gecko_actors.gateway import resolve_model
from gecko_actors.memory import Memory
from gecko_actors.toolboxes import RemoteToolBox


class Agent:
    """A handle to an agent, hosted or dedicated; it hides ``.remote()`` and can be passed
    anywhere (other actors, tasks, drivers).

    Create one with :meth:`spawn`, attach to an existing one with :meth:`get`.

    Hooks and events cross the process boundary in opposite directions. Hooks (``hooks=`` of
    :meth:`spawn`) run *in the actor*, around every run whoever started it, on the actor's
    copies: a module-level function is imported there, anything else is copied by value.
    An event bus (``event_bus=`` of :meth:`spawn` or :meth:`get`) stays *in this process*
    with its subscribers: the runs started through this handle (``run``, ``arun``,
    ``stream``, ``astream``) send their events along a Ray stream, and the handle publishes
    each to the bus as it arrives, in order, before the text that follows it. The bus is not
    pickled with the handle: another process (a task, a workflow) gets a handle without one,
    and ``submit`` (a plain ObjectRef, used by ``Team``) publishes nothing.

    Example:
        >>> agent = Agent.spawn("researcher", model=LiteLLMModel("openai/gpt-4o-mini"),
        ...                     tools=[calculator], system_prompt="Be precise.")
        >>> agent.run("What is 2**10?").content
    """

    def __init__(self, name: str, handle: Any, event_bus: EventBus | None = None) -> None:
        self.name = name
        self._handle = handle
        self.event_bus = _check_event_bus(event_bus)

    def __repr__(self) -> str:
        return f"Agent({self.name!r})"

    def __reduce__(self):
        # The bus and its subscribers belong to this process: they never travel.
        return (Agent, (self.name, self._handle))

    # --- creating and finding -----------------------------------------------------------

    @classmethod
    def spawn(
        cls,
        name: str,
        *,
        model: Any,
        tools: ToolsArg = None,
        system_prompt: str | PromptTemplate | None = None,
        prompt_vars: dict[str, Any] | None = None,
        memory: Memory | None = None,
        context_tokens: TokenMemory | int | None = None,
        session_store: SessionStore | None = None,
        max_turns: int | None = None,
        max_retries: int = 2,
        tools_in_process: bool = False,
        get_if_exists: bool = False,
        detached: bool = True,
        dedicated: bool = False,
        hooks: Hooks | None = None,
        event_bus: EventBus | None = None,
        budget: Budget | None = None,
        **actor_options: Any,
    ) -> Agent:
        """Create agent ``name``: hosted in one of this job's agent hosts (no process of its
        own; activated there on its first call), or a dedicated actor ``agent/<name>`` with
        ``dedicated=True``, ``detached=False`` or any Ray actor option (``num_gpus``, ...).

        Args:
            name: unique in the namespace; letters, digits, ``_ . : -``.
            model: a ``LiteLLMModel`` (served by a gateway), a ``ModelGateway``, or an
                in-process model such as ``ScriptedModel``.
            tools: a ``RemoteToolBox`` (shared, isolated), or tools / a ``ToolBox``: run
                inside a hosted agent's host; a dedicated agent serves them from a new toolbox
                actor ``toolbox/<name>`` (or inside itself with ``tools_in_process=True``).
            memory: the :class:`Memory` whose session store keeps the agent's
                conversations (default: the store at ``GECKO_STORAGE_URL``). A SQLite or
                Redis store is opened by URL in the agent's own process, with no call through
                the memory actor; a ``memory://`` one lives in the memory actor
                (``memory/default`` by default). They survive the agent's restarts (and its
                host's); see the README for which store survives what.
            context_tokens: the context's token budget (or a ``TokenMemory``).
            session_store: an explicit session store instead of a memory actor.
            detached: outlive the driver that spawned it (``kill()`` removes it); a hosted
                agent always does (``False`` makes a dedicated one).
            dedicated: an actor of its own, for isolation, resources or heavy native
                libraries, instead of a place in an agent host.
            get_if_exists: attach to a live agent of that name instead of failing (it keeps
                its own configuration and hooks; ``event_bus`` applies to the new handle).
            hooks: :class:`Hooks` run inside the actor, around each of its runs (sync or
                async). A module-level function is sent by reference and imported in the
                actor; a lambda, a closure or a function of the script being run is copied by
                value with what it captures; a hook that cannot be pickled is a
                ``UserError``. A hook may change what it is given (a tool result, say) and so
                the run's output; what it writes to this process's variables stays in the
                actor's copy. The actor keeps its hooks across Ray's restarts.
            event_bus: an :class:`EventBus` in this process that receives the events of the
                runs started through the returned handle (see the class docstring).
            budget: a :class:`Budget` for the agent's model calls, over all its runs: a call
                that would go over it raises ``BudgetExceededError`` before it is sent. It is
                counted where the agent runs (its host, or its own actor), from zero again
                after that process restarts.
            **actor_options: Ray actor options (``num_cpus``, ``resources``, ``max_restarts``,
                ``max_task_retries``, ``scheduling_strategy``, ...).
        """
        actor_name = check_name("agent", name)
        # Checked before Ray is touched: a bad hook is the caller's mistake, found at once.
        hooks = _check_hooks(name, hooks)
        _check_event_bus(event_bus)
        checked_budget(budget, f"agent {name!r}")
        hosted = not dedicated and detached and not actor_options
        # A hosted spawn finds a taken name when it records the agent (nothing is made
        # before); a dedicated one looks first, so that no toolbox actor is made in vain.
        existing = None if hosted else placement.existing(name)
        if existing is not None:
            if get_if_exists:
                return cls(name, existing, event_bus)
            raise placement.taken(name)
        engine_options: dict[str, Any] = {"max_retries": max_retries}
        if max_turns is not None:
            engine_options["max_turns"] = max_turns
        # What may be refused first (a secret value in the model or the session store): a
        # refusal must leave no toolbox actor behind.
        if session_store is not None and hasattr(session_store, "check_shippable"):
            session_store.check_shippable()
        resolved = resolve_model(model)
        placed, owned = placement.place_tools(name, tools, tools_in_process, hosted)
        spec = AgentSpec(
            name=name,
            model=resolved,
            tools=placed,
            owns_tools=owned,
            system_prompt=system_prompt,
            prompt_vars=dict(prompt_vars or {}),
            memory=TokenMemory(context_tokens)
            if isinstance(context_tokens, int)
            else context_tokens,
            session_store=session_store or placement.session_store(name, memory),
            engine_options=engine_options,
            hooks=hooks,
            budget=budget,
        )
        if hosted:
            return cls(name, placement.hosted(spec, get_if_exists), event_bus)
        if not directory.create(name, None):  # one namespace for both kinds of agent
            found = placement.existing(name)
            if found is not None and get_if_exists:
                return cls(name, found, event_bus)
            raise placement.taken(name)
        try:
            handle = create(
                ray.remote(AgentActor),
                actor_name,
                (spec,),
                get_if_exists=get_if_exists,
                detached=detached,
                **actor_options,
            )
        except BaseException:
            directory.remove(name)
            raise
        return cls(name, handle, event_bus)

    @classmethod
    def get(cls, name: str, *, event_bus: EventBus | None = None) -> Agent:
        """Attach to a live agent (from any driver); an unknown name lists the known ones.
        A hosted agent whose spec is all data comes back this way after the whole cluster
        was lost, when its spec was kept in a durable session store (``GECKO_STORAGE_URL``).
        ``event_bus`` receives the events of the runs started through this handle."""
        _check_event_bus(event_bus)
        check_name("agent", name)
        handle = placement.existing(name) or placement.revived(name)
        if handle is None:
            raise UserError(
                f"no agent named {name!r}; known agents: {Agent.list()}",
                hint="spawn it with Agent.spawn(name, model=...)",
                agent=name,
            )
        return cls(name, handle, event_bus)

    @staticmethod
    def list() -> list[str]:
        """Names of the live agents in the namespace, hosted and dedicated."""
        return sorted({*known("agent"), *directory.names()})

    # --- running ------------------------------------------------------------------------

    def _submit(
        self,
        input: MessageInput,
        session_id: str | None,
        response_model: type[BaseModel] | None,
        run_id: str | None,
        tool_context: ToolContext | None,
    ) -> Any:
        # The run id is fixed here, so a run Ray retries after a crash keeps it (and is
        # stored once).
        return self._handle.run.remote(
            input, session_id, response_model, run_id or uuid.uuid4().hex, with_budget(tool_context)
        )

    def _start(
        self,
        input: MessageInput,
        session_id: str | None,
        response_model: type[BaseModel] | None,
        run_id: str | None,
        tool_context: ToolContext | None,
    ) -> tuple[Any, bool]:
        """Start a run: its ref, and whether it went as a packed call (see ``run_packed``:
        a plain call, text in and an output with no structured part back)."""
        tool_context = with_budget(tool_context)
        if isinstance(input, str) and response_model is None and tool_context is None:
            call = msgpack.packb([input, session_id, run_id or uuid.uuid4().hex])
            return self._handle.run_packed.remote(call), True
        return self._submit(input, session_id, response_model, run_id, tool_context), False

    def run(
        self,
        input: MessageInput,
        *,
        session_id: str | None = None,
        response_model: type[BaseModel] | None = None,
        run_id: str | None = None,
        tool_context: ToolContext | None = None,
        timeout: float | None = None,
        cancel_grace: float = CANCEL_GRACE,
    ) -> AgentOutput:
        """Run to the final answer (blocking).

        A run that exceeds ``timeout`` is cancelled in the actor, and waited for (at most
        ``cancel_grace`` seconds) until it has stopped, before ``GetTimeoutError`` is raised.
        A failed run raises the library's own error (``ModelError``, ``ToolError``, ...).
        With an event bus, the run's events are published to it as they happen.
        """
        if self.event_bus is not None:
            run = self._relayed_run(input, session_id, response_model, run_id, tool_context)
            items = relay_blocking(*run, self.event_bus, grace=cancel_grace, timeout=timeout)
            return final_output(items)
        ref, packed = self._start(input, session_id, response_model, run_id, tool_context)
        try:
            return unpacked(ray.get(ref, timeout=timeout), packed)
        except ray.exceptions.GetTimeoutError:
            cancel_and_wait_blocking([ref], grace=cancel_grace)
            raise
        except ray.exceptions.RayTaskError as exc:
            raise unwrap(exc) from None

    async def arun(
        self,
        input: MessageInput,
        *,
        session_id: str | None = None,
        response_model: type[BaseModel] | None = None,
        run_id: str | None = None,
        tool_context: ToolContext | None = None,
        cancel_grace: float = CANCEL_GRACE,
    ) -> AgentOutput:
        """Run to the final answer (awaitable).

        Cancelling the awaiting coroutine (``task.cancel()``, ``asyncio.wait_for`` timing out)
        cancels the run in the agent actor, with its model and tool calls, and waits until
        the run has stopped (at most ``cancel_grace`` seconds) before CancelledError reaches
        the caller: a retry started then never runs beside the attempt it replaces. Async
        tools are cancelled; a sync tool already running in a thread cannot be interrupted,
        so the run's cancellation waits for it, bounded by the tool's timeout. With an event
        bus, the run's events are published to it as they happen.
        """
        if self.event_bus is not None:
            run = self._relayed_run(input, session_id, response_model, run_id, tool_context)
            items = relay_async(*run, self.event_bus, grace=cancel_grace)
            return await afinal_output(items)
        ref, packed = self._start(input, session_id, response_model, run_id, tool_context)
        try:
            return unpacked(await await_cancellable(ref, grace=cancel_grace), packed)
        except ray.exceptions.RayTaskError as exc:
            raise unwrap(exc) from None

    def submit(self, input: MessageInput, **kwargs: Any) -> Any:
        """Start a run and return its Ray ObjectRef (for ``ray.wait`` and friends); the
        handle's event bus, if any, receives nothing from it."""
        return self._submit(
            input,
            kwargs.get("session_id"),
            kwargs.get("response_model"),
            kwargs.get("run_id"),
            kwargs.get("tool_context"),
        )

    def stream(
        self,
        input: MessageInput,
        *,
        session_id: str | None = None,
        run_id: str | None = None,
        cancel_grace: float = CANCEL_GRACE,
    ) -> RemoteAgentStream:
        """Stream a run's text chunks as the actor produces them (a blocking iterator), as
        :meth:`LocalAgent.stream` does: ``output`` holds the :class:`AgentOutput` once the
        stream has ended, and a failed run raises the error :meth:`run` would.

        The run starts at the first ``next()``. Closing the stream before its end cancels
        the run in the actor and waits (at most ``cancel_grace`` seconds) until it has
        stopped: ``close()``, the end of a ``with`` block, or dropping the stream (CPython
        does it at once after ``for chunk in agent.stream(...): break``). With an event
        bus, each event is published before the chunk that follows it.

        Example:
            >>> with agent.stream("Explain the outage") as stream:
            ...     for chunk in stream:
            ...         print(chunk, end="")
            >>> stream.output.usage
        """
        run = self._streamed_run(input, session_id, run_id)
        return RemoteAgentStream(relay_blocking(*run, self.event_bus, grace=cancel_grace))

    def astream(
        self,
        input: MessageInput,
        *,
        session_id: str | None = None,
        run_id: str | None = None,
        cancel_grace: float = CANCEL_GRACE,
    ) -> AsyncRemoteAgentStream:
        """Async variant of :meth:`stream` (``async for chunk in agent.astream(...)``).

        Cancelling the task that iterates it cancels the run in the actor and waits until it
        has stopped before CancelledError goes on, as :meth:`arun` does; so do ``aclose()``
        and the end of an ``async with`` block. A stream merely dropped after ``break`` is
        closed by the event loop soon after, not at once: use ``async with`` to know when."""
        run = self._streamed_run(input, session_id, run_id)
        return AsyncRemoteAgentStream(relay_async(*run, self.event_bus, grace=cancel_grace))

    def _streamed_run(
        self, input: MessageInput, session_id: str | None, run_id: str | None
    ) -> tuple[Callable[[], Any], Callable[[], Any]]:
        """What starts the actor's ``stream`` generator (called at the first ``next()``), and
        what stops its run."""
        run_id = run_id or uuid.uuid4().hex
        events = self.event_bus is not None
        token = uuid.uuid4().hex  # this call's own: a run id may be reused by another call
        return (
            lambda: self._handle.stream.options(num_returns="streaming").remote(
                input, session_id, run_id, events, token
            ),
            lambda: self._handle.stop_stream.remote(token),
        )

    def _relayed_run(
        self,
        input: MessageInput,
        session_id: str | None,
        response_model: type[BaseModel] | None,
        run_id: str | None,
        tool_context: ToolContext | None,
    ) -> tuple[Callable[[], Any], Callable[[], Any]]:
        """What starts a run that streams its events back (``run`` and ``arun`` with a bus),
        and what stops it."""
        run_id = run_id or uuid.uuid4().hex
        token = uuid.uuid4().hex
        tool_context = with_budget(tool_context)
        return (
            lambda: self._handle.run_relayed.options(num_returns="streaming").remote(
                input, session_id, response_model, run_id, tool_context, token
            ),
            lambda: self._handle.stop_stream.remote(token),
        )

    # --- management ---------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Name, process id, node id, model and tools of the live agent, and its placement
        (``hosted``, with its ``host``, or ``dedicated``)."""
        info = ray.get(self._handle.info.remote())
        return {"placement": "dedicated", **info}

    def kill(self, *, no_restart: bool = True) -> None:
        """Stop the agent, and the toolbox it was given its own tools in; its name is free
        again. ``no_restart=False`` simulates a crash of its process instead (for a hosted
        agent: its host's, with every agent there): Ray restarts it, and the agent comes
        back on its next call."""
        if isinstance(self._handle, HostedAgentRef):
            if no_restart:
                directory.remove(self.name)
                archive.forget(self.name)
                ray.get(self._handle.actor.remove.remote(self.name))
            else:
                ray.kill(self._handle.actor, no_restart=False)
            return
        if not no_restart:
            ray.kill(self._handle, no_restart=False)
            return
        try:
            owned = ray.get(self._handle.info.remote(), timeout=10).get("owned_toolbox")
        except Exception:  # already dead or unreachable: nothing more to learn
            owned = None
        ray.kill(self._handle, no_restart=True)
        directory.remove(self.name)
        if owned:
            RemoteToolBox.get(owned).kill()

    @property
    def host(self) -> str | None:
        """The name of the agent host that holds this agent (None for a dedicated one)."""
        return self._handle.host if isinstance(self._handle, HostedAgentRef) else None

    @property
    def actor(self) -> Any:
        """The Ray actor that runs the agent (a hosted agent's host), for advanced use."""
        if isinstance(self._handle, HostedAgentRef):
            return self._handle.actor
        return self._handle


def _check_hooks(agent: str, hooks: Hooks | None) -> Hooks | None:
    """``hooks`` if every hook can be sent to the actor, else a UserError naming the hook."""
    if hooks is None:
        return None
    if not isinstance(hooks, Hooks):
        raise UserError(
            f"hooks of agent {agent!r} must be a Hooks object, not {type(hooks).__name__}",
            hint="pass hooks=Hooks(on_turn_start=..., on_turn_end=..., on_tool_execute=...)",
            agent=agent,
        )
    for slot in dataclasses.fields(hooks):
        hook = getattr(hooks, slot.name)
        if hook is None:
            continue
        try:
            # Ray sends it this way: a module-level function by reference, anything else by
            # value with what it captures. Found now, not as a failed actor creation.
            ray.cloudpickle.dumps(hook)
        except Exception as exc:
            raise UserError(
                f"hook {slot.name!r} of agent {agent!r} cannot be sent to the agent's actor: "
                f"{type(exc).__name__}: {str(exc)[:200]}",
                hint=f"define {slot.name} as a function at module level (it is imported in the "
                "actor), or make sure what it captures can be pickled",
                agent=agent,
                hook=slot.name,
            ) from None
    return hooks


def _check_event_bus(bus: EventBus | None) -> EventBus | None:
    """``bus`` if it is an EventBus (or None), else a UserError."""
    if bus is not None and not isinstance(bus, EventBus):
        raise UserError(
            f"event_bus must be an EventBus, not {type(bus).__name__}",
            hint="create one with EventBus(), subscribe handlers to it, and pass it",
        )
    return bus


def unpacked(result: Any, packed: bool) -> AgentOutput:
    """The output of a run started by ``Agent._start``."""
    return AgentOutput.from_msgpack(result) if packed else result


def with_budget(context: ToolContext | None) -> ToolContext | None:
    """``context``, carrying the budget the caller's task spends from when that budget can
    travel (the governor keeps it): the agent's run, in its own process, spends from it too;
    and the caller's trace context when tracing is on, so that the run joins its trace."""
    context = with_trace(context)
    spending = current_spending()
    if spending is None or not spending.travels or (context and context.budget is not None):
        return context
    return dataclasses.replace(context or ToolContext(), budget=spending)
