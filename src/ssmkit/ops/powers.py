"""Power tables a^k, k = 0..n-1, and integer powers a^n, shared by the chunked scan, the recurrence and the
Vandermonde kernel. Products only (no logarithm), so a = 0 and negative or complex a are exact cases."""

from __future__ import annotations

import torch

from ssmkit.ops.function_call import apply_function, jvp_twin


def power_table(a: torch.Tensor, n: int) -> torch.Tensor:
    """a^k for k = 0..n-1 along a new last axis, by one cumulative product (entry k is k products deep).

    The table is computed in a's dtype; callers that need accuracy pass a double-precision ``a`` and
    round the table once (a float32 table drifts by ~k·eps).

    Args:
        a: (...) real or complex.
        n: number of powers, >= 1.

    Returns:
        (..., n) with [..., k] = a^k (a^0 = 1, also for a = 0), a's dtype.
    """
    # one cumprod over [1, a, a, ..., a] (6 ops whatever n; the former doubling loop took 3 ops per doubling, and
    # per-op dispatch dominates at these (H, N) sizes: issue 16). Depth n products: callers pass double precision.
    return apply_function(_PowerTable, a, n)


def _cumprod_table(a: torch.Tensor, n: int) -> torch.Tensor:
    ones = torch.ones_like(a).unsqueeze(-1)  # (..., 1)
    if n == 1:
        return ones
    return torch.cat([ones, a.unsqueeze(-1).expand(*a.shape, n - 1)], dim=-1).cumprod(-1)  # (..., n)


class _PowerTable(torch.autograd.Function):
    """a -> [a^0, ..., a^{n-1}] by one cumprod, with the backward of the formula: grad_a = Σ_k conj(k a^{k-1}) g_k.

    cumprod's own backward divides by its input, which gives NaN where a is tiny and its powers underflow; this one
    multiplies the saved table by k instead (exact at a = 0 too). Pure tensor ops, so torch.func's generated vmap
    rule batches it and double backward goes through the saved table.

    Forward-mode AD: :class:`_PowerTableJvp`.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(a: torch.Tensor, n: int) -> torch.Tensor:  # type: ignore[override]
        return _cumprod_table(a, n)  # (..., n)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        (table,) = ctx.saved_tensors  # (..., n)
        n = table.shape[-1]
        if n == 1:
            return torch.zeros_like(table[..., 0]), None
        k = torch.arange(1, n, dtype=table.real.dtype, device=table.device)  # (n-1,)
        derivative = table[..., :-1] * k  # (..., n-1): d a^k / da = k a^{k-1}
        return (g[..., 1:] * derivative.conj()).sum(-1), None


@jvp_twin(_PowerTable)
class _PowerTableJvp(_PowerTable):
    """:class:`_PowerTable` with its forward derivative, called under forward-mode AD (``ops.function_call``):
    d(a^k) = k a^{k-1} ȧ from the same table (entry 0 has tangent 0), exact at a = 0 too."""

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        _PowerTable.setup_context(ctx, inputs, output)
        ctx.save_for_forward(output)

    @staticmethod
    def jvp(ctx, a_dot: torch.Tensor, _n):  # type: ignore[override]
        (table,) = ctx.saved_tensors  # (..., n)
        n = table.shape[-1]
        k = torch.arange(n, dtype=table.real.dtype, device=table.device)  # (n,)
        previous = torch.cat([torch.zeros_like(table[..., :1]), table[..., :-1]], dim=-1)  # (..., n): a^{k-1}, 0 at k = 0
        return previous * k * a_dot.unsqueeze(-1)  # (..., n): k a^{k-1} ȧ


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
