"""``gecko-actors ui``: the run viewer, a local web page for a checkpoint store's runs."""

from __future__ import annotations

import os
import secrets
from typing import Any

import click

from gecko_actors.cli import _CHECKPOINT_HELP, _gcs_address, main
from gecko_actors.exceptions import UserError

_MIN_TOKEN = 16  # characters of a token guarding a viewer others can reach


@main.command()
@click.option("--checkpoint", default=None, help=_CHECKPOINT_HELP + " Default: ./gecko_runs.")
@click.option(
    "--address",
    default=None,
    help="Ray address to connect to (e.g. auto): the page can then respond, cancel, resume "
    "and fork runs. Without it the viewer needs no Ray and shows those as commands.",
)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to serve on; any but loopback requires a token.")  # fmt: skip
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Port to serve on (0: a free one).")  # fmt: skip
@click.option(
    "--token",
    default=None,
    help="Secret every request must carry (default: GECKO_UI_TOKEN; generated and printed "
    "when serving beyond loopback without one).",
)
@click.option(
    "--target",
    "targets",
    multiple=True,
    metavar="TARGET",
    help="A workflow (path/to/file.py:attr or module:attr) the page may resume and fork "
    "runs of, with --address. Repeatable.",
)
def ui(
    checkpoint: str | None,
    address: str | None,
    host: str,
    port: int,
    token: str | None,
    targets: tuple[str, ...],
) -> None:
    """Serve a web page of the runs in a checkpoint store: every run with its status, steps,
    tokens, cost and duration; each run's graph with its nodes' states, its steps, its error
    and the branches waiting for an answer. It reads the store only, so it works after the
    cluster is gone. Ctrl-C stops it.

    \b
    Example:
        gecko-actors ui --checkpoint ./gecko_runs
        gecko-actors ui --checkpoint s3://bucket/runs --address auto \\
            --target examples/durable_pipeline.py:workflow
    """
    from gecko_actors.checkpoint import CheckpointStore
    from gecko_actors.ui import store_uri
    from gecko_actors.ui.actions import Actions
    from gecko_actors.ui.data import RunsReader
    from gecko_actors.ui.server import is_loopback, make_app, serve

    token = token if token is not None else os.environ.get("GECKO_UI_TOKEN")
    generated = False
    if not is_loopback(host):
        if token is None:
            token, generated = secrets.token_urlsafe(24), True
        elif len(token) < _MIN_TOKEN:
            raise UserError(
                f"serving on {host} needs a token of at least {_MIN_TOKEN} characters",
                hint="omit --token to have one generated, or serve on 127.0.0.1",
            )
    uri = store_uri(checkpoint)
    if uri.strip().lower().startswith("memory://"):
        raise UserError(
            f"{uri} is the memory of one process: the viewer would see no runs",
            hint="give the folder, file://, s3:// or gs:// URI the runs are checkpointed to",
        )
    store = CheckpointStore(uri)
    loaded = _targets(targets)
    dashboard = None
    if address is not None:
        import gecko_actors

        info = gecko_actors.init(_gcs_address(address))
        dashboard = info.get("dashboard_url")
    actions = Actions(store, address=address, dashboard=dashboard, targets=loaded)
    app = make_app(RunsReader(store), actions=actions, token=token)
    click.echo(f"runs of {store.uri}" + (f", connected to Ray at {address}" if address else ""))
    if token and not generated:
        click.echo("every request needs your token: add ?token=... to the URL once")
    serve(app, host, port, click.echo, token=token, show_token=generated)


def _targets(targets: tuple[str, ...]) -> dict[str, tuple[str, Any]]:
    """Workflow name -> (its target, the Workflow), for the workflows ``--target`` names."""
    if not targets:
        return {}
    from gecko_actors.workflow.target import load_workflow

    found: dict[str, tuple[str, Any]] = {}
    for target in targets:
        wf = load_workflow(target)
        found[wf.name] = (target, wf)
    return found
