"""Prompt templates: jinja2 in a sandbox, with strict undefined variables."""

from __future__ import annotations

import functools
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError, meta
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from gecko_actors.exceptions import TemplateError

DEFAULT_SYSTEM_TEMPLATE = """\
{{ instructions }}
{%- if tools %}

You can use these tools:
{%- for tool in tools %}
- {{ tool.name }}: {{ tool.description }}
{%- endfor %}

Call a tool when it helps; when you have the answer, reply to the user directly.
{%- endif %}"""


@functools.lru_cache(maxsize=1)
def _environment() -> SandboxedEnvironment:
    # Sandboxed: a template (which may come from configuration) cannot reach Python internals.
    return SandboxedEnvironment(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False
    )


@functools.lru_cache(maxsize=256)
def _compiled(source: str) -> tuple[Any, frozenset[str]]:
    """A source's template and variables, compiled once per process: every agent of a host
    has the default system template, and compiling one costs about a millisecond. A
    compiled template renders from any number of agents at once."""
    env = _environment()
    return env.from_string(source), frozenset(meta.find_undeclared_variables(env.parse(source)))


class PromptTemplate:
    """A jinja2 template rendered in a sandbox; a missing variable is a :class:`TemplateError`
    naming it.

    Example:
        >>> PromptTemplate("Hello {{ name }}").render(name="Ada")
        'Hello Ada'
    """

    def __init__(self, source: str) -> None:
        try:
            self._template, self.variables = _compiled(source)
        except TemplateSyntaxError as exc:
            raise TemplateError(
                f"prompt template has a syntax error on line {exc.lineno}: {exc.message}",
                hint="fix the jinja2 syntax",
            ) from None
        self.source = source

    def __repr__(self) -> str:
        return f"PromptTemplate({self.source[:40]!r})"

    def __reduce__(self):
        return (PromptTemplate, (self.source,))

    def render(self, **variables: Any) -> str:
        missing = sorted(self.variables - variables.keys())
        if missing:
            raise TemplateError(
                f"prompt template needs {', '.join(map(repr, missing))}, which "
                f"{'was' if len(missing) == 1 else 'were'} not given",
                hint=f"pass {', '.join(f'{m}=...' for m in missing)} when rendering",
                missing=missing,
            )
        try:
            return self._template.render(**variables)
        except UndefinedError as exc:  # e.g. a missing attribute of a given variable
            raise TemplateError(
                f"prompt template used an undefined value: {exc.message}",
                hint="check the variables passed to render()",
            ) from None
        except SecurityError as exc:
            raise TemplateError(f"prompt template tried an unsafe operation: {exc}") from None
