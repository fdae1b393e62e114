"""The MIMO diagonal SSM of S5 and LRU as one autograd node: two GEMMs around the C kernel's scan of the modes.

    v = u W_in,   x_t = Ā ⊙ x_{t-1} + v_t,   y = x W_out + D ⊙ u          (arXiv 2208.04933 eq. 2-3; 2303.06349 eq. 1)

with u (B·L, H), the real packings W_in = [Re B̄ᵀ, Im B̄ᵀ] (H, 2M) and W_out = [Re C, -Im C]ᵀ (2M, H) of
:mod:`ssmkit.ops.mimo`, and the scan by :func:`ssmkit.ops.native.recurrence.recurrence_forward`. As one node its
backward is written out rather than chained through autograd's nodes:

    ∂W_out = xᵀ g,   ∂x = g W_outᵀ,   (∂Ā, ∂v, ∂x_{-1}) = the scan's adjoint,   ∂W_in = uᵀ ∂v,
    ∂u = ∂v W_inᵀ + D ⊙ g,   ∂D = Σ_{b,t} g ⊙ u

so the skip costs one in-place pass each way (no product tensor, no separate sum of u's two gradients), the GEMMs of
a gradient not asked for (or of an output not used: no zeros are materialised) are skipped, and no tensor of the
forward is kept beyond u and the states x. ∂W_out and ∂W_in, sums over all B·L steps, are formed by blocks of rows
when the layer is narrow (:func:`_gram`). Differentiated itself (``create_graph``), the backward is that of the same
three steps in tensor ops with the chunked scan (:mod:`ssmkit.ops.twice`).
"""

from __future__ import annotations

import torch

from ssmkit.ops.function_call import apply_function
from ssmkit.ops.native.recurrence import recurrence_backward, recurrence_forward
from ssmkit.ops.rows import mm_rows
from ssmkit.ops.twice import graph_backward

ROW_BLOCK = 32768  # rows per GEMM call of _mm_rows: whole GEMMs up to B·L = 65 536 (see _mm_rows)


