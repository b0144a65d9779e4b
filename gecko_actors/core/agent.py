"""LocalAgent: a complete agent in the current process, with no Ray involved.

It is what an agent actor runs inside, and what tests and scripts use directly. ``AgentBuilder``
assembles one step by step and validates the pieces.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel

from gecko_actors.core.budget import Budget, BudgetedModel, Ledger
from gecko_actors.core.engine import AgentStream, Hooks, ReActEngine
from gecko_actors.core.events import EventBus
from gecko_actors.core.memory import TokenMemory
from gecko_actors.core.messages import AgentOutput, MessageInput
from gecko_actors.core.models import ChatModel
from gecko_actors.core.prompt import PromptTemplate
from gecko_actors.core.sessions import InMemorySessionStore, SessionStore
from gecko_actors.core.toolbox import ToolBox
from gecko_actors.core.tools import Tool, ToolContext
from gecko_actors.exceptions import UserError
from gecko_actors.settings import load_settings

ToolsInput = ToolBox | Iterable[Tool | Callable[..., Any]] | None


def as_toolbox(
    tools: ToolsInput, *, timeout: float | None = None, max_concurrency: int | None = None
) -> ToolBox:
    """A ToolBox from a ToolBox, a list of tools/functions, or nothing."""
    if isinstance(tools, ToolBox) or hasattr(tools, "execute_many"):
        return tools  # type: ignore[return-value]  # a ToolBox, or a proxy to toolbox actors
    settings = load_settings()
    return ToolBox(
        tools or (),
        timeout=timeout or settings.tool_timeout,
        max_concurrency=max_concurrency or settings.tool_max_concurrency,
    )


class LocalAgent:
    """An agent that runs in this process.

    Args:
        model: any :class:`ChatModel` (``LiteLLMModel``, ``ScriptedModel``, ...).
        tools: a :class:`ToolBox` or a list of tools / functions.
        system_prompt: instructions, or a :class:`PromptTemplate`.
        memory: a :class:`TokenMemory` (budget ``GECKO_MAX_CONTEXT_TOKENS`` by default).
        session_store: where conversations persist (in memory by default).
        session_id: the default session for runs that name none.
        budget: a :class:`Budget` for every model call of this agent (or a
            :class:`~gecko_actors.core.budget.Ledger` to share one, or nest it in another):
            a call that would go over it raises ``BudgetExceededError`` before it is sent.
        engine_cls: the engine class; ``ReActEngine`` unless you bring your own.
        **engine_kwargs: passed to the engine (``max_turns``, ``max_retries``, ``hooks``, ...).
    """

    def __init__(
        self,
        model: ChatModel,
        tools: ToolsInput = None,
        *,
        name: str = "agent",
        system_prompt: str | PromptTemplate | None = None,
        memory: TokenMemory | None = None,
        session_store: SessionStore | None = None,
        session_id: str | None = None,
        event_bus: EventBus | None = None,
        budget: Budget | Ledger | None = None,
        engine_cls: type[ReActEngine] = ReActEngine,
        **engine_kwargs: Any,
    ) -> None:
        settings = load_settings()
        engine_kwargs.setdefault("max_turns", settings.max_turns)
        self.name = name
        self.session_id = session_id
        self.ledger = (
            Ledger(budget, scope=f"agent {name!r}") if isinstance(budget, Budget) else budget
        )
        self.engine = engine_cls(
            model if self.ledger is None else BudgetedModel(model, self.ledger),
            as_toolbox(tools),
            system_prompt=system_prompt,
            memory=memory or TokenMemory(settings.max_context_tokens),
            session_store=session_store if session_store is not None else InMemorySessionStore(),
            event_bus=event_bus,
            name=name,
            **engine_kwargs,
        )

    def __repr__(self) -> str:
        return f"LocalAgent(name={self.name!r}, model={self.engine.model!r})"

    @property
    def toolbox(self) -> ToolBox:
        return self.engine.toolbox

    async def arun(
        self,
        input: MessageInput,
        *,
        session_id: str | None = None,
        response_model: type[BaseModel] | None = None,
        run_id: str | None = None,
        tool_context: ToolContext | None = None,
    ) -> AgentOutput:
        """Run the agent to its final answer."""
        return await self.engine.run(
            input,
            session_id=session_id or self.session_id,
            response_model=response_model,
            run_id=run_id,
            tool_context=tool_context,
        )

    def run(self, input: MessageInput, **kwargs: Any) -> AgentOutput:
        """Blocking :meth:`arun`, for scripts; inside an event loop use ``await arun()``."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.arun(input, **kwargs))
        raise UserError(
            "LocalAgent.run() was called inside a running event loop",
            hint="use `await agent.arun(...)` in async code",
        )

    def stream(
        self, input: MessageInput, *, session_id: str | None = None, run_id: str | None = None
    ) -> AgentStream:
        """Stream the answer's text chunks (``async for chunk in agent.stream(...)``)."""
        return self.engine.stream(input, session_id=session_id or self.session_id, run_id=run_id)


class AgentBuilder:
    """Build a :class:`LocalAgent` step by step; :meth:`build` validates the pieces.

    Example:
        >>> agent = (AgentBuilder().with_model(ScriptedModel(["hi"]))
        ...          .with_tools([calculator]).with_system_prompt("Be brief.").build())
    """

    def __init__(self) -> None:
        self._model: Any = None
        self._tools: dict[str, Tool] = {}
        self._options: dict[str, Any] = {}
        self._toolbox_options: dict[str, Any] = {}
        self._max_tokens: int | None = None

    def with_model(self, model: ChatModel) -> AgentBuilder:
        self._model = model
        return self

    def with_tools(self, tools: Iterable[Tool | Callable[..., Any]]) -> AgentBuilder:
        """Add tools; a later tool with the same name replaces an earlier one."""
        for item in ToolBox(tools).tools():
            self._tools[item.name] = item
        return self

    def with_storage(self, store: SessionStore) -> AgentBuilder:
        self._options["session_store"] = store
        return self

    def with_session_id(self, session_id: str) -> AgentBuilder:
        self._options["session_id"] = session_id
        return self

    def with_max_tokens(self, max_tokens: int) -> AgentBuilder:
        self._max_tokens = max_tokens
        return self

    def with_engine(self, engine_cls: type[ReActEngine], **engine_kwargs: Any) -> AgentBuilder:
        self._options.update(engine_cls=engine_cls, **engine_kwargs)
        return self

    def with_system_prompt(self, prompt: str | PromptTemplate) -> AgentBuilder:
        self._options["system_prompt"] = prompt
        return self

    def with_toolbox_config(
        self, *, timeout: float | None = None, max_concurrency: int | None = None
    ) -> AgentBuilder:
        self._toolbox_options = {"timeout": timeout, "max_concurrency": max_concurrency}
        return self

    def with_hooks(self, hooks: Hooks) -> AgentBuilder:
        self._options["hooks"] = hooks
        return self

    def with_name(self, name: str) -> AgentBuilder:
        self._options["name"] = name
        return self

    def build(self) -> LocalAgent:
        if self._model is None:
            raise UserError("AgentBuilder has no model", hint="call .with_model(...) first")
        if not callable(getattr(self._model, "complete", None)):
            raise UserError(
                f"{self._model!r} is not a chat model: it has no complete() method",
                hint="use LiteLLMModel, ScriptedModel or a ChatModel implementation",
            )
        toolbox = as_toolbox(list(self._tools.values()), **self._toolbox_options)
        memory = TokenMemory(self._max_tokens) if self._max_tokens else None
        return LocalAgent(self._model, toolbox, memory=memory, **self._options)
