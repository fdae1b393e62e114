"""Keep freed CPU memory for reuse, so that large tensors skip the kernel's page zeroing.

glibc's ``malloc`` serves every allocation of 32 MiB and more (and, by its sliding threshold, many smaller ones)
with a fresh ``mmap`` and returns it with ``munmap`` when it is freed. PyTorch's CPU allocator has no cache of its
own, so each large tensor -- a (B, L, D) activation or gradient of a long sequence -- is new memory that the kernel
zero-fills page by page on first touch, again on every call. In one Mamba block at B 8, L 4 096, d_model 256
(forward+backward, one thread) that is ~250 000 page faults and ~0.4 s of kernel time per call, a quarter of the
call's CPU time (docs/benchmarks.md, "Freed memory kept").

:func:`keep_freed_memory` makes ``malloc`` keep what is freed: ``mallopt(M_MMAP_MAX, 0)`` serves every block from
the heap and ``mallopt(M_TRIM_THRESHOLD, 2**31 - 1)`` returns the heap's free top to the system only beyond 2 GiB,
so the next tensor of a similar size reuses pages that are already mapped. This is what tcmalloc or jemalloc preloaded with ``LD_PRELOAD``
(PyTorch's CPU performance guide) achieve, applied at run time from Python. The cost: the process's resident memory
stays at its peak, and freed blocks of different sizes can fragment the heap (peak RSS of one Mamba block at B 8,
L 4 096: 1.0 -> 1.3 GiB for 26 % less time; of mambapy's block, whose temporaries are 1 GiB each: 9.4 -> 14.3 GiB). It is process-wide, so a library does not apply it on import: the ``ssmkit`` command applies it
(``SSMKIT_KEEP_FREED_MEMORY=0`` in the environment opts out) and users call it in their own training scripts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

M_TRIM_THRESHOLD = -1  # glibc's malloc.h parameter numbers
M_MMAP_MAX = -4
_TRIM_DEFAULT = 128 * 1024  # glibc's documented defaults, restored by keep_freed_memory(False)
_MMAP_MAX_DEFAULT = 65536
_INT_MAX = 2**31 - 1  # mallopt takes an int

ENV = "SSMKIT_KEEP_FREED_MEMORY"


@functools.lru_cache(maxsize=None)
def _glibc_mallopt():
    """glibc's ``mallopt``, or None where the C library is not glibc (musl, macOS, Windows)."""
    if not hasattr(os, "confstr"):
        return None
    try:
        libc_version = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        return None
    if not libc_version or not libc_version.startswith("glibc"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt


def keep_freed_memory(enabled: bool = True) -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse (``enabled=True``) or return to its defaults (``False``).

    With it, a tensor allocated after one of a similar size was freed reuses mapped pages instead of new ones that
    the kernel must zero (see the module docstring for the mechanism and the measured gain). Process-wide and
    effective immediately; the resident memory then stays at its peak. ``False`` restores glibc's documented
    defaults (trim threshold 128 KiB, mmap allowed), but as fixed values: glibc's sliding mmap threshold stays off.

    Args:
        enabled: True to keep freed memory, False to return it to the system again.

    Returns:
        True if the setting was applied, False where the C library is not glibc (nothing changes there).
    """
    if not isinstance(enabled, bool):
        raise ValueError(f"enabled must be a bool; got {type(enabled).__name__}")
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    trim, mmap_max = (_INT_MAX, 0) if enabled else (_TRIM_DEFAULT, _MMAP_MAX_DEFAULT)
    ok = mallopt(M_TRIM_THRESHOLD, trim) == 1 and mallopt(M_MMAP_MAX, mmap_max) == 1  # mallopt returns 1 on success
    return ok


def keep_freed_memory_from_env() -> bool:
    """:func:`keep_freed_memory` unless ``SSMKIT_KEEP_FREED_MEMORY`` is ``0`` (what the ``ssmkit`` command calls).

    Returns:
        True if freed memory is now kept; False if the environment opted out or the C library is not glibc.
    """
    value = os.environ.get(ENV, "1").strip()
    if value not in ("0", "1"):
        raise ValueError(f"{ENV} must be 0 or 1; got {value!r}")
    return value == "1" and keep_freed_memory(True)
