"""The Python thread pool that splits a kernel built without OpenMP (``ssmkit.ops.native.parallel.run_parts``):
every item computed once, whichever thread grows the pool meanwhile."""

from __future__ import annotations

import threading

from ssmkit.ops.native import parallel


def items(i0: int, i1: int, threads: int) -> list[int]:
    """A stand-in kernel entry: the items it was given (run_parts passes item0, item1 and the thread count last)."""
    assert threads == 1
    return list(range(i0, i1))


def test_every_item_is_computed_once_over_the_threads(monkeypatch):
    monkeypatch.setattr(parallel.torch, "get_num_threads", lambda: 3)
    got = parallel.run_parts(lambda *a: items(*a[-3:]), 101, [], openmp=False)
    assert sorted(i for part in got for i in part) == list(range(101))
    assert parallel.run_parts(lambda *a: a[-3:], 7, [], openmp=True) == [(0, 7, 3)]  # OpenMP: one call on 3 threads


class GrowsOnRelease:
    """The pool's lock, where another thread takes it the moment this thread lets it go, and grows the pool (it
    wants more threads): the old pool is shut down then."""

    def __init__(self) -> None:
        self.lock, self.grown = threading.Lock(), False

    def __enter__(self):
        self.lock.acquire()

    def __exit__(self, *exc):
        self.lock.release()
        if not self.grown:
            self.grown = True
            other = threading.Thread(target=lambda: parallel.run_parts(lambda *a: items(*a[-3:]), 64, [], False))
            threads.set(6)  # the other thread runs with more threads than this one
            other.start()
            other.join()
            threads.set(3)


class Threads:
    def __init__(self) -> None:
        self.n = 3

    def set(self, n: int) -> None:
        self.n = n


threads = Threads()


def test_a_pool_grown_by_another_thread_between_calls_loses_no_work(monkeypatch):
    """A call that took the pool and let the lock go before submitting raised 'cannot schedule new futures after
    shutdown' when another thread grew (and shut down) that pool in between; the work is submitted under the lock."""
    monkeypatch.setattr(parallel, "_POOL", [])
    monkeypatch.setattr(parallel, "_LOCK", GrowsOnRelease())
    monkeypatch.setattr(parallel.torch, "get_num_threads", lambda: threads.n)
    got = parallel.run_parts(lambda *a: items(*a[-3:]), 50, [], openmp=False)
    assert sorted(i for part in got for i in part) == list(range(50))
    assert parallel._POOL[0]._max_workers == 5  # the other thread's pool replaced this call's  # noqa: SLF001
    for pool in parallel._POOL:  # noqa: SLF001
        pool.shutdown(wait=True)
