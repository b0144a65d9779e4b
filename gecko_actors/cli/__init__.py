"""The ``gecko-actors`` command line: a thin layer over the Python API.

Every failure is one line on stderr and a non-zero exit (the traceback with ``--verbose``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from gecko_actors._version import __version__
from gecko_actors.exceptions import GeckoError, UserError
from gecko_actors.workflow.inputs import MAX_INPUT_BYTES, MAX_INPUT_VARIABLE, read_input

_ADDRESS_HELP = "Ray address to connect to (default: RAY_ADDRESS, else a new local Ray)."
_CHECKPOINT_HELP = "Where runs are checkpointed: a folder, file://, s3:// or gs:// URI."


class _Group(click.Group):
    """Turns an error into a one-line reason and exit code 1 (traceback with --verbose)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if (ctx.obj or {}).get("verbose"):
                raise
            if isinstance(exc, GeckoError | OSError):
                click.echo(f"error: {exc}", err=True)
            else:  # not ours (Ray's, say): still one line
                click.echo(f"error: {type(exc).__name__}: {exc} (--verbose for details)", err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="gecko-actors")
@click.option("--verbose", "-v", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """gecko_actors: multi-agent LLM systems on Ray.

    \b
    Example:
        gecko-actors demo
        gecko-actors run examples/durable_pipeline.py:workflow --input "hello"
    """
    from gecko_actors.logging import configure_logging

    ctx.obj = {"verbose": verbose}
    configure_logging("DEBUG" if verbose else "WARNING")


# --- the demo --------------------------------------------------------------------------------


@main.command()
@click.option(
    "--model",
    default=None,
    help="A LiteLLM model (e.g. openai/gpt-4o-mini); default: offline scripted agents.",
)
@click.option("--checkpoint", default=None, help=_CHECKPOINT_HELP + " Default: ./gecko_runs.")
@click.option("--address", envvar="RAY_ADDRESS", default=None, help=_ADDRESS_HELP)
def demo(model: str | None, checkpoint: str | None, address: str | None) -> None:
    """Run the research workflow: a planner, a team of researchers using tools in parallel,
    a writer, and a critic that sends the draft back until it is satisfied.

    \b
    Example:
        gecko-actors demo
        OPENAI_API_KEY=... gecko-actors demo --model openai/gpt-4o-mini
    """
    from gecko_actors.demo import run_demo

    run_demo(click.echo, model=model, checkpoint=checkpoint, address=_gcs_address(address))


# --- running workflows -----------------------------------------------------------------------


def _input_option(fn: Any) -> Any:
    return click.option(
        "--input",
        "input_",
        default=None,
        help="The run's input: text, or @file.json for JSON data (UTF-8, at most "
        f"{MAX_INPUT_BYTES // 2**20} MiB unless {MAX_INPUT_VARIABLE} says otherwise; "
        "NaN and Infinity are refused).",
    )(fn)


def _budget_option(fn: Any) -> Any:
    return click.option(
        "--budget",
        "budget_",
        default=None,
        metavar="LIMITS",
        help="A hard stop on the run's model calls, e.g. tokens=20000,usd=0.5,model_calls=100 "
        "(on resume: replaces the run's own).",
    )(fn)


def _budget(text: str | None) -> Any:
    """The :class:`Budget` that ``--budget`` names (``None`` without one)."""
    if text is None:
        return None
    from gecko_actors.core.budget import Budget

    kinds = {"tokens": int, "usd": float, "model_calls": int}
    limits: dict[str, Any] = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        key = key.strip()
        try:
            limits[key] = kinds[key](value.strip())
        except (KeyError, ValueError):
            raise UserError(
                f"--budget {text!r:.80}: {part.strip()!r:.40} is not a limit",
                hint="use tokens=N, usd=X and model_calls=N, separated by commas",
            ) from None
    return Budget(**limits)


@main.command()
@click.argument("target")
@_input_option
@click.option("--run-id", default=None, help="The run's id (default: <workflow>-<random>).")
@click.option("--checkpoint", default=None, help=_CHECKPOINT_HELP + " Default: ./gecko_runs.")
@_budget_option
@click.option("--address", envvar="RAY_ADDRESS", default=None, help=_ADDRESS_HELP)
def run(
    target: str,
    input_: str | None,
    run_id: str | None,
    checkpoint: str | None,
    budget_: str | None,
    address: str | None,
) -> None:
    """Run the workflow TARGET (path/to/file.py:attr or package.module:attr, naming a
    Workflow or a function returning one), printing each node's progress and the result.

    \b
    Example:
        gecko-actors run examples/durable_pipeline.py:workflow --input "a topic"
        gecko-actors run my_pkg.flows:build --input @input.json --checkpoint s3://bucket/runs
    """
    from gecko_actors.workflow.target import load_workflow

    wf = load_workflow(target)
    value = read_input(input_)
    budget = _budget(budget_)
    _connect(address)
    handle = wf.start(value, run_id=run_id, checkpoint=checkpoint, budget=budget)
    _follow(handle, checkpoint)


@main.command()
@click.argument("run_id")
@click.argument("target", required=False)
@click.option("--checkpoint", default=None, help=_CHECKPOINT_HELP + " Default: ./gecko_runs.")
@_budget_option
@click.option(
    "--version",
    "version",
    default=None,
    metavar="V",
    help="Refuse unless TARGET is version V of its workflow (Workflow(name, version=V)): a "
    "guard for deploy scripts. The run goes on with TARGET if it is compatible.",
)
@click.option("--address", envvar="RAY_ADDRESS", default=None, help=_ADDRESS_HELP)
def resume(
    run_id: str,
    target: str | None,
    checkpoint: str | None,
    budget_: str | None,
    version: str | None,
    address: str | None,
) -> None:
    """Continue RUN_ID from its last committed step (after a crash, a cancel or a failure).
    TARGET is the run's workflow, or a newer version of it that is compatible with what the
    run did; without it, only a run whose coordinator is still alive on the cluster can be
    continued.

    \b
    Example:
        gecko-actors resume pipeline-3f2a9c1e0b7d examples/durable_pipeline.py:workflow
        gecko-actors resume pipeline-3f2a9c1e0b7d flows:report --version 3
    """
    from gecko_actors.workflow.run import WorkflowRun

    budget = _budget(budget_)
    if version is not None and target is None:
        raise UserError("--version needs TARGET", hint="name the workflow to resume with")
    if target is None:
        _connect(address)
        handle = WorkflowRun.attach(run_id)
        handle.reopen(budget)
    else:
        from gecko_actors.workflow.target import load_workflow

        wf = load_workflow(target)
        if version is not None and wf.version != version.strip():
            raise UserError(
                f"{target} is version {wf.version} of workflow {wf.name!r}, not {version}"
                if wf.version is not None
                else f"{target} has no version (workflow {wf.name!r}), not {version}",
                hint="deploy the version you meant, or pass its --version",
            )
        _connect(address)
        handle = wf.resume(run_id, checkpoint=checkpoint, budget=budget)
    _follow(handle, checkpoint)


@main.command()
@click.argument("run_id")
@click.argument("node")
@click.argument("value")
@click.option("--by", default=None, help="Who answers (kept with the answer).")
@click.option(
    "--checkpoint",
    default=None,
    help=_CHECKPOINT_HELP + " Given, a run that no live host holds gets the answer there "
    "(and goes on with it once resumed).",
)
@click.option("--address", envvar="RAY_ADDRESS", default=None, help=_ADDRESS_HELP)
def respond(
    run_id: str,
    node: str,
    value: str,
    by: str | None,
    checkpoint: str | None,
    address: str | None,
) -> None:
    """Answer the interrupt that node NODE of run RUN_ID waits on with VALUE (text, or
    @file.json for JSON data): the node runs again and gets it. For a run whose cluster is
    gone, give its --checkpoint: the answer is recorded there, and `gecko-actors resume`
    continues the run.

    \b
    Example:
        gecko-actors respond approve-3f2a9c1e0b7d draft yes --by ana --address auto
        gecko-actors respond approve-3f2a9c1e0b7d draft @edits.json
    """
    from gecko_actors.workflow.run import WorkflowRun
    from gecko_actors.workflow.waiting import answer_in_checkpoint

    answer = read_input(value)
    _connect(address)
    try:
        handle = WorkflowRun.attach(run_id)
    except UserError:
        if checkpoint is None:
            raise
        store = _store(checkpoint)
        answer_in_checkpoint(store, run_id, node, answer, by)
        click.echo(f"answered {node} of {run_id} in {store.uri}: resume the run to go on")
        return
    handle.respond(node, answer, by=by)
    click.echo(f"answered {node} of {run_id}")


@main.command()
@click.argument("run_id")
@click.option("--address", envvar="RAY_ADDRESS", default=None, help=_ADDRESS_HELP)
def cancel(run_id: str, address: str | None) -> None:
    """Cancel the run RUN_ID (its committed steps stay; `resume` continues it).

    \b
    Example:
        gecko-actors cancel pipeline-3f2a9c1e0b7d --address auto
    """
    from gecko_actors.workflow.run import WorkflowRun

    _connect(address)
    WorkflowRun.attach(run_id).cancel()
    click.echo(f"cancelled {run_id}")


@main.command()
@click.argument("host")
@click.option("--timeout", default=60.0, show_default=True, metavar="SECONDS",
              help="Seconds its runs may take to end before they are handed over.")  # fmt: skip
@click.option("--no-hand-over", "keep", is_flag=True,
              help="Only let the runs go (a driver of the new code resumes them).")  # fmt: skip
@click.option("--address", envvar="RAY_ADDRESS", default=None, help=_ADDRESS_HELP)
def drain(host: str, timeout: float, keep: bool, address: str | None) -> None:
    """Replace the workflow host HOST (workflows/host/<env>/<i>) without losing a run: it
    takes no new run, its runs get --timeout seconds to end, the others are handed over
    (through the checkpoint) to a host of the same pool, and it exits.

    \b
    Example:
        gecko-actors drain workflows/host/3f2a9c0d1e/0 --timeout 120 --address auto
    """
    from gecko_actors.workflow.hosting import drain_workflow_host

    _connect(address)
    report = drain_workflow_host(host, timeout=timeout, hand_over=not keep)
    click.echo(f"drained {host}: {len(report['ended'])} run(s) ended there")
    for run_id, successor in report["released"].items():
        click.echo(f"  {run_id} -> {successor or 'let go: resume it with the new code'}")


@main.command()
@click.argument("target")
def graph(target: str) -> None:
    """Print the workflow TARGET as a mermaid flowchart.

    \b
    Example:
        gecko-actors graph examples/durable_pipeline.py:workflow
    """
    from gecko_actors.workflow.target import load_workflow

    wf = load_workflow(target)
    wf.validate()
    click.echo(wf.to_mermaid())


# --- reading checkpoints (no Ray needed) -----------------------------------------------------


@main.command()
@click.argument("run_id")
@click.option("--checkpoint", default=None, help=_CHECKPOINT_HELP + " Default: ./gecko_runs.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(run_id: str, checkpoint: str | None, as_json: bool) -> None:
    """Show RUN_ID's per-node table (state, attempts, duration, tokens) from its checkpoint:
    it works after the cluster is gone.

    \b
    Example:
        gecko-actors status pipeline-3f2a9c1e0b7d --checkpoint s3://bucket/runs
    """
    from gecko_actors.workflow.status import format_status, status_from_checkpoint

    _echo_read(checkpoint, run_id, status_from_checkpoint, format_status, as_json)


def _echo_read(
    checkpoint: str | None,
    run_id: str,
    read: Callable[[Any, str], dict[str, Any] | None],
    text: Callable[[dict[str, Any]], str],
    as_json: bool,
) -> None:
    """Print what ``read`` finds of ``run_id`` in the checkpoint, as ``text`` or JSON."""
    from gecko_actors.workflow.rules import no_such_run

    store = _store(checkpoint).marking()  # payloads it cannot decrypt show as a marker
    found = read(store, run_id)
    if found is None:
        raise no_such_run(run_id, store.uri)
    click.echo(json.dumps(found, indent=2, default=str) if as_json else text(found))


@main.command(name="list")
@click.option("--checkpoint", default=None, help=_CHECKPOINT_HELP + " Default: ./gecko_runs.")
def list_runs(checkpoint: str | None) -> None:
    """List the runs in a checkpoint store, newest first: id, workflow, status, created,
    host. Read from the store's run index (a few reads, however many runs); a store without
    one is indexed from its runs' manifests first.

    \b
    Example:
        gecko-actors list --checkpoint ./gecko_runs
    """
    from gecko_actors.checkpoint.index import RunIndex

    store = _store(checkpoint)
    index = RunIndex(store)
    entries = index.read()
    if not entries and store.list_runs():
        entries = index.rebuild(write=False)
    if not entries:
        click.echo(f"no runs in {store.uri}")
    for e in sorted(entries.values(), key=lambda e: e.created_at, reverse=True):
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.created_at))
        click.echo(f"{e.run_id}  {e.workflow}  {e.status}  {created}  {e.host or '-'}")


