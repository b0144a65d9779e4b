"""Loading the workflow a command names (``file.py:attr`` or ``module:attr``): whatever is
wrong in the user's module or factory is one typed line naming the target and the cause, both
through the loader and through every CLI command that takes a target."""

from __future__ import annotations

import importlib
import pickle
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from gecko_actors.cli import main
from gecko_actors.exceptions import UserError
from gecko_actors.workflow.target import load_workflow

GOOD = """
from gecko_actors.workflow import Workflow


def shout(ctx):
    return str(ctx.input).upper()


def build():
    return Workflow("targets-test").add_node("shout", shout)


workflow = build()
"""


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder as the current directory; sys.path is restored afterwards, since the
    loader puts the target's folder on it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    importlib.invalidate_caches()
    return tmp_path


def write(folder: Path, name: str, source: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(source))
    importlib.invalidate_caches()
    return path


def module_name() -> str:
    """A fresh module name per test: a module that imported once stays in sys.modules."""
    return f"gecko_flows_{uuid.uuid4().hex[:10]}"


def refused(target: str) -> UserError:
    """The UserError that loading ``target`` raises, checked to be one line naming it."""
    with pytest.raises(UserError) as info:
        load_workflow(target)
    message = str(info.value)
    assert "\n" not in message, message
    assert target in message, message
    pickle.loads(pickle.dumps(info.value))  # a typed error crosses processes whole
    return info.value


# --- the module does not import ------------------------------------------------------------------


def test_a_syntax_error_names_the_target_and_file_line(folder: Path):
    path = write(folder, "flow.py", "x = 1\ndef broken(:\n")
    err = refused(f"{path}:workflow")
    assert f"{path}:workflow failed to load: {path}:2: syntax error" in str(err)


def test_a_syntax_error_in_a_module_the_target_imports_names_that_file(folder: Path):
    helper = write(folder, "flow_helpers.py", "def ok():\n    return (1,\n")
    path = write(folder, "flow.py", "import flow_helpers\n" + GOOD)
    err = refused(f"{path}:workflow")
    assert f"{helper}:2: syntax error" in str(err)


@pytest.mark.parametrize("form", ["file", "module"])
def test_a_missing_package_is_named_with_the_line_importing_it(folder: Path, form: str):
    name = module_name()
    path = write(folder, f"{name}.py", "import os\n\nimport gecko_no_such_package\n" + GOOD)
    target = f"{path}:workflow" if form == "file" else f"{name}:workflow"
    err = refused(target)
    assert f"{path}:3: it imports 'gecko_no_such_package', which is not installed" in str(err)
    assert "install the package" in str(err)
    assert "path/to/file.py:attr" not in str(err)  # the target's form was right


def test_a_module_target_that_does_not_exist_is_named(folder: Path):
    err = refused("gecko_nowhere_flows:workflow")
    assert "no module named 'gecko_nowhere_flows'" in str(err)
    assert "package.module:attr" in str(err)  # the hint shows the forms


@pytest.mark.parametrize("form", ["file", "module"])
def test_an_exception_at_import_is_one_line_with_its_line_and_chained(folder: Path, form: str):
    name = module_name()
    source = GOOD + "\n\nraise RuntimeError('the config is wrong:\\n  region: none')\n"
    path = write(folder, f"{name}.py", source)
    target = f"{path}:workflow" if form == "file" else f"{name}:workflow"
    err = refused(target)
    line = source.count("\n")  # the raise is the last line
    assert (
        f"{target} failed to load: {path}:{line}: RuntimeError: the config is wrong: region: none"
    ) in str(err)
    assert isinstance(err.__cause__, RuntimeError)  # `--verbose` shows its traceback
    assert name not in sys.modules and f"_gecko_target_{name}" not in sys.modules
    write(folder, f"{name}.py", GOOD)  # fixed: the same target loads, the factory too
    assert load_workflow(target).name == "targets-test"
    assert load_workflow(target.replace(":workflow", ":build")).name == "targets-test"


