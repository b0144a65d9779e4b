"""OpenTelemetry traces across actors: workflow run -> node -> agent run -> model call -> tool.

Off by default, and then nearly free: every helper here returns at once while no tracer is
configured. Tracing is on in a process once one of these holds:

- ``configure_tracing(...)`` was called in it;
- its environment names an OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, read by the SDK's OTLP/HTTP exporter, headers with
  credentials included, from ``OTEL_EXPORTER_OTLP_HEADERS``), or ``GECKO_TRACE_DIR`` (spans
  as JSON lines, one file per process, for debugging without a collector);
- a traced call from a process where ``configure_tracing`` was called reached it: the trace
  context each actor call carries (``ToolContext.trace``, the gateway's caller record, a
  workflow host's start call) holds that configuration too, never with a secret (an endpoint
  with a user or password in it is not carried: such nodes need the environment variables).

Context crosses actors as a W3C ``traceparent`` carrier, so one run is one trace on a cluster.
A workflow run's trace id is derived from its run id: a run resumed after a crash, on another
host, continues the same trace. Attributes follow the OpenTelemetry GenAI semantic conventions
(``gen_ai.operation.name``, ``gen_ai.request.model``, ``gen_ai.usage.input_tokens``, ...) plus
``gecko.run_id``, ``gecko.node`` and ``gecko.agent``. Prompts, completions, tool arguments and
results are recorded only with ``record_content=True`` (or ``GECKO_TRACE_CONTENT=1``), and
then redacted: secrets never are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlsplit

from gecko_actors._redact import redact
from gecko_actors.core.models import ModelResponse
from gecko_actors.core.tools import ToolContext
from gecko_actors.exceptions import ConfigurationError, UserError

__all__ = ["configure_tracing", "shutdown_tracing", "tracing_enabled"]

_CONFIG_KEY = "gecko-tracing"  # the carrier's entry holding the configuration to adopt
_CONTENT_CHARS = 4000
_lock = threading.Lock()


@dataclasses.dataclass
class _Tracing:
    provider: Any
    tracer: Any
    record_content: bool
    shipped: dict[str, Any] | None  # what travels with the context (None: nodes use env)
    # Configured by a caller's carrier, not by this process: it then traces only the work
    # that arrives traced (a later untraced call, or run, stays untraced).
    adopted: bool = False


_state: _Tracing | None = None
_env_checked = False


def configure_tracing(
    endpoint: str | None = None,
    *,
    exporter: Any = None,
    directory: str | os.PathLike[str] | None = None,
    service_name: str = "gecko-actors",
    record_content: bool = False,
) -> None:
    """Turn tracing on in this process, and in every process a traced call reaches.

    Args:
        endpoint: an OTLP/HTTP collector (``http://localhost:4318``); spans go to
            ``<endpoint>/v1/traces``. Credentials belong in ``OTEL_EXPORTER_OTLP_HEADERS``
            on every node, never in the URL.
        exporter: a span exporter of this process only (the SDK's ``InMemorySpanExporter``
            in tests, or any other), besides ``endpoint``/``directory``.
        directory: write spans as JSON lines there too, one file per process (a shared
            folder on a cluster).
        service_name: the ``service.name`` resource attribute.
        record_content: record prompts, completions, tool arguments and results (redacted).

    Calling it again replaces the configuration. Needs the SDK
    (``pip install "gecko-actors[otel]"``).
    """
    if endpoint is None and exporter is None and directory is None:
        raise UserError(
            "configure_tracing() needs somewhere to send spans",
            hint="pass endpoint='http://localhost:4318', directory=..., or exporter=...",
        )
    if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
        raise UserError(
            f"the tracing endpoint {redact(endpoint)!r} is not an http(s) URL",
            hint="pass the collector's OTLP/HTTP address, e.g. http://localhost:4318",
        )
    config = {
        "endpoint": endpoint,
        # Absolute: the processes it travels to have other working directories.
        "directory": None if directory is None else os.path.abspath(os.fspath(directory)),
        "service": service_name,
        "content": bool(record_content),
    }
    _install(config, exporter, ship=True)


def shutdown_tracing() -> None:
    """Flush and turn tracing off in this process. Processes that adopted its configuration
    keep it, but trace only work that arrives traced: nothing more from here."""
    global _state, _env_checked
    with _lock:
        state, _state, _env_checked = _state, None, True
    if state is not None:
        state.provider.shutdown()


def tracing_enabled() -> bool:
    """Whether this process records spans (of the work that arrives traced, when only a
    traced call turned it on)."""
    return _configured() is not None


# --- spans ------------------------------------------------------------------------------------


@contextlib.contextmanager
def span(
    name: str, attributes: Mapping[str, Any] | None = None, parent: Any = None
) -> Iterator[Any]:
    """A span, current inside the block (``None`` when tracing is off). ``parent`` is a
    carrier (``ToolContext.trace``), an OpenTelemetry context, or ``None`` (the current
    span). An exception leaving the block marks the span as an error."""
    state = _current(parent)
    if state is None:
        yield None
        return
    # The SDK's own exception record would keep the message as raised: ours is redacted.
    with state.tracer.start_as_current_span(
        name,
        context=_context(parent),
        attributes=_clean(attributes),
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        try:
            yield current
        except BaseException as exc:
            _failed(current, exc)
            raise


def start_span(name: str, attributes: Mapping[str, Any] | None = None, parent: Any = None) -> Any:
    """A span that is not made current (``None`` when tracing is off): for async generators,
    whose body may resume in another context. End it with :func:`end_span`."""
    state = _current(parent)
    if state is None:
        return None
    return state.tracer.start_span(name, context=_context(parent), attributes=_clean(attributes))


def end_span(current: Any, error: BaseException | None = None, **attributes: Any) -> None:
    """End a span from :func:`start_span`, with ``attributes`` and the error, if any."""
    if current is None:
        return
    if attributes:
        current.set_attributes(_clean(attributes))
    if error is not None:
        _failed(current, error)
    current.end()


def _failed(current: Any, error: BaseException) -> None:
    """Mark ``current`` as failed by ``error``: its type and redacted message, no traceback
    (whose frames may show values)."""
    from opentelemetry.trace import Status, StatusCode

    message = redact(str(error))[:_CONTENT_CHARS]
    current.add_event(
        "exception", {"exception.type": type(error).__name__, "exception.message": message}
    )
    current.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {message}"[:300]))


def carrier(current: Any = None) -> dict[str, str] | None:
    """The W3C trace context of ``current`` (a span; the current one if ``None``) as a dict
    that travels with an actor call, with the configuration other processes adopt; ``None``
    when tracing is off."""
    state = _current(current)
    if state is None:
        return None
    from opentelemetry import propagate, trace

    context = trace.set_span_in_context(current) if current is not None else None
    found: dict[str, str] = {}
    propagate.inject(found, context=context)
    if not found:
        return None
    if state.shipped is not None:
        found[_CONFIG_KEY] = json.dumps(state.shipped, sort_keys=True)
    return found


def with_trace(context: ToolContext | None) -> ToolContext | None:
    """``context`` carrying the current trace context across an actor call (unchanged when
    tracing is off or no span is current)."""
    found = carrier()
    if found is None:
        return context
    return dataclasses.replace(context or ToolContext(), trace=found)


def run_context(run_id: str, traced: bool = True) -> Any:
    """The parent of every span of workflow run ``run_id``: a trace id derived from the run
    id, so that each drive of the run, on any host, lands in the same trace. ``None`` when
    the run is not traced (``traced``: whether its start asked for it, which is what counts
    in a process that only adopted a caller's configuration)."""
    state = _configured()
    if state is None or (state.adopted and not traced):
        return None
    from opentelemetry import trace

    digest = hashlib.sha256(run_id.encode("utf-8")).digest()
    root = trace.SpanContext(
        trace_id=int.from_bytes(digest[:16], "big") or 1,
        span_id=int.from_bytes(digest[16:24], "big") or 1,
        is_remote=True,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(root))


def shipped() -> dict[str, Any] | None:
    """The configuration that travels to other processes (``None``: none does)."""
    state = _configured()
    return None if state is None else state.shipped


def adopt(config: Mapping[str, Any] | None) -> None:
    """Configure this process from a traveller's configuration, unless it already is."""
    if config and _configured() is None:
        _quietly(dict(config), adopted=True)


def content(value: Any) -> str | None:
    """``value`` as JSON for a span attribute, redacted and clipped, when content is recorded
    (``None`` otherwise)."""
    state = _configured()
    if state is None or not state.record_content:
        return None
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = str(value)
    return redact(text)[:_CONTENT_CHARS]


def agent_span(name: str, run_id: str, session_id: str | None, context: ToolContext | None) -> Any:
    """An agent run's span: a child of the caller's (from another actor, or this task's)."""
    return start_span(
        f"invoke_agent {name}",
        {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": name,
            "gen_ai.conversation.id": session_id,
            "gecko.agent": name,
            "gecko.agent_run_id": run_id,
            "gecko.run_id": context.run_id if context else None,
        },
        parent=context.trace if context else None,
    )


async def traced_chat(
    items: AsyncIterator[Any], model: Any, messages: Any, parent: Any, caller: ContextVar[Any]
) -> AsyncIterator[Any]:
    """A model call's items, inside a ``chat <model>`` span (child of ``parent``) that ends
    with the response's usage; ``caller`` (the engine's ``current_run``) gets the span's
    carrier, so that a gateway replica's span joins it."""
    attributes = model_attributes(model, messages)
    current = start_span(f"chat {attributes['gen_ai.request.model']}", attributes, parent)
    caller.set({**(caller.get() or {}), "trace": carrier(current)})
    try:
        async for item in items:
            if isinstance(item, ModelResponse):  # the last item; text chunks come before it
                end_span(current, **response_attributes(item))
                current = None
            yield item
    except BaseException as exc:
        end_span(current, exc)
        raise


def usage_attributes(usage: Any, output: Any) -> dict[str, Any]:
    """The GenAI attributes of a finished agent run."""
    return {
        "gen_ai.usage.input_tokens": usage.prompt_tokens,
        "gen_ai.usage.output_tokens": usage.completion_tokens,
        "gen_ai.response.finish_reasons": [output.finish_reason or "stop"],
    }


def model_name(model: Any) -> str:
    """A chat model's name for spans: its LiteLLM model string, else its class."""
    name = getattr(model, "model", None)
    if not isinstance(name, str):
        name = getattr(model, "model_name", None)
    return name if isinstance(name, str) else type(model).__name__


def model_attributes(model: Any, messages: Any) -> dict[str, Any]:
    """The GenAI attributes of a chat call, before it is made."""
    name = model_name(model)
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": name,
        "gen_ai.provider.name": name.split("/", 1)[0] if "/" in name else None,
        "gen_ai.request.max_tokens": getattr(model, "max_tokens", None),
        "gen_ai.input.messages": content(_dump_messages(messages)),
    }


def response_attributes(response: Any) -> dict[str, Any]:
    """The GenAI attributes of a chat call's response (a ``ModelResponse``)."""
    usage = response.usage
    return {
        "gen_ai.response.model": response.model,
        "gen_ai.response.finish_reasons": [response.finish_reason or "stop"],
        "gen_ai.usage.input_tokens": usage.prompt_tokens,
        "gen_ai.usage.output_tokens": usage.completion_tokens,
        "gen_ai.output.messages": content(_dump_messages([response.message])),
    }


def tool_result(result: Any) -> None:
    """Mark the current tool span with a ``ToolResult``: an error result is an error span."""
    if _state is None:
        return
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    current = trace.get_current_span()
    if not current.is_recording():
        return
    if result.is_error:
        current.set_status(Status(StatusCode.ERROR, redact(result.content)[:300]))
    if (text := content(result.content)) is not None:
        current.set_attribute("gen_ai.tool.call.result", text)


def _dump_messages(messages: Any) -> Any:
    if _state is None or not _state.record_content:
        return None
    return [m.model_dump(mode="json", exclude_none=True) for m in messages]


# --- configuration ------------------------------------------------------------------------------


def _configured() -> _Tracing | None:
    if _state is None and not _env_checked:
        _from_environment()
    return _state


def _current(parent: Any = None) -> _Tracing | None:
    """The tracing state, if a span with ``parent`` (see :func:`span`) is to be recorded."""
    if _state is None and _is_carrier(parent) and _CONFIG_KEY in parent:
        adopt(json.loads(parent[_CONFIG_KEY]))
    state = _configured()
    if state is None or not state.adopted:
        return state
    if _is_carrier(parent):
        return state if _CONFIG_KEY in parent else None
    if parent is not None:  # a span or context that our code took from traced work
        return state
    from opentelemetry import trace

    return state if trace.get_current_span().is_recording() else None


def _is_carrier(parent: Any) -> bool:
    if not isinstance(parent, Mapping):
        return False
    from opentelemetry.context import Context

    return not isinstance(parent, Context)  # (a Context is a dict too)


def _from_environment() -> None:
    global _env_checked
    with _lock:
        if _env_checked:
            return
        _env_checked = True
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return
    otlp = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    directory = os.environ.get("GECKO_TRACE_DIR")
    if not otlp and not directory:
        return
    config = {
        "endpoint": "env" if otlp else None,  # the exporter reads the variables itself
        "directory": directory,
        "service": os.environ.get("OTEL_SERVICE_NAME", "gecko-actors"),
        "content": os.environ.get("GECKO_TRACE_CONTENT", "").lower() in ("1", "true", "yes"),
    }
    _quietly(config, adopted=False)


def _quietly(config: dict[str, Any], *, adopted: bool) -> None:
    """Configure from the environment or a caller, where a missing SDK must not fail the
    agent run or node being traced: tracing stays off here, with one warning."""
    try:
        _install(config, None, ship=adopted, adopted=adopted)
    except ConfigurationError as exc:
        global _env_checked
        _env_checked = True
        from gecko_actors.logging import get_logger

        get_logger("gecko_actors.tracing").warning("tracing stays off", error=exc.message)


def _install(config: dict[str, Any], exporter: Any, *, ship: bool, adopted: bool = False) -> None:
    global _state, _env_checked
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ModuleNotFoundError as exc:
        raise ConfigurationError(
            f"tracing needs the OpenTelemetry SDK ({exc.name} is not installed)",
            hint='pip install "gecko-actors[otel]"',
            extra="otel",
        ) from exc
    provider = TracerProvider(resource=Resource.create({"service.name": config["service"]}))
    if config.get("endpoint"):
        provider.add_span_processor(BatchSpanProcessor(_otlp(config["endpoint"])))
    if config.get("directory"):
        provider.add_span_processor(SimpleSpanProcessor(_file_exporter(config["directory"])))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    endpoint = config.get("endpoint")
    travels = ship and not (endpoint and endpoint != "env" and urlsplit(endpoint).password)
    state = _Tracing(
        provider,
        provider.get_tracer("gecko_actors"),
        bool(config.get("content")),
        {**config, "endpoint": None if endpoint == "env" else endpoint} if travels else None,
        adopted,
    )
    with _lock:
        previous, _state, _env_checked = _state, state, True
    if previous is not None:
        previous.provider.shutdown()


def _otlp(endpoint: str) -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    if endpoint == "env":
        return OTLPSpanExporter()
    return OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")


def _file_exporter(directory: str) -> Any:
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    os.makedirs(directory, exist_ok=True)
    out = open(  # noqa: SIM115  (open for the process's life; the exporter flushes each span)
        os.path.join(directory, f"spans-{os.getpid()}.jsonl"), "a", encoding="utf-8"
    )
    return ConsoleSpanExporter(out=out, formatter=lambda s: s.to_json(indent=None) + "\n")


def _context(parent: Any) -> Any:
    if hasattr(parent, "get_span_context"):  # a span
        from opentelemetry import trace

        return trace.set_span_in_context(parent)
    from opentelemetry import propagate
    from opentelemetry.context import Context

    if parent is None or isinstance(parent, Context):  # (a Context is a dict too)
        return parent  # None (the current span) or already a context

    return propagate.extract({k: v for k, v in parent.items() if k != _CONFIG_KEY})


def _clean(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """Attributes OpenTelemetry accepts: no ``None``, scalars or lists of scalars."""
    if not attributes:
        return {}
    return {
        key: value if isinstance(value, str | bool | int | float | list | tuple) else str(value)
        for key, value in attributes.items()
        if value is not None
    }
