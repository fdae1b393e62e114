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
    main = sys.modules["__main__"]
    before = (main.__dict__.get("__file__"), main.__dict__.get("__spec__"))
    with process_pool(2) as pool:
        assert (main.__dict__.get("__file__"), main.__dict__.get("__spec__")) == before  # restored at once
        assert pool._ctx.get_start_method() == expected  # noqa: SLF001
        assert pool.map(math.sqrt, [4.0, 9.0, 2.0]) == [2.0, 3.0, math.sqrt(2.0)]
    # both generators take their pools from here (a fork-started pool hung CI twice on 2026-12-04)
    assert listops.process_pool is process_pool and pathfinder.process_pool is process_pool


def test_a_script_without_a_main_guard_can_start_the_pool(tmp_path):
    """A forkserver/spawn child re-imports the parent's main module unless told otherwise: a script generating data at
    its top level would start pools inside its own workers. process_pool hides the main module while it starts them
    (and restores it), so such a script runs as it did with fork."""
    import subprocess

    script = tmp_path / "top_level.py"
    script.write_text(
        "from ssmkit.data.listops import generate_listops\n"
        "two = generate_listops(12, 4, 6, 30, 5, workers=2, draws_per_chunk=40)\n"
        "one = generate_listops(12, 4, 6, 30, 5, workers=1, draws_per_chunk=40)\n"
        "import __main__\n"
        "print(two == one, __main__.__file__ == __file__, __main__.__spec__ is None)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "True", "True"]  # the rows; __file__ restored; a script's spec is None


def test_the_pool_is_closed_and_joined_not_terminated():
    # leaving the block normally: every worker took the end-of-work sentinel and exited with 0 (Pool's own `with`
    # terminates: -SIGTERM); leaving it by an exception: the pool is terminated and the exception goes on
    with process_pool(2) as pool:
        workers = list(pool._pool)  # noqa: SLF001
        assert pool.map(math.sqrt, [16.0, 25.0]) == [4.0, 5.0]
    assert [w.exitcode for w in workers] == [0, 0]
    try:
        with process_pool(2) as pool:
            workers = list(pool._pool)  # noqa: SLF001
            raise KeyError("stop")
    except KeyError as e:
        assert e.args == ("stop",)
    assert all(not w.is_alive() for w in workers)
