"""Load the workflow a command names: ``path/to/file.py:attr`` or ``package.module:attr``.

The attribute is a ``Workflow`` or a function (taking no arguments) that returns one. Every
mistake is a one-line :class:`UserError` naming the target and what to change.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from gecko_actors.exceptions import UserError
from gecko_actors.workflow.graph import WorkflowGraph

_FORM = "write TARGET as path/to/file.py:attr or package.module:attr"


def load_workflow(target: str) -> Any:
    """The ``Workflow`` named by ``target``."""
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
        value = value()
    if not isinstance(value, WorkflowGraph) or not hasattr(value, "start"):
        raise UserError(
            f"{target} is a {type(value).__name__}, not a Workflow",
            hint="name a gecko_actors.Workflow, or a function that returns one",
        )
    return value


def _load_module(location: str, target: str) -> Any:
    if location.endswith(".py") or "/" in location or "\\" in location:
        return _load_file(Path(location), target)
    if os.getcwd() not in sys.path:  # as `python -m` does: modules of this folder import
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(location)
    except ModuleNotFoundError as exc:
        raise UserError(f"cannot import {location!r}: {exc}", hint=_FORM) from None
    except SyntaxError as exc:
        raise _syntax_error(exc) from None


def _load_file(path: Path, target: str) -> Any:
    if not path.is_file():
        raise UserError(f"no such file {str(path)!r} (in {target!r})", hint=_FORM)
    path = path.resolve()
    name = f"_gecko_target_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Its folder is importable, as for `python file.py`, so the file can import its neighbours.
    sys.path.insert(0, str(path.parent))
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise _syntax_error(exc) from None
    except Exception as exc:
        raise UserError(
            f"{path} failed to load: {type(exc).__name__}: {exc}",
            hint="run `python FILE` to see the whole traceback",
        ) from None
    # Ray workers cannot import this module by its name: ship its functions by value.
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(module)
    return module


def _syntax_error(exc: SyntaxError) -> UserError:
    return UserError(
        f"{exc.filename}:{exc.lineno}: syntax error: {exc.msg}",
        hint="fix the file, then run the command again",
    )
