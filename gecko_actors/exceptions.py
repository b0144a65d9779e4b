"""Every exception gecko_actors raises.

Two families, as in pydantic-ai: :class:`UserError` is the developer's mistake (bad input,
misuse, missing configuration) and is raised before anything runs; :class:`RunError` is a run
that failed (a model, a tool, a workflow, a checkpoint).

Each exception carries structured context (ids such as ``agent``, ``tool``, ``run_id``) as
attributes and in :meth:`GeckoError.to_dict`, has a message that says how to fix the problem,
and survives pickling with all its fields — on Ray every exception crosses a process boundary.
Exception text passes through the same redaction as the logs, so a secret never leaks through it.
"""

from __future__ import annotations

from typing import Any

from gecko_actors._redact import redact


def _rebuild(cls: type[GeckoError], message: str, hint: str | None, context: dict[str, Any]):
    err = cls.__new__(cls)
    GeckoError.__init__(err, message, hint=hint, **context)
    return err


class GeckoError(Exception):
    """Base class of every gecko_actors error.

    Args:
        message: what went wrong, quoting identifiers with ``!r``.
        hint: how to fix it (the variable to set, the extra to install, ...).
        **context: structured ids (``agent=``, ``tool=``, ``run_id=``, ...), also set as attributes.
    """

    error_code = "gecko_error"

    def __init__(self, message: str, *, hint: str | None = None, **context: Any) -> None:
        self.message = message
        self.hint = hint
        self.context = context
        for key, value in context.items():
            if not hasattr(type(self), key):
                setattr(self, key, value)
        super().__init__(message)

    def __str__(self) -> str:
        text = self.message
        if self.hint:
            text = f"{text} Hint: {self.hint}"
        return redact(text)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    def __reduce__(self):
        return (_rebuild, (type(self), self.message, self.hint, dict(self.context)))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description: type, code, message, hint and context."""
        return {
            "type": type(self).__name__,
            "error_code": self.error_code,
            "message": redact(self.message),
            "hint": redact(self.hint) if self.hint else self.hint,
            "context": {k: redact(str(v)) for k, v in self.context.items()},
        }


# --- the developer's mistakes -------------------------------------------------------------


class UserError(GeckoError):
    """Misuse of the API or bad input; fix the calling code."""

    error_code = "user_error"


class IncompatibleVersion(UserError):
    """A run cannot go on with this version of its workflow: the new graph changed what the
    run already did (a node that ran is gone or changed kind, an edge that ran was removed,
    the entry moved, ...). ``reasons`` lists each change; ``run_id``, ``workflow``,
    ``version`` (the new graph's) and ``run_version`` (the run's) say which. Nothing of the
    run was changed: resume it with its own version, or map renamed nodes with
    ``wf.migrate(run_id, {...})``."""

    error_code = "incompatible_version"


class ConfigurationError(UserError):
    """A setting, environment variable or optional dependency is missing or invalid."""

    error_code = "configuration_error"


class TemplateError(UserError):
    """A prompt template is invalid or was rendered without a variable it needs."""

    error_code = "template_error"


# --- failed runs ----------------------------------------------------------------------------


class RunError(GeckoError):
    """A run failed while executing."""

    error_code = "run_error"


class ModelError(RunError):
    """A model call failed (after the configured retries)."""

    error_code = "model_error"


class ModelTimeoutError(ModelError):
    """A model call took longer than its timeout."""

    error_code = "model_timeout"


class ScriptExhaustedError(ModelError):
    """A :class:`~gecko_actors.ScriptedModel` was called more times than it has replies."""

    error_code = "script_exhausted"


class StructuredOutputError(RunError):
    """The model's answer could not be parsed into the requested ``response_model``."""

    error_code = "structured_output_error"


class ToolError(RunError):
    """A tool failed."""

    error_code = "tool_error"


class ToolNotFoundError(ToolError):
    """A tool was requested that is not registered."""

    error_code = "tool_not_found"


class ToolTimeoutError(ToolError):
    """A tool did not finish within its timeout."""

    error_code = "tool_timeout"


class ToolArgumentsError(ToolError):
    """A tool was called with arguments that are not valid JSON or do not match its schema."""

    error_code = "tool_arguments"


class CalculatorError(ToolError):
    """The calculator refused or could not evaluate an expression."""

    error_code = "calculator_error"


class TeamError(RunError):
    """Team members failed and the caller asked to raise; ``result`` keeps every success."""

    error_code = "team_error"


class BudgetExceededError(RunError):
    """A model call was refused because it would go over a budget (nothing was sent).

    ``scope`` names the budget that refused it, ``budget`` and ``spent`` are its limits and
    its spend (dicts), and ``partial`` holds what finished before the stop where the caller
    knows it (a team's answers, a run's completed nodes), else ``None``.
    """

    error_code = "budget_exceeded"


class StorageError(RunError):
    """A session or vector store failed."""

    error_code = "storage_error"


class WorkflowError(RunError):
    """A workflow run failed; ``run_id`` and ``node`` say where."""

    error_code = "workflow_error"


class HostBusy(WorkflowError):
    """Every workflow host of this job's pool already drives its maximum of runs
    (``GECKO_HOST_MAX_RUNS``): the run was not started, and nothing of it was stored."""

    error_code = "host_busy"


class CheckpointError(RunError):
    """A checkpoint could not be written or read; ``uri`` names the object."""

    error_code = "checkpoint_error"


class OwnershipLost(CheckpointError):
    """Another engine took over the run: this engine must stop driving it.

    Raised by the checkpoint store when a newer owner epoch has been claimed for the run, or
    when the step this engine tried to commit was committed first with other content. Nothing
    was written. ``run_id``, ``epoch`` (this engine's) and, where known, ``seq``, ``node`` and
    ``owner_epoch`` (the newest claim, or the epoch of the engine whose commit won) say what
    happened.
    """

    error_code = "ownership_lost"


__all__ = [
    "BudgetExceededError",
    "CalculatorError",
    "CheckpointError",
    "ConfigurationError",
    "GeckoError",
    "HostBusy",
    "IncompatibleVersion",
    "ModelError",
    "ModelTimeoutError",
    "OwnershipLost",
    "RunError",
    "ScriptExhaustedError",
    "StorageError",
    "StructuredOutputError",
    "TeamError",
    "TemplateError",
    "ToolArgumentsError",
    "ToolError",
    "ToolNotFoundError",
    "ToolTimeoutError",
    "UserError",
    "WorkflowError",
]
