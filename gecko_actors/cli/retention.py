"""Retention: ``gecko-actors gc`` deletes finished runs older than a cut-off, or than their
workflow's own retention (no Ray needed)."""

from __future__ import annotations

import click

from gecko_actors.cli import _CHECKPOINT_HELP, _store, main
from gecko_actors.core.durations import parse_duration
from gecko_actors.exceptions import UserError

__all__ = ["gc", "parse_duration"]


@main.command()
@click.option("--checkpoint", required=True, help=_CHECKPOINT_HELP)
@click.option("--older-than", "older_than", default=None, metavar="DURATION",
              help="Delete runs that finished longer ago: 30d, 12h, 90m or 45s (or longer ago "
              "than their workflow's retention, if shorter). Without it: only runs whose "
              "workflow's retention has passed.")  # fmt: skip
@click.option("--status", "statuses", multiple=True, metavar="STATUS",
              help="Only runs that ended so: succeeded, failed or cancelled (repeatable; "
              "default: all three). Running and waiting runs are never deleted.")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Delete nothing; print what would be deleted.")
@click.option("--forked-parents", is_flag=True,
              help="Also delete a run that forks reference, together with all those forks "
              "(default: keep it while any fork exists).")  # fmt: skip
def gc(
    checkpoint: str,
    older_than: str | None,
    statuses: tuple[str, ...],
    dry_run: bool,
    forked_parents: bool,
) -> None:
    """Delete the finished runs of a checkpoint store older than --older-than, or than their
    workflow's retention (Workflow(name, retention="30d")) when that is shorter: their
    manifests, steps, journals and answers; the run index stops listing them. Without
    --older-than, only runs whose own retention has passed go (runs without one stay). A run
    that a fork still reads its first steps from is kept (and named) unless
    --forked-parents. An interrupted gc is finished by the next one.

    \b
    Example:
        gecko-actors gc --checkpoint s3://bucket/runs --older-than 30d --dry-run
        gecko-actors gc --checkpoint ./gecko_runs --older-than 12h --status failed
        gecko-actors gc --checkpoint s3://bucket/runs    # each workflow's retention
    """
    from gecko_actors.checkpoint.retention import DEFAULT_STATUSES, collect_garbage

    seconds = None if older_than is None else parse_duration(older_than)
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