# --- Ray Jobs --------------------------------------------------------------------------------


def _gcs_address(address: str | None) -> str | None:
    """Drivers join a cluster by its GCS address (or "auto"); a dashboard URL is for submit."""
    if address and address.startswith(("http://", "https://")):
        raise UserError(
            f"{address} is a dashboard URL: use it with `gecko-actors submit`",
            hint="to run here against the cluster, pass --address auto (or HOST:6379)",
        )
    return address


def _connect(address: str | None) -> None:
    import gecko_actors

    gecko_actors.init(_gcs_address(address))


def _store(checkpoint: str | None) -> Any:
    from gecko_actors.checkpoint import CheckpointStore
    from gecko_actors.workflow.run import checkpoint_uri

    return CheckpointStore(checkpoint_uri(checkpoint))


def _follow(handle: Any, checkpoint: str | None) -> None:
    """Print each node's progress, the summary and the result (or exit 1 with the error)."""
    from gecko_actors.workflow.run import checkpoint_uri
    from gecko_actors.workflow.status import format_event

    click.echo(f"run {handle.run_id} (checkpoint: {checkpoint_uri(checkpoint)})")
    for event in handle.events():
        line = format_event(event)
        if line:
            click.echo(line)
    if handle.status()["status"] == "waiting":  # it goes on once answered: say how
        click.echo(handle.summary())
        click.echo(f"answer with: gecko-actors respond {handle.run_id} NODE VALUE")
        return
    try:
        result = handle.result()
    finally:
        click.echo(handle.summary())
    click.echo(f"result:\n{_show(result)}")


def _show(value: Any) -> str:
    from pydantic_core import to_jsonable_python

    content = getattr(value, "content", None)
    if isinstance(content, str):
        return content
    if isinstance(value, str):
        return value
    return json.dumps(to_jsonable_python(value, fallback=str), indent=2, ensure_ascii=False)


# The commands of their own modules register on ``main`` when imported.
from gecko_actors.cli import history, jobs, retention, schedules, ui  # noqa: E402
from gecko_actors.cli.jobs import DEFAULT_EXCLUDES, upload_excludes  # noqa: E402

__all__ = [
    "DEFAULT_EXCLUDES",
    "history",
    "jobs",
    "main",
    "retention",
    "schedules",
    "ui",
    "upload_excludes",
]
