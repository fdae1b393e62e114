"""Triton's CPU interpreter (TRITON_INTERPRET=1, set by tests/conftest.py) with its associative scans run lane-parallel.

The interpreter's ``ScanOps.generic_scan`` calls a scan's combine once per element of the scanned tile, which was
~95 % of the interpreter's time in the kernels' tests (cProfile); :func:`scan_every_lane_at_once` calls it once per
step for all lanes together, bit for bit the same results (tests/ops/test_triton.py,
``test_the_faster_interpreter_scan_is_bitwise_the_same``). tests/conftest.py swaps it in for every test (an autouse
fixture) under the interpreter; nothing changes on a GPU or without triton.
"""

from __future__ import annotations

import importlib.util
import os

TRITON_GENERIC_SCAN = None  # Triton's own ScanOps.generic_scan, where its interpreter has one
if os.environ.get("TRITON_INTERPRET") == "1" and importlib.util.find_spec("triton") is not None:
    from triton.runtime import interpreter as _interpreter

    TRITON_GENERIC_SCAN = getattr(getattr(_interpreter, "ScanOps", None), "generic_scan", None)


def scan_every_lane_at_once(self, input):
    """Triton's interpreter's ``ScanOps.generic_scan`` (triton/runtime/interpreter.py) with one call of the combine
    per step along the axis for all the lanes together, not one per element: out_0 = in_0, out_i = combine(out_{i-1},
    in_i). The kernels' combines (complex multiply-adds, linear recurrences, sums) are elementwise, so each lane gets
    the same operations in the same order, bit for bit (test_the_faster_interpreter_scan_is_bitwise_the_same); the
    element-by-element loop was ~95 % of the interpreter's time in the scans' tests (cProfile)."""
    import numpy as np
    import triton.language as tl

    axis, dtypes = self.axis, [arg.dtype for arg in input]
    data = [arg.handle.data for arg in input]
    out = [np.empty_like(d) for d in data]
    at = lambda i: (slice(None),) * axis + (i,)  # noqa: E731
    for o, d in zip(out, data):
        o[at(0)] = d[at(0)]
    for i in range(1, data[0].shape[axis]):
        acc = tuple(self.to_tensor(o[at(i - 1)], t) for o, t in zip(out, dtypes))
        ret = self.combine_fn.fn(*acc, *(self.to_tensor(d[at(i)], t) for d, t in zip(data, dtypes)))
        for o, r in zip(out, ret if isinstance(ret, tuple) else (ret,)):
            o[at(i)] = np.reshape(r.handle.data, o[at(i)].shape) if isinstance(r, tl.core.tensor) else r
    return [self.to_tensor(o, t) for o, t in zip(out, dtypes)]


def use_lane_parallel_scans(monkeypatch) -> None:
    """Under the interpreter, its associative scans by :func:`scan_every_lane_at_once` (``monkeypatch`` restores
    Triton's own after the test)."""
    if TRITON_GENERIC_SCAN is not None:
        monkeypatch.setattr(_interpreter.ScanOps, "generic_scan", scan_every_lane_at_once)
