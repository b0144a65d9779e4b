"""``Agent``: the typed handle to a named agent actor (``agent/<name>``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import ray
from pydantic import BaseModel

from gecko_actors._actors.agent import AgentActor, AgentSpec
from gecko_actors._actors.common import (
    CANCEL_GRACE,
    await_cancellable,
    cancel_and_wait_blocking,
    check_name,
    create,
    known,
    lookup,
    unwrap,
)
from gecko_actors.core.memory import TokenMemory
from gecko_actors.core.messages import AgentOutput, MessageInput
from gecko_actors.core.prompt import PromptTemplate
from gecko_actors.core.sessions import SessionStore
from gecko_actors.core.toolbox import ToolBox
from gecko_actors.core.tools import Tool, ToolContext
from gecko_actors.exceptions import UserError
from gecko_actors.gateway import resolve_model
from gecko_actors.memory import Memory
from gecko_actors.toolboxes import RemoteToolBox

ToolsArg = RemoteToolBox | ToolBox | Iterable[Tool | Callable[..., Any]] | None


class Agent:
    """A handle to an agent actor; it hides ``.remote()`` and can be passed anywhere (other
    actors, tasks, drivers).

    Create one with :meth:`spawn`, attach to an existing one with :meth:`get`.

    Example:
        >>> agent = Agent.spawn("researcher", model=LiteLLMModel("openai/gpt-4o-mini"),
        ...                     tools=[calculator], system_prompt="Be precise.")
        >>> agent.run("What is 2**10?").content
    """

    def __init__(self, name: str, handle: Any) -> None:
        self.name = name
        self._handle = handle

    def __repr__(self) -> str:
        return f"Agent({self.name!r})"

    def __reduce__(self):
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
        **actor_options: Any,
    ) -> Agent:
        """Create the agent actor ``agent/<name>``.

        Args:
            name: unique in the namespace; letters, digits, ``_ . : -``.
            model: a ``LiteLLMModel`` (served by a gateway), a ``ModelGateway``, or an
                in-process model such as ``ScriptedModel``.
            tools: a ``RemoteToolBox``, or tools / a ``ToolBox`` to serve from a new toolbox
                actor ``toolbox/<name>`` (or inside the agent with ``tools_in_process=True``).
            memory: the :class:`Memory` actor holding the agent's conversations (default:
                ``memory/default``, stored at ``GECKO_STORAGE_URL``); they survive the agent's
                restarts.
            context_tokens: the context's token budget (or a ``TokenMemory``).
            session_store: an explicit session store instead of a memory actor.
            detached: outlive the driver that spawned it (``kill()`` removes it).
            get_if_exists: attach to a live agent of that name instead of failing.
            **actor_options: Ray actor options (``num_cpus``, ``resources``, ``max_restarts``,
                ``max_task_retries``, ``scheduling_strategy``, ...).
        """
        actor_name = check_name("agent", name)
        existing = lookup(actor_name)
        if existing is not None:
            if get_if_exists:
                return cls(name, existing)
            raise UserError(
                f"an agent named {name!r} already exists",
                hint="pick another name, use Agent.get(name), or get_if_exists=True",
                agent=name,
            )
        engine_options: dict[str, Any] = {"max_retries": max_retries}
        if max_turns is not None:
            engine_options["max_turns"] = max_turns
        placed, owned = _place_tools(name, tools, tools_in_process)
        spec = AgentSpec(
            name=name,
            model=resolve_model(model),
            tools=placed,
            owns_tools=owned,
            system_prompt=system_prompt,
            prompt_vars=dict(prompt_vars or {}),
            memory=TokenMemory(context_tokens)
            if isinstance(context_tokens, int)
            else context_tokens,
            session_store=session_store or (memory or Memory.spawn()).session_store(name),
            engine_options=engine_options,
        )
        handle = create(
            ray.remote(AgentActor),
            actor_name,
            (spec,),
            get_if_exists=get_if_exists,
            detached=detached,
            **actor_options,
        )
        return cls(name, handle)

    @classmethod
    def get(cls, name: str) -> Agent:
        """Attach to a live agent (from any driver); an unknown name lists the known ones."""
        handle = lookup(check_name("agent", name))
        if handle is None:
            raise UserError(
                f"no agent named {name!r}; known agents: {known('agent')}",
                hint="spawn it with Agent.spawn(name, model=...)",
                agent=name,
            )
        return cls(name, handle)

    @staticmethod
    def list() -> list[str]:
        """Names of the live agents in the namespace."""
        return known("agent")

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
            input, session_id, response_model, run_id or uuid.uuid4().hex, tool_context
        )

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
        """
        ref = self._submit(input, session_id, response_model, run_id, tool_context)
        try:
            return ray.get(ref, timeout=timeout)
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
        so the run's cancellation waits for it, bounded by the tool's timeout.
        """
        ref = self._submit(input, session_id, response_model, run_id, tool_context)
        try:
            return await await_cancellable(ref, grace=cancel_grace)
        except ray.exceptions.RayTaskError as exc:
            raise unwrap(exc) from None

    def submit(self, input: MessageInput, **kwargs: Any) -> Any:
        """Start a run and return its Ray ObjectRef (for ``ray.wait`` and friends)."""
        return self._submit(
            input,
            kwargs.get("session_id"),
            kwargs.get("response_model"),
            kwargs.get("run_id"),
            kwargs.get("tool_context"),
        )

    def stream(
        self, input: MessageInput, *, session_id: str | None = None, run_id: str | None = None
    ) -> Iterator[str]:
        """Yield the answer's text chunks as the actor produces them (blocking iterator)."""
        for ref in self._stream_refs(input, session_id, run_id):
            item = ray.get(ref)
            if isinstance(item, str):
                yield item

    async def astream(
        self, input: MessageInput, *, session_id: str | None = None, run_id: str | None = None
    ) -> AsyncIterator[str]:
        """Async variant of :meth:`stream`."""
        async for ref in self._stream_refs(input, session_id, run_id):
            item = await ref
            if isinstance(item, str):
                yield item

    def _stream_refs(self, input: MessageInput, session_id: str | None, run_id: str | None):
        return self._handle.stream.options(num_returns="streaming").remote(
            input, session_id, run_id or uuid.uuid4().hex
        )

    # --- management ---------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Name, process id, node id, model and tools of the live actor."""
        return ray.get(self._handle.info.remote())

    def kill(self, *, no_restart: bool = True) -> None:
        """Stop the actor, and the toolbox it was given its own tools in (``no_restart=False``
        simulates a crash instead: Ray restarts the agent, its toolbox stays)."""
        owned = None
        if no_restart:
            try:
                owned = ray.get(self._handle.info.remote(), timeout=10).get("owned_toolbox")
            except Exception:  # already dead or unreachable: nothing more to learn
                owned = None
        ray.kill(self._handle, no_restart=no_restart)
        if owned:
            RemoteToolBox.get(owned).kill()

    @property
    def actor(self) -> Any:
        """The underlying Ray actor handle, for advanced use."""
        return self._handle


def _place_tools(agent: str, tools: ToolsArg, in_process: bool) -> tuple[Any, bool]:
    """Where the agent's tools run, and whether that toolbox actor is the agent's own."""
    if tools is None or isinstance(tools, RemoteToolBox):
        return tools, False
    if in_process:
        return (tools if isinstance(tools, ToolBox) else ToolBox(tools)), False
    # The agent's own toolbox: a name clash is an error, never someone else's tools.
    return RemoteToolBox.spawn(agent, tools), True
