"""The ``gecko-actors`` command line."""

from __future__ import annotations

import sys

import click

from gecko_actors._version import __version__
from gecko_actors.exceptions import GeckoError


class _Group(click.Group):
    """Turns a GeckoError into a one-line reason and exit code 1 (traceback with --verbose)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except GeckoError as exc:
            if ctx.obj and ctx.obj.get("verbose"):
                raise
            click.echo(f"error: {exc}", err=True)
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
    """
    from gecko_actors.logging import configure_logging

    ctx.obj = {"verbose": verbose}
    configure_logging("DEBUG" if verbose else "WARNING")


@main.command()
def demo() -> None:
    """Run an offline, tool-using agent and print its conversation and answer.

    \b
    Example:
        gecko-actors demo
    """
    from gecko_actors.demo import run_demo

    run_demo(click.echo)


if __name__ == "__main__":  # pragma: no cover
    main()
