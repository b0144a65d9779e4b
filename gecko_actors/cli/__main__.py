"""``python -m gecko_actors.cli``: the ``gecko-actors`` command."""

from gecko_actors.cli import main

main()
