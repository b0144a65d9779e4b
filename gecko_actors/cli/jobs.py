"""``gecko-actors submit``: a workflow run as a Ray Job, and what its upload leaves out."""

from __future__ import annotations

import os
import shlex
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import click

from gecko_actors._text import CONTROL_CHARACTER
from gecko_actors.cli import _CHECKPOINT_HELP, _input_option, main
from gecko_actors.exceptions import UserError
from gecko_actors.workflow.inputs import MAX_INPUT_VARIABLE, max_input_bytes, read_input

# What a job's working_dir upload leaves out (gitignore patterns, as Ray's "excludes" takes
# them): runs, environments and caches, which are big and local ...
_BUILD_EXCLUDES = ("gecko_runs", ".gecko_cluster", ".venv", "venv", ".git", "__pycache__", "*.pyc")
# ... and the usual homes of secrets: settings read .env, and whatever is uploaded is kept in
# the cluster's package store, readable by every job of the cluster.
SECRET_EXCLUDES = (
    ".env",
    ".env.*",
    "*.env",
    ".envrc",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.ppk",
    "*.jks",
    "*.keystore",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    ".ssh/",
    ".aws/",
    ".azure/",
    ".gnupg/",
    ".kube/",
    ".docker/",
    ".config/gcloud/",
    ".netrc",
    "_netrc",
    ".git-credentials",
    ".npmrc",
    ".pypirc",
    ".pgpass",
    ".htpasswd",
    "credentials*.json",
    "*-credentials.json",
    "client_secret*.json",
    "service-account*.json",
    "secrets.toml",
    "secrets.yaml",
    "secrets.yml",
    "secrets.json",
    "*.tfvars",
    "*.tfstate",
)
#: What ``gecko-actors submit`` never uploads, unless re-included with ``--exclude '!PATTERN'``.
DEFAULT_EXCLUDES = (*_BUILD_EXCLUDES, *SECRET_EXCLUDES)


@main.command()
@click.argument("target")
@_input_option
@click.option("--run-id", default=None, help="The run's id (default: <workflow>-<random>).")
@click.option(
    "--checkpoint",
    default=None,
    help=_CHECKPOINT_HELP + " Default: ./gecko_runs as an absolute path (a cluster on "
    "this machine); use s3:// or gs:// for a remote cluster.",
)
@click.option(
    "--address",
    envvar="RAY_ADDRESS",
    default=None,
    help="The cluster's dashboard URL, e.g. http://127.0.0.1:8265 (default: RAY_ADDRESS).",
)
@click.option(
    "--working-dir",
    default=".",
    show_default=True,
    type=click.Path(exists=True, file_okay=False),
    help="Uploaded as the job's working directory.",
)
@click.option(
    "--exclude",
    "excludes",
    multiple=True,
    metavar="PATTERN",
    help="Leave files matching PATTERN (gitignore syntax) out of the upload; repeatable. "
    "Always left out: " + " ".join(DEFAULT_EXCLUDES) + " (plus Ray's own defaults and what "
    ".gitignore/.rayignore list). Re-include one with --exclude '!PATTERN'.",
)
@click.option("--no-wait", is_flag=True, help="Print the ids and return at once.")
def submit(
    target: str,
    input_: str | None,
    run_id: str | None,
    checkpoint: str | None,
    address: str | None,
    working_dir: str,
    excludes: tuple[str, ...],
    no_wait: bool,
) -> None:
    """Submit `gecko-actors run TARGET` as a Ray Job, print the job id and the run id, and
    follow it to the end (its exit code is the job's outcome). With token authentication on
    the cluster, export RAY_AUTH_MODE=token (the token comes from RAY_AUTH_TOKEN or the token
    file).

    The working directory is uploaded to the cluster, where every job can read it: secrets
    files (.env, keys, credentials; see --exclude) are left out. Give the job its keys
    through the cluster's environment instead.

    \b
    Example:
        gecko-actors submit examples/durable_pipeline.py:workflow \\
            --address http://127.0.0.1:8265 --checkpoint s3://bucket/runs
    """
    from gecko_actors.workflow.run import checkpoint_uri
    from gecko_actors.workflow.target import load_workflow

    if not address:
        raise UserError(
            "no cluster to submit to",
            hint="pass --address http://HOST:8265 or set RAY_ADDRESS "
            "(cluster/local.sh start prints it)",
        )
    wf = load_workflow(target)  # fail here, not on the cluster
    run_id = run_id or f"{wf.name}-{uuid.uuid4().hex[:12]}"
    uri = checkpoint_uri(checkpoint)
    _relative_to(target, working_dir)
    patterns = upload_excludes(excludes)
    read_input(input_, Path(working_dir))  # the job reads @file in the uploaded copy
    command = ["gecko-actors", "run", target, "--run-id", run_id, "--checkpoint", uri]
    if input_ is not None:
        command += ["--input", input_]
    client = _job_client(address)
    job_id = client.submit_job(
        entrypoint=shlex.join(command),
        runtime_env=_runtime_env(working_dir, patterns),
        metadata={"gecko_run_id": run_id, "gecko_workflow": wf.name},
    )
    click.echo(f"job: {job_id}\nrun: {run_id}\ncheckpoint: {uri}")
    if no_wait:
        click.echo(f"follow it with: ray job logs --follow {job_id}")
        return
    outcome = _follow_job(client, job_id)
    click.echo(f"job {job_id}: {outcome}")
    if outcome != "SUCCEEDED":
        sys.exit(1)


