"""``python -m ssmkit`` runs the ``ssmkit`` command."""

from ssmkit.cli import console

raise SystemExit(console())
