"""``python -m ssmkit`` runs the ``ssmkit`` command."""

from ssmkit.cli import main

raise SystemExit(main())
