"""structlog logging, console or JSON, with one redaction step for every line.

Both gecko_actors' own structlog events and the standard-library records of the noisy
third-party libraries we use (litellm, httpx, openai) go through the same formatter, whose last
step masks secrets in the rendered text — tracebacks included.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

from gecko_actors._redact import redact, register_secret
from gecko_actors.settings import load_settings

_THIRD_PARTY = (
    "LiteLLM",
    "LiteLLM Router",
    "LiteLLM Proxy",
    "litellm",
    "httpx",
    "httpcore",
    "openai",
    "aiohttp",
)
_HANDLER_NAME = "gecko_actors"
_configured = False


def _redact_rendered(_logger: Any, _name: str, rendered: str) -> str:
    return redact(rendered)


def configure_logging(
    level: str | None = None,
    fmt: str | None = None,
    *,
    stream: TextIO | None = None,
) -> None:
    """Configure logging for gecko_actors; defaults come from ``GECKO_LOG_LEVEL`` and
    ``GECKO_LOG_FORMAT``. Safe to call again (it replaces its own handler only)."""
    global _configured
    settings = load_settings()
    for secret in settings.secrets:
        register_secret(secret.get_secret_value())
    if settings.api_key is not None:
        register_secret(settings.api_key.get_secret_value())
    level = (level or settings.log_level).upper()
    fmt = fmt or settings.log_format

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        # filter_by_level first: a filtered-out line costs a level check, not the whole chain.
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
            _redact_rendered,
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    _install(logging.getLogger("gecko_actors"), handler, level)
    for name in _THIRD_PARTY:
        _install(logging.getLogger(name), handler, "WARNING")
    _configured = True


def _install(logger: logging.Logger, handler: logging.Handler, level: str) -> None:
    for old in [h for h in logger.handlers if h.get_name() == _HANDLER_NAME]:
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


class _LazyLogger:
    """A logger that configures logging the first time it is used, not when it is created:
    modules create their loggers at import, and importing gecko_actors must not touch the
    process's logging."""

    def __init__(self, name: str, context: dict[str, Any]) -> None:
        self._name = name
        self._context = context

    def __getattr__(self, attr: str) -> Any:
        if not _configured:
            configure_logging()
        level = _LEVELS.get(attr)
        if level is not None and not logging.getLogger(self._name).isEnabledFor(level):
            return _nothing  # a filtered-out line costs one cached check (hot paths log info)
        return getattr(structlog.get_logger(self._name).bind(**self._context), attr)


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


def _nothing(*args: Any, **kwargs: Any) -> None:
    """A log call below the level."""


def get_logger(name: str = "gecko_actors", **context: Any) -> Any:
    """A structlog logger under the ``gecko_actors`` namespace, bound to ``context``.

    Logging is configured (from ``GECKO_LOG_LEVEL`` / ``GECKO_LOG_FORMAT``) at the first log
    call unless :func:`configure_logging` was called before.
    """
    if not name.startswith("gecko_actors"):
        name = f"gecko_actors.{name}"
    return _LazyLogger(name, context)
