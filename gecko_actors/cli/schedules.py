"""Schedules: ``gecko-actors schedules`` lists, pauses, resumes and deletes the recurring runs
of a checkpoint store (no Ray needed; ``--address`` also brings the scheduler back)."""

from __future__ import annotations

import json
from typing import Any

import click

from gecko_actors.cli import _CHECKPOINT_HELP, _connect, main
from gecko_actors.exceptions import UserError

_COLUMNS = ("NAME", "WORKFLOW", "CRON", "TZ", "NEXT FIRE", "LAST FIRED", "STATE")


@main.command()
@click.option("--checkpoint", required=True, help=_CHECKPOINT_HELP)
@click.option("--delete", "to_delete", default=None, metavar="NAME",
              help="Delete schedule NAME (the runs it started stay).")  # fmt: skip
@click.option("--pause", "to_pause", default=None, metavar="NAME",
              help="Pause schedule NAME: it starts no run until resumed.")  # fmt: skip
@click.option("--resume", "to_resume", default=None, metavar="NAME",
              help="Resume schedule NAME from its next tick (paused ticks are not caught "
              "up).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the schedules as JSON.")
@click.option("--address", default=None,
              help="Also connect to this Ray cluster and have its scheduler fire this store's "
              "schedules (after a cluster loss, say); RAY_ADDRESS is not read.")  # fmt: skip
def schedules(
    checkpoint: str,
    to_delete: str | None,
    to_pause: str | None,
    to_resume: str | None,
    as_json: bool,
    address: str | None,
) -> None:
    """List the schedules of a checkpoint store (name, workflow, cron, time zone, next fire,
    last fired, paused), or change one: --delete, --pause or --resume NAME. Schedules are made
    with wf.schedule(cron, input, checkpoint=...).

    \b
    Example:
        gecko-actors schedules --checkpoint s3://bucket/runs
        gecko-actors schedules --checkpoint s3://bucket/runs --pause daily-report
        gecko-actors schedules --checkpoint ./gecko_runs --address auto
    """
    from gecko_actors.workflow.run import checkpoint_uri
    from gecko_actors.workflow.schedules import ScheduleHandle, list_schedules

    asked = (("delete", to_delete), ("pause", to_pause), ("resume", to_resume))
    actions = [(verb, name) for verb, name in asked if name]
    if len(actions) > 1:
        raise UserError(
            "give at most one of --delete, --pause and --resume",
            hint="run the command once per change",
        )
    uri = checkpoint_uri(checkpoint)
    if address is not None:
        _connect(address)
    for verb, name in actions:
        handle = ScheduleHandle(name, uri)
        if verb == "delete":
            if not handle.delete():
                raise UserError(
                    f"no schedule {name!r} in {uri}",
                    hint="list them with `gecko-actors schedules --checkpoint URI`",
                )
        else:
            getattr(handle, verb)()
        click.echo(f"{verb}d schedule {name} in {uri}")
        return
    found = list_schedules(uri)
    if address is not None:
        from gecko_actors.workflow import scheduler_actor

        scheduler_actor.watch(uri)
    if as_json:
        click.echo(json.dumps(found, indent=2, default=str))
    elif not found:
        click.echo(f"no schedules in {uri}")
    else:
        click.echo(_table([_row(entry) for entry in found]))


def _row(entry: dict[str, Any]) -> tuple[str, ...]:
    upcoming = entry["next_fire"]
    return (
        entry["name"],
        entry["workflow"],
        entry["cron"],
        entry["timezone"],
        "-" if upcoming is None else upcoming.strftime("%Y-%m-%d %H:%M:%S %Z"),
        entry["last_run"] or "-",
        "paused" if entry["paused"] else "active",
    )


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in [_COLUMNS, *rows]) for i in range(len(_COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [_COLUMNS, *rows]
    )
