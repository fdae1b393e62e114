"""Running a C kernel over work items on ``torch.get_num_threads()`` Python threads.

The kernels of :mod:`ssmkit.ops.native` take a range of work items [item0, item1) (a batch row and a block of
channels); :mod:`ctypes` releases the GIL while a foreign function runs, so one call per thread runs the parts in
parallel. One thread pool serves every kernel (grown when more threads are asked for; made afresh in a forked child,
which inherits the pool object but not its threads).
"""

from __future__ import annotations

import itertools
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
    """Run ``fn(*make_args(part, item0, item1))`` over [0, n_items) on :func:`parts` worker threads and return the
    results of every call.

    The items are handed out dynamically, a few at a time (about 8 batches per worker), from a shared counter: a
    worker that loses its core to another process takes fewer items instead of holding the whole call back (with a
    static split, one busy process beside a 2-thread call doubles its time). ``part`` is the worker's index, so
    per-worker partial buffers stay per worker: a kernel adds into them over all the ranges it is given."""
    k = parts(n_items)
    if k == 1:
        return [fn(*make_args(0, 0, n_items))]
    with _LOCK:
        if _PID[0] != os.getpid():  # forked: the parent's threads do not exist here
            _POOL.clear()
            _PID[0] = os.getpid()
        if not _POOL or _POOL[0]._max_workers < k - 1:  # noqa: SLF001
            if _POOL:
                _POOL.pop().shutdown(wait=False)
            _POOL.append(ThreadPoolExecutor(max_workers=k - 1, thread_name_prefix="ssmkit-native"))
        pool = _POOL[0]
    step = max(1, n_items // (8 * k))
    counter = itertools.count(0, step)  # next() on an itertools.count is atomic under the GIL

    def worker(part: int) -> list:
        results = []
        while (i0 := next(counter)) < n_items:
            results.append(fn(*make_args(part, i0, min(i0 + step, n_items))))
        return results

    futures = [pool.submit(worker, i) for i in range(1, k)]
    first = worker(0)  # the calling thread works too (it would only wait)
    return first + [r for f in futures for r in f.result()]
