"""The ReAct engine: model → tools → model, until an answer or ``max_turns``.

One engine serves many concurrent runs: all run state is local to the run. Runs on the same
session are serialised (their histories would interleave); other sessions run concurrently.

Cancelling the task that runs :meth:`ReActEngine.run` cancels the run: CancelledError is
never swallowed here, the model call in flight is cancelled, and so are the tool calls in
flight, which the cancellation waits for (see :meth:`ToolBox.execute_many`) so that a
cancelled run has stopped when CancelledError leaves it. Nothing of a cancelled run is saved
to its session.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from gecko_actors.core import tracing
from gecko_actors.core.approval import run_calls
from gecko_actors.core.budget import Spending, charged, current_spending, spending
from gecko_actors.core.events import Event, EventBus
from gecko_actors.core.journaled import model_key, through_journal
from gecko_actors.core.memory import TokenMemory
from gecko_actors.core.messages import (
    AgentOutput,
    Message,
    MessageInput,
    ToolCall,
    Usage,
    answerable,
    to_messages,
)
from gecko_actors.core.models import ChatModel, ModelResponse, supports
from gecko_actors.core.prompt import DEFAULT_SYSTEM_TEMPLATE, PromptTemplate
from gecko_actors.core.sessions import RUN_KEY, SessionStore, to_records
from gecko_actors.core.structured import OUTPUT_TOOL, ParseFailure, output_tool_schema, parse_reply
from gecko_actors.core.toolbox import ToolBox
from gecko_actors.core.tools import ToolContext, ToolResult
from gecko_actors.exceptions import StructuredOutputError, UserError
from gecko_actors.logging import get_logger

MAX_TURNS_REACHED = "Max iterations reached."
current_run: ContextVar[dict[str, Any] | None] = ContextVar("gecko_current_run", default=None)
"""The agent, run id and session of the run in progress, for code below the engine (a model
proxy that accounts usage per run, a log processor) without widening its interfaces."""
_log = get_logger("gecko_actors.engine")


@dataclass
class Hooks:
    """Callbacks around a run (sync or async). A failing hook is logged and ignored.

    - ``on_turn_start(turn, messages)``: before each model call.
    - ``on_turn_end(turn, assistant_message)``: after each model call.
    - ``on_tool_execute(call, result)``: after each tool call.
    """

    on_turn_start: Callable[[int, list[Message]], Any] | None = None
    on_turn_end: Callable[[int, Message], Any] | None = None
    on_tool_execute: Callable[[ToolCall, ToolResult], Any] | None = None


@dataclass
class _Run:
    """The state of one run."""

    run_id: str
    session_id: str | None
    messages: list[Message]
    new: list[Message]
    response_model: type[BaseModel] | None
    tool_context: ToolContext
    usage: Usage = field(default_factory=Usage)
    calls: list[ToolCall] = field(default_factory=list)
    parse_failures: int = 0
    force_output: bool = False
    output: AgentOutput | None = None
    spending: Spending | None = None  # the budget of the work the run is part of, if any
    model_calls: int = 0  # made so far (a journaled call's key counts them)
    span: Any = None  # the run's span, when tracing is on

    def add(self, message: Message) -> None:
        self.messages.append(message)
        self.new.append(message)


class ReActEngine:
    """Runs the ReAct loop for one agent configuration.

    Args:
        model: any :class:`ChatModel`.
        toolbox: the tools the model may call.
        system_prompt: instructions (plain text), or a :class:`PromptTemplate` rendered with
            ``instructions``, ``tools`` and ``prompt_vars``.
        memory: token counting and the context budget (default: ``GECKO_MAX_CONTEXT_TOKENS``).
        session_store: where conversations are loaded from and appended to.
        max_turns: model calls allowed before the run stops with ``"Max iterations reached."``.
        max_retries: extra attempts when a structured answer does not parse.
        hooks, event_bus: observers of the run.
        name: the agent's name, in logs, events and tool contexts.
    """

    def __init__(
        self,
        model: ChatModel,
        toolbox: ToolBox | None = None,
        *,
        system_prompt: str | PromptTemplate | None = None,
        prompt_vars: dict[str, Any] | None = None,
        memory: TokenMemory | None = None,
        session_store: SessionStore | None = None,
        max_turns: int = 5,
        max_retries: int = 2,
        hooks: Hooks | None = None,
        event_bus: EventBus | None = None,
        name: str = "agent",
    ) -> None:
        if not callable(getattr(model, "complete", None)):
            raise UserError(
                f"{model!r} is not a chat model: it has no complete() method",
                hint="use LiteLLMModel, ScriptedModel or a ChatModel implementation",
            )
        if max_turns < 1 or max_retries < 0:
            raise UserError(
                "max_turns must be >= 1 and max_retries >= 0",
                hint=f"got max_turns={max_turns}, max_retries={max_retries}",
            )
        self.model = model
        self.toolbox = toolbox or ToolBox()
        self.template = (
            system_prompt
            if isinstance(system_prompt, PromptTemplate)
            else PromptTemplate(DEFAULT_SYSTEM_TEMPLATE)
        )
        self.instructions = system_prompt if isinstance(system_prompt, str) else ""
        self.prompt_vars = dict(prompt_vars or {})
        self.memory = memory or TokenMemory()
        self.session_store = session_store
        self.max_turns = max_turns
        self.max_retries = max_retries
        self.hooks = hooks or Hooks()
        self.event_bus = event_bus
        self.name = name
        self._prompt_cache: tuple[tuple[tuple[str, str], ...], str] | None = None
        self._session_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    # --- public -------------------------------------------------------------------------

    async def run(
        self,
        input: MessageInput,
        *,
        session_id: str | None = None,
        response_model: type[BaseModel] | None = None,
        run_id: str | None = None,
        tool_context: ToolContext | None = None,
    ) -> AgentOutput:
        """Run to the final answer. With ``response_model`` the answer is parsed into it
        (``output.structured``)."""
        output = None
        async for item in self._run(
            input, session_id, response_model, run_id, tool_context, streaming=False
        ):
            if isinstance(item, AgentOutput):
                output = item
        assert output is not None
        return output

    def stream(
        self,
        input: MessageInput,
        *,
        session_id: str | None = None,
        run_id: str | None = None,
        tool_context: ToolContext | None = None,
    ) -> AgentStream:
        """Run, yielding the answer's text chunks as they arrive; tools are executed between
        turns. The :class:`AgentStream`'s ``output`` holds the full result at the end."""
        return AgentStream(self._run(input, session_id, None, run_id, tool_context, streaming=True))

    # --- the loop -----------------------------------------------------------------------

    async def _run(self, input, session_id, response_model, run_id, tool_context, *, streaming):
        new_input = to_messages(input)
        run_id = run_id or uuid.uuid4().hex
        log = _log.bind(agent=self.name, run_id=run_id, session=session_id)
        current_run.set({"agent": self.name, "run_id": run_id, "session": session_id})
        async with self._session_lock(session_id):
            run = await self._start(new_input, session_id, response_model, run_id, tool_context)
            await self._emit("run_started", run, input=new_input[-1].text[:200])
            try:
                async for chunk in self._turns(run, streaming):
                    yield chunk
                await self._save(run, new_input)
            except asyncio.CancelledError as exc:
                log.info("agent run cancelled")
                tracing.end_span(run.span, exc)
                await self._emit("run_cancelled", run)
                raise
            except Exception as exc:
                tracing.end_span(run.span, exc)
                await self._emit("run_failed", run, error=f"{type(exc).__name__}: {exc}")
                log.warning("agent run failed", error=type(exc).__name__)
                raise
            assert run.output is not None
            tracing.end_span(run.span, **tracing.usage_attributes(run.usage, run.output))
            await self._emit(
                "run_finished",
                run,
                finish_reason=run.output.finish_reason,
                total_tokens=run.usage.total_tokens,
            )
            log.info(
                "agent run finished",
                turns=run.usage.requests,
                tokens=run.usage.total_tokens,
                finish_reason=run.output.finish_reason,
            )
            yield run.output

    async def _turns(self, run: _Run, streaming: bool) -> AsyncIterator[str]:
        limit = self.max_turns + (self.max_retries if run.response_model else 0)
        for turn in range(1, limit + 1):
            await _call_hook(self.hooks.on_turn_start, turn, list(run.messages))
            await self._emit("turn_started", run, turn=turn)
            response = None
            async for item in self._call_model(run, streaming):
                if isinstance(item, ModelResponse):
                    response = item
                else:
                    yield item
            assert response is not None
            run.usage += response.usage
            message = answerable(response.message)
            run.add(message)
            await _call_hook(self.hooks.on_turn_end, turn, message)
            if await self._handle(run, message):
                return
        run.output = self._output(run, MAX_TURNS_REACHED, finish_reason="max_turns")

    async def _handle(self, run: _Run, message: Message) -> bool:
        """Act on an assistant message; True when the run has its final answer."""
        if run.response_model is not None:
            done = await self._handle_structured(run, message)
            if done is not None:
                return done
        if not message.tool_calls:
            run.output = self._output(run, message.text)
            return True
        await self._execute_tools(run, message.tool_calls)
        return False

    async def _handle_structured(self, run: _Run, message: Message) -> bool | None:
        """True: parsed. False: error fed back, go on. None: ordinary tool calls to run."""
        assert run.response_model is not None
        output_calls = [c for c in message.tool_calls if c.name == OUTPUT_TOOL]
        if message.tool_calls and not output_calls:
            return None
        try:
            parsed = parse_reply(message, run.response_model)
        except ParseFailure as exc:
            run.parse_failures += 1
            if run.parse_failures > self.max_retries:
                raise StructuredOutputError(
                    f"agent {self.name!r} could not produce a valid "
                    f"{run.response_model.__name__} after {run.parse_failures} attempts: {exc}",
                    hint="simplify the response_model, improve the prompt or raise max_retries",
                    agent=self.name,
                    run_id=run.run_id,
                ) from None
            self._feed_back_parse_error(run, message, str(exc))
            return False
        self._close_calls(run, message.tool_calls, "Final result accepted.")
        run.output = self._output(run, parsed.model_dump_json(), structured=parsed)
        return True

    def _feed_back_parse_error(self, run: _Run, message: Message, error: str) -> None:
        run.force_output = True
        fix = (
            f"Call {OUTPUT_TOOL!r} again with corrected arguments."
            if self._offers_tools()
            else "Reply with only a JSON object that matches the schema."
        )
        text = f"Error: your answer could not be parsed: {error}. {fix}"
        if message.tool_calls:
            self._close_calls(run, message.tool_calls, text)
        else:
            run.add(Message.user(text))

    def _close_calls(self, run: _Run, calls: list[ToolCall], text: str) -> None:
        # Every tool call needs a result message, or providers reject the next request.
        for call in calls:
            run.add(Message.tool_result(call.id, text, call.name))

    async def _execute_tools(self, run: _Run, calls: list[ToolCall]) -> None:
        contexts = _call_contexts(run.tool_context, first=len(run.calls) + 1, count=len(calls))
        run.calls.extend(calls)
        for call in calls:
            await self._emit("tool_started", run, tool=call.name, tool_call_id=call.id)
        # A cancellation here reaches every call in flight and returns once they stopped.
        # A tool that asks another agent spends from the run's budget too.
        budget = run.spending
        journal = run.tool_context.journal  # a workflow run's: each result is recorded once
        with spending(budget.spender if budget else None, *(budget.labels if budget else ())):
            results = await run_calls(self.toolbox, calls, contexts, journal)
        for call, result in zip(calls, results, strict=True):
            await _call_hook(self.hooks.on_tool_execute, call, result)
            await self._emit(
                "tool_finished",
                run,
                tool=call.name,
                tool_call_id=call.id,
                is_error=result.is_error,
                duration=result.duration,
            )
            run.add(Message.tool_result(call.id, result.content, call.name))

    # --- model calls --------------------------------------------------------------------

    def _offers_tools(self) -> bool:
        return supports(self.model, "tools")

    def _model_options(self, run: _Run) -> dict[str, Any]:
        if not self._offers_tools():
            json_mode = {"type": "json_object"} if run.response_model else None
            return {"tools": None, "tool_choice": None, "response_format": json_mode}
        tools = self.toolbox.schemas()
        if run.response_model is None:
            return {
                "tools": tools or None,
                "tool_choice": "auto" if tools else None,
                "response_format": None,
            }
        forced = run.force_output or not tools
        choice: Any = {"type": "function", "function": {"name": OUTPUT_TOOL}} if forced else "auto"
        return {
            "tools": [*tools, output_tool_schema(run.response_model)],
            "tool_choice": choice,
            "response_format": None,
        }

    async def _call_model(self, run: _Run, streaming: bool) -> AsyncIterator[str | ModelResponse]:
        """One model call, taken from the workflow run's journal when it journals model
        calls and holds this one (see ``journaled.py``)."""
        run.model_calls += 1
        items = self._charged(run, streaming)
        journal = run.tool_context.journal
        if journal is not None and journal.models:
            key = model_key(run.tool_context, run.model_calls, run.messages)
            items = through_journal(journal, key, streaming, items)
        async for item in items:
            yield item

    async def _charged(self, run: _Run, streaming: bool) -> AsyncIterator[str | ModelResponse]:
        """One model call, reserved first against the budget the run spends from (a
        workflow run's, a team's: see ``core/budget.spending``), if any."""
        if run.spending is None:  # the common case, without a context manager per call
            async for item in self._model_items(run, streaming):
                yield item
            return
        max_tokens = getattr(self.model, "max_tokens", None)
        label = f"agent:{self.name}"
        async with charged(run.spending, run.messages, max_tokens, label) as used:
            async for item in self._model_items(run, streaming):
                if isinstance(item, ModelResponse):
                    used.append(item.usage)
                yield item

    async def _model_items(self, run: _Run, streaming: bool) -> AsyncIterator[str | ModelResponse]:
        items = self._model_call(run, streaming)
        if run.span is not None:  # a gateway actor's span joins this call's (``_caller``)
            items = tracing.traced_chat(items, self.model, run.messages, run.span, current_run)
        async for item in items:
            yield item

    async def _model_call(self, run: _Run, streaming: bool) -> AsyncIterator[str | ModelResponse]:
        options = self._model_options(run)
        if streaming and supports(self.model, "stream"):
            async for item in self.model.stream(run.messages, **options):
                yield item
            return
        response = await self.model.complete(run.messages, **options)
        if streaming and response.message.text:
            yield response.message.text
        yield response

    # --- context, saving, events --------------------------------------------------------

    async def _start(self, new_input, session_id, response_model, run_id, tool_context) -> _Run:
        system_inputs = [m for m in new_input if m.role == "system"]
        user_inputs = [m for m in new_input if m.role != "system"]
        system = self._system_message(system_inputs, response_model)
        records = (
            await self.session_store.load(session_id) if (self.session_store and session_id) else []
        )
        # A run retried after a crash (same run id) may find its first attempt's exchange
        # stored: it sees the conversation as that attempt did, and stores nothing again.
        records = [r for r in records if r.get(RUN_KEY) != run_id]
        fixed = ([system] if system else []) + user_inputs
        history = self._history(records, fixed)
        context = tool_context or ToolContext()
        if context.agent is None or context.session_id is None or context.run_id is None:
            context = dataclasses.replace(
                context,
                agent=context.agent or self.name,
                session_id=context.session_id or session_id,
                run_id=context.run_id or run_id,
                tool_call_id=None,
            )
        messages = ([system] if system else []) + history + user_inputs
        span = tracing.agent_span(self.name, run_id, session_id, tool_context)
        if span is not None:  # the run's tools (here or in toolbox actors) join its trace
            context = dataclasses.replace(context, trace=tracing.carrier(span))
        return _Run(
            run_id=run_id,
            session_id=session_id,
            messages=messages,
            new=[],
            response_model=response_model,
            tool_context=context,
            # In this process's task, else the budget the caller sent (another process's).
            spending=current_spending() or context.budget,
            span=span,
        )

    def _history(self, records: list[Any], fixed: list[Message]) -> list[Message]:
        """The stored conversation that fits next to the system prompt and the input."""
        if not records:
            return []
        stored = [m for m in self.memory.get_history(records, 10**12) if m.role != "system"]
        if self.memory.fits(fixed + stored):
            return stored
        budget = self.memory.max_tokens - self.memory.total(fixed)
        return self.memory.trim(stored, budget) if budget > 0 else []

    def _system_message(self, system_inputs: list[Message], response_model) -> Message | None:
        text = self._rendered_prompt()
        parts = [m.text for m in system_inputs] + ([text] if text.strip() else [])
        if response_model is not None and not self._offers_tools():
            schema = output_tool_schema(response_model)["function"]["parameters"]
            parts.append(f"Answer with only a JSON object matching this JSON schema: {schema}")
        return Message.system("\n\n".join(parts)) if parts else None

    def _rendered_prompt(self) -> str:
        # Rendering is a third of a run's own cost, and its inputs only change when tools are
        # registered or removed: render again only then.
        tools = self.toolbox.tools()
        key = tuple((t.name, t.description) for t in tools)
        if self._prompt_cache is None or self._prompt_cache[0] != key:
            variables = {"instructions": self.instructions, "tools": tools, **self.prompt_vars}
            self._prompt_cache = (key, self.template.render(**variables))
        return self._prompt_cache[1]

    async def _save(self, run: _Run, new_input: list[Message]) -> None:
        if self.session_store is None or run.session_id is None:
            return
        stored = [m for m in new_input if m.role != "system"] + run.new
        # Keyed by run id: a run retried after a crash never stores its exchange twice.
        records = [{**r, RUN_KEY: run.run_id} for r in to_records(stored)]
        await self.session_store.append(run.session_id, records, key=run.run_id)

    def _output(
        self, run: _Run, content: str, *, structured: Any = None, finish_reason: str = "stop"
    ) -> AgentOutput:
        return AgentOutput(
            content=content,
            tool_calls=list(run.calls),
            usage=run.usage,
            structured=structured,
            messages=list(run.new),
            finish_reason=finish_reason,
        )  # type: ignore[arg-type]

    async def _emit(self, event_type: str, run: _Run, **data: Any) -> None:
        # Most agents' buses have no subscriber for most runs: no event is built then.
        if self.event_bus is not None and self.event_bus.wants(event_type):
            await self.event_bus.publish(
                Event(
                    event_type,
                    {"agent": self.name, "run_id": run.run_id, "session": run.session_id, **data},
                )
            )

    def _session_lock(self, session_id: str | None) -> asyncio.Lock:
        if session_id is None:
            return asyncio.Lock()  # nothing shared: each anonymous run gets its own
        lock = self._session_locks.get(session_id)
        if lock is None:
            lock = asyncio.Lock()
            self._session_locks[session_id] = lock
        return lock


