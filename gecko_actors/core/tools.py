"""Tools: typed Python functions the model may call.

``@tool`` reads a function's signature and docstring into a JSON schema and a pydantic model;
arguments are validated before the call, and a validation error or an exception inside the tool
comes back as an error :class:`ToolResult` (the model sees it and can re-plan) rather than
crashing the run.

Arguments come from a model, so validation refuses what would call the tool with a value the
model never sent: NaN and infinite numbers anywhere in the arguments, and ``true``/``false``
for a number (numeric strings such as ``"3"`` are still read as numbers). Error text sent back
to the model is redacted like the logs and cut to :data:`MAX_ERROR_CHARS`. Those checks and
that text live in :mod:`gecko_actors.core.tool_args`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import inspect
import json
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_type_hints, overload

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic_core import PydanticSerializationError, to_jsonable_python

# MAX_ERROR_CHARS is re-exported: callers import it, and error_text, from here.
from gecko_actors.core.tool_args import MAX_ERROR_CHARS as MAX_ERROR_CHARS
from gecko_actors.core.tool_args import (
    describe_exception,
    error_text,
    no_bool_numbers,
    non_finite_path,
    validation_text,
)
from gecko_actors.exceptions import ToolArgumentsError, ToolError, UserError
from gecko_actors.logging import get_logger

_log = get_logger("gecko_actors.tools")


@dataclass(frozen=True)
class ToolContext:
    """Facts about the current call, injected into a tool parameter annotated ``ToolContext``.

    Attributes:
        agent, session_id, run_id: the agent run the call belongs to.
        tool_call_id: the model's id for this call (not stable across retries).
        idempotency_key: stable across retries and restarts of the same logical call, so a
            tool with side effects can de-duplicate them (e.g. pass it to a payment API, or
            use it as a primary key). A run given a context with key ``K`` (a workflow node's
            visit, ``run_id/node/visit``) hands its ``k``-th tool call the key
            ``K/call-k``: calls are counted from 1 across the run's turns, in the order the
            model issued them, so a retried run whose model replays the same calls gives
            each the same key. Without a key in the run's context, tools get ``None``.
        attempt: which attempt of that logical step this is (1, 2, ...), passed unchanged to
            every call of the run. It is a fencing token: a tool whose store remembers the
            highest attempt seen for a key can refuse a write from a lower, stale attempt
            that is still running somewhere.
        budget: the budget the run's model calls spend from besides its agent's own (a
            workflow run's, a team's: a ``core.budget.Spending``), set by the runtime.
        journal: the workflow run's effect journal (``checkpoint.journal.Journal``), set by
            the runtime in a workflow node: a call recorded there is not run again.
        trace: the caller's OpenTelemetry trace context (W3C headers), set by the runtime
            when tracing is on, so that spans in another actor join the caller's trace.
    """

    agent: str | None = None
    session_id: str | None = None
    run_id: str | None = None
    tool_call_id: str | None = None
    idempotency_key: str | None = None
    attempt: int = 1
    budget: Any = None
    journal: Any = field(default=None, repr=False)
    trace: dict[str, str] | None = field(default=None, repr=False)


class ToolResult(BaseModel):
    """What a tool returned (as text for the model), or the error it hit."""

    content: str
    is_error: bool = False
    tool: str = ""
    tool_call_id: str | None = None
    duration: float = 0.0
    metadata: dict[str, Any] = Field(default_factory=dict)


def _to_text(value: Any) -> str:
    """A tool's return value as text for the model: str as-is, None as "", else JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(to_jsonable_python(value), ensure_ascii=False)


