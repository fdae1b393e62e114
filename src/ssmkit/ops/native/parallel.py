"""Running a C kernel over work items on ``torch.get_num_threads()`` Python threads.

The kernels of :mod:`ssmkit.ops.native` take a range of work items [item0, item1) (a batch row and a block of
channels); :mod:`ctypes` releases the GIL while a foreign function runs, so one call per thread runs the parts in
parallel. One thread pool serves every kernel (grown when more threads are asked for; made afresh in a forked child,
which inherits the pool object but not its threads).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import torch

_LOCK = threading.Lock()
_POOL: list[ThreadPoolExecutor] = []
_PID = [os.getpid()]  # the process the pool's threads belong to (a forked child inherits the object, not the threads)


def ptr(t: torch.Tensor | None) -> int | None:
    """The data pointer of a contiguous tensor for a C call (None -> NULL)."""
    return None if t is None else t.data_ptr()


def parts(n_items: int) -> int:
    """How many parts (threads) [0, n_items) is split into: ``torch.get_num_threads()``, at most one per item."""
    return max(1, min(torch.get_num_threads(), n_items))


def run_parts(fn: Callable, n_items: int, make_args: Callable[[int, int, int], Sequence]) -> list:
    """Run ``fn(*make_args(part, item0, item1))`` for the :func:`parts` contiguous ranges of [0, n_items), in
    parallel, and return the results in part order."""
    k = parts(n_items)
    bounds = [(i * n_items // k, (i + 1) * n_items // k) for i in range(k)]
    if k == 1:
        return [fn(*make_args(0, 0, n_items))]
    with _LOCK:
        if _PID[0] != os.getpid():  # forked: the parent's threads do not exist here
            _POOL.clear()
            _PID[0] = os.getpid()
        if not _POOL or _POOL[0]._max_workers < k:  # noqa: SLF001
            if _POOL:
                _POOL.pop().shutdown(wait=False)
            _POOL.append(ThreadPoolExecutor(max_workers=k, thread_name_prefix="ssmkit-native"))
        pool = _POOL[0]
    futures = [pool.submit(fn, *make_args(i, i0, i1)) for i, (i0, i1) in enumerate(bounds)]
    return [f.result() for f in futures]
