"""The machine's limits measured in the same run as a benchmark, and the lower bounds of a case under them.

Two limits, each measured by the run that uses it (a figure from another day on a shared machine says little):

    copy bandwidth  bytes read + written per second by ``dst.copy_(src)`` of a buffer larger than the caches
    FLOP rate       float32 multiply-adds per second of a large square GEMM (the practical peak of this BLAS)

and two lower bounds of a case (B, L, H, N), from the fused-scan model of docs/benchmarks.md (a scan that never writes its state):

    bytes  forward ``2·B·L·H·s`` (read u, write y); forward+backward ``5·B·L·H·s`` (the forward's u in, y out;
           the backward's u again, dy in, du out: dy exists only after the forward);
           step ``B·H·(2·s + 2·N·s)`` per token (u in, y out, the state read and written)
    flops  ``6·B·L·H·N`` forward (per batch row, step and channel: N/2 complex modes, a complex multiply-add
           of the state, the input and the output term ≈ 12 real flops each); forward+backward 3x forward;
           step ``6·B·H·N`` per token

The achieved fraction of a bound is bound time / measured time (1.0 = at the limit).
"""

from __future__ import annotations

import statistics
import time

import torch

MODES = ("forward", "forward_backward", "step")


def copy_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes per second moved by ``dst.copy_(src)`` (read + written) for float32 buffers of ``megabytes``.

    Args:
        megabytes: size of each buffer in MB (256 is far above any CPU cache; tests pass 1).
        repeats: copies timed; the best is kept (the machine's capability, not its noise).

    Returns:
        bytes / second (2 × buffer size / best time).
    """
    n = max(1, megabytes * (1 << 20) // 4)
    src = torch.ones(n)
    dst = torch.empty(n)
    dst.copy_(src)  # first touch of the pages
    best = min(_timed(lambda: dst.copy_(src)) for _ in range(max(1, repeats)))
    return 2 * 4 * n / best


def gemm_flops(size: int = 2048, repeats: int = 3) -> float:
    """Float32 flops per second of a (size × size) @ (size × size) GEMM (2·size³ flops), best of ``repeats``.

    Args:
        size: the matrix side (2048 is enough to reach the BLAS peak; tests pass 64).
        repeats: products timed.

    Returns:
        flops / second.
    """
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(max(1, repeats)))
    return 2 * size**3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bound_bytes(mode: str, batch: int, length: int, d_model: int, d_state: int, itemsize: int) -> float:
    """The minimum bytes a case moves (module docstring); ``length`` counts the tokens of a ``step`` case.

    Args:
        mode: one of :data:`MODES`.
        batch, length, d_model, d_state: B, L, H, N.
        itemsize: bytes per element (4 for float32).
    """
    if mode == "forward":
        return 2.0 * batch * length * d_model * itemsize
    if mode == "forward_backward":
        return 5.0 * batch * length * d_model * itemsize
    if mode == "step":
        return float(length) * batch * d_model * (2 * itemsize + 2 * d_state * itemsize)
    raise ValueError(f"mode must be one of {MODES}; got {mode!r}")


def bound_flops(mode: str, batch: int, length: int, d_model: int, d_state: int) -> float:
    """The minimum flops of a case (module docstring): 6·B·L·H·N forward, 3x that forward+backward.

    Args:
        mode: one of :data:`MODES`.
        batch, length, d_model, d_state: B, L, H, N.
    """
    forward = 6.0 * batch * length * d_model * d_state
    if mode in ("forward", "step"):
        return forward
    if mode == "forward_backward":
        return 3 * forward
    raise ValueError(f"mode must be one of {MODES}; got {mode!r}")


def time_interleaved(fns: dict, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of every function, in ``repeats`` rounds that each call every function once.

    Interleaving makes a ratio of two entries compare times taken under the same machine conditions (the
    shared VM drifts by ±50 % over minutes).

    Args:
        fns: name -> callable of no argument.
        repeats: rounds (>= 1).
        warmup: untimed calls of each function first.

    Returns:
        name -> list of ``repeats`` seconds.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            times[name].append(_timed(fn))
    return times


def median(values: list[float]) -> float:
    """The median of a non-empty list."""
    return statistics.median(values)
