"""Choice of execution path for the ops (one visible place; STYLE.md rule 7).

``auto`` lets each op pick its fast path by device and size; the other names force one path
for tests and debugging. A forced path that the op does not have, or that cannot run here,
raises ``RuntimeError`` -- never a silent fallback.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

BACKENDS = ("auto", "reference", "chunked", "fft", "triton")

_current = "auto"


def set_backend(name: str) -> None:
    """Force an execution path for every op.

    Args:
        name: one of
            ``"auto"`` (default) -- each op picks its fastest available path;
            ``"reference"`` -- plain loops / direct formulas (the test oracle);
            ``"chunked"`` -- matmul-shaped chunked algorithms (CPU and GPU);
            ``"fft"`` -- convolution kernels applied by FFT where the op is LTI;
            ``"triton"`` -- Triton GPU kernels (raises where none is available).
    """
    global _current
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {name!r}")
    _current = name


def get_backend() -> str:
    """The backend name set by :func:`set_backend` (``"auto"`` unless changed)."""
    return _current


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager form of :func:`set_backend`: use backend ``name`` inside, restore the previous one on exit."""
    previous = _current
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def unavailable(op: str, backend: str, why: str) -> RuntimeError:
    """The error raised when a forced backend cannot run ``op`` (STYLE.md rule 7)."""
    return RuntimeError(f"{op}: backend {backend!r} was forced with ssmkit.ops.set_backend but {why}")
