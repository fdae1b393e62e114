"""Worker processes for the data generators (ListOps, Pathfinder) that never fork a threaded process.

A process that has run PyTorch holds threads (its OpenMP team, ssmkit's native thread pool, BLAS servers); a child
forked from it inherits their locks in whatever state they were, and can block forever on one even when the child
runs pure Python. That happened: CI runs hung in ``generate_listops(..., workers=2)`` after other tests had run in the
same process (2026-12-04, twice in two sessions). The pool's processes therefore start from the ``forkserver`` (a
clean, single-threaded server process that forks them; CPython's default on Linux from 3.14) where the platform has
it, else by ``spawn``. Each worker imports the task's module once (a second or two with torch), which the
generators' work amortises.

A forkserver or spawn child normally re-imports the parent's main module first, so a script that generates data at
its top level, without ``if __name__ == "__main__":``, would start pools from inside its own children (a
RuntimeError there, a hang here). The workers run ssmkit's functions only, never the script's, so the pool is started
with the main module's file and spec hidden from ``multiprocessing`` (restored at once): scripts keep working as
they did with ``fork``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
from multiprocessing.pool import Pool
from typing import Iterator


def start_method() -> str:
    """``"forkserver"`` where the platform offers it, else ``"spawn"`` (never ``"fork"``; see the module docstring)."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """``__main__``'s ``__file__`` and ``__spec__`` removed while the block runs (the workers then skip importing it)."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    missing = object()
    saved = {name: main.__dict__.get(name, missing) for name in ("__file__", "__spec__")}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is missing:
                main.__dict__.pop(name, None)
            else:
                main.__dict__[name] = value


@contextlib.contextmanager
def process_pool(workers: int) -> Iterator[Pool]:
    """A ``multiprocessing`` pool of ``workers`` processes started by :func:`start_method`, without re-importing the
    main module in them (see the module docstring): only functions importable from a module run in it.

    Used as ``with process_pool(n) as pool:``. On leaving the block normally the pool is closed and joined: its
    workers take the end-of-work sentinel and exit (code 0), nothing is killed; ``Pool.terminate()`` (what the
    pool's own ``with`` does) kills workers that may be idle inside a locked read of the task queue, or still
    starting, and runs only when the block raises. (A CI run on 2026-12-06 lost a worker in ``generate_listops(...,
    workers=2)`` with the forkserver start, which then left the pool by ``terminate`` with a worker possibly still
    starting; xdist returned no stack, so where it hung is not known.)
    """
    with _main_module_hidden():
        pool = multiprocessing.get_context(start_method()).Pool(workers)
    try:
        yield pool
    except BaseException:
        pool.terminate()
        raise
    pool.close()
    pool.join()
