"""Running a C kernel over its work items on ``torch.get_num_threads()`` threads.

The kernels of :mod:`ssmkit.ops.native` take a range of work items [item0, item1) (a batch row and a block of
channels) and a thread count. Built with OpenMP (the default where the compiler has it), one call runs the whole range
on that many threads of the OpenMP runtime, which is torch's own: torch ships libgomp and the kernels find it by its
soname, so they run on the threads torch's parallel ops use (no second pool competing for the cores, and the workers
that spin after a torch op pick the kernel's items up at once). Items are handed out one at a time, so a thread that
loses its core to another process takes fewer. Built without OpenMP, the range is split over Python threads instead
(:mod:`ctypes` releases the GIL during each call), handed out dynamically from a shared counter.

In a process forked after this module was imported the kernels run on one thread: a forked child of a process that has
used GNU OpenMP hangs in its next multi-threaded region (torch's own parallel ops do too; ``torch.utils.data`` workers
set one thread for this reason).
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
_FORKED = [False]  # set in a child forked after import (os.register_at_fork)


def _after_fork_in_child() -> None:
    _FORKED[0] = True
    _POOL.clear()  # the parent's threads do not exist here


os.register_at_fork(after_in_child=_after_fork_in_child)


def ptr(t: torch.Tensor | None) -> int | None:
    """The data pointer of a CPU tensor for a C call (None -> NULL).

    A tensor on another device raises here, the one place every kernel's arguments pass, instead of handing the C code
    an address it cannot read: the public functions check devices, and this guards the ``*_unchecked`` entries that
    skip those checks. Strides are the caller's: most kernels take contiguous tensors, a few take strides with them.
    """
    if t is None:
        return None
    if t.device.type != "cpu":
        raise RuntimeError(f"native kernel: expected a CPU tensor, got one on {t.device} of shape {tuple(t.shape)}")
    return t.data_ptr()


def kernel_inputs(what: str, dtype: torch.dtype, **tensors: torch.Tensor | None) -> dict[str, torch.Tensor | None]:
    """``tensors`` as a C kernel reads them: each contiguous, its memory holding its values (a lazy conjugate or
    negative bit resolved: ``contiguous()`` keeps a contiguous ``z.conj()`` as it is, whose memory holds the
    unconjugated values), None staying None, and checked to be ``dtype``.

    The caller keeps the returned dict until the kernel call returns: :func:`ptr` hands the C code an address only,
    and a contiguous copy made inside an argument list (``ptr(t.contiguous())``) is freed as soon as that expression
    is done, so the kernel read freed memory -- garbage outputs, silently, for a non-contiguous parameter (a fused
    step's ``D`` of stride 2 gave errors of 0.3 against 1.4; found by the adversarial tests of 2026-12-05). A tensor
    of another dtype would be read byte for byte as ``dtype`` (and past its end for a narrower one): a ValueError here.

    Args:
        what: the kernel's name, for the error.
        dtype: the dtype the kernel was compiled for.
        tensors: the kernel's tensor arguments by name.
    """
    for name, t in tensors.items():
        if t is not None and t.dtype != dtype:
            raise ValueError(f"{what}: {name} must be {dtype}, the kernel's dtype; got {t.dtype}")
    return {name: None if t is None else t.resolve_conj().resolve_neg().contiguous() for name, t in tensors.items()}


def check_shapes(what: str, expected: Sequence[tuple[str, torch.Tensor | None, tuple[int, ...]]]) -> None:
    """Raise ``ValueError`` naming the first tensor whose shape is not the one a C kernel will index it by. A C kernel
    reads as many elements as the shapes it is given say: a state narrower than the conv's taps (a state from another
    layer, a replaced conv) was read and written past its end (heap corruption: options probe of 2026-12-05).

    Args:
        what: the kernel's name, for the error.
        expected: (name, tensor or None, shape) triples; None is skipped.
    """
    for name, t, shape in expected:
        if t is not None and t.shape != shape:  # (torch.Size compares with a tuple)
            raise ValueError(f"{what}: {name} must be {tuple(shape)}; got {tuple(t.shape)}")


def parts(n_items: int) -> int:
    """How many threads run [0, n_items): ``torch.get_num_threads()``, at most one per item; 1 in a forked child (see
    the module's docstring)."""
    if _FORKED[0]:
        return 1
    return max(1, min(torch.get_num_threads(), n_items))


def run_parts(fn: Callable, n_items: int, args: Sequence, openmp: bool) -> list:
    """Run the kernel ``fn`` over the items [0, n_items) on :func:`parts` threads and return the result of every call.

    Args:
        fn: a kernel entry whose last three arguments are item0, item1 and the thread count.
        n_items: the number of work items.
        args: the arguments before those three. (A kernel's partial sums belong to its items, not to threads, so every
            call gets the same arguments.)
        openmp: ``fn``'s library was built with OpenMP (one call on :func:`parts` OpenMP threads); otherwise the range
            is split over Python threads (each call on one thread).
    """
    k = parts(n_items)
    if openmp or k == 1:
        return [fn(*args, 0, n_items, k)]
    step = max(1, n_items // (8 * k))
    counter = itertools.count(0, step)  # next() on an itertools.count is atomic under the GIL

    def worker() -> list:
        results = []
        while (i0 := next(counter)) < n_items:
            results.append(fn(*args, i0, min(i0 + step, n_items), 1))
        return results

    with _LOCK:  # submitted under the lock: another thread growing the pool shuts the old one down (its queued work
        # still runs), and a submit after that shutdown would raise
        if not _POOL or _POOL[0]._max_workers < k - 1:  # noqa: SLF001
            if _POOL:
                _POOL.pop().shutdown(wait=False)
            _POOL.append(ThreadPoolExecutor(max_workers=k - 1, thread_name_prefix="ssmkit-native"))
        futures = [_POOL[0].submit(worker) for _ in range(1, k)]
    first = worker()  # the calling thread works too (it would only wait)
    return first + [r for f in futures for r in f.result()]


def run_checked(fn: Callable, n_items: int, args: Sequence, openmp: bool, message: str) -> None:
    """:func:`run_parts` for a kernel entry whose calls return nonzero when an item could not allocate its buffers.

    Args:
        fn, n_items, args, openmp: as :func:`run_parts`.
        message: the error's message (which kernel and pass could not allocate what).

    Raises:
        MemoryError: a call reported a failed allocation.
    """
    if any(run_parts(fn, n_items, args, openmp)):
        raise MemoryError(message)
