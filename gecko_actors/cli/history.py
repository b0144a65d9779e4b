"""A run's past: ``gecko-actors history`` (its committed steps, read from its checkpoint) and
``gecko-actors fork`` (a new run from one of its steps)."""

from __future__ import annotations

import json
from typing import Any

import click

from gecko_actors.cli import (
    _ADDRESS_HELP,
    _CHECKPOINT_HELP,
    _budget,
    _budget_option,
    _connect,
    _echo_read,
    _follow,
    _input_option,
    main,
)
from gecko_actors.exceptions import UserError
from gecko_actors.workflow.inputs import read_input


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

    _echo_read(checkpoint, run_id, run_history, format_history, as_json)


@main.command()
@click.argument("run_id")
@click.argument("target")
@click.option("--at-step", type=click.IntRange(min=0), required=True,
              help="How many of RUN_ID's steps the fork keeps (see `history`).")  # fmt: skip
@click.option("--state", "state_", multiple=True, metavar="KEY=VALUE",
              help="Write KEY to the state at the fork point; VALUE is JSON, else text. "
              "Repeatable.")  # fmt: skip
@_input_option
@click.option("--node", default=None,
              help="The node that gets --input, when several are about to run.")  # fmt: skip
@click.option("--run-id", "new_id", default=None, help="The fork's id (default: random).")
@click.option("--checkpoint", default=None, help=_CHECKPOINT_HELP + " Default: ./gecko_runs.")
@_budget_option
@click.option("--address", envvar="RAY_ADDRESS", default=None, help=_ADDRESS_HELP)
def fork(
    run_id: str,
    target: str,
    at_step: int,
    state_: tuple[str, ...],
    input_: str | None,
    node: str | None,
    new_id: str | None,
    checkpoint: str | None,
    budget_: str | None,
    address: str | None,
) -> None:
    """Start a new run from RUN_ID's first --at-step steps (read from RUN_ID's checkpoint,
    never copied; RUN_ID is not changed), with the workflow TARGET, the state or the next
    node's input changed, and follow it to its end.

    \b
    Example:
        gecko-actors fork postcard-3f2a9c1e0b7d examples/time_travel.py:workflow \\
            --at-step 2 --state tone=formal --checkpoint s3://bucket/runs
    """
    from gecko_actors.workflow.fork import UNSET
    from gecko_actors.workflow.target import load_workflow

    wf = load_workflow(target)
    state = _state(state_) or None
    value = UNSET if input_ is None else read_input(input_)
    budget = _budget(budget_)
    _connect(address)
    handle = wf.fork(
        run_id,
        at_step=at_step,
        state=state,
        input=value,
        node=node,
        run_id=new_id,
        checkpoint=checkpoint,
        budget=budget,
    )
    _follow(handle, checkpoint)


def _state(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``--state KEY=VALUE`` options as a dict: each VALUE as JSON, else as text."""
    found: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--state {pair!r:.80} is not KEY=VALUE", hint="e.g. --state tone=x")
        try:
            found[key] = json.loads(text, parse_constant=_no_constant)
        except ValueError:
            found[key] = text
    return found


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a value a state can hold")
