"""The ``ssmkit`` command's process (the installed script and ``python -m ssmkit``): what must be settled before torch is
imported, then :func:`ssmkit.cli.console`.

``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets the policy: PyTorch's OpenMP runtime (GNU libgomp) lets an idle
worker spin for a while before it sleeps, and reads the policy once, when torch loads it. Beside another busy
process, a spinning worker holds a core that the worker still computing needs, and every parallel region waits for
the one descheduled thread: on the 2-core VM of docs/benchmarks.md, with one competing process, the S4D
forward+backward (B 8, H 128, N 64, L 4 096) took 422 ms under the default policy and 43 ms passive, and 256 S4D steps
1 332 against 26 ms. A Python program that imports ssmkit decides this for itself (README, "Things to know"): a
library must not change its process's threading. ``import ssmkit`` itself loads no torch (its subpackages load on
first use), so this module can run first.
"""

from __future__ import annotations

import os


def run() -> int:
    """Set ``OMP_WAIT_POLICY`` to ``PASSIVE`` where the environment leaves it unset, then run the command."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from ssmkit.cli import console

    return console()