class AgentStream:
    """An async iterator of text chunks; ``output`` is the :class:`AgentOutput` once it ends."""

    def __init__(self, source: AsyncIterator[str | AgentOutput]) -> None:
        self._source = source
        self.output: AgentOutput | None = None

    def __aiter__(self) -> AgentStream:
        return self

    async def __anext__(self) -> str:
        while True:
            item = await self._source.__anext__()
            if isinstance(item, AgentOutput):
                self.output = item
                continue
            return item

    async def text(self) -> str:
        """Consume the stream and return the whole answer."""
        return "".join([chunk async for chunk in self])


def _call_contexts(context: ToolContext, *, first: int, count: int) -> list[ToolContext]:
    """One context per tool call: the run's, with the call's own idempotency key.

    Calls are numbered from 1 across the run's turns in the order the model issued them, so a
    run retried or restarted with the same key (a workflow node's visit) gives a call the same
    key when the model replays it, and a tool can de-duplicate its side effect by it.
    """
    if context.idempotency_key is None:
        return [context] * count
    return [
        dataclasses.replace(context, idempotency_key=f"{context.idempotency_key}/call-{k}")
        for k in range(first, first + count)
    ]


async def _call_hook(hook: Callable[..., Any] | None, *args: Any) -> None:
    if hook is None:
        return
    try:
        result = hook(*args)
        if inspect.isawaitable(result):
            await result
    except Exception as exc:
        _log.warning(
            "hook failed; ignored",
            hook=getattr(hook, "__name__", repr(hook)),
            error=f"{type(exc).__name__}: {exc}",
        )
