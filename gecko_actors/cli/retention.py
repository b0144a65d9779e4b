"""Retention: ``gecko-actors gc`` deletes finished runs older than a cut-off (no Ray needed)."""

from __future__ import annotations

import re

import click

from gecko_actors.cli import _CHECKPOINT_HELP, _store, main
from gecko_actors.exceptions import UserError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@main.command()
@click.option("--checkpoint", required=True, help=_CHECKPOINT_HELP)
@click.option("--older-than", "older_than", required=True, metavar="DURATION",
              help="Delete runs that finished longer ago: 30d, 12h, 90m or 45s.")  # fmt: skip
@click.option("--status", "statuses", multiple=True, metavar="STATUS",
              help="Only runs that ended so: succeeded, failed or cancelled (repeatable; "
              "default: all three). Running and waiting runs are never deleted.")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Delete nothing; print what would be deleted.")
@click.option("--forked-parents", is_flag=True,
              help="Also delete a run that forks reference, together with all those forks "
              "(default: keep it while any fork exists).")  # fmt: skip
def gc(
    checkpoint: str,
    older_than: str,
    statuses: tuple[str, ...],
    dry_run: bool,
    forked_parents: bool,
) -> None:
    """Delete the finished runs of a checkpoint store older than --older-than: their
    manifests, steps, journals and answers; the run index stops listing them. A run that a
    fork still reads its first steps from is kept (and named) unless --forked-parents. An
    interrupted gc is finished by the next one.

    \b
    Example:
        gecko-actors gc --checkpoint s3://bucket/runs --older-than 30d --dry-run
        gecko-actors gc --checkpoint ./gecko_runs --older-than 12h --status failed
    """
    from gecko_actors.checkpoint.retention import DEFAULT_STATUSES, collect_garbage

    seconds = parse_duration(older_than)
    wanted = tuple(s.strip().lower() for s in statuses) or DEFAULT_STATUSES
    for name in wanted:
        if name not in DEFAULT_STATUSES:
            raise UserError(
                f"--status {name!r:.40} is not a finished run's status",
                hint=f"use --status with {', '.join(DEFAULT_STATUSES)} (running and waiting "
                "runs are never deleted)",
            )
    store = _store(checkpoint)
    report = collect_garbage(
        store,
        older_than=seconds,
        statuses=wanted,
        dry_run=dry_run,
        forked_parents=forked_parents,
    )
    verb = "would delete" if dry_run else "deleted"
    for run_id in report.finished:
        click.echo(f"{'would finish' if dry_run else 'finished'} deleting {run_id}")
    for run_id in report.deleted:
        click.echo(f"{verb} {run_id}")
    for run_id, forks in report.kept.items():
        click.echo(
            f"kept {run_id}: forks read its steps ({', '.join(forks)}); "
            "delete them first, or pass --forked-parents"
        )
    for run_id in report.skipped:
        click.echo(f"skipped {run_id}: its manifest could not be read")
    click.echo(f"{report} in {store.uri}")


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``90m`` or ``45s`` as seconds; anything else is a UserError."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise UserError(
            f"--older-than {text!r:.40} is not a duration",
            hint="give a number and a unit: 30d (days), 12h (hours), 90m (minutes) or 45s",
        )
    return float(match[1]) * _UNITS[match[2]]
