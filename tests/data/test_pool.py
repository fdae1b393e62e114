"""The data generators' worker pools never fork the (threaded) test or training process (ssmkit.data.pool)."""

from __future__ import annotations

import math
import multiprocessing
import sys

from ssmkit.data import listops, pathfinder
from ssmkit.data.pool import process_pool, start_method


def test_the_pools_start_by_forkserver_or_spawn_never_fork():
    expected = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    assert start_method() == expected != "fork"
    if sys.platform.startswith("linux"):
        assert start_method() == "forkserver"
    with process_pool(2) as pool:
        assert pool._ctx.get_start_method() == expected  # noqa: SLF001
        assert pool.map(math.sqrt, [4.0, 9.0, 2.0]) == [2.0, 3.0, math.sqrt(2.0)]
    # both generators take their pools from here (a fork-started pool hung CI twice on 2026-12-04)
    assert listops.process_pool is process_pool and pathfinder.process_pool is process_pool
