"""Worker processes for the data generators (ListOps, Pathfinder) that never fork a threaded process.

A process that has run PyTorch holds threads (its OpenMP team, ssmkit's native thread pool, BLAS servers); a child
forked from it inherits their locks in whatever state they were, and can block forever on one even when the child
runs pure Python. That happened: CI runs hung in ``generate_listops(..., workers=2)`` after other tests had run in the
same process (2026-12-04, twice in two sessions). The pool's processes therefore start from the ``forkserver`` (a
clean, single-threaded server process that forks them; CPython's default on Linux from 3.14) where the platform has
it, else by ``spawn``. Each worker imports the task's module once (a second or two with torch), which the
generators' work amortises.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.pool import Pool


def start_method() -> str:
    """``"forkserver"`` where the platform offers it, else ``"spawn"`` (never ``"fork"``; see the module docstring)."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def process_pool(workers: int) -> Pool:
    """A ``multiprocessing`` pool of ``workers`` processes started by :func:`start_method`."""
    return multiprocessing.get_context(start_method()).Pool(workers)