class Tool:
    """A callable the model can use: a name, a description, a JSON schema and a function.

    Build one with :func:`tool` or ``Tool(fn)``; pass ``args_model`` to impose your own schema.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        args_model: type[BaseModel] | None = None,
        timeout: float | None = None,
        approval: bool = False,
    ) -> None:
        self.fn = fn
        self.approval = approval  # a call waits for a human's answer (in a workflow node)
        self.name = fn.__name__ if name is None else name
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.name):
            raise UserError(
                f"tool name {self.name!r} is invalid", hint="use 1-64 letters, digits, '_' or '-'"
            )
        summary, derived_model, self.context_param = _describe_function(fn, self.name)
        self.description = description or summary or self.name
        self._custom_args_model = args_model
        self.args_model = args_model or derived_model
        self.timeout = timeout
        self.is_async = inspect.iscoroutinefunction(fn)
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def __reduce__(self):
        # Our built-in tools (module-level ``@tool``s in this package, importable wherever it
        # is installed) pickle by reference. A user's ``@tool`` replaces its function in its
        # module, so cloudpickle (Ray's pickler) finds the function shadowed and ships it by
        # value: that works even where the user's module cannot be imported (a test file, a
        # script). Plain pickle cannot do that; Ray never uses it.
        module = getattr(self.fn, "__module__", None) or ""
        qualname = getattr(self.fn, "__qualname__", None)
        ours = module.startswith("gecko_actors.") and qualname
        if ours and lookup_qualname(module, qualname) is self:
            return (_import_tool, (module, qualname))
        # The derived args model is a dynamic class that cannot be pickled by reference;
        # rebuild it from the function on the other side (Ray ships tools to actors).
        return (
            _restore_tool,
            (
                self.fn,
                self.name,
                self.description,
                self._custom_args_model,
                self.timeout,
                self.approval,
            ),
        )

    def __repr__(self) -> str:
        return f"Tool(name={self.name!r})"

    @property
    def custom_args_model(self) -> type[BaseModel] | None:
        """The arguments model given to the constructor (None: derived from the function)."""
        return self._custom_args_model

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the underlying function directly (handy in tests)."""
        return self.fn(*args, **kwargs)

    @property
    def parameters(self) -> dict[str, Any]:
        """The JSON schema of the arguments."""
        schema = self.args_model.model_json_schema()
        schema.pop("title", None)
        return schema

    def openai_schema(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    async def execute(
        self,
        arguments: dict[str, Any],
        context: ToolContext | None = None,
        *,
        deadline: float | None = None,
    ) -> ToolResult:
        """Validate ``arguments`` and run the tool. Invalid arguments (including NaN or
        infinite numbers) and exceptions raised by the tool become an error result, with
        ``metadata["error"]`` set to the error code and the text redacted; nothing else raises
        but cancellation.

        Cancelling the caller cancels an async tool at its next ``await``. A sync tool runs in
        a thread, which cannot be interrupted: the cancellation waits for the thread to finish,
        until ``deadline`` (the event loop's clock; ``None``: however long it takes), so that
        CancelledError means the tool has stopped unless it overran its deadline.
        """
        start = time.perf_counter()
        problem = self._check_arguments(arguments)
        if isinstance(problem, ToolArgumentsError):
            return self._error(problem, start, context)
        kwargs = problem
        if self.context_param:
            kwargs[self.context_param] = context or ToolContext()
        try:
            value = await self._invoke(kwargs, deadline)
        except Exception as exc:  # CancelledError is no Exception: it propagates
            failure = ToolError(
                f"tool {self.name!r} failed: {describe_exception(exc)}", tool=self.name
            )
            return self._error(failure, start, context)
        try:
            content = _to_text(value)
        except (TypeError, ValueError, PydanticSerializationError):
            failure = ToolError(
                f"tool {self.name!r} returned a {type(value).__name__}, which cannot be sent "
                "to the model as JSON; return str, numbers, lists, dicts or pydantic objects",
                tool=self.name,
            )
            return self._error(failure, start, context)
        return ToolResult(
            content=content,
            tool=self.name,
            tool_call_id=context.tool_call_id if context else None,
            duration=time.perf_counter() - start,
        )

    def validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments for the function, validated against :attr:`args_model`.

        Raises pydantic's ``ValidationError``; :meth:`execute` also refuses non-finite numbers.
        """
        validated = self.args_model.model_validate(arguments)
        return {name: getattr(validated, name) for name in type(validated).model_fields}

    def _check_arguments(self, arguments: Any) -> dict[str, Any] | ToolArgumentsError:
        """Validated keyword arguments, or the error that goes back to the model instead."""
        try:
            kwargs = self.validate(arguments)
        except ValidationError as exc:
            details = validation_text(exc)
        except Exception as exc:  # a custom validator's own bug, or input too deep to walk
            details = describe_exception(exc)
        else:
            # Caught after validation too: Any/dict fields and a user's own nested models
            # let NaN through (as Python floats, or coerced from strings like "nan").
            where = non_finite_path(kwargs)
            if where is None:
                return kwargs
            details = f"{where}: NaN and Infinity are not allowed; send a finite number"
        return ToolArgumentsError(
            f"invalid arguments for tool {self.name!r}: {details}",
            hint="call the tool again with arguments that match its JSON schema",
            tool=self.name,
        )

    async def _invoke(self, kwargs: dict[str, Any], deadline: float | None) -> Any:
        if self.is_async:
            return await self.fn(**kwargs)
        result = await _in_daemon_thread(self.fn, kwargs, deadline)
        return await result if inspect.isawaitable(result) else result

    def _error(self, error: ToolError, start: float, context: ToolContext | None) -> ToolResult:
        return ToolResult(
            content=error_text(str(error)),
            is_error=True,
            tool=self.name,
            tool_call_id=context.tool_call_id if context else None,
            duration=time.perf_counter() - start,
            metadata={"error": error.error_code},
        )


async def _in_daemon_thread(
    fn: Callable[..., Any], kwargs: dict[str, Any], deadline: float | None = None
) -> Any:
    """Run a sync tool in its own daemon thread, so it never blocks the event loop.

    Not the loop's default executor: ``asyncio.run`` waits for that executor's threads at
    shutdown, so one hung tool (abandoned at its timeout) would hang the whole program.

    A thread cannot be interrupted, so a cancellation waits for it to finish (until
    ``deadline`` on the loop's clock, if given) before CancelledError goes on.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    finished = asyncio.Event()

    def settle(ok: bool, value: Any) -> None:
        finished.set()
        if not future.done():
            (future.set_result if ok else future.set_exception)(value)

    def work() -> None:
        try:
            value, ok = fn(**kwargs), True
        except BaseException as exc:  # handed to the awaiting coroutine, never lost
            value, ok = exc, False
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
            loop.call_soon_threadsafe(settle, ok, value)

    name = f"tool-{getattr(fn, '__name__', 'fn')}"
    threading.Thread(target=work, name=name, daemon=True).start()
    try:
        return await future
    except asyncio.CancelledError:
        await _wait_for_thread(finished, deadline, name)
        raise


async def _wait_for_thread(finished: asyncio.Event, deadline: float | None, name: str) -> None:
    """Wait until a cancelled tool's thread has finished, or its deadline passed.

    Further cancellations meanwhile are held back: the caller asked for the tool to stop and
    must learn when it has (the deadline bounds the wait).
    """
    loop = asyncio.get_running_loop()
    waiter = asyncio.ensure_future(finished.wait())
    while not waiter.done():
        left = None if deadline is None else deadline - loop.time()
        if left is not None and left <= 0:
            break
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({waiter}, timeout=left)
    if not waiter.done():
        waiter.cancel()
        _log.warning("sync tool still running at its deadline; thread abandoned", thread=name)


# --- @tool ---------------------------------------------------------------------------------


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...
@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    approval: bool = False,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    approval: bool = False,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Turn a typed sync or async function into a :class:`Tool`.

    The schema comes from the signature (types, defaults) and the docstring (the summary
    becomes the description; ``Args:`` / ``:param x:`` entries describe the parameters). A
    parameter annotated :class:`ToolContext` is injected and hidden from the model. With
    ``approval=True``, a call made in a workflow node first parks the node's branch with
    ``{"tool", "arguments"}`` until ``run.respond`` approves it, rejects it or edits its
    arguments (see ``core/approval.py``).

    Example:
        >>> @tool
        ... def add(a: int, b: int = 1) -> int:
        ...     '''Add two numbers.
        ...
        ...     Args:
        ...         a: the first number.
        ...         b: the second number.
        ...     '''
        ...     return a + b
    """

    def build(func: Callable[..., Any]) -> Tool:
        return Tool(func, name=name, description=description, timeout=timeout, approval=approval)

    return build(fn) if fn is not None else build


def lookup_qualname(module: str, qualname: str) -> Any:
    """The object at ``module.qualname`` if the module is imported, else ``None``."""
    obj: Any = sys.modules.get(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj


def _import_tool(module: str, qualname: str) -> Tool:
    importlib.import_module(module)
    return lookup_qualname(module, qualname)


def _restore_tool(fn, name, description, args_model, timeout, approval=False) -> Tool:
    return Tool(
        fn,
        name=name,
        description=description,
        args_model=args_model,
        timeout=timeout,
        approval=approval,
    )


def _describe_function(
    fn: Callable[..., Any], tool_name: str
) -> tuple[str, type[BaseModel], str | None]:
    """The docstring summary, an arguments model, and the name of a ToolContext parameter."""
    summary, param_docs = parse_docstring(inspect.getdoc(fn) or "")
    hints = get_type_hints(fn)
    fields: dict[str, Any] = {}
    context_param = None
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise UserError(
                f"tool {tool_name!r} takes *{param.name}; tools need named parameters",
                hint="list every argument as a named, typed parameter",
            )
        annotation = hints.get(param.name, Any)
        if annotation is ToolContext or annotation == ToolContext | None:
            context_param = param.name
            continue
        default = ... if param.default is param.empty else param.default
        annotation = no_bool_numbers(annotation)
        fields[param.name] = (annotation, Field(default, description=param_docs.get(param.name)))
    model_name = "".join(part.title() for part in re.split(r"[_-]", tool_name)) + "Args"
    # allow_inf_nan=False: a model's "nan" or "1e999" must not reach a float parameter.
    config = ConfigDict(extra="forbid", allow_inf_nan=False)
    args_model = create_model(model_name, __config__=config, **fields)
    return summary, args_model, context_param


_SECTION = re.compile(
    r"^(Args|Arguments|Parameters|Returns|Return|Raises|Yields|Example|Examples"
    r"|Note|Notes):\s*$"
)
_GOOGLE_PARAM = re.compile(r"^(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.*)$")
_SPHINX_PARAM = re.compile(r"^:param\s+(?:[^:]+\s+)?(\w+):\s*(.*)$")


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Split a Google- or Sphinx-style docstring into its description and parameter docs."""
    summary: list[str] = []
    params: dict[str, str] = {}
    section = None
    current = None
    for raw in doc.splitlines():
        line = raw.strip()
        header = _SECTION.match(line)
        if header:
            section, current = header.group(1), None
            continue
        sphinx = _SPHINX_PARAM.match(line)
        if sphinx:
            current = sphinx.group(1)
            params[current] = sphinx.group(2)
            section = "sphinx"
        elif section in ("Args", "Arguments", "Parameters") and line:
            google = _GOOGLE_PARAM.match(line) if not raw.startswith(" " * 8) else None
            if google:
                current = google.group(1).lstrip("*")
                params[current] = google.group(3)
            elif current:
                params[current] = f"{params[current]} {line}".strip()
        elif section == "sphinx" and line.startswith(":"):
            current = None
        elif section is None:
            summary.append(line)
        elif section == "sphinx" and current and line:
            params[current] = f"{params[current]} {line}".strip()
    return "\n".join(summary).strip(), params