@pytest.mark.parametrize("form", ["file", "module"])
def test_sys_exit_at_import_is_a_user_error_not_an_exit(folder: Path, form: str):
    name = module_name()
    path = write(folder, f"{name}.py", "import sys\n\nsys.exit(3)\n")
    target = f"{path}:workflow" if form == "file" else f"{name}:workflow"
    err = refused(target)
    assert f"failed to load: {path}:3: SystemExit: 3" in str(err)


# --- the factory ---------------------------------------------------------------------------------


def test_a_factory_that_raises_is_named_with_its_line(folder: Path):
    path = write(folder, "flow.py", GOOD + "\n\ndef failing():\n    raise ValueError('no model')\n")
    err = refused(f"{path}:failing")
    line = (GOOD + "\n\ndef failing():\n").count("\n") + 1
    assert f"{path}:failing: failing() raised {path}:{line}: ValueError: no model" in str(err)
    assert isinstance(err.__cause__, ValueError)


def test_a_factory_that_needs_arguments_is_refused_without_calling_it(folder: Path):
    path = write(folder, "flow.py", GOOD + "\n\ndef needs(model):\n    raise AssertionError\n")
    err = refused(f"{path}:needs")
    assert "needs() cannot be called without arguments" in str(err)
    assert "'model'" in str(err)


@pytest.mark.parametrize(
    ("body", "shown"),
    [("return None", "a NoneType (None)"), ("return build", "a function (<function build")],
)
def test_a_factory_that_returns_something_else_says_what(folder: Path, body: str, shown: str):
    path = write(folder, "flow.py", GOOD + f"\n\ndef other():\n    {body}\n")
    err = refused(f"{path}:other")
    assert f"{path}:other: other() returned {shown}" in str(err)
    assert str(err).split(" Hint:")[0].endswith("not a Workflow")


# --- through the CLI -----------------------------------------------------------------------------

BROKEN = {
    "syntax": ("def broken(:\n", "workflow", "flow.py:1: syntax error"),
    "missing package": (
        "import gecko_no_such_package\n",
        "workflow",
        "flow.py:1: it imports 'gecko_no_such_package', which is not installed",
    ),
    "import-time error": (
        "raise KeyError('GECKO_FLOW_MODEL')\n",
        "workflow",
        "flow.py:1: KeyError: 'GECKO_FLOW_MODEL'",
    ),
    "factory raises": (
        GOOD + "\n\ndef failing():\n    raise ValueError('no model')\n",
        "failing",
        "failing() raised",
    ),
    "factory returns None": (
        GOOD + "\n\ndef nothing():\n    pass\n",
        "nothing",
        "returned a NoneType",
    ),
}

COMMANDS = {
    "run": ["run", "{target}", "--checkpoint", "{folder}/runs"],
    "graph": ["graph", "{target}"],
    "resume": ["resume", "some-run", "{target}", "--checkpoint", "{folder}/runs"],
    # The target is loaded before the cluster is contacted: nothing listens on that port.
    "submit": ["submit", "{target}", "--address", "http://127.0.0.1:9"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_every_target_command_prints_one_line_and_exits_1(folder: Path, command: str, case: str):
    source, attr, cause = BROKEN[case]
    write(folder, "flow.py", source)
    target = f"flow.py:{attr}"
    args = [a.format(target=target, folder=folder) for a in COMMANDS[command]]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {target}"), lines[0]  # the target, first
    assert cause in lines[0] and "Traceback" not in result.output


def test_verbose_shows_the_user_s_own_traceback(folder: Path):
    path = write(folder, "flow.py", GOOD + "\n\ndef failing():\n    raise ValueError('no model')\n")
    result = CliRunner().invoke(main, ["--verbose", "graph", f"{path}:failing"])
    assert result.exit_code == 1
    assert isinstance(result.exception, UserError)
    assert isinstance(result.exception.__cause__, ValueError)  # the cause, with its traceback
