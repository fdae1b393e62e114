"""Power tables a^k, k = 0..n-1, and integer powers a^n, shared by the chunked scan, the recurrence and the
Vandermonde kernel. Products only (no logarithm), so a = 0 and negative or complex a are exact cases."""

from __future__ import annotations

import torch

from ssmkit.ops.backend import tracing


def power_table(a: torch.Tensor, n: int) -> torch.Tensor:
    """a^k for k = 0..n-1 along a new last axis, by repeated doubling (each entry ~log2 n products deep).

    The table is computed in a's dtype; callers that need accuracy pass a double-precision ``a`` and
    round the table once (a float32 table drifts by ~k·eps, since every doubling doubles the error).

    Args:
        a: (...) real or complex.
        n: number of powers, >= 1.

    Returns:
        (..., n) with [..., k] = a^k (a^0 = 1, also for a = 0), a's dtype.
    """
    # the powers grow along a leading axis: cat there is one block copy (along the last axis it was
    # an element-wise gather, 2 ms for (128, 32, 65) complex128)
    base = a
    if (torch.is_grad_enabled() and a.requires_grad) or tracing():  # functional form (autograd, vmap, compile)
        p = torch.ones_like(a).unsqueeze(0)  # (1, ...)
        while p.shape[0] < n:
            p = torch.cat([p, p[: n - p.shape[0]] * base], dim=0)  # (min(2m, n), ...)
            base = base * base
    else:  # no graph: fill one buffer in place, no concatenations
        p = a.new_empty((n, *a.shape))  # (n, ...)
        p[0] = 1
        m = 1
        while m < n:
            k = min(m, n - m)
            torch.mul(p[:k], base, out=p[m : m + k])  # (k, ...): a^(m..m+k-1)
            base = base * base
            m += k
    return p.movedim(0, -1)  # (..., n)


def int_power(a: torch.Tensor, n: int) -> torch.Tensor:
    """a^n (n >= 0 a Python int) by binary exponentiation in a's dtype: exact at a = 0 and differentiable.

    Args:
        a: (...) real or complex.
        n: the exponent, >= 0.

    Returns:
        (...) a^n, a's dtype (a^0 = 1).
    """
    result = torch.ones_like(a)
    base = a
    while n:
        if n & 1:
            result = result * base
        n >>= 1
        if n:
            base = base * base
    return result