def upload_excludes(extra: tuple[str, ...] | list[str] = ()) -> list[str]:
    """What a job's working-directory upload leaves out: :data:`DEFAULT_EXCLUDES`, then
    ``extra`` (gitignore patterns; a later ``!PATTERN`` re-includes), each checked."""
    for pattern in extra:
        # Ray's gitignore parser fails with an IndexError on these, after the job is built.
        stripped = pattern.strip()
        trailing = len(stripped) - len(stripped.rstrip("\\"))
        if stripped in ("", "!") or trailing % 2:
            raise UserError(
                f"--exclude {pattern!r:.80} is not a usable gitignore pattern",
                hint="write e.g. --exclude 'data/*.csv' or --exclude '!server.key'",
            )
        if bad := CONTROL_CHARACTER.search(pattern):
            raise UserError(f"--exclude {pattern!r:.80} has the control character {bad[0]!r}")
    return [*DEFAULT_EXCLUDES, *extra]


def _runtime_env(working_dir: str, excludes: list[str]) -> dict[str, Any]:
    """The job's runtime_env: the working directory with ``excludes`` (and the input size
    limit, if set here, so that the job reads the same ``--input @file``)."""
    env: dict[str, Any] = {"working_dir": working_dir, "excludes": excludes}
    if MAX_INPUT_VARIABLE in os.environ:
        env["env_vars"] = {MAX_INPUT_VARIABLE: str(max_input_bytes())}
    return env


def _relative_to(target: str, working_dir: str) -> None:
    """A file target must be inside the working directory, which is all the job sees."""
    location = target.rpartition(":")[0]
    if not (location.endswith(".py") or "/" in location):
        return
    path, root = Path(location), Path(working_dir).resolve()
    if path.is_absolute() or not (root / path).resolve().is_relative_to(root):
        raise UserError(
            f"{location} must be a path relative to the working directory {working_dir!r}",
            hint="run submit from the project folder, or pass --working-dir",
        )


def _job_client(address: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except ConnectionError as exc:
        raise UserError(
            f"cannot reach the Ray dashboard at {address}: {exc}",
            hint="check the address; with token authentication export RAY_AUTH_MODE=token",
        ) from None


def _follow_job(client: Any, job_id: str, poll: float = 1.0) -> str:
    """Print the job's logs as they grow, until it ends; returns its final status."""
    printed = 0
    while True:
        state = str(client.get_job_status(job_id).value)
        logs = client.get_job_logs(job_id)
        if len(logs) > printed:
            click.echo(logs[printed:], nl=False)
            printed = len(logs)
        if state in ("SUCCEEDED", "FAILED", "STOPPED"):
            return state
        time.sleep(poll)


# --- helpers ---------------------------------------------------------------------------------
