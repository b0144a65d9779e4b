"""The agent actor: a LocalAgent in its own process, reached by name."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from gecko_actors import metrics
from gecko_actors.core.agent import LocalAgent
from gecko_actors.core.memory import TokenMemory
from gecko_actors.core.messages import AgentOutput, MessageInput
from gecko_actors.core.prompt import PromptTemplate
from gecko_actors.core.sessions import SessionStore
from gecko_actors.core.tools import ToolContext


@dataclass
class AgentSpec:
    """Everything needed to (re)build an agent in any process: names and configuration, never
    a secret (LiteLLM models travel as gateway names)."""

    name: str
    model: Any
    tools: Any = None
    system_prompt: str | PromptTemplate | None = None
    prompt_vars: dict[str, Any] = field(default_factory=dict)
    memory: TokenMemory | None = None
    session_store: SessionStore | None = None
    engine_options: dict[str, Any] = field(default_factory=dict)
    owns_tools: bool = False  # the toolbox actor was made for this agent alone


class AgentActor:
    """Runs many conversations at once (an async actor); one session's runs are serialised
    by the engine."""

    def __init__(self, spec: AgentSpec) -> None:
        self.spec = spec
        self.agent = LocalAgent(
            spec.model,
            spec.tools,
            name=spec.name,
            system_prompt=spec.system_prompt,
            prompt_vars=spec.prompt_vars,
            memory=spec.memory,
            session_store=spec.session_store,
            **spec.engine_options,
        )

    async def run(
        self,
        input: MessageInput,
        session_id: str | None,
        response_model: type[BaseModel] | None,
        run_id: str | None,
        tool_context: ToolContext | None,
    ) -> AgentOutput:
        """Run to the final answer; a ``ray.cancel`` of this task cancels the run and its
        tool calls, and the task ends only once they have stopped."""
        try:
            output = await self.agent.arun(
                input,
                session_id=session_id,
                response_model=response_model,
                run_id=run_id,
                tool_context=tool_context,
            )
        except asyncio.CancelledError:
            # ray.cancel(): the engine has cancelled the run's tool calls and waited for them;
            # CancelledError must leave this coroutine for Ray to report TaskCancelledError.
            metrics.agent_run(self.spec.name, "cancelled")
            raise
        except Exception:
            metrics.agent_run(self.spec.name, "error")
            raise
        metrics.agent_run(self.spec.name, "ok")
        return output

    async def stream(
        self, input: MessageInput, session_id: str | None, run_id: str | None
    ) -> AsyncIterator[str | AgentOutput]:
        stream = self.agent.stream(input, session_id=session_id, run_id=run_id)
        async for chunk in stream:
            yield chunk
        metrics.agent_run(self.spec.name, "ok")
        yield stream.output  # type: ignore[misc]

    def info(self) -> dict[str, Any]:
        import ray

        return {
            "name": self.spec.name,
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "model": repr(self.spec.model),
            "tools": list(self.agent.toolbox.names()),
            "owned_toolbox": getattr(self.spec.tools, "name", None)
            if self.spec.owns_tools
            else None,
        }

    def modules(self, names: list[str]) -> dict[str, bool]:
        """Which of these modules this process has imported (tests check litellm is not)."""
        import sys

        return {name: name in sys.modules for name in names}
