"""Load the workflow a command names: ``path/to/file.py:attr`` or ``package.module:attr``.

The attribute is a ``Workflow`` or a function (taking no arguments) that returns one. Every
mistake is a one-line :class:`UserError` naming the target and what to change: a bad target,
a module that does not import (a syntax error, with its file:line; a missing package; an
exception raised while it runs), a factory that raises or returns something else. The
original exception stays chained (``__cause__``), so ``gecko-actors --verbose`` shows its
traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from gecko_actors.exceptions import UserError
from gecko_actors.workflow.graph import WorkflowGraph

_FORM = "write TARGET as path/to/file.py:attr or package.module:attr"
_TRACEBACK = "`gecko-actors --verbose ...` or `python FILE` shows the whole traceback"
_MAX_CAUSE = 300  # characters of the cause's message kept in the one line
# Frames that are not the user's: this module and Python's import machinery.
_NOT_USER_CODE = (os.path.dirname(importlib.__file__) + os.sep, "<frozen ")


def load_workflow(target: str) -> Any:
    """The ``Workflow`` named by ``target``; a one-line :class:`UserError` naming the target
    for anything that stops it from loading."""
    location, sep, attr = target.rpartition(":")
    if not sep or not location or not attr.isidentifier():
        raise UserError(f"invalid target {target!r}", hint=_FORM)
    module = _load_module(location, target)
    try:
        value = getattr(module, attr)
    except AttributeError:
        names = sorted(n for n in vars(module) if not n.startswith("_"))
        raise UserError(
            f"{location} has no attribute {attr!r}",
            hint=f"its names are: {', '.join(names[:20]) or '(none)'}",
        ) from None
    if callable(value) and not isinstance(value, WorkflowGraph):
        value = _call_factory(value, attr, target)
    elif not _is_workflow(value):
        raise UserError(
            f"{target} is a {type(value).__name__}, not a Workflow",
            hint="name a gecko_actors.Workflow, or a function that returns one",
        )
    # How a workflow host imports it again after a restart (a file by its absolute path).
    file = getattr(module, "__file__", None)
    value.target = f"{file}:{attr}" if module.__name__.startswith("_gecko_target_") else target
    return value


def _is_workflow(value: Any) -> bool:
    # The graph alone (WorkflowGraph) cannot start a run: a Workflow can.
    return isinstance(value, WorkflowGraph) and hasattr(value, "start")


def _call_factory(factory: Any, attr: str, target: str) -> Any:
    """``factory()``, which must return a Workflow; anything else is a UserError."""
    try:
        inspect.signature(factory).bind()
    except TypeError as exc:
        raise UserError(
            f"{target}: {attr}() cannot be called without arguments ({exc})",
            hint="name a Workflow, or a function that takes no arguments and returns one",
        ) from None
    except ValueError:  # no signature to check (some builtins): just call it
        pass
    try:
        value = factory()
    except (Exception, SystemExit) as exc:
        raise UserError(
            f"{target}: {attr}() raised {_cause(exc, _user_frame(exc))}",
            hint=f"fix the factory; {_TRACEBACK}",
        ) from exc
    if not _is_workflow(value):
        raise UserError(
            f"{target}: {attr}() returned a {type(value).__name__} ({_short(repr(value))}), "
            "not a Workflow",
            hint="return the gecko_actors.Workflow it builds",
        )
    return value


# --- importing the module ----------------------------------------------------------------------


def _load_module(location: str, target: str) -> Any:
    if location.endswith(".py") or "/" in location or "\\" in location:
        return _load_file(Path(location), target)
    if os.getcwd() not in sys.path:  # as `python -m` does: modules of this folder import
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(location)
    except ModuleNotFoundError as exc:
        if exc.name and (location == exc.name or location.startswith(f"{exc.name}.")):
            raise UserError(
                f"cannot import {location!r} (in {target!r}): no module named {exc.name!r}",
                hint=f"{_FORM}; a module is looked up from the current folder and sys.path",
            ) from None
        raise _import_failed(exc, target) from exc
    except (Exception, SystemExit) as exc:
        raise _import_failed(exc, target) from exc


def _load_file(path: Path, target: str) -> Any:
    if not path.is_file():
        raise UserError(f"no such file {str(path)!r} (in {target!r})", hint=_FORM)
    path = path.resolve()
    name = f"_gecko_target_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Its folder is importable, as for `python file.py`, so the file can import its neighbours.
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        sys.modules.pop(name, None)  # a half-run module must not be found by a later load
        raise _import_failed(exc, target) from exc
    # Ray workers cannot import this module by its name: ship its functions by value.
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(module)
    return module


def _import_failed(exc: BaseException, target: str) -> UserError:
    """One line: the target, where in the user's code it failed, and why."""
    if isinstance(exc, SyntaxError):
        return UserError(
            f"{target} failed to load: {exc.filename}:{exc.lineno}: syntax error: {exc.msg}",
            hint="fix the file, then run the command again",
        )
    where = _user_frame(exc)
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return UserError(
            f"{target} failed to load: {where}: it imports {exc.name!r}, which is not installed",
            hint=f"install the package that provides {exc.name!r} in this environment (on a "
            "cluster: in the job's runtime_env), or fix the import",
        )
    return UserError(
        f"{target} failed to load: {_cause(exc, where)}",
        hint=f"fix the module; {_TRACEBACK}",
    )


def _user_frame(exc: BaseException) -> str | None:
    """``file:line`` of the user's code that failed: the first frame of the traceback past
    this module and Python's import machinery, i.e. the line of the target's module (or of
    the factory) that led to the error, wherever below it the exception was raised."""
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == __file__ or frame.filename.startswith(_NOT_USER_CODE):
            continue
        return f"{frame.filename}:{frame.lineno}"
    return None


def _cause(exc: BaseException, where: str | None) -> str:
    """``where: Type: message`` on one line, the message shortened."""
    try:
        message = str(exc)
    except Exception:  # a user's exception whose __str__ itself fails
        message = ""
    text = f"{type(exc).__name__}: {_short(message)}" if message else type(exc).__name__
    return f"{where}: {text}" if where else text


def _short(text: str) -> str:
    # A message may span lines (a validation error, a nested traceback): the CLI shows one.
    flat = " ".join(text.split())
    return flat if len(flat) <= _MAX_CAUSE else f"{flat[: _MAX_CAUSE - 1]}…"