def _mm_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for a tall a (B·L, K) and a narrow b (K, N) by :func:`ssmkit.ops.rows.mm_rows` with ROW_BLOCK rows: one
    GEMM up to B·L = 2·ROW_BLOCK, blocks beyond. By 2 048-row blocks (16 GEMM calls at B 8, L 4 096) S5 and LRU ran
    0-7 % faster alone, but each call is a parallel region, and beside one busy process the 16 regions' waits made
    the mean forward+backward 1.3-1.5x that of the whole GEMMs (2026-12-04: LRU 112 against 83 ms, S5 133 against
    91 ms, 50 interleaved rounds; docs/benchmarks.md, "Session of 2026-12-04 (20:09-)"). Whole GEMMs are kept."""
    return mm_rows(a, b, ROW_BLOCK)


GRAM_BLOCK = 64  # rows per single-precision partial of a narrow weight gradient's sum over B·L (see _gram)
GRAM_NARROW = 8  # at most this many columns on one side: a narrow product (see _gram)


def _gram(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """aᵀ b = Σ_r a_rᵀ b_r (K, N) for tall a (B·L, K) and b (B·L, N): a weight gradient, a sum over every step of every
    sequence. Narrow (min(K, N) ≤ GRAM_NARROW), as one batched GEMM of blocks of T = GRAM_BLOCK rows and torch's sum of
    the (B·L/T, K, N) partials (pairwise, not a running sum; at most 1/8 of the inputs' size); wider, one GEMM.

    MKL's GEMM of a narrow product streams all B·L rows into one float32 running sum per entry (at 131 072 rows of
    nearly constant terms 9e-4 off with 8 columns or fewer on one side, 1e-6 with 12 or more): with a constant input
    and the loss on every step (d_model 4, L 16 384) LRU's ∂C was 1.6e-4 off its float64 value and S5's 1.1e-4, LRU's
    ∂B 3.3e-6; by blocks 4.0e-7, 1.7e-6 (S5: its float32 Λ̄'s own share) and 2.2e-7. Wider GEMMs block their sums
    themselves (LRU at d_model 128, B 8, L 4 096: ∂C 1.4e-6, ∂B 2.1e-6; 64-row blocks gave 8.6e-7 and 5.2e-7 for
    ~1.5x the GEMM's time: partials as large as the inputs).
    """
    n, K = a.shape
    N = b.shape[1]
    T = GRAM_BLOCK
    if min(K, N) > GRAM_NARROW or n < 2 * T:
        return a.mT @ b  # (K, N)
    if K > N:  # the narrow side first: MKL's blocks of aᵀb with K > N ran ~4x slower (2.3 against 0.5 ms at B·L 32 768)
        return _gram(b, a).mT  # (K, N)
    nb = n // T
    head = torch.bmm(a[: nb * T].reshape(nb, T, K).mT, b[: nb * T].reshape(nb, T, N)).sum(0)  # (nb, K, N) -> (K, N)
    return head if nb * T == n else head + a[nb * T:].mT @ b[nb * T:]  # (K, N) (not addmm_, whose GEMM adds the rows to the total one by one: 8e-7)


class _NativeMimo(torch.autograd.Function):
    """Inputs: u (B·L, H) contiguous, W_in (H, 2M), Ā (M,) (complex; real modes: W_in (H, M)), W_out (2M, H), D (H,)
    or None, x0 (B, M) or None, and B. Outputs: y (B, L, H) and x_{L-1} (B, M)."""

    @staticmethod
    def forward(ctx, u, W_in, A_bar, W_out, D, x0, Bsz):  # type: ignore[override]
        BL, H = u.shape
        v = _mm_rows(u, W_in)  # (B·L, 2M)
        b = torch.view_as_complex(v.view(Bsz, BL // Bsz, -1, 2)) if A_bar.is_complex() else v.view(Bsz, BL // Bsz, -1)
        x = recurrence_forward(A_bar, b, x0)  # (B, L, M)
        x_packed = (torch.view_as_real(x) if x.is_complex() else x).reshape(BL, -1)  # (B·L, 2M)
        y = _mm_rows(x_packed, W_out)  # (B·L, H)
        if D is not None:
            y.addcmul_(u, D)
        ctx.save_for_backward(u, W_in, A_bar, W_out, D, x0, x)
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None: its GEMMs are skipped
        return y.view(Bsz, BL // Bsz, H), x[:, -1].clone()

    @staticmethod
    def backward(ctx, g_y, g_last):  # type: ignore[override]
        u, W_in, A_bar, W_out, D, x0, x = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: a double backward, through tensor ops (ops/twice.py)
            Bsz = x.shape[0]
            path = lambda *inputs: _mimo_torch(*inputs, Bsz)  # noqa: E731
            g = graph_backward(path, (u, W_in, A_bar, W_out, D, x0), ctx.needs_input_grad[:6], (g_y, g_last))
            return (*g, None)
        need_u, need_in, need_A, need_out, need_D, need_x0 = ctx.needs_input_grad[:6]
        BL, H = u.shape
        g_u = g_in = g_A = g_out = g_D = g_x0 = None
        x_packed = (torch.view_as_real(x) if x.is_complex() else x).reshape(BL, -1)  # (B·L, 2M)
        if g_y is not None:
            g_y = g_y.reshape(BL, H).contiguous()  # (B·L, H)
            if need_out:
                g_out = _gram(x_packed, g_y)  # (2M, H)
            if need_D and D is not None:
                g_D = torch.linalg.vecdot(g_y, u, dim=0)  # (H,): Σ g ⊙ u
            g_x = _mm_rows(g_y, W_out.mT)  # (B·L, 2M)
            g_x = torch.view_as_complex(g_x.view(*x.shape, 2)) if x.is_complex() else g_x.view(x.shape)  # (B, L, M)
        else:
            g_x = None
        if need_u or need_in or need_A or need_x0:
            g_a, g_b, g_x0 = recurrence_backward(A_bar, x0, x, g_x, g_last)
            g_A = g_a if need_A else None
            g_v = (torch.view_as_real(g_b) if g_b.is_complex() else g_b).reshape(BL, -1)  # (B·L, 2M)
            if need_in:
                g_in = _gram(u, g_v)  # (H, 2M)
            if need_u:
                g_u = _mm_rows(g_v, W_in.mT)  # (B·L, H)
                if D is not None and g_y is not None:
                    g_u.addcmul_(g_y, D)
        return g_u, g_in, g_A, g_out, g_D, g_x0 if need_x0 else None, None


def _mimo_torch(u, W_in, A_bar, W_out, D, x0, Bsz):
    """The forward of :class:`_NativeMimo` in differentiable tensor ops (the scan chunked): (y (B, L, H), x_{L-1})."""
    from ssmkit.ops.recurrence import linear_recurrence_chunked

    BL, H = u.shape
    v = u @ W_in  # (B·L, 2M)
    b = torch.view_as_complex(v.view(Bsz, BL // Bsz, -1, 2)) if A_bar.is_complex() else v.view(Bsz, BL // Bsz, -1)
    x, x_last = linear_recurrence_chunked(A_bar, b, x0)  # (B, L, M), (B, M)
    y = (torch.view_as_real(x) if x.is_complex() else x).reshape(BL, -1) @ W_out  # (B·L, H)
    if D is not None:
        y = torch.addcmul(y, u, D)
    return y.view(Bsz, BL // Bsz, H), x_last


def mimo_native_unchecked(
    u: torch.Tensor, A_bar: torch.Tensor, W_in: torch.Tensor, W_out: torch.Tensor, state: torch.Tensor | None,
    D: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """y (B, L, H) and x_{L-1} (B, M) of the MIMO scan from the packed W_in (H, 2M) and W_out (2M, H) (see the module
    docstring), after :func:`ssmkit.ops.mimo.mimo_scan_native`'s checks."""
    Bsz, L, H = u.shape
    x0 = None if state is None else state.resolve_conj().contiguous()
    return apply_function(_NativeMimo, u.reshape(Bsz * L, H).contiguous(), W_in, A_bar.resolve_conj().contiguous(),
                          W_out, D, x0, Bsz)
