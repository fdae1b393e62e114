"""``python -m ssmkit`` runs the ``ssmkit`` command."""

from ssmkit.command import run

raise SystemExit(run())
