"""The run viewer, ``gecko-actors ui``: a small local web page for the runs of a checkpoint
store, their graphs, histories and waiting branches.

It reads the store alone (no Ray: it works after the cluster is gone); connected to Ray
(``--address``), it can also answer, cancel, resume and fork runs. No build step: the page is
plain HTML, CSS and JavaScript shipped in ``static/``, and the graph is an SVG drawn on the
server.

- :mod:`~gecko_actors.ui.data`: what the page shows, read from the store and redacted;
- :mod:`~gecko_actors.ui.progress`: each node's state, from the committed steps;
- :mod:`~gecko_actors.ui.graph_svg`: the graph as SVG;
- :mod:`~gecko_actors.ui.actions`: the actions and their CLI commands;
- :mod:`~gecko_actors.ui.server`: the aiohttp app.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_CHECKPOINT", "store_uri"]

#: The store the CLI uses without ``--checkpoint`` (as ``gecko_actors.workflow.run``).
DEFAULT_CHECKPOINT = "gecko_runs"


def store_uri(checkpoint: str | None) -> str:
    """The store URI of ``checkpoint`` as ``gecko_actors.workflow.run.checkpoint_uri`` makes
    it (a local folder made absolute; ./gecko_runs by default), without importing Ray."""
    if checkpoint is None or "://" not in checkpoint:
        return f"file://{Path(checkpoint or DEFAULT_CHECKPOINT).resolve()}"
    return checkpoint
