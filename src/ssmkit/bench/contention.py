"""Slow-down under CPU contention: each implementation alone, then beside N busy processes this bench starts.

    ssmkit bench contention [--layers s4d] [--batch 8] [--length 4096] [--d-model 128] [--d-state 64]
                            [--modes forward forward_backward] [--busy 1] [--busy-kind spin] [--s4-file PATH]
                            [--repeats 5] [--json PATH]

Issue 16: on the 2-core CPU, one competing busy process slowed ssmkit's S4D forward 2.6-6.8x and the official
code's 1.6-1.9x, because every aten op is a point where a process that shares its cores waits (a forward
dispatched 10-40x more ops than the official one). This suite measures exactly that, in one run:

1. every implementation of each case (ssmkit ``auto`` and its fast backends, and the peers that can run it:
   the official S4 code with ``--s4-file``, the plain loop, ...) timed alone, in interleaved rounds;
2. the same after starting ``--busy`` competing processes itself: ``spin`` (a pure-Python busy loop, one core
   each) or ``matmul`` (single-threaded float32 GEMMs, which also load the memory system);
3. the busy processes are stopped (by their process ids, also on error), and the table gives each
   implementation's medians alone and loaded and the slow-down = loaded / alone, the range of the loaded times (the
   median hides a bimodal loaded time: see docs/benchmarks.md), plus the aten-op count of one call (a
   TorchDispatchMode count of a second call: deterministic, unlike the times).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import subprocess
import sys
import time
from typing import Callable, Iterator

from torch.utils._python_dispatch import TorchDispatchMode

import ssmkit.layers as layers
from ssmkit.bench import positive_int
from ssmkit.bench.cases import implementations, unbuildable
from ssmkit.bench.core import machine
from ssmkit.bench.limits import median, time_interleaved
from ssmkit.bench.peers import PEERS, Case

BUSY = {
    "spin": "while True:\n    pass\n",
    "matmul": (
        "import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\n"
        "while True:\n    a @ a\n"
    ),
}


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched inside its ``with`` block (``counts``: op name -> calls; ``total``)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        """All ops counted."""
        return sum(self.counts.values())


def count_ops(fn: Callable[[], object]) -> int:
    """The aten ops that one call of ``fn`` dispatches (forward and, for a training call, backward), counted on a
    second call: the first one may also run one-time work (a native kernel's build and smoke call) that is not the
    call's."""
    fn()
    with OpCounter() as counter:
        fn()
    return counter.total


@contextlib.contextmanager
def busy_processes(n: int, kind: str = "spin") -> Iterator[list[subprocess.Popen]]:
    """Start ``n`` busy Python processes of ``kind`` (see :data:`BUSY`) for the ``with`` block; stop them after.

    Each is stopped by its own process id (terminate, then kill after 5 s), also when the block raises.

    Args:
        n: number of processes (0: none).
        kind: ``"spin"`` or ``"matmul"``.
    """
    if kind not in BUSY:
        raise ValueError(f"kind must be one of {tuple(BUSY)}; got {kind!r}")
    procs = [subprocess.Popen([sys.executable, "-c", BUSY[kind]], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(n)]
    try:
        time.sleep(0.5 if n else 0)  # let them start (imports) before timing
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def measure(case: Case, peers: list[str], s4_file: str | None, busy: int, kind: str,
            repeats: int) -> tuple[list[dict], list[str]]:
    """Rows (implementation, alone s, loaded s, slow-down, aten ops) of one case, and notes."""
    fns, notes = implementations(case, peers, s4_file, reference=False)
    ops = {name: count_ops(fn) for name, fn in fns.items()}
    alone = time_interleaved(fns, repeats)
    with busy_processes(busy, kind):
        loaded = time_interleaved(fns, repeats, warmup=0)
    rows = []
    for name in fns:
        a, b = median(alone[name]), median(loaded[name])
        rows.append({"case": case.name, "impl": name, "aten_ops": ops[name], "alone_s": a, "loaded_s": b,
                     "slowdown": b / a, "alone_all": alone[name], "loaded_all": loaded[name]})
    return rows, notes


def main(argv: list[str] | None = None, prog: str = "python -m ssmkit.bench contention") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--layers", nargs="+", default=["s4d"], choices=layers.available())
    parser.add_argument("--batch", type=positive_int, default=8)
    parser.add_argument("--length", nargs="+", type=positive_int, default=[4096])
    parser.add_argument("--d-model", type=positive_int, default=128)
    parser.add_argument("--d-state", type=positive_int, default=64)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--modes", nargs="+", default=["forward", "forward_backward"],
                        choices=["forward", "forward_backward", "step"])
    parser.add_argument("--peers", nargs="*", default=["official-s4"], choices=PEERS)
    parser.add_argument("--s4-file", default=None, help="the official state-spaces/s4 models/s4/s4.py")
    parser.add_argument("--busy", type=int, default=1, help="competing busy processes to start (default 1)")
    parser.add_argument("--busy-kind", default="spin", choices=tuple(BUSY))
    parser.add_argument("--repeats", type=positive_int, default=5, help="interleaved rounds per condition (default 5)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.busy < 0:
        parser.error("--repeats must be >= 1 and --busy >= 0")
    cases = [Case(layer, args.batch, length, args.d_model, args.d_state, args.dtype, mode)
             for layer in args.layers for length in args.length for mode in args.modes]
    problem = unbuildable(cases)  # before anything is timed (ssmkit.bench.cases.unbuildable)
    if problem:
        parser.error(problem)
    print(f"ssmkit bench contention: {args.busy} busy process(es) ({args.busy_kind}); {machine()}")
    rows, notes, notes_by_case = [], [], {}
    for case in cases:
        r, n = measure(case, args.peers, args.s4_file, args.busy, args.busy_kind, args.repeats)
        rows += r
        notes += n
        notes_by_case[case.name] = n  # which case a note is about (the printed notes are merged)
    print("| case | implementation | aten ops | alone ms | loaded ms | slow-down | loaded range ms |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:  # the range shows a bimodal loaded time (spin-waiting threads) that the median hides
        print(f"| {r['case']} | {r['impl']} | {r['aten_ops']} | {1e3 * r['alone_s']:.2f} | "
              f"{1e3 * r['loaded_s']:.2f} | {r['slowdown']:.2f}x | "
              f"{1e3 * min(r['loaded_all']):.2f}-{1e3 * max(r['loaded_all']):.2f} |")
    for n in dict.fromkeys(notes):
        print(f"note: {n}")
    if args.json:
        from ssmkit.files import write_json

        write_json(args.json, {"machine": machine(), "busy": args.busy, "busy_kind": args.busy_kind, "rows": rows,
                               "notes": list(dict.fromkeys(notes)), "notes_by_case": notes_by_case})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
