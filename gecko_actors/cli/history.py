"""``gecko-actors history``: a run's committed steps, read from its checkpoint."""

from __future__ import annotations

import json

import click

from gecko_actors.cli import _CHECKPOINT_HELP, _store, main
from gecko_actors.exceptions import UserError


@main.command()
@click.argument("run_id")
@click.option("--checkpoint", default=None, help=_CHECKPOINT_HELP + " Default: ./gecko_runs.")
@click.option("--json", "as_json", is_flag=True, help="Print the history as JSON.")
def history(run_id: str, checkpoint: str | None, as_json: bool) -> None:
    """Show every committed step of RUN_ID in order: what each visit was given and returned,
    the state it changed, its tokens, duration and attempts, what its journal recorded and
    the answers it was given. Read from the checkpoint: it works after the cluster is gone.

    \b
    Example:
        gecko-actors history pipeline-3f2a9c1e0b7d --checkpoint s3://bucket/runs
    """
    from gecko_actors.workflow.history import format_history, run_history

    store = _store(checkpoint)
    found = run_history(store, run_id)
    if found is None:
        raise UserError(f"no run {run_id!r} in {store.uri}", hint="see `gecko-actors list`")
    click.echo(json.dumps(found, indent=2, default=str) if as_json else format_history(found))
